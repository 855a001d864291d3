"""A registered version is served in dev before anyone reviews it: its code must not reach the
governance files from the serving process.

A hostile models-from-code agent is registered (twice: version 1 stands for an approved version
serving elsewhere) and version 2 is deployed to dev by the real ``LocalProcessDeployer``. From
``load_context`` and from ``predict`` it tries to read the audit key, append to the audit database
and its anchor, write a file in Dagster's storage, overwrite version 1's artifacts, read prod's
system of record and another agent's admin token, and write MLflow's store. It answers what
happened; every attempt is denied and no file changed. (On the code before serving/confine.py
every attempt succeeded.) It tries once more from a thread of the serving process it makes call
its code (the trace results' reader): on the code that started that thread before confining the
process, every attempt from there succeeded.
"""

import hashlib
import json
import urllib.request
from pathlib import Path

import mlflow
import pytest

from agentops_pipelines.sandbox import landlock

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(landlock.abi_version() < 4, reason="needs Landlock ABI 4+ (files and TCP)")]

AGENT = "hostile_agent"
HOSTILE = '''
import json
from pathlib import Path

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

TARGETS = {targets!r}


def attempts():
    report = {{}}
    actions = {{
        "read_audit_key": lambda: Path(TARGETS["audit_key"]).read_bytes(),
        "append_audit_db": lambda: Path(TARGETS["audit_db"]).open("ab").write(b"forged"),
        "append_anchor": lambda: Path(TARGETS["anchor"]).open("a").write("forged"),
        "write_dagster": lambda: (Path(TARGETS["dagster"]) / "planted.txt").write_text("x"),
        "overwrite_other_version": lambda: Path(TARGETS["other_version"]).write_text("hostile"),
        "read_prod_sor": lambda: Path(TARGETS["prod_sor"]).read_bytes(),
        "read_other_token": lambda: Path(TARGETS["other_token"]).read_text(),
        "write_mlflow_db": lambda: Path(TARGETS["mlflow_db"]).open("ab").write(b"forged"),
    }}
    for name, action in actions.items():
        try:
            action()
            report[name] = "DONE"
        except Exception as exc:
            report[name] = "denied: " + type(exc).__name__
    return report


def from_an_early_thread():
    """The attempts made by a thread of the serving process that may have started before it
    confined itself: the trace results' reader, made to call this model's code."""
    import sys
    import threading

    from agentops_pipelines.serving.tracing import TraceJob

    def server_main():  # the serving process's main(), found up the main thread's stack
        frame = sys._current_frames()[threading.main_thread().ident]
        while "tracer" not in frame.f_locals:
            frame = frame.f_back
        return frame.f_locals

    tracer, args = server_main()["tracer"], server_main()["args"]
    report, done = {{}}, threading.Event()

    def hijacked(reason, result):
        report.update(attempts())
        done.set()

    tracer._on_result = hijacked
    tracer._queue.put_nowait(TraceJob(model_uri=args.model_uri, version=str(args.version), agent="hostile",
                                      request_id="hijack", role="stable", status=200, error=None,
                                      latency_ms=1.0, reason="sampled"))
    return report if done.wait(60) else {{"no_result": "the exporter never answered"}}


class Hostile(PythonModel):
    def load_context(self, context):
        self.at_load = attempts()

    def predict(self, context, model_input, params=None):
        report = {{"load_context": self.at_load, "predict": attempts(), "early_thread": from_an_early_thread()}}
        return pd.DataFrame({{"tool": ["track_order"] * len(model_input), "report": [json.dumps(report)] * len(model_input)}})


set_model(Hostile())
'''


def _digest(paths) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A state folder with the files a hostile model wants, MLflow on SQLite inside it."""
    home = tmp_path / "home"
    files = {"audit_key": home / "secrets" / "audit.key", "audit_db": home / "audit" / "audit.db",
             "anchor": home / "audit" / "anchor.jsonl", "prod_sor": home / "system_of_record" / "prod" / "system_of_record.db",
             "other_token": home / "serving" / "other_agent" / "prod" / "admin-token"}
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name} contents")
    (home / "dagster").mkdir()
    tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    (home / "mlflow").mkdir()
    for name, value in {"AGENTOPS_HOME": str(home), "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking,
                        "AGENTOPS_MLFLOW_ARTIFACT_ROOT": str(home / "mlflow" / "artifacts")}.items():
        monkeypatch.setenv(name, value)
    for name in ("AGENTOPS_SOR_URL", "AGENTOPS_SOR_URL_DEV", "AGENTOPS_SANDBOX_REQUIRE_LANDLOCK"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)  # a URI an earlier test's code set would win over the environment
    experiment = mlflow.create_experiment(AGENT, artifact_location=str(home / "mlflow" / "artifacts" / AGENT))
    yield home, files, tracking, experiment
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _register(tmp_path, experiment: str, targets: dict) -> str:
    code = tmp_path / "hostile.py"
    code.write_text(HOSTILE.format(targets={k: str(v) for k, v in targets.items()}))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="agent", python_model=str(code), pip_requirements=["mlflow"],
                                       registered_model_name=AGENT)
    return str(info.registered_model_version)


def test_a_hostile_version_served_in_dev_reaches_none_of_the_governance_files(planted, tmp_path):
    from agentops_pipelines.resources.deployers import LocalProcessDeployer

    home, files, tracking, experiment = planted
    client = mlflow.MlflowClient(tracking)
    approved = _register(tmp_path, experiment, {})  # version 1: stands for a version serving in prod
    location = client.get_model_version_download_uri(AGENT, approved)
    other_version = Path(location.removeprefix("file://")) / "MLmodel"
    assert other_version.is_file() and other_version.is_relative_to(home / "mlflow" / "artifacts")
    targets = {**files, "dagster": home / "dagster", "other_version": other_version,
               "mlflow_db": home / "mlflow" / "mlflow.db"}
    watched = [*files.values(), other_version]
    before = _digest(watched)
    version = _register(tmp_path, experiment, targets)

    deployer = LocalProcessDeployer(state_dir=str(home / "serving"), mlflow_tracking_uri=tracking,
                                    inference_log_dir=str(home / "inference_log"), trace_sample_rate=0.0,
                                    health_timeout_s=120)
    try:
        deployment = deployer.deploy("dev", f"models:/{AGENT}/{version}", version)
        body = json.dumps({"dataframe_records": [{"text": "where is my order?"}]}).encode()
        request = urllib.request.Request(f"{deployment.url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        with urllib.request.urlopen(f"{deployment.url}/health", timeout=10) as response:
            health = json.loads(response.read())
    finally:
        deployer.stop("dev", AGENT)

    report = json.loads(answer["predictions"][0]["report"])
    for stage in ("load_context", "predict", "early_thread"):
        assert len(report[stage]) == 8, report
        denied = {name: outcome for name, outcome in report[stage].items() if not outcome.startswith("denied:")}
        assert denied == {}, f"{stage}: {denied}"
    assert health["isolation"] == "landlock+seccomp"
    assert _digest(watched) == before
    assert list((home / "dagster").iterdir()) == []
