"""The one place that reads the environment.

Every path and service address the code location uses is derived here, so the embedded default
(everything under one state folder, ``AGENTOPS_HOME``) and production mode (Postgres, Redis,
Kubernetes) differ by environment variables alone.

The mode is explicit: ``AGENTOPS_MODE=production`` (default ``local``); it is never inferred.
Each service variable works on its own in local mode (a local Redis for Feast, say). Production
mode refuses every embedded fallback: ``load_settings()`` raises, naming the missing variables,
unless the Dagster instance (``DAGSTER_PG_*``), MLflow (``MLFLOW_TRACKING_URI``, not SQLite;
``AGENTOPS_MLFLOW_ARTIFACT_ROOT``) and Feast (``AGENTOPS_FEAST_REDIS``,
``AGENTOPS_FEAST_REGISTRY``) are all configured, so a half-configured deployment does not load
and quietly write to a local SQLite file; nor does one where dev's or staging's system of record
(``AGENTOPS_SOR_URL_DEV``/``_STAGING``) is prod's (``AGENTOPS_SOR_URL``). :func:`check` then
connects to every configured service (``agentops check``; ``agentops demo`` runs it first in
production mode) and returns one line per service, naming the problem: wrong credentials,
unreachable host, missing database.

Service clients (psycopg, SQLAlchemy, redis) are imported inside :func:`check` only: loading
settings stays free of I/O beyond reading variables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlparse

from agentops_pipelines.vocabulary import (
    DEFAULT_REFUND_LIMIT,
    ENVIRONMENTS,
    SQL_URL_SCHEMES,
    EnvVar,
    sor_url,
    sor_url_variable,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DAGSTER_YAML = PROJECT_ROOT / "dagster.yaml"
PRODUCTION_DAGSTER_YAML = PROJECT_ROOT / "deploy" / "dagster-production.yaml"
DAGSTER_PG_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD",
                   "DAGSTER_PG_DB")
CHECK_TIMEOUT_S = 3
DEPLOYERS = ("local", "kubernetes")  # AGENTOPS_DEPLOYER
CREATE_DATABASES = ".venv/bin/python deploy/scripts/create_databases.py"
DEFAULT_APPROVERS_FILE = PROJECT_ROOT / "approvers.yaml"
DEFAULT_AGENTS_DIR = PROJECT_ROOT / "agents"  # one YAML file per agent (agent/config.py)


def agentops_home() -> Path:
    """The state folder: ``$AGENTOPS_HOME``, or ``.agentops/`` at the project root."""
    return Path(os.environ.get(EnvVar.HOME) or PROJECT_ROOT / ".agentops").resolve()


@dataclass(frozen=True)
class PostgresTarget:
    """Where the Dagster instance keeps runs, event logs and schedules (``DAGSTER_PG_*``)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    db: str

    def url(self) -> str:
        """The SQLAlchemy URL dagster-postgres builds from the same values (driver: psycopg2,
        as in deploy/dagster-production.yaml)."""
        userinfo = f"{quote(self.user)}:{quote(self.password)}" if self.password else quote(self.user)
        return f"postgresql+psycopg2://{userinfo}@{self.host}:{self.port}/{self.db}"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class Settings:
    home: Path
    mode: str  # "local" (embedded default) or "production"
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    mlflow_ui_url: str
    lake_dir: Path
    feast_dir: Path
    feast_online_store: str  # "sqlite" or a Redis connection string
    feast_registry: str  # a file path, or a SQLAlchemy URL for a SQL registry
    serving_dir: Path
    inference_log_dir: Path  # requests and predictions of every deployment, for drift
    feast_project: str = "agentops"  # Redis keys and registry rows are per project
    dagster_postgres: PostgresTarget | None = None  # None: the embedded SQLite instance
    dagster_yaml: Path = EMBEDDED_DAGSTER_YAML  # copied into DAGSTER_HOME by `agentops dev/demo`
    # Setting name -> the variable it was read from verbatim, for values that carry a password:
    # build_resources passes those as dagster.EnvVar, so the UI shows the name, not the secret.
    secret_env: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # configuration errors; load_settings raises on them in production
    audit_db_url: str = ""  # the audit log's SQLAlchemy URL; empty: SQLite under the state folder
    # The audit log's MAC key (a secret file, never in the audit database; made on first use in
    # local mode, mounted in production) and its append-only anchor (keep it on storage the
    # database's owner cannot rewrite).
    audit_key_file: Path = Path()
    audit_anchor: Path = Path()
    # Who may approve each agent and how many approvals each environment needs (a file in the
    # repository or a mounted secret; never a variable of one process).
    approvers_file: Path = DEFAULT_APPROVERS_FILE
    prometheus_url: str = ""  # empty: no Prometheus (the alert sensor skips)
    deployer: str = "local"  # "local" (a serving process on this machine) or "kubernetes"
    serving_image: str = ""  # kubernetes: the serving pods' image (default: the deployer's)
    k8s_namespace: str = ""  # kubernetes: one namespace for every environment (default: one each)
    serving_mlflow_uri: str = ""  # kubernetes: MLflow as the pods reach it (default: in-cluster)
    k8s_inference_log_claim: str = ""  # kubernetes: the pods' inference-log claim ("" logs nothing)
    serving_host: str = "127.0.0.1"  # local: the interface serving processes listen on
    # local: "<environment>" (the first agent) or "<agent>/<environment>" -> port; other serving
    # processes get a port chosen at their first deploy and kept in the state folder
    serving_ports: Mapping[str, int] = field(default_factory=dict)
    serving_admin_token: bool = False  # AGENTOPS_SERVING_ADMIN_TOKEN is set (the value stays there)
    # The support desk's system of record (agent/system_of_record.py), one per environment
    # (environment -> SQLAlchemy URL or "off"; a secret in production: never logged; the deployer
    # passes each serving process its own environment's only), by default a SQLite file per
    # environment under the state folder; ``sor_url`` is prod's (the demo seeds it). And the
    # refund limit of its policy.
    sor_url: str = ""
    sor_urls: Mapping[str, str] = field(default_factory=dict)
    refund_limit: float = 100.0
    agents_dir: Path = DEFAULT_AGENTS_DIR  # AGENTOPS_AGENTS_DIR: the agents declared by configuration
    # LLM agents (agent/llm): an OpenAI-compatible endpoint; empty: no LLM agent in the code
    # location. The key stays in AGENTOPS_LLM_API_KEY, read by name where a call is made.
    llm_base_url: str = ""
    llm_model: str = ""
    llm_response_format: str = "json_schema"  # or "json_object" (llama-cpp-python's server)
    # Where candidates' model code runs (agentops_pipelines/sandbox): refuse to run it without
    # Landlock (AGENTOPS_SANDBOX_REQUIRE_LANDLOCK; default: on in production mode only), and the
    # MiniLM weights' folder it may read (AGENTOPS_MINILM_DIR; default: inside the venv).
    sandbox_require_landlock: bool = False
    minilm_dir: str = ""

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster")

    @property
    def production(self) -> bool:
        return self.mode == "production"


