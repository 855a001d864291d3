"""`agentops`: the dev stack starts as Dagster 1.13 recommends, links follow --mlflow-port, Ctrl-C
stops it cleanly; argument errors name the valid range."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

AGENTOPS = str(Path(sys.executable).with_name("agentops"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["data"]


RESOURCE = """{ topLevelResourceDetailsOrError(resourceSelector: {repositoryLocationName: "agentops_pipelines",
  repositoryName: "__repository__", resourceName: "mlflow_store"}) {
  ... on ResourceDetails { configuredValues { key value } } } }"""


@pytest.mark.slow
def test_dev_starts_quietly_links_follow_the_port_and_ctrl_c_is_clean(home, tmp_path):
    port, mlflow_port = free_port(), free_port()
    env = dict(os.environ, AGENTOPS_HOME=str(home))
    env.pop("DAGSTER_HOME", None)
    env.pop("AGENTOPS_MLFLOW_UI_URL", None)
    log = tmp_path / "dev.log"
    with open(log, "w") as out:
        # as from a terminal, SIGINT handled: a shell's background job (e.g. `bash .ci/run &`)
        # ignores SIGINT, an ignored signal is inherited, and Ctrl-C would never arrive
        proc = subprocess.Popen([AGENTOPS, "dev", "--port", str(port), "--mlflow-port", str(mlflow_port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 180
        values = None
        while time.time() < deadline and proc.poll() is None:
            try:
                details = graphql(port, RESOURCE)["topLevelResourceDetailsOrError"]
                values = {v["key"]: v["value"] for v in details.get("configuredValues", [])}
                if values:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert values, log.read_text()[-3000:]
        assert json.loads(values["ui_url"]) == f"http://127.0.0.1:{mlflow_port}"
        while True:  # the MLflow UI that the links point to is there
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=10) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "superseded" not in text and "dg dev" not in text.replace("`dg dev`", ""), text[-3000:]
    assert "Found a dagster instance configuration" not in text
    assert "Traceback" not in text, text[-3000:]
    assert "agentops dev: stopped" in text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=5)


def test_errors_name_the_valid_range():
    from agentops_pipelines.cli import valid_days

    first, last = valid_days()
    out = subprocess.run([AGENTOPS, "backfill", "--from", "2099-01-01", "--to", "2099-01-02"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert f"2099-01-01 is not a partition of the dataset: valid days are {first} .. {last}" in out.stderr
    out = subprocess.run([AGENTOPS, "backfill", "--from", last, "--to", first], capture_output=True, text=True)
    assert out.returncode == 2 and f"--from {last} is after --to {first}" in out.stderr
    out = subprocess.run([AGENTOPS, "demo", "--days", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "0 is out of range: 1 .." in out.stderr
    out = subprocess.run([AGENTOPS, "dev", "--port", "70000"], capture_output=True, text=True)
    assert out.returncode == 2 and "70000 is out of range: 1 .. 65535" in out.stderr


def test_help_is_plain_text_with_help_for_every_argument():
    for command in ([], ["demo"], ["dev"], ["backfill"]):
        out = subprocess.run([AGENTOPS, *command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0
        assert "``" not in out.stdout and ":class:" not in out.stdout
        lines = out.stdout.splitlines()
        for i, line in enumerate(lines):
            if not line.strip().startswith("-") or line.strip().startswith("-h, --help"):
                continue
            # the help is on the option's line, or (a long option) indented on the next one
            same_line = len(line.split("  ")) > 1 and line.strip().split("  ", 1)[-1].strip() != line.strip()
            next_line = i + 1 < len(lines) and lines[i + 1].startswith(" " * 10) and not lines[i + 1].strip().startswith("-")
            assert same_line or next_line, (command, line)
