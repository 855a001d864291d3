"""Production mode on the real services: Dagster and MLflow on Postgres, Feast on Redis + Postgres.

Every test creates its own databases (``agentops_test_<random>_{dagster,mlflow,feast}``) and drops
them at the end, and uses its own Feast project in Redis db 14, deleting only that project's
keys. Skipped, with the reason, when Postgres (127.0.0.1:5432, user postgres) or Redis
(127.0.0.1:6379) does not answer; override with AGENTOPS_E2E_PG_HOST/PORT/USER/PASSWORD and
AGENTOPS_E2E_REDIS_HOST/PORT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import mlflow
import pytest

from tests.helpers import AGENT, invoke, metadata, run_job

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
PG_HOST = os.environ.get("AGENTOPS_E2E_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("AGENTOPS_E2E_PG_PORT", "5432"))
PG_USER = os.environ.get("AGENTOPS_E2E_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("AGENTOPS_E2E_PG_PASSWORD", "")
REDIS_HOST = os.environ.get("AGENTOPS_E2E_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("AGENTOPS_E2E_REDIS_PORT", "6379"))
REDIS_DB = 14
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
STORES = ("dagster", "mlflow", "feast")


def _admin():
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD or None,
                            dbname="postgres", connect_timeout=2)
    conn.autocommit = True
    return conn


def _redis():
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_connect_timeout=2)


def _unreachable() -> str:
    try:
        _admin().close()
    except Exception as exc:  # noqa: BLE001 - any failure means: no Postgres here
        return f"Postgres at {PG_USER}@{PG_HOST}:{PG_PORT} is unreachable ({str(exc).strip().splitlines()[0]})"
    try:
        _redis().ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable ({exc})"
    return ""


_REASON = _unreachable()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=f"{_REASON}: these tests need the real services"))


@contextmanager
def databases_and_project():
    """Fresh databases for Dagster, MLflow and the Feast registry, and a Feast project name;
    everything dropped (connections included) and the project's Redis keys deleted afterwards."""
    prefix = f"agentops_test_{uuid.uuid4().hex[:10]}"
    names = {store: f"{prefix}_{store}" for store in STORES}
    conn = _admin()
    try:
        with conn.cursor() as cur:
            for name in names.values():
                cur.execute(f'CREATE DATABASE "{name}"')
        yield SimpleNamespace(dbs=names, project=prefix)
    finally:
        with conn.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
        client = _redis()
        keys = list(client.scan_iter(match=f"*{prefix}", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def pg_url(db: str, scheme: str = "postgresql", user: str = PG_USER, port: int = PG_PORT) -> str:
    auth = f"{user}:{PG_PASSWORD}" if PG_PASSWORD else user
    return f"{scheme}://{auth}@{PG_HOST}:{port}/{db}"


def production_env(home: Path, dbs: dict[str, str], project: str) -> dict[str, str]:
    """Every variable of production mode (README, 'Production mode')."""
    return {
        "AGENTOPS_MODE": "production",
        "AGENTOPS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USER": PG_USER,
        "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        "DAGSTER_PG_DB": dbs["dagster"],
        "MLFLOW_TRACKING_URI": pg_url(dbs["mlflow"]),
        "AGENTOPS_MLFLOW_ARTIFACT_ROOT": str(home / "mlflow-artifacts"),
        "AGENTOPS_FEAST_REDIS": f"{REDIS_HOST}:{REDIS_PORT},db={REDIS_DB}",
        "AGENTOPS_FEAST_REGISTRY": pg_url(dbs["feast"], "postgresql+psycopg"),
        "AGENTOPS_FEAST_PROJECT": project,
        "AGENTOPS_AUDIT_KEY_FILE": str(home / "secrets" / "audit.key"),
    }


def query(db: str, sql: str, *params) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD or None,
                            dbname=db, connect_timeout=2)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def agentops(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_PG_", "AGENTOPS_", "MLFLOW_TRACKING"))}
    return subprocess.run([sys.executable, "-m", "agentops_pipelines.cli", *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """The whole lifecycle once, in production mode: ingest 3 days → training → deploy to dev."""
    from agentops_pipelines.cli import prepare_home
    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.partitions import ENVIRONMENTS
    from agentops_pipelines.resources.settings import check, load_settings

    home = tmp_path_factory.mktemp("production") / "agentops"
    with databases_and_project() as target, pytest.MonkeyPatch.context() as mp:
        env = production_env(home, target.dbs, target.project)
        for name, value in env.items():  # prepare_home and MlflowResource write some of these
            mp.setenv(name, value)
        settings = load_settings()  # strict: raises if production mode is incomplete
        checked = check(settings)
        prepare_home()  # copies deploy/dagster-production.yaml into DAGSTER_HOME
        instance = dg.DagsterInstance.from_config(str(home / "dagster"))
        defs = build_definitions(settings)
        defs.resources["audit"].store.initialize()  # production mounts the key: `agentops audit --create-key`
        try:
            runs = [run_job(defs, instance, "ingest", partition_key=day) for day in DAYS]
            runs.append(run_job(defs, instance, "training"))
            version = str(metadata(instance, "registered_version")["version"])
            runs.append(run_job(defs, instance, "deploy", partition_key="dev", run_config={
                "ops": {f"{AGENT}__deployment": {"config": {"version": version}}}}))
            yield SimpleNamespace(home=home, env=env, settings=settings, checked=checked,
                                  instance=instance, defs=defs, runs=runs, version=version, **vars(target))
        finally:
            for environment in ENVIRONMENTS:
                try:
                    defs.resources["deployer"].stop(environment)
                except Exception:  # noqa: BLE001 - best effort: the databases go next
                    pass
            instance.dispose()
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)  # resources/mlflow.py set both; the databases are dropped next


@pytest.mark.slow
def test_lifecycle_on_postgres_and_redis(production):
    p = production
    assert all(r.ok for r in p.checked), [str(r) for r in p.checked]
    assert (p.home / "dagster" / "dagster.yaml").read_text() == (ROOT / "deploy" / "dagster-production.yaml").read_text()
    assert [r.success for r in p.runs] == [True] * 5, [r.run_id for r in p.runs if not r.success]

    # Dagster: the runs are rows of the `runs` table in this test's database.
    rows = dict(query(p.dbs["dagster"], "SELECT run_id, status FROM runs"))
    assert {r.run_id: "SUCCESS" for r in p.runs}.items() <= rows.items()
    assert type(p.instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(p.instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(p.instance.schedule_storage).__name__ == "PostgresScheduleStorage"

    # MLflow: the version, its tags and alias in Postgres; artifacts under the configured root.
    client = mlflow.MlflowClient(p.env["MLFLOW_TRACKING_URI"], p.env["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version(AGENT, p.version)
    assert mv.tags["approval_status"] == "pending"
    assert mv.tags["dataset_partitions"] == ",".join(DAYS)
    assert mv.tags["dagster_run_id"] == p.runs[3].run_id
    assert "deployed_dev" in mv.tags
    assert str(client.get_registered_model(AGENT).aliases["challenger"]) == p.version
    experiment = client.get_experiment(client.get_run(mv.run_id).info.experiment_id)
    assert experiment.artifact_location.startswith((p.home / "mlflow-artifacts").as_uri())
    assert query(p.dbs["mlflow"], "SELECT count(*) FROM model_versions WHERE name = %s", AGENT)[0][0] >= 1

    # Serving: a real process, resolving the model through the registry on Postgres.
    dep = metadata(p.instance, "deployment")
    environ = Path(f"/proc/{dep['pid']}/environ").read_bytes().split(b"\0")
    assert f"MLFLOW_TRACKING_URI={p.env['MLFLOW_TRACKING_URI']}".encode() in environ
    out = invoke(dep["url"], [{"text": "I forgot my password and can't log in", "customer_id": "C00010"}])
    assert out["predictions"][0]["tool"] == "reset_password"

    # Feast: the registry in Postgres, online features in Redis db 14 under this project.
    from datetime import date

    from agentops_pipelines.data.generator import customer_snapshot
    from agentops_pipelines.feature_repo.definitions import PROFILE_FEATURES
    from agentops_pipelines.features.online import agent_project
    from agentops_pipelines.resources.feast import FeastResource

    project = agent_project(p.project, AGENT)  # each agent's features are their own project
    assert query(p.dbs["feast"], "SELECT project_id FROM projects") == [(project,)]
    feast = FeastResource(repo_dir=str(p.settings.feast_dir), registry=p.settings.feast_registry,
                          online_store=p.settings.feast_online_store, project=p.project).for_agent(AGENT)
    customers = [f"C{i:05d}" for i in range(1, 21)]
    online = feast.online_features(customers).set_index("customer_id")
    expected = customer_snapshot(date.fromisoformat(DAYS[-1])).set_index("customer_id").loc[customers]
    assert (online["plan_tier"] != "unknown").all()
    for name in PROFILE_FEATURES:
        assert online[name].tolist() == expected[name].tolist(), name
    assert sum(1 for _ in _redis().scan_iter(match=f"*{project}", count=1000)) >= 2000


@pytest.mark.slow
def test_killed_connections_lose_nothing(production):
    """pg_terminate_backend on every connection to this test's databases (the server-side view
    of a Postgres restart): the sensor, a run from its request and another run carry on."""
    p = production
    before = {r.run_id for r in p.instance.get_runs()}

    def kill() -> int:
        rows = query("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()", list(p.dbs.values()))
        return sum(1 for (ok,) in rows if ok)

    assert kill() >= 1, "pooled connections (MLflow, Feast registry, the serving process) were open"
    # A sensor reading MLflow's tables: it finds the pipeline's own training run (and skips it),
    # instead of reporting MLflow unreachable.
    sensor = p.defs.resolve_sensor_def(f"{AGENT}_mlflow_run_sensor")
    result = sensor(dg.build_sensor_context(instance=p.instance, resources=p.defs.resources))
    assert isinstance(result, dg.SkipReason), result
    assert "unreachable" not in result.skip_message and "1 finished run" in result.skip_message, result
    # A run that reads and writes Postgres everywhere: Dagster's storage, the MLflow registry (in
    # this process and in the serving process, whose pooled connection was killed too).
    deploy = run_job(p.defs, p.instance, "deploy", partition_key="dev", tags={"agentops/environment": "dev"},
                     run_config={"ops": {f"{AGENT}__deployment": {"config": {"version": p.version}}}})
    assert deploy.success
    kill()
    ingest = run_job(p.defs, p.instance, "ingest", partition_key="2026-11-04")
    assert ingest.success

    after = {r.run_id: r for r in p.instance.get_runs()}
    assert before | {deploy.run_id, ingest.run_id} == set(after)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in after.values() if r.run_id not in before)
    assert query(p.dbs["dagster"], "SELECT count(*) FROM runs")[0][0] == len(after)
    client = mlflow.MlflowClient(p.env["MLFLOW_TRACKING_URI"], p.env["MLFLOW_TRACKING_URI"])
    assert str(client.get_registered_model(AGENT).aliases["challenger"]) == p.version
    assert invoke(metadata(p.instance, "deployment")["url"],
                  [{"text": "where is my order", "customer_id": "C00001"}])["predictions"]


def test_check_names_each_broken_service(tmp_path):
    """Wrong credentials, an unreachable port, a missing database, an unreachable Redis: one
    line each, naming the service; exit 1; no traceback. (This server trusts every local
    connection, so a wrong password cannot be told apart here: an unknown role stands in.)"""
    with databases_and_project() as target:
        env = production_env(tmp_path / "agentops", target.dbs, target.project)
        ok = agentops("check", env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert sum(line.startswith("ok") for line in ok.stdout.splitlines()) == 5, ok.stdout

        env.update({
            "DAGSTER_PG_USER": f"nobody_{target.project[-6:]}",
            "MLFLOW_TRACKING_URI": pg_url(target.dbs["mlflow"], port=1),
            "AGENTOPS_FEAST_REGISTRY": pg_url(f"{target.project}_missing", "postgresql+psycopg"),
            "AGENTOPS_FEAST_REDIS": f"{REDIS_HOST}:1,db={REDIS_DB}",
        })
        bad = agentops("check", env=env)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr, bad.stderr
    failures = [line for line in bad.stderr.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 4, bad.stderr
    by_service = {line.split(" (")[0].removeprefix("FAIL").strip(): line for line in failures}
    assert "wrong credentials" in by_service["Dagster storage"] and "nobody_" in by_service["Dagster storage"]
    assert "unreachable" in by_service["MLflow tracking"] and "port 1" in by_service["MLflow tracking"]
    assert "missing database" in by_service["Feast registry"] and "create_databases.py" in by_service["Feast registry"]
    assert "unreachable" in by_service["Feast online store"] and ":1" in by_service["Feast online store"]
    assert "ok    MLflow artifacts" in bad.stdout


def test_demo_stops_at_the_check_in_production(tmp_path):
    with databases_and_project() as target:
        env = production_env(tmp_path / "agentops", target.dbs, target.project)
        env["AGENTOPS_FEAST_REDIS"] = f"{REDIS_HOST}:1,db={REDIS_DB}"
        out = agentops("demo", "--days", "1", env=env)
        tables = query(target.dbs["dagster"], "SELECT count(*) FROM information_schema.tables "
                                              "WHERE table_schema = 'public'")[0][0]
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "FAIL  Feast online store" in out.stderr
    assert tables == 0, "nothing ran: the Dagster database is still empty"


def test_production_mode_refuses_embedded_defaults(tmp_path):
    env = {"AGENTOPS_MODE": "production", "AGENTOPS_HOME": str(tmp_path / "agentops"),
           "AGENTOPS_FEAST_REDIS": f"{REDIS_HOST}:{REDIS_PORT},db={REDIS_DB}"}
    out = agentops("check", env=env)
    assert out.returncode == 1
    line = next(x for x in out.stderr.splitlines() if x.startswith("FAIL  configuration"))
    for name in ("DAGSTER_PG_HOST", "MLFLOW_TRACKING_URI", "AGENTOPS_MLFLOW_ARTIFACT_ROOT",
                 "AGENTOPS_FEAST_REGISTRY"):
        assert name in line
    assert "AGENTOPS_FEAST_REDIS" not in line


def test_create_databases_is_idempotent(tmp_path):
    prefix = f"agentops_test_{uuid.uuid4().hex[:10]}"
    names = {store: f"{prefix}_{store}" for store in STORES}
    env = production_env(tmp_path / "agentops", names, prefix)
    script = [sys.executable, str(ROOT / "deploy" / "scripts" / "create_databases.py")]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_PG_", "AGENTOPS_", "MLFLOW_TRACKING"))}
    try:
        first = subprocess.run(script, env={**base, **env}, capture_output=True, text=True, timeout=60)
        second = subprocess.run(script, env={**base, **env}, capture_output=True, text=True, timeout=60)
        existing = {row[0] for row in query("postgres", "SELECT datname FROM pg_database WHERE datname LIKE %s",
                                            f"{prefix}%")}
    finally:
        conn = _admin()
        with conn.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert existing == set(names.values())
    assert first.stdout.count("created") == 3 and second.stdout.count("exists") == 3, first.stdout + second.stdout