class SettingsError(ValueError):
    """The environment does not describe a usable configuration (one problem per line)."""


def _has_password(value: str) -> bool:
    if "password=" in value:  # Feast's host:port,password=... Redis form
        return True
    try:
        return "://" in value and bool(urlparse(value).password)
    except ValueError:
        return False


def _dagster_postgres(env: Mapping[str, str], problems: list[str]) -> PostgresTarget | None:
    if not env.get("DAGSTER_PG_HOST"):
        return None
    missing = [name for name in DAGSTER_PG_VARS if env.get(name) is None]  # "" is a valid password
    if missing:
        problems.append(f"DAGSTER_PG_HOST is set, so the Dagster instance is on Postgres "
                        f"({PRODUCTION_DAGSTER_YAML.relative_to(PROJECT_ROOT)}): also set "
                        f"{', '.join(missing)}")
        return None
    try:
        port = int(env["DAGSTER_PG_PORT"])
    except ValueError:
        problems.append(f"DAGSTER_PG_PORT must be a port number, not {env['DAGSTER_PG_PORT']!r}")
        return None
    return PostgresTarget(host=env["DAGSTER_PG_HOST"], port=port, user=env["DAGSTER_PG_USER"],
                          password=env["DAGSTER_PG_PASSWORD"], db=env["DAGSTER_PG_DB"])


