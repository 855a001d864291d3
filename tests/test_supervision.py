"""Supervision of the local serving processes, on real processes.

A crashed server comes back on the same URL; redeploys keep the URL; a server dies with its
supervisor and leaves nothing behind; serving processes get an explicit environment; two agents in
one environment get two processes. The supervisor's restart policy (backoff, crash loop) is
tested on a stand-in server that takes a fraction of a second to start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentops_pipelines.cli import _serving_line
from agentops_pipelines.resources.deployers import (
    DeploymentError,
    LocalProcessDeployer,
    agent_serving_environment,
    serving_environment,
)

ALPHA, BETA = "sup-alpha", "sup-beta"
PLANTED = {
    "DAGSTER_PG_PASSWORD": "pg-password-must-not-leak",
    "AGENTOPS_AUDIT_DB_URL": "postgresql://audit:audit-password@127.0.0.1/audit",
    "AGENTOPS_TEST_PLANTED_SECRET": "planted-secret-must-not-leak",
}
MODEL_CODE = """
import mlflow
import pandas as pd


class Model(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        n = len(model_input)
        return pd.DataFrame({{"tool": ["track_order"] * n, "confidence": [0.9] * n,
                              "answer": ["{answer}"] * n}})


mlflow.models.set_model(Model())
"""


def _wait(condition, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout}s: {what}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def _group(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (Linux)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


# --------------------------------------------------------------------------------------------
# Without a server


def test_serving_environment_keeps_only_what_serving_needs():
    parent = {
        "PATH": "/usr/bin", "HOME": "/home/a", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/src", "VIRTUAL_ENV": "/venv", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_TOKEN": "t", "AWS_ACCESS_KEY_ID": "k", "AGENTOPS_HOME": "/state",
        "AGENTOPS_FEAST_REDIS": "redis:6379", "AGENTOPS_FEAST_REGISTRY": "postgresql://r",
        "AGENTOPS_FEAST_PROJECT": "p", "AGENTOPS_SERVING_ROLE": "canary",
        **PLANTED, "DAGSTER_PG_HOST": "db", "DAGSTER_HOME": "/d", "AGENTOPS_MODE": "production",
        "AGENTOPS_SERVING_ADMIN_TOKEN": "from-the-parent", "MLFLOW_BACKEND_STORE_URI": "postgresql://x",
        "AGENTOPS_PROMETHEUS_URL": "http://p", "GITHUB_TOKEN": "g", "SSH_AUTH_SOCK": "/s",
    }  # fmt: skip
    env = serving_environment(parent)
    assert set(env) == {
        "PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID", "AGENTOPS_HOME", "AGENTOPS_FEAST_REDIS",
        "AGENTOPS_FEAST_REGISTRY", "AGENTOPS_FEAST_PROJECT", "AGENTOPS_SERVING_ROLE",
    }  # fmt: skip
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_ports_are_chosen_once_per_agent_and_environment(tmp_path):
    from agentops_pipelines.resources.settings import _serving_ports

    problems: list[str] = []
    assert _serving_ports(f"prod=8083, {BETA}/prod=8093", problems) == {"prod": 8083, f"{BETA}/prod": 8093}
    assert problems == []
    d = LocalProcessDeployer(state_dir=str(tmp_path), agent=ALPHA,
                             ports={"prod": 8083, f"{BETA}/prod": 8093})
    assert d.port("prod") == 8083 and d.port("prod", BETA) == 8093  # explicit entries win
    dev = d.port("dev")
    assert 1024 <= dev < 65536 and dev not in (8083, 8093)
    assert d.port("dev") == dev  # kept
    assert (tmp_path / ALPHA / "dev" / "port").read_text().strip() == str(dev)
    assert LocalProcessDeployer(state_dir=str(tmp_path), agent=ALPHA).port("dev") == dev
    beta = d.port("dev", BETA)
    assert beta != dev and d.port("staging") not in (dev, beta)
    assert d.files("dev", "models/odd name").agent == "models_odd_name"
    with pytest.raises(ValueError, match="invalid environment"):
        d.port("../x")
    # calls naming only an environment pick the one agent serving there, or say which to name
    anonymous = LocalProcessDeployer(state_dir=str(tmp_path))
    assert anonymous.status("dev") is None and anonymous.supervision("nowhere") is None
    for agent in (ALPHA, BETA):
        (tmp_path / agent / "dev").mkdir(parents=True, exist_ok=True)
        (tmp_path / agent / "dev" / "supervisor.json").write_text("{}")
    with pytest.raises(DeploymentError, match="several agents"):
        anonymous.status("dev")


STAND_IN = """
import json, os, sys, time
from pathlib import Path
state, mode = Path(sys.argv[sys.argv.index("--state-file") + 1]), sys.argv[-1]
if mode == "never-serves":
    sys.exit(3)
state.write_text(json.dumps({"pid": os.getpid(), "status": "serving",
                             "model_uri": "m", "version": sys.argv[sys.argv.index("--version") + 1]}))
time.sleep(0.3)
sys.exit(0 if mode == "clean" else 3)
"""


def _supervise(tmp_path, mode: str, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    code = tmp_path / "stand_in.py"
    code.write_text(STAND_IN)
    state, record = tmp_path / "s.json", tmp_path / "s.supervisor.json"
    done = subprocess.run(
        [sys.executable, "-m", "agentops_pipelines.serving.supervisor", "--state-file", str(state),
         "--supervision-file", str(record), "--backoff-s", "0.05", *options,
         "--", sys.executable, str(code), "--version", "1", "--state-file", str(state), mode],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done, json.loads(record.read_text())


def test_supervisor_backs_off_and_stops_a_crash_loop(tmp_path):
    started = time.monotonic()
    done, record = _supervise(tmp_path, "crash", "--max-restarts", "3", "--restart-window-s", "60")
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout
    assert (record["status"], record["restarts"], record["last_exit"]) == ("crash_loop", 3, "exited with code 3")
    assert "crash loop" in done.stdout and "giving up" in done.stdout
    assert [line.split("restart ")[1] for line in done.stdout.splitlines() if ": restart " in line] == [
        "1 in 0.1s", "2 in 0.1s", "3 in 0.2s",  # 0.05, 0.1, 0.2: doubling
    ]
    assert elapsed < 20


def test_supervisor_does_not_restart_what_never_served_or_stopped_cleanly(tmp_path):
    done, record = _supervise(tmp_path, "never-serves")
    assert done.returncode == 3 and record["status"] == "failed" and record["restarts"] == 0
    assert "before it ever served: not restarting" in done.stdout
    done, record = _supervise(tmp_path, "clean")
    assert done.returncode == 0 and record["status"] == "stopped" and record["restarts"] == 0


# --------------------------------------------------------------------------------------------
# Real serving processes


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Two agents in a SQLite MLflow store: alpha versions 1 and 2, beta version 1; and secrets
    planted in this process's environment, which serving processes must not see."""
    import mlflow

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, **PLANTED}.items():
            mp.setenv(name, value)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        experiment = mlflow.create_experiment("supervision", artifact_location=str(tmp / "artifacts"))
        uris = {}
        for agent, version in ((ALPHA, "1"), (ALPHA, "2"), (BETA, "1")):
            code = tmp / f"{agent}_{version}.py"
            code.write_text(MODEL_CODE.format(answer=f"{agent} v{version}"))
            with mlflow.start_run(experiment_id=experiment):
                mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                        pip_requirements=["pandas"], registered_model_name=agent)
            uris[agent, version] = f"models:/{agent}/{version}"
        yield uris
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri("")


