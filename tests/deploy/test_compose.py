"""The compose file (deploy/compose.yaml), a local production-like stack: every file, volume and
service it names exists, the services are wired to each other, and its environment is one the
code location accepts in production mode."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from .common import DEPLOY, ENVIRONMENTS, ROOT, code_server_command

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $${VAR} is for the container's shell
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _interpolated(value: str) -> str:
    """``value`` as compose interpolates it with none of its variables set."""
    return VARIABLE.sub(lambda m: m.group(3) or "", value)


def test_compose_services_have_an_image_and_existing_files(compose):
    services = compose["services"]
    assert {"postgres", "redis", "mlflow", "dagster-code", "dagster-webserver", "dagster-daemon",
            "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}
        for arg in service.get("command") or []:
            if isinstance(arg, str) and arg.startswith("--config.file="):
                inside = arg.split("=", 1)[1]
                target = next(t for t in mounts if inside == t or inside.startswith(t + "/"))
                source = DEPLOY / (mounts[target] + inside[len(target):])
                assert source.is_file(), f"{name} reads {inside}: write {source.relative_to(ROOT)}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


def test_compose_variables_have_a_default_or_a_required_error():
    """`docker compose up` with none of the variables set either works or says which one is
    missing: compose turns an unset ${VAR} into an empty string with only a warning."""
    text = (DEPLOY / "compose.yaml").read_text()
    variables = VARIABLE.findall(text)
    assert variables
    bare = sorted({name for name, operator, _ in variables if not operator})
    assert not bare, f"give {bare} a default (${{VAR:-value}}) or an error (${{VAR:?message}})"


def test_compose_wiring(compose):
    services = compose["services"]
    code = services["dagster-code"]
    env = {k: _interpolated(str(v)) for k, v in code["environment"].items()}
    # the instance file reads exactly these variables
    instance = (DEPLOY / "dagster-production.yaml").read_text()
    for variable in set(re.findall(r"env: (DAGSTER_\w+)", instance)):
        assert variable in env, variable
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # the webserver and the daemon load the code server's gRPC endpoint
    workspace = yaml.safe_load((DEPLOY / "compose-workspace.yaml").read_text())
    (server,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert server["host"] == "dagster-code"
    assert "command" not in code  # the image's: the code server on the port the workspace names
    command = code_server_command()
    assert str(server["port"]) == command[command.index("-p") + 1]
    assert server["location_name"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"][
        "code_location_name"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "/opt/dagster/app/workspace.yaml" in services[name]["command"]
        assert services[name]["image"] == code["image"] and services[name]["build"] == code["build"]
    # Grafana loads the dashboard it is told is home
    grafana = services["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert any(v.split(":")[1] == home for v in grafana["volumes"])
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/agentops.yaml").read_text())
    assert home.startswith(provider["providers"][0]["options"]["path"] + "/")
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    # MLflow answers the Host header the code server sends
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "mlflow:*" in mlflow_args and "--serve-artifacts" in mlflow_args


def test_compose_environment_passes_production_settings(compose, monkeypatch):
    from agentops_pipelines.resources.settings import load_settings

    for name, value in compose["services"]["dagster-code"]["environment"].items():
        monkeypatch.setenv(name, _interpolated(str(value)))
    settings = load_settings()  # production mode refuses embedded defaults: must not raise
    assert settings.mode == "production"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    # Prometheus scrapes the serving processes where the local deployer puts them
    from agentops_pipelines.definitions import build_deployer

    deployer = build_deployer(settings)
    assert deployer.host == "0.0.0.0" and deployer.admin_token is not None
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    (serving,) = [job for job in scrape if job["job_name"] == "agentops-serving"]
    targets = {t for c in serving["static_configs"] for t in c["targets"]}
    assert targets == {f"dagster-code:{port}" for port in deployer.ports.values()}
    assert set(deployer.ports) == {f"support_agent/{env}" for env in ENVIRONMENTS}  # one port per (agent, env)
