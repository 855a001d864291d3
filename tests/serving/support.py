"""Helpers shared by the serving tests: fake models, bodies, an HTTP client, the test registry."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from agentops_pipelines.serving.batching import Batcher
from agentops_pipelines.serving.handlers import handle_metrics
from agentops_pipelines.serving.models import LoadedModel
from agentops_pipelines.serving.state import ServingState

JSON = "application/json"
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


ROWS = [
    {"text": "Where is my order?", "customer_id": "C1"},
    {"text": "My password does not work", "customer_id": "C2"},
]


BODIES = {
    "dataframe_split": (
        JSON,
        json.dumps(
            {
                "dataframe_split": {
                    "columns": ["text", "customer_id"],
                    "data": [list(r.values()) for r in ROWS],
                }
            }
        ),
    ),
    "dataframe_records": (JSON, json.dumps({"dataframe_records": ROWS})),
    "instances": (JSON, json.dumps({"instances": ROWS})),
    "inputs": (JSON, json.dumps({"inputs": {k: [r[k] for r in ROWS] for k in ROWS[0]}})),
    "csv": ("text/csv", pd.DataFrame(ROWS).to_csv(index=False)),
}


def fake(version: str, predict=None, **kwargs) -> LoadedModel:
    def default(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"tool": ["x"] * len(df), "answer": [version] * len(df)})

    return LoadedModel(
        model_uri=f"models:/fake/{version}", version=version, predict=predict or default, **kwargs
    )


def loader(models: dict[str, LoadedModel]):
    def load(uri: str, version: str) -> LoadedModel:
        if uri not in models:
            raise FileNotFoundError(f"no model at {uri}")
        return models[uri]

    return load


def records(*rows: dict) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()


def header_of(response, name: str) -> str | None:
    return dict(response.headers).get(name)


def metric_samples(state: ServingState) -> dict[tuple, float]:
    """{(name, sorted label items): value} from the /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(handle_metrics(state).body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_value(samples, name: str, **labels) -> float:
    matches = [
        v
        for (n, items), v in samples.items()
        if n == name and labels.items() <= dict(items).items()
    ]
    return sum(matches)


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


def gate_infer(calls: list, gate: threading.Event | None = None):
    def infer(frame: pd.DataFrame):
        calls.append(len(frame))
        if gate is not None:
            gate.wait(5)
        if (frame["text"] == "boom").any():
            raise ValueError("boom")
        out = pd.DataFrame({"echo": frame["text"].tolist()})
        return out, frame

    return infer


def submit_all(batcher: Batcher, texts: list[str], columns: dict | None = None) -> dict:
    results: dict[str, object] = {}

    def one(text: str) -> None:
        try:
            frame = pd.DataFrame({"text": [text], **(columns or {})})
            results[text] = batcher.predict(frame)[0]["echo"].tolist()
        except Exception as e:
            results[text] = e

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    return results, threads


MODEL_CODE = """
import time

import mlflow
import pandas as pd


class Router(mlflow.pyfunc.PythonModel):
    agent_name = "test_agent"

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = [str(t) for t in model_input["text"]]
        if "boom" in texts:
            raise ValueError("the model cannot route 'boom'")
        if "slow" in texts:
            time.sleep(1.0)
        tool = [{tool_rule} for t in texts]
        return pd.DataFrame({{"tool": tool, "confidence": [0.9] * len(texts), "answer": ["{answer}"] * len(texts)}})


mlflow.models.set_model(Router())
"""


MODEL_NAME = "support-agent-test"
OTHER_AGENT = "other-agent-test"


RULES = {
    "1": "'track_order' if 'order' in t.lower() else 'other'",
    "2": "'track_order' if 'order' in t.lower() else 'reset_password' if 'password' in t.lower() else 'other'",
}


def log_test_models(folder: Path, name: str = MODEL_NAME) -> dict[str, str]:
    """Register the tiny router (versions "1" and "2", failing on the text 'boom') in the MLflow
    store the tracking URI points at; returns {version: model URI}."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    found = mlflow.get_experiment_by_name("serving-test")
    experiment = found.experiment_id if found else mlflow.create_experiment(
        "serving-test", artifact_location=str(folder / "artifacts")
    )
    signature = ModelSignature(
        inputs=Schema(
            [ColSpec("string", "text"), ColSpec("string", "customer_id", required=False)]
        ),
        outputs=Schema(
            [
                ColSpec("string", "tool"),
                ColSpec("double", "confidence"),
                ColSpec("string", "answer"),
            ]
        ),
    )
    for version, rule in RULES.items():
        code = folder / f"{name}_router_v{version}.py"
        code.write_text(MODEL_CODE.format(tool_rule=rule, answer=f"v{version}"))
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                signature=signature,
                pip_requirements=["pandas"],
                registered_model_name=name,
            )
    return {v: f"models:/{name}/{v}" for v in RULES}


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers=(headers or {}) | ({"Content-Type": content_type} if content_type else {}),
        )
        response = conn.getresponse()
        raw = response.read()
        decoded = json.loads(raw) if "json" in (response.getheader("Content-Type") or "") else raw
        return response.status, response.headers, decoded  # case-insensitive names
    finally:
        conn.close()


def scrape(url: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, raw = request(url, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(raw.decode())
        for s in family.samples
    }


class Server:
    """A serving process started directly (``python -m agentops_pipelines.serving``) with the
    flags a test needs; its URL from the state file it writes."""

    def __init__(self, folder: Path, model_uri: str, version: str, *flags: str,
                 token: str | None = TOKEN, env: dict[str, str] | None = None, wait: bool = True,
                 tracing: bool = False):
        folder.mkdir(parents=True, exist_ok=True)
        self.state_file = folder / "state.json"
        self.log_file = folder / "server.log"
        command = [sys.executable, "-m", "agentops_pipelines.serving", "--model-uri", model_uri,
                   "--version", version, "--environment", "test", "--state-file",
                   str(self.state_file), *([] if tracing else ["--no-tracing"]), *flags]
        child_env = {k: v for k, v in os.environ.items() if k != "AGENTOPS_SERVING_ADMIN_TOKEN"}
        if token is not None:
            token_file = folder / "admin-token"
            token_file.write_text(token)
            token_file.chmod(0o600)
            command += ["--admin-token-file", str(token_file)]
        child_env.update(env or {})
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=child_env)
        self.url = ""
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                state = json.loads(self.state_file.read_text())
                if state.get("status") == "serving":
                    self.url = state["url"]
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not serve in time:\n{self.log()}")

    def exit_code(self, timeout: float = 60.0) -> int:
        """How a server that must refuse to start ended; it is never left running."""
        try:
            return self.process.wait(timeout)
        finally:
            self.process.kill()

    @property
    def port(self) -> int:
        return urlsplit(self.url).port

    def log(self) -> str:
        try:
            return self.log_file.read_text()
        except OSError:
            return ""

    def threads(self) -> int:
        return int(
            next(line for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
                 if line.startswith("Threads:")).split()[1]
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
