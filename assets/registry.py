"""``registered_version``: the evaluated candidate as an MLflow model version, alias ``challenger``."""

import dagster as dg

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.assets.training import ARTIFACT, git_commit
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.vocabulary import Alias, VersionTag

STATUS_TAG = VersionTag.STATUS
# Evaluation metrics copied to the version's tags (``eval_<metric>``) when the report has them.
EVAL_TAGS = ("accuracy", "macro_f1", "escalation_recall", "golden_accuracy", "in_scope_accuracy", "oos_recall")


def build_registry_asset(agent: Agent, evaluation: dg.AssetsDefinition, *gated: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """``gated``: more evaluations whose blocking checks registration waits on (trajectories).

    The candidate and its numbers come from the evaluation's gate record (this run's, when the
    evaluation ran in it); the result handed on is the registered version."""
    @dg.asset(
        key_prefix=[agent.name], name="registered_version", group_name=agent.name,
        ins={"report": dg.AssetIn(evaluation.key, input_manager_key=LAKE_IO_MANAGER)}, deps=list(gated),
        io_manager_key=LAKE_IO_MANAGER, kinds={"mlflow"}, code_version=source_version(__name__),
        description="The candidate registered in MLflow with alias `challenger` and tags for its "
                    "metrics, lineage and approval status (pending until a reviewer decides).",
    )
    def registered_version(context: dg.AssetExecutionContext, report: dict | None, mlflow_store: MlflowResource,
                           audit: AuditLog) -> dg.MaterializeResult:
        import mlflow

        from agentops_pipelines.governance.approvals import record_registration

        if not report:
            raise dg.Failure("no evaluation report to register from")
        run_id = report["candidate_run_id"]
        if not report["gate_passed"]:
            raise dg.Failure(f"run {run_id} did not pass its evaluation gate: {report['gate_reasons']}")
        numbers = report["numbers"]
        client = mlflow_store.configure()
        run = client.get_run(run_id)
        existing = client.search_model_versions(f"name='{agent.name}' and run_id='{run_id}'")
        if existing:  # re-evaluating a run registers nothing new
            mv = existing[0]
        else:
            try:
                client.get_registered_model(agent.name)
            except mlflow.exceptions.MlflowException:
                client.create_registered_model(agent.name, tags={"agentops.agent": agent.name},
                                               description=f"The {agent.name} agent, registered by agentops-pipelines.")
            model_uri = run.data.tags.get("agentops.model_uri") or f"runs:/{run_id}/{ARTIFACT}"
            mv = mlflow.register_model(model_uri, agent.name)
        tags = {
            STATUS_TAG: "pending",
            VersionTag.GATE: "passed",
            # The evaluation's headline metrics it computed (no escalation recall without an
            # escalation tool, golden_* with a golden test set, oos_* with out-of-scope rows).
            **{f"eval_{k}": f"{numbers[k]:.4f}" for k in EVAL_TAGS if isinstance(numbers.get(k), int | float)},
            "eval_latency_p99_ms": f"{numbers['latency_p99_ms']:.2f}",
            "dataset_partitions": run.data.tags.get("agentops.partitions", ""),
            "training_set_version": run.data.tags.get("agentops.training_set_version", ""),
            "git_commit": run.data.tags.get("agentops.git_commit") or git_commit(),
            "dagster_run_id": context.run.run_id,
            "training_dagster_run_id": run.data.tags.get("agentops.dagster_run_id", ""),
            "mlflow_run_id": run_id,
            "prompt": run.data.tags.get("agentops.prompt", ""),
        }
        if existing and mv.tags.get(STATUS_TAG) not in (None, "pending"):
            tags.pop(STATUS_TAG)  # never reset a reviewer's decision
        for key, value in tags.items():
            client.set_model_version_tag(agent.name, mv.version, key, value)
        # The pipeline's own record (audit log): gate result and the digests approvals bind to.
        # A re-registration records anew, which voids approvals signed before it.
        registration = record_registration(
            client, audit.store, agent.name, str(mv.version), run_id, gate_passed=True,
            actor=f"registered_version:{context.run.run_id[:8]}",
            metrics={k: tags[k] for k in tags if k.startswith("eval_")})
        client.set_registered_model_alias(agent.name, Alias.CHALLENGER, mv.version)
        registered = {"model_name": agent.name, "version": str(mv.version),
                      "model_uri": f"models:/{agent.name}/{mv.version}", "mlflow_run_id": run_id}
        return dg.MaterializeResult(value=registered, metadata={
            "model_name": agent.name,
            "version": str(mv.version),
            "model_uri": f"models:/{agent.name}/{mv.version}",
            "alias": str(Alias.CHALLENGER),
            "artifacts_sha256": registration.artifacts_sha256,
            "evaluation_report_sha256": registration.report_sha256,
            "approval_status": tags.get(STATUS_TAG, mv.tags.get(STATUS_TAG, "")),
            "mlflow_model_version": dg.MetadataValue.url(mlflow_store.model_version_url(agent.name, mv.version)),
            "mlflow_run_id": run_id,
        })

    return registered_version
