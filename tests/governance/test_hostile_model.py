"""A data scientist's model is code: re-evaluating it must not hand that code the governance.

An MLflow run logs a hostile agent (models from code) whose ``load_context`` and ``predict`` try
to (a) read, exfiltrate and overwrite the audit log's MAC key, (b) read secrets from the
environment, (c) forge a gate tag in the MLflow store, (d) open a TCP connection to Postgres at
127.0.0.1:5432. The ``mlflow_run_sensor`` picks the run up and the re-evaluation job runs for
real (MLflow on SQLite, the lake, the audit log, a Dagster instance). Every attempt fails inside
the model's sandbox; the key is unchanged, no forged tag exists, nothing leaked.
"""

import hashlib
import json

import mlflow
import pytest

from agentops_pipelines.sandbox import landlock
from tests.helpers import AGENT, evaluate, run_job
from tests.test_reevaluation_overlap import training_set

pytestmark = pytest.mark.skipif(landlock.abi_version() < 4, reason="needs Landlock ABI 4+ (files and TCP)")

SECRETS = {"DAGSTER_PG_PASSWORD": "pg-secret", "AGENTOPS_SOR_URL": "postgresql://sor:sor-secret@db/sor"}

HOSTILE = '''
import json, os, socket
from pathlib import Path

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

KEY_FILE, TRACKING_URI, LEAKS, RAISE = {key_file!r}, {tracking_uri!r}, Path({leaks!r}), {raise_report!r}
REPORT = {{}}


def attempt(name, action):
    try:
        REPORT[name] = "GOT " + str(action())[:60]
    except Exception as exc:
        REPORT[name] = "denied: " + type(exc).__name__


def leak(name, value):
    LEAKS.mkdir(parents=True, exist_ok=True)
    (LEAKS / name).write_text(str(value))
    return value


def forge_tags():  # straight into MLflow's SQLite store (its client retries a locked-out file for minutes)
    import sqlite3

    db = sqlite3.connect(TRACKING_URI.removeprefix("sqlite:///"))
    with db:
        runs = [(r,) for (r,) in db.execute("SELECT run_uuid FROM runs")]
        db.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) "
                       "VALUES ('agentops.evaluation_gate', 'passed', ?)", runs)
    return len(runs)


def postgres():
    with socket.create_connection(("127.0.0.1", 5432), timeout=3):
        return "connected"


class Hostile(PythonModel):
    def load_context(self, context):
        attempt("read_key", lambda: leak("key", Path(KEY_FILE).read_bytes().hex()))
        secrets = [k for k in os.environ if "PASSWORD" in k or k.startswith(("AGENTOPS_AUDIT", "AGENTOPS_SOR", "MLFLOW_TRACKING"))]
        attempt("environ", lambda: leak("environ", secrets) if secrets else (_ for _ in ()).throw(LookupError()))

    def predict(self, context, model_input, params=None):
        if "postgres" not in REPORT:  # once: the evaluation calls predict for each latency sample too
            attempt("overwrite_key", lambda: Path(KEY_FILE).write_bytes(b"mallory"))
            attempt("forge_tag", forge_tags)
            attempt("postgres", postgres)
        if RAISE:
            raise RuntimeError("ATTACKS " + json.dumps(REPORT, sort_keys=True))
        n = len(model_input)
        return pd.DataFrame({{"tool": ["track_order"] * n, "confidence": [0.5] * n}})


set_model(Hostile())
'''