@pytest.fixture(scope="module")
def deployer(registry, tmp_path_factory):
    d = LocalProcessDeployer(state_dir=str(tmp_path_factory.mktemp("serving")), agent=ALPHA,
                             health_timeout_s=60, trace_sample_rate=0.0, restart_backoff_s=0.2)
    yield d
    for environment in ("dev", "staging", "legacy"):
        for agent in (ALPHA, BETA):
            d.stop(environment, agent=agent)


def _answer(url: str) -> str:
    import urllib.request

    body = json.dumps({"dataframe_records": [{"text": "where is my order"}]}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["predictions"][0]["answer"]


@pytest.mark.slow
def test_a_killed_server_comes_back_on_the_same_url(deployer, registry):
    first = deployer.deploy("dev", registry[ALPHA, "1"], "1")
    swapped = deployer.deploy("dev", registry[ALPHA, "2"], "2")  # hot swap: same process
    assert (swapped.pid, swapped.url, swapped.restarts) == (first.pid, first.url, 0)
    assert _group(first.pid), "the server runs in its own process group"
    killed_at = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    back = _wait(lambda: deployer.status("dev"), 30, "the server is back")
    elapsed = time.monotonic() - killed_at
    print(f"\nserving again {elapsed:.2f}s after kill -9")
    assert back.url == first.url and back.pid != first.pid
    assert (back.version, back.restarts) == ("2", 1)  # the version it served last
    assert _answer(back.url) == f"{ALPHA} v2"
    assert elapsed < 10
    assert _wait(lambda: not _group(first.pid), 5, "nothing left of the killed server's group")
    assert "restarts 1" in _serving_line(deployer, "dev")
    record = _wait(lambda: (r := deployer.supervision("dev"))["status"] == "serving" and r, 2, "serving")
    assert (record["last_exit"], record["alive"]) == ("killed by SIGKILL", True)
    assert "restart 1 in 0.2s" in Path(record["log"]).read_text()


@pytest.mark.slow
def test_a_redeploy_keeps_the_url(deployer, registry):
    before = deployer.status("dev") or deployer.deploy("dev", registry[ALPHA, "1"], "1")
    deployer.stop("dev")
    assert deployer.status("dev") is None and deployer.supervision("dev")["status"] == "stopped"
    after = deployer.deploy("dev", registry[ALPHA, "1"], "1")
    assert after.url == before.url and after.pid != before.pid and after.restarts == 0
    assert _serving_line(deployer, "dev").endswith(f"at {after.url}, restarts 0")


@pytest.mark.slow
def test_the_server_dies_with_its_supervisor(deployer, registry):
    served = deployer.status("dev") or deployer.deploy("dev", registry[ALPHA, "1"], "1")
    supervisor = deployer.supervision("dev")["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    _wait(lambda: _gone(served.pid), 15, "the server stops when its supervisor is killed")
    _wait(lambda: not _group(served.pid), 5, "no orphan of the server's process group")
    assert deployer.status("dev") is None
    again = deployer.deploy("dev", registry[ALPHA, "1"], "1")
    assert again.url == served.url


@pytest.mark.slow
def test_serving_processes_get_an_explicit_environment(deployer, registry):
    served = deployer.status("dev") or deployer.deploy("dev", registry[ALPHA, "1"], "1")
    supervisor = deployer.supervision("dev")["supervisor_pid"]
    assert os.environ["DAGSTER_PG_PASSWORD"] == PLANTED["DAGSTER_PG_PASSWORD"]  # planted here
    for pid in (served.pid, supervisor):
        env = _environ(pid)
        assert not set(PLANTED) & set(env)
        assert not any(value in PLANTED.values() for value in env.values())
        assert env["MLFLOW_TRACKING_URI"] == os.environ["MLFLOW_TRACKING_URI"] and "PATH" in env
        # plus the agent's own Feast store (its project, folder and file registry) and dev's own
        # system of record (vocabulary.sor_url), never prod's
        assert set(env) <= (set(serving_environment(os.environ)) | set(agent_serving_environment(os.environ, ALPHA))
                            | {"AGENTOPS_SOR_URL"})
        assert env.get("AGENTOPS_SOR_URL", "").endswith("system_of_record/dev/system_of_record.db")
        assert env["AGENTOPS_FEAST_PROJECT"].endswith("_sup_alpha")


@pytest.mark.slow
def test_two_agents_in_one_environment_are_apart(deployer, registry):
    alpha = deployer.status("dev") or deployer.deploy("dev", registry[ALPHA, "1"], "1")
    beta = deployer.deploy("dev", registry[BETA, "1"], "1")
    assert beta.pid != alpha.pid and beta.url != alpha.url and beta.agent == BETA
    swapped = deployer.deploy("dev", registry[ALPHA, "2"], "2")  # the first agent only
    assert (swapped.pid, swapped.version) == (alpha.pid, "2")
    assert deployer.status("dev", agent=BETA) == beta
    assert (_answer(beta.url), _answer(alpha.url)) == (f"{BETA} v1", f"{ALPHA} v2")
    deployer.stop("dev", agent=BETA)
    assert deployer.status("dev", agent=BETA) is None and deployer.status("dev").pid == alpha.pid


@pytest.mark.slow
def test_a_configured_admin_token_opens_one_agent_and_environment_only(registry, tmp_path):
    """With AGENTOPS_SERVING_ADMIN_TOKEN set (compose), each server holds a token of its own
    (agent, environment): the one read from a dev server (running a version nobody approved)
    opens neither another environment's /admin/* nor another agent's, and the configured token
    itself is in no serving process."""
    from tests.serving.support import request

    configured = "configured-admin-token"
    d = LocalProcessDeployer(state_dir=str(tmp_path), agent=ALPHA, admin_token=configured,
                             health_timeout_s=60, trace_sample_rate=0.0)
    try:
        alpha_dev = d.deploy("dev", registry[ALPHA, "1"], "1")
        alpha_staging = d.deploy("staging", registry[ALPHA, "1"], "1")
        beta_dev = d.deploy("dev", registry[BETA, "1"], "1")
        tokens = {s.url: _environ(s.pid)["AGENTOPS_SERVING_ADMIN_TOKEN"]
                  for s in (alpha_dev, alpha_staging, beta_dev)}
        assert configured not in tokens.values() and len(set(tokens.values())) == 3
        leaked = tokens[alpha_dev.url]

        def stats(url: str, token: str) -> int:
            return request(url, "GET", "/admin/stats", headers={"Authorization": f"Bearer {token}"})[0]

        assert stats(alpha_dev.url, leaked) == 200
        assert stats(alpha_staging.url, leaked) == 401 and stats(beta_dev.url, leaked) == 401
        # the deployer still drives each of them: a hot swap in staging, the canary's stats
        assert d.deploy("staging", registry[ALPHA, "2"], "2").pid == alpha_staging.pid
        assert d.stats("dev", agent=BETA) is not None
    finally:
        for environment, agent in (("dev", ALPHA), ("staging", ALPHA), ("dev", BETA)):
            d.stop(environment, agent=agent)


@pytest.mark.slow
def test_a_crash_loop_stops_and_says_so(deployer, registry):
    strict = deployer.model_copy(update={"max_restarts": 0})  # the first crash is one too many
    served = strict.deploy("staging", registry[ALPHA, "1"], "1")
    os.kill(served.pid, signal.SIGKILL)
    record = _wait(lambda: (r := strict.supervision("staging"))["status"] == "crash_loop"
                   and not r["alive"] and r, 10, "the supervisor gives up and exits")
    assert record["restarts"] == 0 and strict.status("staging") is None
    line = _serving_line(strict, "staging")
    assert line.startswith("DOWN: crash loop, stopped after 0 restarts (last: killed by SIGKILL")
    assert "crash loop" in Path(record["log"]).read_text().splitlines()[-1]
    assert strict.deploy("staging", registry[ALPHA, "1"], "1").url == served.url  # deploy again


@pytest.mark.slow
def test_a_server_from_before_supervision_is_taken_over(deployer, registry):
    """A state file of the environment-only layout (<state_dir>/<environment>.json): reported,
    then replaced on the next deploy by a supervised server on the same port."""
    legacy_file = Path(deployer.state_dir).resolve() / "legacy.json"
    port = LocalProcessDeployer(state_dir=str(legacy_file.parent / "elsewhere")).port("legacy")
    old = subprocess.Popen(  # as the old deployer started it (with a token: newer servers need one)
        [sys.executable, "-m", "agentops_pipelines.serving", "--model-uri", registry[ALPHA, "1"],
         "--version", "1", "--environment", "legacy", "--port", str(port), "--state-file",
         str(legacy_file)],
        env={**os.environ, "AGENTOPS_SERVING_ADMIN_TOKEN": "legacy-token"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        found = _wait(lambda: deployer.status("legacy"), 60, "the old server serves")
        assert (found.pid, found.url) == (old.pid, f"http://127.0.0.1:{port}")
        taken_over = deployer.deploy("legacy", registry[ALPHA, "2"], "2")
        assert taken_over.url == found.url and taken_over.pid != old.pid
        assert old.wait(15) is not None and not legacy_file.exists()
        assert deployer.supervision("legacy")["alive"]
    finally:
        if old.poll() is None:
            old.kill()
