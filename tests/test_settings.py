"""resources/settings.py: the mode, production's required variables, the instance yaml, secrets,
and ``check()`` (closed ports only: no service needed)."""

from __future__ import annotations

import dagster as dg
import pytest

from agentops_pipelines.resources import settings as settings_module
from agentops_pipelines.resources.settings import (
    EMBEDDED_DAGSTER_YAML,
    PRODUCTION_DAGSTER_YAML,
    SettingsError,
    check,
    load_settings,
)

VARIABLES = ("AGENTOPS_MODE", "AGENTOPS_DAGSTER_YAML", "DAGSTER_HOME", "MLFLOW_TRACKING_URI",
             "AGENTOPS_MLFLOW_ARTIFACT_ROOT", "AGENTOPS_FEAST_REDIS", "AGENTOPS_FEAST_REGISTRY",
             "AGENTOPS_FEAST_PROJECT", "AGENTOPS_AUDIT_DB_URL", "AGENTOPS_PROMETHEUS_URL",
             "AGENTOPS_DEPLOYER", "AGENTOPS_SERVING_IMAGE", "AGENTOPS_K8S_NAMESPACE",
             "AGENTOPS_SERVING_MLFLOW_URI", "AGENTOPS_SERVING_HOST", "AGENTOPS_SERVING_PORTS",
             "AGENTOPS_SERVING_ADMIN_TOKEN", "AGENTOPS_K8S_INFERENCE_LOG_CLAIM",
             "AGENTOPS_AUDIT_KEY_FILE", "AGENTOPS_AUDIT_ANCHOR", "AGENTOPS_APPROVERS_FILE",
             "AGENTOPS_SOR_URL", "AGENTOPS_SOR_URL_DEV", "AGENTOPS_SOR_URL_STAGING",
             "AGENTOPS_SANDBOX_REQUIRE_LANDLOCK", *settings_module.DAGSTER_PG_VARS)
PG = {"DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "5433", "DAGSTER_PG_USER": "dagster",
      "DAGSTER_PG_PASSWORD": "s3cret", "DAGSTER_PG_DB": "agentops"}