def _production_problems(env: Mapping[str, str], tracking: str) -> list[str]:
    missing = []
    if not env.get("AGENTOPS_DAGSTER_YAML") and not env.get("DAGSTER_PG_HOST"):
        missing.append("DAGSTER_PG_HOST (and DAGSTER_PG_PORT/USER/PASSWORD/DB)")
    if tracking.startswith("sqlite:"):
        missing.append("MLFLOW_TRACKING_URI (postgresql://... or an MLflow server, not SQLite)")
    for name in (EnvVar.MLFLOW_ARTIFACT_ROOT.value, EnvVar.FEAST_REDIS.value, EnvVar.FEAST_REGISTRY.value,
                 "AGENTOPS_AUDIT_KEY_FILE"):
        if not env.get(name):
            missing.append(name)
    if not missing:
        return []
    return [f"AGENTOPS_MODE=production refuses the embedded defaults: set {', '.join(missing)} "
            f"(README, 'Production mode')"]


def _serving_ports(value: str, problems: list[str]) -> dict[str, int]:
    """``dev=8081,other_agent/dev=8091`` -> {"dev": 8081, "other_agent/dev": 8091}; empty: each
    serving process keeps the port chosen at its first deploy."""
    ports: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        environment, _, port = item.partition("=")
        if not environment.strip() or not port.strip().isdigit() or not 0 < int(port) < 65536:
            problems.append(f"AGENTOPS_SERVING_PORTS must look like 'dev=8081,prod=8083'; "
                            f"{item!r} is not environment=port")
            continue
        ports[environment.strip()] = int(port)
    return ports


def _flag(name: str, value: str, default: bool, problems: list[str]) -> bool:
    if not value.strip():
        return default
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    problems.append(f"{name} must be true or false, not {value!r}")
    return default


def _refund_limit(value: str, problems: list[str]) -> float:
    if not value.strip():
        return DEFAULT_REFUND_LIMIT
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not 0 < limit < 1e9:
        problems.append(f"{EnvVar.REFUND_LIMIT} must be a positive amount, not {value!r}")
        return DEFAULT_REFUND_LIMIT
    return limit


_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}


def _database_identity(url: str) -> tuple:
    """What names one database whatever the credentials: (host, port, database) of a server URL,
    the resolved file of a SQLite one. Two users of one database are still one database."""
    if url.startswith("sqlite:"):
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        return ("sqlite", str(Path(path).resolve()) if path not in ("", ":memory:") else url)
    try:
        parts = urlparse(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.split("+", 1)[0])
        return (parts.hostname or "", port, parts.path.rstrip("/"), parts.query)
    except ValueError:
        return (url,)


def _shared_sor_problems(urls: Mapping[str, str]) -> list[str]:
    """dev or staging acting on prod's system of record: versions nobody approved (every version
    reaches dev) would refund and cancel production customers' orders."""
    prod = urls.get("prod", "")
    if prod.lower() == "off":
        return []
    return [f"{sor_url_variable(environment)} names the same database as {EnvVar.SOR_URL} (prod's system "
            f"of record): {environment} serves versions before prod approves them, so it must act on "
            f"its own database; set {sor_url_variable(environment)} to another database, or to 'off'"
            for environment in ENVIRONMENTS
            if environment != "prod" and urls[environment].lower() != "off"
            and _database_identity(urls[environment]) == _database_identity(prod)]


