"""``trajectory_evaluation``: the candidate (and the champion) on golden trajectories, and its gate.

Beside ``evaluation_report`` (tool labels on held-out requests), this asset runs whole execution
paths: each golden case goes through the executor with the candidate's router, tools really run
against a fresh copy of the seeded system of record, and six code scorers judge the path (see
``agentops_pipelines/trajectory_gate.py``). Results per scorer, per tool, per step and per
scenario go to the candidate's MLflow run (metrics ``trajectory_<scorer>``; tables and an HTML
report under ``evaluation/trajectory/``, inside the folder approvals bind to) and to the asset's
metadata. The blocking check ``trajectory_gate`` on this asset holds the minimums; registration
waits on it.
"""

import json
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.assets.checks import build_gate_check, gate_record
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.feast import FeastResource
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER
from agentops_pipelines.resources.llm import LLMEndpointResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.resources.sandbox import ModelSandbox

ARTIFACTS = "evaluation/trajectory"


class TrajectoryConfig(dg.Config):
    candidate_run_id: str = Field(default="", description="MLflow run to evaluate; default: the latest trained_agent")
    cases: int = Field(default=520, ge=1, le=5000, description="golden cases (one customer each)")
    compare_champion: bool = Field(default=True, description="also run the champion on the same cases")
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="McNemar significance level on whole cases")
    min_tool_choice: float = Field(default=0.90, ge=0.0, le=1.0)
    min_argument_correctness: float = Field(default=0.90, ge=0.0, le=1.0)
    min_steps_taken: float = Field(default=0.90, ge=0.0, le=1.0)
    min_policy_compliance: float = Field(default=1.0, ge=0.0, le=1.0)
    min_outcome_match: float = Field(default=0.90, ge=0.0, le=1.0)
    min_answer_check: float = Field(default=0.85, ge=0.0, le=1.0)
    llm_judge: bool = Field(default=False, description="also score answer relevance with the LLM judge on "
                                                       "the configured endpoint (AGENTOPS_LLM_*)")

    def minimums(self) -> dict[str, float]:
        return {name.removeprefix("min_"): value for name, value in self.model_dump().items()
                if name.startswith("min_")}


def _feature_lookup(feast: FeastResource, customer_ids: list[str], log):
    """The customers' online features, looked up once (the served model's lookup); None, and a
    warning, when the store is not there (the router then reads neutral values)."""
    try:
        found = feast.online_feature_columns(sorted(set(customer_ids)))
    except Exception as exc:  # noqa: BLE001 - evaluation without features beats no evaluation
        log.warning("online features unavailable (%s: %s): the routers read neutral values", type(exc).__name__, exc)
        return None
    index = {cid: i for i, cid in enumerate(found["customer_id"])}
    names = [n for n in found if n != "customer_id"]
    return lambda ids: {n: [found[n][index[i]] for i in ids if i in index] for n in names}


def _route(model_uri: str, what: str, cases, features: dict, policy, *, champion: bool = False):
    """The model's decisions on the golden cases, made in its sandbox (never in this process:
    model code could read the audit key and forge a gate); a Failure naming ``what`` if that fails.
    The candidate decides only if the cases apply to it; the champion always (it is compared)."""
    from agentops_pipelines.sandbox import SandboxError, route

    expected = () if champion else sorted({c.expected["tool"] for c in cases})
    try:
        return route(model_uri, [(c.text, features[c.case_id]) for c in cases], expected, policy)
    except SandboxError as exc:
        raise dg.Failure(f"{what}: {exc}") from None


def _evaluate(routed, what: str, cases, features: dict, template: Path, name: str, judges):
    """The golden cases through the executor on the model's sandboxed decisions."""
    from agentops_pipelines import trajectory_gate as tg

    if not routed.router or routed.decisions is None:
        raise dg.Failure(f"{what}: {'it wraps no router' if not routed.router else 'no decisions on cases that apply to it'}")
    decided = dict(zip((c.case_id for c in cases), routed.decisions, strict=True))
    return tg.evaluate_decided(decided, features, cases, template, name, judges)


