"""`agentops keygen|approve|reject|audit` as a reviewer runs them (real processes, real stores)."""

import os
import subprocess
import sys
import time

import pytest

from agentops_pipelines.cli import main
from agentops_pipelines.vocabulary import DECISION_TAG_PREFIX
from tests.helpers import AGENT, evaluate, promoted, register_versions


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "agentops_pipelines.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(home, tmp_path):
    out = tmp_path / "k" / "dana.pem"
    assert main(["keygen", "--reviewer", "dana", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in out.read_bytes()
    before = out.read_bytes()
    assert main(["keygen", "--reviewer", "dana", "--out", str(out)]) == 2
    assert out.read_bytes() == before
    assert main(["keygen", "--reviewer", "no spaces please", "--out", str(tmp_path / "x.pem")]) == 2


def test_a_non_approver_is_refused_at_the_cli_and_nothing_is_recorded(setup, reviewers, capsys):
    client, audit, uri = setup
    reviewers.configure(["alice", "bob"], require={"prod": 2})
    (v,) = register_versions(uri, 1, audit=audit)
    for command in ("approve", "reject"):
        assert main([command, AGENT, v, "--reviewer", "mallory"]) == 2
        err = capsys.readouterr().err
        assert "'mallory' is not an approver of support_agent" in err and "prod needs 2 of 2" in err
    assert main(["approve", AGENT, v, "--reviewer", "alice", "--key", str(reviewers.folder / "mallory.pem")]) == 2
    assert "is not the one registered for 'alice'" in capsys.readouterr().err
    tags = client.get_model_version(AGENT, v).tags
    assert not [k for k in tags if k.startswith(DECISION_TAG_PREFIX)]
    assert [e.action for e in audit.entries(AGENT, version=v)] == ["register"]


def test_a_rejection_cannot_flip_a_version_that_serves_in_prod(setup, reviewers, capsys):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    promoted(audit, v)
    assert main(["reject", AGENT, v, "--reviewer", "alice", "--comment", "changed my mind"]) == 2
    assert "serves in prod" in capsys.readouterr().err
    assert DECISION_TAG_PREFIX + "alice" not in client.get_model_version(AGENT, v).tags


@pytest.mark.slow
def test_approve_wait_follows_the_decision_to_its_outcome(defs, instance, setup, reviewers):
    """The reviewer's `approve --wait` process exits when the version serves where the policy
    allows (staging: prod needs a second approver), driven by the real sensor and job."""
    client, audit, uri = setup
    reviewers.configure(["alice", "bob"], require={"staging": 1, "prod": 2})
    (v,) = register_versions(uri, 1, audit=audit)
    waiting = subprocess.Popen([sys.executable, "-m", "agentops_pipelines.cli", "approve", AGENT, v,
                                "--reviewer", "alice", "--wait", "--timeout", "120"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline, requests = time.monotonic() + 60, []
        while not requests and time.monotonic() < deadline:  # the daemon's ticks
            time.sleep(1.0)
            requests, _, _ = evaluate(defs, instance, "approval_sensor")
        assert len(requests) == 1
        job = defs.resolve_job_def(f"{AGENT}_promotion_job")
        assert job.execute_in_process(instance=instance, run_config=requests[0].run_config,
                                      tags=requests[0].tags).success
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert "Signed: alice approved support_agent version" in out
    assert f"Done: version {v} serves in staging" in out and "Prod waits: prod needs 2" in out


def test_approve_wait_exits_non_zero_on_refusal(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    audit.record("freeze", AGENT, actor="drift_sensor", version=v, environment="prod", reason="drift 0.7")
    waiting = subprocess.Popen([sys.executable, "-m", "agentops_pipelines.cli", "approve", AGENT, v,
                                "--reviewer", "alice", "--wait", "--timeout", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while DECISION_TAG_PREFIX + "alice" not in client.get_model_version(AGENT, v).tags:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert evaluate(defs, instance, "approval_sensor")[0] == []
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1 and "REFUSED" in err and "frozen" in err


def test_audit_verify_and_served_history(setup, reviewers):
    client, audit, uri = setup
    (v,) = register_versions(uri, 1, audit=audit)
    promoted(audit, v)
    ok = cli("audit", AGENT, "--served")
    assert ok.returncode == 0, ok.stderr
    assert f"prod     v{v}" in ok.stdout and "approved by alice" in ok.stdout
    assert "MAC chain intact" in ok.stdout
    import sqlite3

    conn = sqlite3.connect(audit.url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("DROP TRIGGER agentops_audit_log_no_update")
    bad = cli("audit")
    assert bad.returncode == 1 and "AUDIT LOG NOT INTACT" in bad.stderr


def test_status_presents_only_figures_the_pipeline_recorded(setup, capsys):
    """Anyone with MLflow write access can set a model-version tag: `status` shows the evaluation
    figures the registration recorded in the verified audit log, and marks a forged or
    unbacked figure, and the shadow verdict (a serving process writes it), as unverified."""
    from agentops_pipelines.governance.approvals import record_registration
    from agentops_pipelines.vocabulary import ShadowTag

    client, audit, uri = setup
    recorded, unrecorded = register_versions(uri, 2, audit=audit)
    # the registry asset's record and view of version `recorded`: its figures in both
    run_id = client.get_model_version(AGENT, recorded).run_id
    record_registration(client, audit, AGENT, recorded, run_id, gate_passed=True,
                        actor="registered_version:fixture", metrics={"eval_accuracy": "0.9100"})
    client.set_model_version_tag(AGENT, recorded, "eval_accuracy", "0.9100")
    promoted(audit, recorded)  # the promotion job's record, and its view
    client.set_model_version_tag(AGENT, recorded, "approval_status", "promoted")
    assert main(["status"]) == 0
    honest = capsys.readouterr().out
    assert f"v{recorded}: promoted; accuracy 0.9100; run" in honest and "unverified" not in honest

    # forged: a better figure on both versions, an approval nobody signed, and a shadow verdict
    # nobody measured
    for version in (recorded, unrecorded):
        client.set_model_version_tag(AGENT, version, "eval_accuracy", "0.9999")
    client.set_model_version_tag(AGENT, unrecorded, "approval_status", "approved for prod")
    for key, value in {ShadowTag.PRIMARY: recorded, ShadowTag.VERDICT: "better", ShadowTag.REQUESTS: "5000",
                       ShadowTag.CHALLENGER_PASS: "0.99", ShadowTag.PRIMARY_PASS: "0.5",
                       ShadowTag.MCNEMAR_P: "0.0001"}.items():
        client.set_model_version_tag(AGENT, unrecorded, key, value)
    assert main(["status"]) == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines()
             if line.strip().startswith("v")}
    assert "accuracy 0.9100 (tag eval_accuracy=0.9999: unverified: set outside the pipeline)" in lines[f"v{recorded}"]
    forged = lines[f"v{unrecorded}"]
    assert forged.startswith(f"  v{unrecorded}: approved for prod (unverified: set outside the pipeline)")
    assert "accuracy 0.9999 (unverified: set outside the pipeline)" in forged
    assert "shadow (unverified: set outside the pipeline) vs v" in forged
    assert all("0.9999;" not in line for line in lines.values())  # never shown as a plain figure