def load_settings(strict: bool = True) -> Settings:
    """Settings for the current environment. Cheap: no I/O beyond reading variables.

    In production mode a configuration problem raises :class:`SettingsError` (all problems, one
    per line) unless ``strict=False`` (what :func:`check` uses, to report them with the rest).
    """
    env = os.environ
    home = agentops_home()
    problems: list[str] = []
    mode = env.get("AGENTOPS_MODE") or "local"
    if mode not in ("local", "production"):
        raise SettingsError(f"AGENTOPS_MODE must be 'local' or 'production', not {mode!r}")
    deployer = env.get("AGENTOPS_DEPLOYER") or "local"
    if deployer not in DEPLOYERS:
        raise SettingsError(f"AGENTOPS_DEPLOYER must be one of {', '.join(DEPLOYERS)}, not {deployer!r}")
    tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    artifacts = env.get(EnvVar.MLFLOW_ARTIFACT_ROOT) or str(home / "mlflow" / "artifacts")
    from agentops_pipelines.features.online import config_from_environ

    feast = config_from_environ(env, home)  # the same reading a served model makes
    registry, online, project = feast.registry, feast.online_store, feast.project
    if not re.fullmatch(r"[A-Za-z0-9_]+", project):
        problems.append(f"AGENTOPS_FEAST_PROJECT must be letters, digits and underscores, not {project!r}")
    dagster_pg = _dagster_postgres(env, problems)
    if env.get("AGENTOPS_DAGSTER_YAML"):
        dagster_yaml = Path(env["AGENTOPS_DAGSTER_YAML"]).resolve()
    elif env.get("DAGSTER_PG_HOST"):
        dagster_yaml = PRODUCTION_DAGSTER_YAML
    else:
        dagster_yaml = EMBEDDED_DAGSTER_YAML
    serving_host = env.get("AGENTOPS_SERVING_HOST") or "127.0.0.1"
    serving_ports = _serving_ports(env.get("AGENTOPS_SERVING_PORTS", ""), problems)
    admin_token = bool(env.get("AGENTOPS_SERVING_ADMIN_TOKEN"))
    refund_limit = _refund_limit(env.get(EnvVar.REFUND_LIMIT, ""), problems)
    sor_urls = {environment: sor_url(environment, env, home) for environment in ENVIRONMENTS}
    require_landlock = _flag(EnvVar.SANDBOX_REQUIRE_LANDLOCK, env.get(EnvVar.SANDBOX_REQUIRE_LANDLOCK, ""),
                             mode == "production", problems)
    problems += _shared_sor_problems(sor_urls)
    if mode == "production":
        problems += _production_problems(env, tracking)
        if serving_host not in ("127.0.0.1", "localhost", "::1") and not admin_token:
            problems.append(f"AGENTOPS_SERVING_HOST={serving_host} opens the serving processes' "
                            f"/admin/* endpoints to the network: set AGENTOPS_SERVING_ADMIN_TOKEN")
    secret_env = {
        name: variable
        for name, variable, value in (
            ("mlflow_tracking_uri", "MLFLOW_TRACKING_URI", tracking),
            ("feast_registry", EnvVar.FEAST_REGISTRY.value, registry),
            ("feast_online_store", EnvVar.FEAST_REDIS.value, online),
            ("audit_db_url", "AGENTOPS_AUDIT_DB_URL", env.get("AGENTOPS_AUDIT_DB_URL", "")),
            ("sor_url", EnvVar.SOR_URL.value, env.get(EnvVar.SOR_URL, "")),
        )
        if env.get(variable) == value and _has_password(value)
    }
    settings = Settings(
        home=home,
        mode=mode,
        mlflow_tracking_uri=tracking,
        mlflow_artifact_root=artifacts,
        mlflow_ui_url=env.get(EnvVar.MLFLOW_UI_URL, "http://127.0.0.1:5000"),
        lake_dir=Path(env.get("AGENTOPS_LAKE_DIR") or home / "lake"),
        feast_dir=feast.repo_dir,
        feast_online_store=online,
        feast_registry=registry,
        serving_dir=home / "serving",
        inference_log_dir=Path(env.get("AGENTOPS_INFERENCE_LOG_DIR") or home / "inference_log"),
        feast_project=project,
        dagster_postgres=dagster_pg,
        dagster_yaml=dagster_yaml,
        secret_env=secret_env,
        problems=tuple(problems),
        audit_db_url=env.get("AGENTOPS_AUDIT_DB_URL", ""),
        audit_key_file=Path(env.get("AGENTOPS_AUDIT_KEY_FILE") or home / "secrets" / "audit.key"),
        audit_anchor=Path(env.get("AGENTOPS_AUDIT_ANCHOR") or home / "audit" / "anchor.jsonl"),
        approvers_file=Path(env.get("AGENTOPS_APPROVERS_FILE") or DEFAULT_APPROVERS_FILE).resolve(),
        prometheus_url=env.get("AGENTOPS_PROMETHEUS_URL", ""),
        deployer=deployer,
        serving_image=env.get("AGENTOPS_SERVING_IMAGE", ""),
        k8s_namespace=env.get("AGENTOPS_K8S_NAMESPACE", ""),
        serving_mlflow_uri=env.get("AGENTOPS_SERVING_MLFLOW_URI", ""),
        k8s_inference_log_claim=env.get("AGENTOPS_K8S_INFERENCE_LOG_CLAIM", ""),
        serving_host=serving_host,
        serving_ports=serving_ports,
        serving_admin_token=admin_token,
        sor_url=sor_urls["prod"],
        sor_urls=sor_urls,
        refund_limit=refund_limit,
        agents_dir=Path(env.get(EnvVar.AGENTS_DIR) or DEFAULT_AGENTS_DIR).resolve(),
        llm_base_url=env.get(EnvVar.LLM_BASE_URL, "").rstrip("/"),
        llm_model=env.get(EnvVar.LLM_MODEL, ""),
        llm_response_format=env.get(EnvVar.LLM_RESPONSE_FORMAT) or "json_schema",
        sandbox_require_landlock=require_landlock,
        minilm_dir=env.get(EnvVar.MINILM_DIR, ""),
    )
    if settings.llm_response_format not in ("json_schema", "json_object"):
        problems.append(f"{EnvVar.LLM_RESPONSE_FORMAT} must be json_schema or json_object, "
                        f"not {settings.llm_response_format!r}")
        settings = replace(settings, problems=tuple(problems), llm_response_format="json_schema")
    if strict and mode == "production" and problems:
        raise SettingsError("\n".join(problems))
    return settings