def baseline_model(agent: Agent) -> str:
    """The registered model whose champion a candidate is compared with: the agent's own, or the
    one it names as ``baseline_agent`` (an LLM agent against the trained router it would replace)."""
    return getattr(agent, "baseline_agent", None) or agent.name


def build_trajectory_asset(agent: Agent, trained: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key_prefix=[agent.name], name="trajectory_evaluation", group_name=agent.name,
        ins={"trained": dg.AssetIn(trained.key, input_manager_key=LAKE_IO_MANAGER)},
        io_manager_key=LAKE_IO_MANAGER, kinds={"mlflow", "html"}, code_version=source_version(__name__),
        description="Golden trajectories (tool sequences, arguments, outcomes, policy cases) run through "
                    "the executor against a fresh copy of the system of record, candidate and champion; "
                    "per scorer, per tool, per step and per scenario, in MLflow and here.",
    )
    def trajectory_evaluation(context: dg.AssetExecutionContext, config: TrajectoryConfig, trained: dict | None,
                              mlflow_store: MlflowResource, feast: FeastResource,
                              llm: LLMEndpointResource, audit: AuditLog, sandbox: ModelSandbox) -> dg.MaterializeResult:
        from agentops_pipelines import trajectory_gate as tg
        from agentops_pipelines.agent.llm.judge import judges_for
        from agentops_pipelines.agent.trajectory import features_of
        from agentops_pipelines.assets.evaluation import champion_version

        client = mlflow_store.configure()
        run_id = config.candidate_run_id or (trained or {}).get("mlflow_run_id")
        if not run_id:
            raise dg.Failure("no candidate: materialize trained_agent or set candidate_run_id")
        if config.llm_judge and llm.endpoint() is None:
            raise dg.Failure("llm_judge needs an endpoint: set AGENTOPS_LLM_BASE_URL (README, 'LLM agents')")
        judges = judges_for(llm.endpoint() if config.llm_judge else None)  # none unless asked for
        baseline = baseline_model(agent)
        policy = sandbox.policy(agent)
        with tempfile.TemporaryDirectory(prefix="agentops-trajectory-") as tmp:
            template = tg.seeded_template(Path(tmp))
            cases = tg.golden_cases_from(template, config.cases)
            # Features are looked up here and handed to the model: its sandbox reaches no store.
            lookup = _feature_lookup(feast.for_agent(agent.name), [c.customer_id for c in cases], context.log)
            features = {c.case_id: features_of(lookup, c.customer_id) for c in cases}
            routed = _route(f"runs:/{run_id}/agent", f"candidate run {run_id}", cases, features, policy)
            # A model logged outside the pipeline may not wrap a router: nothing to run paths with.
            reason = ("the model wraps no router" if not routed.router
                      else tg.applicable_labels(routed.labels, [c.expected["tool"] for c in cases]))
            if reason:
                client.set_tag(run_id, "agentops.trajectory_gate", "not_applicable")
                reasons = [f"not applicable: {reason}"]
                return dg.MaterializeResult(value=gate_record(run_id, True, reasons, "none", {}, {}), metadata={
                    "candidate_run_id": run_id, "applicable": False, "gate_passed": True,
                    "gate_reasons": dg.MetadataValue.json(reasons), "sandbox": routed.isolation})
            cand = _evaluate(routed, f"candidate run {run_id}", cases, features, template, "candidate", judges)
            champ, champ_mv = None, champion_version(client, baseline, audit) if config.compare_champion else None
            if champ_mv is not None and champ_mv.run_id != run_id:
                what = f"champion {baseline} v{champ_mv.version}"
                champ_routed = _route(f"models:/{baseline}/{champ_mv.version}", what, cases, features, policy,
                                      champion=True)
                champ = _evaluate(champ_routed, what, cases, features, template, "champion", judges)
        result = tg.verdict(cand, champ, config.minimums(), config.alpha)
        fails = tg.failures(cand)
        title = f"{agent.name}: trajectories of run {run_id}" + (
            f" against {baseline} v{champ_mv.version}" if champ is not None else "")
        for scorer, mean in cand.per_scorer.set_index("scorer")["mean"].items():
            client.log_metric(run_id, f"trajectory_{scorer}", float(mean))
        for name, table in {"cases": cand.cases, "per_scorer": result.comparison, "per_tool": cand.per_tool,
                            "per_step": cand.per_step, "failures": fails}.items():
            client.log_table(run_id, table, artifact_file=f"{ARTIFACTS}/{name}.json")
        if champ is not None:
            client.log_table(run_id, champ.cases, artifact_file=f"{ARTIFACTS}/champion_cases.json")
        summary = {"candidate_run_id": run_id, "cases": len(cases), "gate_passed": result.passed,
                   "gate_reasons": result.reasons, "minimums": config.minimums(),
                   "champion": f"{baseline} v{champ_mv.version}" if champ is not None else None,
                   "mcnemar": result.test, "seconds": cand.seconds}
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "report.html").write_text(tg.render_html(title, result, cand, champ))
            (Path(tmp) / "summary.json").write_text(json.dumps(summary, default=str))
            client.log_artifacts(run_id, tmp, ARTIFACTS)
        client.set_tag(run_id, "agentops.trajectory_gate", "passed" if result.passed else "failed")
        url = mlflow_store.run_url(client.get_run(run_id).info.experiment_id, run_id)
        context.log.info("trajectory evaluation of %s: %s (%s)", run_id, "passed" if result.passed else
                         "failed: " + "; ".join(result.reasons), url)
        numbers = {f"trajectory_{r.scorer}": round(float(r.candidate), 4) for r in result.comparison.itertuples()}
        numbers["mcnemar_p_value"] = round(result.test["p_value"], 4) if result.test else 1.0
        champion = f"{baseline} v{champ_mv.version}" if champ is not None else "none"
        per_scorer = tg.markdown(result.comparison)
        record = gate_record(run_id, result.passed, result.reasons, champion, numbers, {"per_scorer": per_scorer})
        metadata = {
            "candidate_run_id": run_id, "applicable": True, "cases": len(cases), **numbers,
            "champion_version": champion, "sandbox": routed.isolation,
            "gate_passed": result.passed,
            **{f"{name}_judge_calls": judge.calls for name, judge in judges.items()},
            **{f"{name}_judge_failures": judge.failures for name, judge in judges.items()},
            "gate_reasons": dg.MetadataValue.json(result.reasons),
            "minimums": dg.MetadataValue.json(config.minimums()),
            "per_scorer": dg.MetadataValue.md(per_scorer),
            "per_tool": dg.MetadataValue.md(tg.markdown(cand.per_tool)),
            "per_step": dg.MetadataValue.md(tg.markdown(cand.per_step)),
            "failures": dg.MetadataValue.md(tg.markdown(fails[fails["failed"] > 0])),
            "seconds": round(cand.seconds["run"] + cand.seconds["score"], 2),
            "report": dg.MetadataValue.url(f"{url}/artifacts/{ARTIFACTS}/report.html"),
            "mlflow_run": dg.MetadataValue.url(url),
        }
        return dg.MaterializeResult(value=record, metadata=metadata)

    return trajectory_evaluation


def build_trajectory_gate(trajectory: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    return build_gate_check(
        trajectory, "trajectory_gate", missing="no trajectory evaluation yet",
        description="Every trajectory scorer meets its minimum (the asset's config: min_*) and the "
                    "candidate is not significantly worse than the champion on whole cases (McNemar). "
                    "Registration waits on it.")