@pytest.fixture
def env(tmp_path, monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTOPS_HOME", str(tmp_path / "agentops"))

    def set_(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_


def production(env, **overrides):
    env(**{**PG, "AGENTOPS_MODE": "production",
           "MLFLOW_TRACKING_URI": "postgresql://mlflow:pw@db.internal:5432/agentops_mlflow",
           "AGENTOPS_MLFLOW_ARTIFACT_ROOT": "s3://bucket/mlflow",
           "AGENTOPS_FEAST_REDIS": "redis.internal:6379,db=0,password=r3dis",
           "AGENTOPS_FEAST_REGISTRY": "postgresql+psycopg://feast:pw@db.internal/agentops_feast",
           "AGENTOPS_AUDIT_KEY_FILE": "/var/run/secrets/agentops/audit.key",
           **overrides})


def test_local_defaults_live_under_the_state_folder(env, tmp_path):
    s = load_settings()
    home = tmp_path / "agentops"
    assert (s.mode, s.production) == ("local", False)
    assert s.mlflow_tracking_uri == f"sqlite:///{home}/mlflow/mlflow.db"
    assert (s.feast_online_store, s.feast_project) == ("sqlite", "agentops")
    assert s.dagster_postgres is None and s.dagster_yaml == EMBEDDED_DAGSTER_YAML
    assert not s.secret_env and not s.problems


def test_each_environment_has_its_own_system_of_record_by_default(env, tmp_path):
    s = load_settings()
    home = tmp_path / "agentops"
    assert dict(s.sor_urls) == {"prod": f"sqlite:///{home}/system_of_record/prod/system_of_record.db",  # the demo's data
                                "dev": f"sqlite:///{home}/system_of_record/dev/system_of_record.db",
                                "staging": f"sqlite:///{home}/system_of_record/staging/system_of_record.db"}
    assert s.sor_url == s.sor_urls["prod"]
    env(AGENTOPS_SOR_URL="postgresql://agent:pw@db/sor", AGENTOPS_SOR_URL_DEV="off",
        AGENTOPS_SOR_URL_STAGING="postgresql://agent:pw@db/sor_staging")
    s = load_settings()
    assert dict(s.sor_urls) == {"prod": "postgresql://agent:pw@db/sor", "dev": "off",
                                "staging": "postgresql://agent:pw@db/sor_staging"}


@pytest.mark.parametrize("dev", [
    "postgresql://agent:Pr0dSecret@db:5432/sor",  # the same URL
    "postgresql+psycopg://dev_user:D3vSecret@db/sor",  # the same database, other credentials
])
def test_production_refuses_dev_acting_on_prods_system_of_record(env, dev):
    production(env, AGENTOPS_SOR_URL="postgresql://agent:Pr0dSecret@db:5432/sor", AGENTOPS_SOR_URL_DEV=dev)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "AGENTOPS_SOR_URL_DEV" in message and "AGENTOPS_SOR_URL " in message
    assert "Secret" not in message and "db" not in message  # names the variables, never the URLs
    assert "STAGING" not in message  # staging's own default SQLite file is its own


def test_a_sqlite_file_shared_with_prod_is_refused_however_spelt(env, tmp_path):
    shared = tmp_path / "sor.db"
    production(env, AGENTOPS_SOR_URL=f"sqlite:///{shared}",
               AGENTOPS_SOR_URL_STAGING=f"sqlite:///{tmp_path}/x/../sor.db")
    with pytest.raises(SettingsError, match="AGENTOPS_SOR_URL_STAGING names the same database"):
        load_settings()
    env(AGENTOPS_SOR_URL_STAGING="off", AGENTOPS_SOR_URL_DEV=f"sqlite:///{tmp_path}/dev.db")
    assert dict(load_settings().sor_urls)["staging"] == "off"  # 'off' shares nothing
    # Local mode reports it too (agentops check), without refusing to load.
    env(AGENTOPS_MODE="local", AGENTOPS_SOR_URL_DEV=f"sqlite:///{shared}")
    assert any("AGENTOPS_SOR_URL_DEV" in p for p in load_settings().problems)


def test_mode_is_explicit(env):
    env(AGENTOPS_MODE="prod")
    with pytest.raises(SettingsError, match="AGENTOPS_MODE"):
        load_settings()


def test_production_names_every_missing_variable(env):
    env(AGENTOPS_MODE="production", AGENTOPS_FEAST_REDIS="127.0.0.1:6379")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    for name in ("DAGSTER_PG_HOST", "MLFLOW_TRACKING_URI", "AGENTOPS_MLFLOW_ARTIFACT_ROOT",
                 "AGENTOPS_FEAST_REGISTRY", "AGENTOPS_AUDIT_KEY_FILE"):
        assert name in message
    assert "AGENTOPS_FEAST_REDIS" not in message
    assert load_settings(strict=False).problems  # what `agentops check` reports


def test_production_refuses_an_mlflow_sqlite_store(env):
    production(env, MLFLOW_TRACKING_URI="sqlite:///x.db")
    with pytest.raises(SettingsError, match="MLFLOW_TRACKING_URI"):
        load_settings()


def test_complete_production_settings(env):
    production(env)
    s = load_settings()
    assert s.production and not s.problems
    assert s.dagster_yaml == PRODUCTION_DAGSTER_YAML
    pg = s.dagster_postgres
    assert (pg.host, pg.port, pg.user, pg.db) == ("db.internal", 5433, "dagster", "agentops")
    assert "s3cret" not in repr(pg) and "s3cret" not in pg.label
    assert pg.url() == "postgresql+psycopg2://dagster:s3cret@db.internal:5433/agentops"
    assert s.secret_env == {"mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
                            "feast_registry": "AGENTOPS_FEAST_REGISTRY",
                            "feast_online_store": "AGENTOPS_FEAST_REDIS"}


def test_production_refuses_to_run_model_code_without_landlock_unless_told_otherwise(env):
    from agentops_pipelines.definitions import build_resources

    assert load_settings().sandbox_require_landlock is False  # local mode
    production(env)
    assert load_settings().sandbox_require_landlock is True
    assert build_resources(load_settings())["sandbox"].require_landlock is True
    production(env, AGENTOPS_SANDBOX_REQUIRE_LANDLOCK="false")
    assert load_settings().sandbox_require_landlock is False
    production(env, AGENTOPS_SANDBOX_REQUIRE_LANDLOCK="maybe")
    with pytest.raises(SettingsError, match="AGENTOPS_SANDBOX_REQUIRE_LANDLOCK must be true or false, not 'maybe'"):
        load_settings()


def test_a_partial_dagster_postgres_config_is_a_problem_in_any_mode(env):
    env(DAGSTER_PG_HOST="db.internal", DAGSTER_PG_USER="dagster")
    s = load_settings()  # local mode: loads, and `agentops check` says what is missing
    assert s.dagster_postgres is None
    assert "DAGSTER_PG_PORT, DAGSTER_PG_PASSWORD, DAGSTER_PG_DB" in s.problems[0]
    env(DAGSTER_PG_PORT="5432", DAGSTER_PG_PASSWORD="", DAGSTER_PG_DB="agentops")
    assert load_settings().dagster_postgres.password == ""  # trust authentication


def test_instance_yaml_choice(env, tmp_path):
    assert load_settings().dagster_yaml == EMBEDDED_DAGSTER_YAML
    env(**PG)
    assert load_settings().dagster_yaml == PRODUCTION_DAGSTER_YAML
    custom = tmp_path / "custom.yaml"
    env(AGENTOPS_DAGSTER_YAML=str(custom))
    assert load_settings().dagster_yaml == custom


def test_prepare_home_installs_the_production_yaml_which_validates(env, tmp_path):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres.utils import pg_config, pg_url_from_config

    from agentops_pipelines.cli import prepare_home

    env(**PG, DAGSTER_HOME=str(tmp_path / "dagster"))
    prepare_home()
    installed = tmp_path / "dagster" / "dagster.yaml"
    assert installed.read_text() == PRODUCTION_DAGSTER_YAML.read_text()
    assert "s3cret" not in installed.read_text()
    config, _ = dagster_instance_config(str(tmp_path / "dagster"))  # validates the schema
    processed = process_config(pg_config(), config["storage"]["postgres"])  # resolves {env: ...}
    assert processed.success, processed.errors
    # `agentops check` connects where Dagster will.
    assert pg_url_from_config(processed.value) == load_settings().dagster_postgres.url()
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limits == [{"key": "agentops/rollout", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    assert config["telemetry"] == {"enabled": False}


def test_build_resources_passes_feast_passwords_as_env_vars(env):
    from agentops_pipelines.definitions import build_resources

    production(env, AGENTOPS_FEAST_PROJECT="staging")
    feast = build_resources(load_settings())["feast"]
    assert isinstance(feast.registry, dg.EnvVar) and feast.registry.env_var_name == "AGENTOPS_FEAST_REGISTRY"
    assert isinstance(feast.online_store, dg.EnvVar) and feast.online_store.env_var_name == "AGENTOPS_FEAST_REDIS"
    assert feast.project == "staging"
    with dg.build_resources({"feast": feast}) as resources:  # resolved when a run starts
        assert resources.feast.online_store == "redis.internal:6379,db=0,password=r3dis"

    env(AGENTOPS_FEAST_REGISTRY="postgresql+psycopg://feast@db.internal/agentops_feast")
    assert build_resources(load_settings())["feast"].registry == "postgresql+psycopg://feast@db.internal/agentops_feast"


def test_the_deployer_is_chosen_by_a_setting(env):
    from agentops_pipelines.definitions import build_resources
    from agentops_pipelines.k8s.naming import DEFAULT_MLFLOW_URI
    from agentops_pipelines.resources.deployers import LocalProcessDeployer
    from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer

    assert isinstance(build_resources(load_settings())["deployer"], LocalProcessDeployer)
    env(AGENTOPS_DEPLOYER="kubernetes")
    k8s = build_resources(load_settings())["deployer"]
    assert isinstance(k8s, KubernetesDeployer)
    assert (k8s.agent, k8s.namespace, k8s.mlflow_tracking_uri, k8s.prometheus_url) == (
        "", None, DEFAULT_MLFLOW_URI, None)  # no agent of its own: each call names one
    env(AGENTOPS_SERVING_IMAGE="registry.example.com/agentops:1.2", AGENTOPS_K8S_NAMESPACE="agents",
        AGENTOPS_SERVING_MLFLOW_URI="http://mlflow.ml:5000", AGENTOPS_PROMETHEUS_URL="http://prom:9090",
        AGENTOPS_K8S_INFERENCE_LOG_CLAIM="inference-log")
    k8s = build_resources(load_settings())["deployer"]
    assert (k8s.image, k8s.namespace, k8s.mlflow_tracking_uri, k8s.prometheus_url, k8s.inference_log_claim) == (
        "registry.example.com/agentops:1.2", "agents", "http://mlflow.ml:5000", "http://prom:9090", "inference-log")
    assert k8s.url("prod", "support_agent") == "http://support-agent-prod.agents.svc.cluster.local"
    env(AGENTOPS_DEPLOYER="nomad")
    with pytest.raises(SettingsError, match="AGENTOPS_DEPLOYER must be one of local, kubernetes, not 'nomad'"):
        load_settings()


def test_serving_host_ports_and_admin_token(env):
    from agentops_pipelines.definitions import build_deployer

    local = build_deployer(load_settings())
    assert (local.host, local.ports, local.admin_token) == ("127.0.0.1", {}, None)
    env(AGENTOPS_SERVING_PORTS="dev=8081, prod=8083", AGENTOPS_SERVING_ADMIN_TOKEN="t0ken")
    deployer = build_deployer(load_settings())
    assert deployer.ports == {"support_agent/dev": 8081, "support_agent/prod": 8083}  # the one agent's
    assert isinstance(deployer.admin_token, dg.EnvVar)  # the UI shows the name, not the token
    with dg.build_resources({"deployer": deployer}) as resources:
        assert resources.deployer.admin_token == "t0ken"
    env(AGENTOPS_SERVING_PORTS="dev:8081,prod=99999")
    assert load_settings().problems == (
        "AGENTOPS_SERVING_PORTS must look like 'dev=8081,prod=8083'; 'dev:8081' is not environment=port",
        "AGENTOPS_SERVING_PORTS must look like 'dev=8081,prod=8083'; 'prod=99999' is not environment=port",
    )
    # in production, listening beyond loopback without a token is refused
    production(env, AGENTOPS_SERVING_PORTS="", AGENTOPS_SERVING_HOST="0.0.0.0", AGENTOPS_SERVING_ADMIN_TOKEN="")
    with pytest.raises(SettingsError, match="AGENTOPS_SERVING_HOST=0.0.0.0 .* set AGENTOPS_SERVING_ADMIN_TOKEN"):
        load_settings()


def test_check_passes_on_local_defaults(env):
    results = check()
    assert [r.service for r in results] == ["Dagster storage", "MLflow tracking", "MLflow artifacts",
                                            "Feast online store", "Feast registry"]
    assert all(r.ok for r in results), [str(r) for r in results]


def test_check_gives_one_line_per_unreachable_service(env):
    production(env, DAGSTER_PG_HOST="127.0.0.1", DAGSTER_PG_PORT="1",
               MLFLOW_TRACKING_URI="postgresql://mlflow:pw@127.0.0.1:1/agentops_mlflow",
               AGENTOPS_FEAST_REDIS="127.0.0.1:1,db=0,password=r3dis",
               AGENTOPS_FEAST_REGISTRY="postgresql+psycopg://feast:pw@127.0.0.1:1/agentops_feast")
    failed = {r.service: str(r) for r in check() if not r.ok}
    assert set(failed) == {"Dagster storage", "MLflow tracking", "Feast online store", "Feast registry"}
    for line in failed.values():
        assert "\n" not in line and "unreachable" in line
        assert "pw@" not in line and "r3dis" not in line and "s3cret" not in line


@pytest.mark.parametrize(("message", "kind"), [
    ('connection to server at "h", port 5432 failed: FATAL: password authentication failed for user "x"', "wrong credentials"),
    ('connection to server at "h", port 5432 failed: FATAL: role "x" does not exist', "wrong credentials"),
    ('connection to server at "h", port 5432 failed: FATAL: database "x" does not exist', "missing database"),
    ('connection to server at "h", port 1 failed: Connection refused', "unreachable"),
    ('could not translate host name "nope" to address: Name or service not known', "unreachable"),
    ("WRONGPASS invalid username-password pair or user is disabled.", "wrong credentials"),
    ("Error 111 connecting to 127.0.0.1:1. Connection refused.", "unreachable"),
])
def test_problems_are_named(message, kind):
    assert settings_module._classify(message).startswith(kind)


def test_agentops_check_reports_a_bad_mode_in_one_line(env, capsys):
    from agentops_pipelines.cli import main

    env(AGENTOPS_MODE="prod")
    assert main(["check"]) == 1
    assert capsys.readouterr().err.strip() == \
        "FAIL  configuration: AGENTOPS_MODE must be 'local' or 'production', not 'prod'"