# ---------------------------------------------------------------------------------- check


@dataclass(frozen=True)
class CheckResult:
    """One service: ``ok`` with what was reached, or the problem in one line."""

    service: str  # "Dagster storage", "MLflow tracking", "MLflow artifacts", "Feast registry", ...
    target: str  # where, without secrets
    problem: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def __str__(self) -> str:
        if self.ok:
            return f"ok    {self.service} ({self.target})" + (f": {self.note}" if self.note else "")
        return f"FAIL  {self.service} ({self.target}): {self.problem}"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    lines = [" ".join(line.split()) for line in str(orig).splitlines() if line.strip()]
    return lines[0].removeprefix("connection failed: ") if lines else type(orig).__name__


def _classify(message: str) -> str:
    """A driver's error as 'what is wrong: the driver's words'."""
    low = message.lower()
    if "database" in low and "does not exist" in low:
        return f"missing database: {message}; create it with {CREATE_DATABASES}"
    if ("password authentication failed" in low or "role" in low and "does not exist" in low
            or "no password supplied" in low or "access denied" in low
            or "wrongpass" in low or "noauth" in low or "invalid username-password" in low
            or "authentication" in low):
        return f"wrong credentials: {message}"
    if any(s in low for s in ("connection refused", "could not translate host name", "timeout",
                              "timed out", "no route to host", "name or service not known",
                              "network is unreachable", "connecting to", "error 111", "error 113")):
        return f"unreachable: {message}"
    return message


def _safe_url(url: str) -> str:
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never let a label hide the real problem
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _sql_problem(url: str) -> str:
    """Connect and run ``SELECT 1``; the problem in one line, or "" if it works."""
    import sqlalchemy

    connect_args = {"connect_timeout": CHECK_TIMEOUT_S} if url.startswith("postgres") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver
        return f"invalid URL: {type(exc).__name__}: {_first_line(exc)}"
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return _classify(_first_line(exc))
    finally:
        engine.dispose()
    return ""


def _sql_has_table(url: str, table: str) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        return sqlalchemy.inspect(engine).has_table(table)
    except Exception:  # noqa: BLE001 - the connection was just checked; this is only a note
        return False
    finally:
        engine.dispose()


