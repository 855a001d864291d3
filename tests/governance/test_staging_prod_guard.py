"""Staging and prod only through approval: every path that deploys there checks the pipeline's
records, on real serving processes. On the old code, materializing `deployment[prod]` through the
deploy job deployed any version with no approval, no audit entry and no alias move, and the run
carried no `agentops/environment` tag for the one-rollout-per-environment limit."""

import multiprocessing
from pathlib import Path

import pytest

from tests.helpers import AGENT, evaluate, register_versions


def deploy(defs, instance, environment, version):
    job = defs.resolve_job_def(f"{AGENT}_deploy_job")
    return job.execute_in_process(
        instance=instance, partition_key=environment, raise_on_error=False,
        run_config={"ops": {f"{AGENT}__deployment": {"config": {"version": version, "bake_seconds": 0.0}}}})


def failure(result) -> str:
    error = result.get_step_failure_events()[0].step_failure_data.error
    return error.message + str(error.cause)


@pytest.fixture
def versions(defs, reviewers):
    client = defs.resources["mlflow_store"].configure()
    audit = defs.resources["audit"].store
    reviewers.configure(["alice"])
    return client, audit, register_versions(defs.resources["mlflow_store"].tracking_uri, 2, audit=audit)


@pytest.mark.slow
def test_the_deploy_job_refuses_prod_and_staging_without_approval(defs, instance, versions):
    client, audit, (v1, _) = versions
    for environment in ("prod", "staging"):
        result = deploy(defs, instance, environment, v1)
        assert not result.success
        assert f"may not serve in {environment}" in failure(result) and "signed approval" in failure(result)
        assert result.dagster_run.tags["agentops/environment"] == environment
        assert defs.resources["deployer"].status(environment) is None
    refused = [(e.action, e.environment) for e in audit.entries(AGENT, version=v1)]
    assert ("deployment_refused", "prod") in refused and ("deployment_refused", "staging") in refused
    assert "champion" not in client.get_registered_model(AGENT).aliases


@pytest.mark.slow
def test_an_approved_version_deploys_to_prod_with_audit_and_alias(defs, instance, versions, reviewers, capsys):
    client, audit, (v1, _) = versions
    reviewers.decide(client, v1, "alice")
    evaluate(defs, instance, "approval_sensor")  # verifies the signature into the audit log
    result = deploy(defs, instance, "prod", v1)
    assert result.success, failure(result)
    assert defs.resources["deployer"].status("prod").version == v1
    assert str(client.get_registered_model(AGENT).aliases["champion"]) == v1
    promote = [e for e in audit.entries(AGENT, version=v1) if e.action == "promote"]
    assert promote and promote[-1].environment == "prod" and promote[-1].details["approvers"] == ["alice"]
    # `agentops status` says what serves where, since when and who approved it
    from agentops_pipelines.cli import main

    capsys.readouterr()
    assert main(["status"]) == 0
    prod_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("prod"))
    assert f"version {v1} at http://" in prod_line and "approved by alice" in prod_line


@pytest.mark.slow
def test_swapped_artifacts_void_the_approval(defs, instance, versions, reviewers):
    client, audit, (v1, _) = versions
    reviewers.decide(client, v1, "alice")
    evaluate(defs, instance, "approval_sensor")
    # someone with write access to the artifact store replaces the approved model's files
    source = client.get_model_version_download_uri(AGENT, v1)
    folder = Path(source.removeprefix("file://"))
    assert folder.is_dir(), f"the embedded artifact store is a local folder, not {source}"
    with (folder / "MLmodel").open("a") as f:
        f.write("\n# swapped\n")
    job = defs.resolve_job_def(f"{AGENT}_promotion_job")
    result = job.execute_in_process(instance=instance, raise_on_error=False, run_config={
        "ops": {f"{AGENT}_promote": {"config": {"version": v1, "target": "staging"}}}})
    assert not result.success and "changed since registration" in failure(result)
    assert defs.resources["deployer"].status("staging") is None


def _hold(store_args, name, ready, release):
    from agentops_pipelines.governance.audit_log import AuditStore

    store = AuditStore(*store_args)
    with store.exclusive(name, "holder-process"):
        ready.set()
        release.wait(30)


def test_one_rollout_per_environment_whoever_launches_it(tmp_path):
    """The rollout lock holds across processes: a second deploy to the same environment waits
    (here: gives up after 1 s), one to another environment does not."""
    from agentops_pipelines.governance.audit_log import AuditStore

    args = (f"sqlite:///{tmp_path}/audit.db", tmp_path / "audit.key", tmp_path / "anchor.jsonl", True)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(args, f"rollout:{AGENT}:prod", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        store = AuditStore(*args)
        waited = []
        with pytest.raises(TimeoutError, match="holder-process"):
            with store.exclusive(f"rollout:{AGENT}:prod", "me", timeout_s=1.0, on_wait=waited.append):
                pass
        assert waited and "holder-process" in waited[0]
        with store.exclusive(f"rollout:{AGENT}:staging", "me", timeout_s=1.0):
            pass
    finally:
        release.set()
        holder.join(30)
    with store.exclusive(f"rollout:{AGENT}:prod", "me", timeout_s=5.0):
        pass
