"""The local deployer: starting, hot-swapping and stopping real serving processes, and the\nper-deployment admin token it makes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agentops_pipelines.resources.deployers import (
    Deployer,
    DeploymentError,
    LocalProcessDeployer,
    serving_admin_token,
)
from tests.serving.support import JSON, MODEL_NAME, request


def test_deployer_is_a_resource():
    assert issubclass(LocalProcessDeployer, Deployer)
    with pytest.raises(TypeError):
        Deployer()  # abstract
    d = LocalProcessDeployer(state_dir="/tmp/x", ports={"prod": 8080})
    assert d.ports == {"prod": 8080} and d.host == "127.0.0.1" and d.health_timeout_s == 120
    assert d.inference_log_dir == "" and d.trace_sample_rate == 0.01
    assert d.inference_log_path("prod", "models:/support_agent/3") is None
    with pytest.raises(ValueError, match="invalid environment"):
        d.status("../etc")
    logged = LocalProcessDeployer(state_dir="/tmp/x", inference_log_dir="/var/log/agentops")
    assert logged.inference_log_path("prod", "models:/support_agent/3") == Path(
        "/var/log/agentops/support_agent/prod"
    )
    assert logged.inference_log_path("dev", "models:/support_agent@champion").name == "dev"
    assert logged.inference_log_path("dev", "runs:/abc/model").parent.name == "agent"
    with pytest.raises(DeploymentError, match="no server is running"):
        d.deploy_canary("nothing-here", "models:/x/1", "1", 0.1)
    with pytest.raises(ValueError, match="share"):
        d.deploy_canary("dev", "models:/x/1", "1", 1.5)


@pytest.mark.parametrize(("model_uri", "version"), [("models:/support_agent@champion", "champion"),
                                                    ("models:/support_agent/3", "2")])
def test_an_alias_or_a_mislabel_is_refused_before_anything_starts(tmp_path, model_uri, version):
    d = LocalProcessDeployer(state_dir=str(tmp_path / "serving"), health_timeout_s=5)
    for call in (lambda: d.deploy("dev", model_uri, version),
                 lambda: d.deploy_canary("dev", model_uri, version, 0.1)):
        with pytest.raises(DeploymentError, match="does not pin a version|does not match model_uri"):
            call()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no process, token or log


def test_serving_processes_get_the_deployers_mlflow_store_and_no_parent_secrets():
    parent = {"PATH": "/usr/bin", "MLFLOW_TRACKING_URI": "sqlite:////elsewhere/mlflow.db",
              "AGENTOPS_SERVING_ADMIN_TOKEN": "the-parents", "DAGSTER_PG_PASSWORD": "secret"}
    configured = LocalProcessDeployer(state_dir="/tmp/x", mlflow_tracking_uri="postgresql://db:5432/mlflow")
    env = configured.process_environment("support_agent", parent, "prod")
    assert env["MLFLOW_TRACKING_URI"] == "postgresql://db:5432/mlflow"  # explicit, whatever the parent has
    assert env["PATH"] == "/usr/bin"
    assert "AGENTOPS_SERVING_ADMIN_TOKEN" not in env and "DAGSTER_PG_PASSWORD" not in env
    # A deployer built without a store (a test, a script) passes the variable its caller set.
    unset = LocalProcessDeployer(state_dir="/tmp/x").process_environment("support_agent", parent, "prod")
    assert unset["MLFLOW_TRACKING_URI"] == "sqlite:////elsewhere/mlflow.db"


def test_each_serving_process_gets_its_own_environments_system_of_record_only():
    prod_url = "postgresql://agent:prod-pw@db/sor"
    parent = {"PATH": "/usr/bin", "AGENTOPS_HOME": "/state", "AGENTOPS_SOR_URL": prod_url,
              "AGENTOPS_SOR_URL_STAGING": "postgresql://agent:staging-pw@db/sor_staging"}
    deployer = LocalProcessDeployer(state_dir="/tmp/x")
    dev = deployer.process_environment("support_agent", parent, "dev")
    assert dev["AGENTOPS_SOR_URL"] == "sqlite:////state/system_of_record/dev/system_of_record.db"  # its own, seeded on use
    assert not any("pw" in value for value in dev.values())  # neither prod's URL nor staging's
    assert not any(name.startswith("AGENTOPS_SOR_URL_") for name in dev)
    staging = deployer.process_environment("support_agent", parent, "staging")
    assert staging["AGENTOPS_SOR_URL"] == parent["AGENTOPS_SOR_URL_STAGING"] and prod_url not in staging.values()
    prod = deployer.process_environment("support_agent", parent, "prod")
    assert prod["AGENTOPS_SOR_URL"] == prod_url and "staging-pw" not in str(prod)
    off = deployer.process_environment("support_agent", {**parent, "AGENTOPS_SOR_URL_DEV": "off"}, "dev")
    assert off["AGENTOPS_SOR_URL"] == "off"  # dev serves without running tools


def test_the_code_locations_deployer_serves_from_the_settings_mlflow_store(home):
    from agentops_pipelines.definitions import build_deployer
    from agentops_pipelines.resources.settings import load_settings

    settings = load_settings()
    assert build_deployer(settings).mlflow_tracking_uri == settings.mlflow_tracking_uri


@pytest.mark.slow
def test_deploy_writes_state_and_serves_health(deployer, deployment, registry):
    assert deployment.version == "1" and deployment.model_uri == registry["1"]
    assert (deployment.canary_version, deployment.canary_share) == (None, 0.0)
    state = json.loads((Path(deployer.state_dir) / MODEL_NAME / "test" / "state.json").read_text())
    assert state["pid"] == deployment.pid and state["port"] > 0
    assert state["url"] == deployment.url == f"http://127.0.0.1:{state['port']}"
    assert {k: state[k] for k in ("host", "model_uri", "version", "environment", "started_at")} == {
        "host": "127.0.0.1",
        "model_uri": registry["1"],
        "version": "1",
        "environment": "test",
        "started_at": deployment.started_at,
    }
    assert state["inference_log_dir"] == str(
        Path(deployer.inference_log_dir).resolve() / MODEL_NAME / "test"
    )
    assert deployer.status("test") == deployment
    assert request(deployment.url, "GET", "/livez")[0] == 200
    assert request(deployment.url, "GET", "/readyz")[0] == 200
    for path in ("/health", "/ping"):
        status, _, body = request(deployment.url, "GET", path)
        assert status == 200
        assert {k: body[k] for k in ("status", "model_uri", "version", "environment", "agent")} == {
            "status": "ok",
            "model_uri": registry["1"],
            "version": "1",
            "environment": "test",
            "agent": "test_agent",
        }


@pytest.mark.slow
def test_hot_swap_and_failed_load(deployer, deployment, registry):
    password = json.dumps({"inputs": [{"text": "reset my password", "customer_id": "C2"}]}).encode()
    try:
        swapped = deployer.deploy("test", registry["2"], "2")
        assert (swapped.pid, swapped.url, swapped.version) == (deployment.pid, deployment.url, "2")
        status, headers, answer = request(deployment.url, "POST", "/invocations", password, JSON)
        assert headers["X-Model-Version"] == "2"
        assert answer["predictions"][0] | {"confidence": 0} == {
            "tool": "reset_password",
            "confidence": 0,
            "answer": "v2",
        }
        state = json.loads((Path(deployer.state_dir) / MODEL_NAME / "test" / "state.json").read_text())
        assert (state["pid"], state["version"], state["model_uri"]) == (
            deployment.pid,
            "2",
            registry["2"],
        )
        assert deployer.deploy("test", registry["2"], "2") == swapped  # idempotent

        with pytest.raises(DeploymentError, match="HTTP 404") as info:
            deployer.deploy("test", f"models:/{MODEL_NAME}/99", "99")
        assert "version=99) not found" in str(info.value)
        assert f"still serving {registry['2']} version 2" in str(info.value)
        assert deployer.status("test") == swapped
        assert (
            request(deployment.url, "POST", "/invocations", password, JSON)[1]["X-Model-Version"]
            == "2"
        )
    finally:
        assert deployer.deploy("test", registry["1"], "1").version == "1"


@pytest.mark.slow
def test_failed_start_reports_the_log(deployer, registry):
    with pytest.raises(DeploymentError, match="exited with code 1") as info:
        deployer.deploy("broken", f"models:/{MODEL_NAME}/99", "99")
    assert "could not load" in str(info.value)  # the tail of the server's log
    assert deployer.status("broken") is None
    assert not (Path(deployer.state_dir) / MODEL_NAME / "broken" / "state.json").exists()


@pytest.mark.slow
def test_second_environment_and_stop(deployer, deployment, registry):
    second = deployer.deploy("second", registry["2"], "2")
    assert second.pid != deployment.pid and second.url != deployment.url
    assert deployer.status("test").version == "1"  # environments are independent
    state_file = Path(deployer.state_dir) / MODEL_NAME / "second" / "state.json"
    assert state_file.exists()

    deployer.stop("second")
    assert not state_file.exists()  # removed by the server's clean shutdown
    with pytest.raises(ProcessLookupError):
        os.kill(second.pid, 0)
    assert deployer.status("second") is None
    log = (Path(deployer.state_dir) / MODEL_NAME / "second" / "serving.log").read_text()
    assert "stopped (exit code 0)" in log
    deployer.stop("second")  # a no-op now
    with pytest.raises(OSError):
        request(second.url, "GET", "/health")

def test_a_configured_token_wins_over_the_token_file(tmp_path):
    state = {"model_uri": "models:/support_agent/3"}
    d = LocalProcessDeployer(state_dir=str(tmp_path), admin_token="configured")
    assert d._token("prod", state) == serving_admin_token("configured", "support_agent", "prod")
    assert len({d._token(env, {"model_uri": f"models:/{agent}/1"}) for env in ("dev", "prod")
                for agent in ("support_agent", "other_agent")}) == 4  # one per (agent, environment)
    assert not list(tmp_path.rglob("*.admin-token"))
    own = LocalProcessDeployer(state_dir=str(tmp_path))
    assert own._token("prod", state) is None
    path = own._new_token_file(own.files("prod", "support_agent"))
    assert path == tmp_path / "support_agent" / "prod" / "admin-token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert own._token("prod", state) == path.read_text() and len(path.read_text()) >= 40
    first = own._token("prod", state)
    assert own._new_token_file(own.files("prod", "support_agent")).read_text() != first  # fresh per start
    other = own._new_token_file(own.files("prod", "other_agent"))  # another agent, its own token
    assert other != path and own._token("prod", {"model_uri": "models:/other_agent/1"}) == other.read_text()