def _writable(path: Path) -> str:
    """"" if ``path`` exists as a writable folder or can be created."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK):
        return f"{existing} is not writable"
    return ""


def _check_http(service: str, url: str, path: str) -> CheckResult:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP_PROXY
    try:
        with opener.open(f"{url.rstrip('/')}{path}", timeout=CHECK_TIMEOUT_S) as resp:
            problem = "" if resp.status == 200 else f"GET {path} answered HTTP {resp.status}"
    except Exception as exc:  # noqa: BLE001
        problem = _classify(_first_line(exc))
    return CheckResult(service, _safe_url(url), problem)


def _check_dagster(settings: Settings) -> CheckResult:
    pg = settings.dagster_postgres
    if pg is None:
        if settings.dagster_yaml != EMBEDDED_DAGSTER_YAML:
            return CheckResult("Dagster storage", str(settings.dagster_yaml),
                               note="custom instance yaml, not checked")
        problem = _writable(settings.dagster_home)
        return CheckResult("Dagster storage", f"SQLite under {settings.dagster_home}", problem)
    target = f"Postgres {pg.label}"
    problem = _sql_problem(pg.url())
    if problem:
        return CheckResult("Dagster storage", target, problem)
    created = _sql_has_table(pg.url(), "runs")
    return CheckResult("Dagster storage", target,
                       note="tables present" if created else "empty database: Dagster creates its tables on first use")


def _check_mlflow(settings: Settings) -> list[CheckResult]:
    uri = settings.mlflow_tracking_uri
    results = []
    if uri.startswith(("http://", "https://")):
        results.append(_check_http("MLflow tracking", uri, "/health"))
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        results.append(CheckResult("MLflow tracking", f"SQLite {path}", _writable(path.parent)))
    elif "://" in uri:
        target = _safe_url(uri)
        problem = _sql_problem(uri)
        note = ""
        if not problem:
            note = ("schema present" if _sql_has_table(uri, "alembic_version")
                    else "empty database: MLflow creates its schema on first use")
        results.append(CheckResult("MLflow tracking", target, problem, note))
    else:
        results.append(CheckResult("MLflow tracking", uri, "not a URI MLflow can use as a store"))
    root = settings.mlflow_artifact_root
    if "://" in root and not root.startswith("file://"):
        results.append(CheckResult("MLflow artifacts", root, note="remote store, not checked"))
    else:
        path = Path(root.removeprefix("file://"))
        results.append(CheckResult("MLflow artifacts", str(path), _writable(path)))
    return results


def _check_feast(settings: Settings) -> list[CheckResult]:
    from agentops_pipelines.resources.feast import redis_connection_string

    results = []
    online = settings.feast_online_store
    if online == "sqlite":
        results.append(CheckResult("Feast online store", f"SQLite under {settings.feast_dir}",
                                   _writable(settings.feast_dir)))
    else:
        connection = redis_connection_string(online)
        target = "Redis " + re.sub(r"password=[^,]*", "password=***", connection)
        results.append(CheckResult("Feast online store", target, _redis_problem(connection)))
    registry = settings.feast_registry
    scheme = urlparse(registry).scheme.split("+", 1)[0].lower() if "://" in registry else ""
    if scheme in SQL_URL_SCHEMES:
        results.append(CheckResult("Feast registry", _safe_url(registry), _sql_problem(registry)))
    elif scheme:
        results.append(CheckResult("Feast registry", registry, note="remote file, not checked"))
    else:
        results.append(CheckResult("Feast registry", f"file {registry}", _writable(Path(registry).parent)))
    return results


def _redis_problem(connection: str) -> str:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from agentops_pipelines.resources.feast import _redis_kwargs

    client = redis.Redis(**_redis_kwargs(connection), socket_connect_timeout=CHECK_TIMEOUT_S,
                         socket_timeout=CHECK_TIMEOUT_S,
                         retry=Retry(NoBackoff(), 0))  # redis-py retries for ~7 s by default
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return _classify(_first_line(exc))
    finally:
        client.close()
    return ""


def check(settings: Settings | None = None) -> list[CheckResult]:
    """Connect to every configured service; one result per service (and per config problem).

    Never raises for a service problem: each is a line naming the service, where it is (no
    password) and what is wrong. Takes a few seconds at most (``CHECK_TIMEOUT_S`` per service).
    """
    settings = settings or load_settings(strict=False)
    results = [CheckResult("configuration", f"AGENTOPS_MODE={settings.mode}", problem)
               for problem in settings.problems]
    results.append(_check_dagster(settings))
    results += _check_mlflow(settings)
    results += _check_feast(settings)
    if settings.audit_db_url:
        results.append(CheckResult("Audit log", _safe_url(settings.audit_db_url),
                                   _sql_problem(settings.audit_db_url)))
    if settings.prometheus_url:
        results.append(_check_http("Prometheus", settings.prometheus_url, "/-/ready"))
    return results