@pytest.fixture
def hostile(defs, instance, home, tmp_path, monkeypatch):
    """``log(raise_report)``: log the hostile agent (``raise_report``: its predict raises with
    what it got) as a run of the agent's experiment; returns its run id and the run config the
    ``mlflow_run_sensor`` requests for it. Also the audit key file and the leak folder."""
    from agentops_pipelines.resources.settings import load_settings

    key = load_settings().audit_key_file
    store = defs.resources["mlflow_store"]
    for name, value in {**SECRETS, "AGENTOPS_AUDIT_KEY_FILE": str(key), "MLFLOW_TRACKING_URI": store.tracking_uri}.items():
        monkeypatch.setenv(name, value)
    audit = defs.resources["audit"]
    audit.record("freeze", "another_agent", actor="test", reason="the first entry makes the key (local mode)")
    store.configure()
    training_set(defs.resources["lake"])
    leaks = tmp_path / "leaks"

    def log(raise_report: bool):
        code = tmp_path / f"hostile_{raise_report}.py"
        code.write_text(HOSTILE.format(key_file=str(key), tracking_uri=store.tracking_uri, leaks=str(leaks),
                                       raise_report=raise_report))
        with mlflow.start_run(experiment_id=store.experiment_id(AGENT), run_name="hostile") as run:
            mlflow.pyfunc.log_model(name="agent", python_model=str(code), pip_requirements=["mlflow"])
        requests, _, _ = evaluate(defs, instance, "mlflow_run_sensor")
        (request,) = [r for r in requests if r.run_key == run.info.run_id]
        return run.info.run_id, request.run_config

    return log, key, leaks, audit


def quick(run_config) -> dict:
    """The sensor's run config, with small samples (the attacks run at load and on every predict)."""
    ops = run_config["ops"]
    ops[f"{AGENT}__evaluation_report"]["config"] |= {"evidently_report": False, "latency_samples": 3}
    ops[f"{AGENT}__trajectory_evaluation"]["config"] |= {"cases": 20, "compare_champion": False}
    return run_config


def forged_tags(tracking_uri: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r.info.run_id for r in runs if r.data.tags.get("agentops.evaluation_gate") == "passed"]


@pytest.mark.slow
def test_each_attack_of_a_hostile_model_fails_inside_its_sandbox(defs, instance, hostile):
    log, key, leaks, audit = hostile
    before = hashlib.sha256(key.read_bytes()).hexdigest()
    run_id, config = log(raise_report=True)

    result = run_job(defs, instance, "reevaluation", run_config=quick(config))

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure and "evaluation_report" in e.step_key]
    error = failure.step_failure_data.error
    message = "\n".join(e.message for e in (error, error.cause) if e is not None)
    report = json.loads(message.rsplit("ATTACKS ", 1)[1].splitlines()[0])
    assert report == {"read_key": "denied: PermissionError", "environ": "denied: LookupError",
                      "overwrite_key": "denied: PermissionError", "forge_tag": report["forge_tag"],
                      "postgres": "denied: PermissionError"}
    assert report["forge_tag"].startswith("denied:")
    assert f"candidate run {run_id}: the model's process exited with 1" in message
    assert hashlib.sha256(key.read_bytes()).hexdigest() == before
    assert forged_tags(defs.resources["mlflow_store"].tracking_uri) == []
    assert not leaks.exists()
    assert audit.verify().ok and [e.action for e in audit.entries()] == ["freeze"]


@pytest.mark.slow
def test_a_hostile_model_is_evaluated_on_its_outputs_and_steals_nothing(defs, instance, hostile):
    from tests.helpers import metadata

    log, key, leaks, audit = hostile
    before = hashlib.sha256(key.read_bytes()).hexdigest()
    run_id, config = log(raise_report=False)

    run_job(defs, instance, "reevaluation", run_config=quick(config))

    report = metadata(instance, "evaluation_report")
    assert report["candidate_run_id"] == run_id and report["sandbox"] == "landlock+seccomp"
    assert report["gate_passed"] is False  # it answers track_order to everything
    assert metadata(instance, "trajectory_evaluation")["applicable"] is False  # it wraps no router
    assert hashlib.sha256(key.read_bytes()).hexdigest() == before
    assert forged_tags(defs.resources["mlflow_store"].tracking_uri) == []
    assert not leaks.exists()
    assert audit.verify().ok and [e.action for e in audit.entries()] == ["freeze"]
