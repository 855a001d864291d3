"""The project's shared words, defined once: environments, modes, tags, aliases, variable names.

Every module that names an environment, a model-version tag, a run tag or an environment variable
imports it from here, so a name has one spelling and a rename is one edit.

Two words that sound alike are kept apart on purpose:

- an ``Environment`` is where a version serves: dev, staging or prod (deployment partitions,
  deployers, approval policies);
- a ``Mode`` is how the code location runs: local (embedded SQLite, files) or production (Postgres,
  Redis, Kubernetes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path


class Environment(StrEnum):
    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


ENVIRONMENTS: tuple[str, ...] = tuple(e.value for e in Environment)
# Environments that serve only versions a reviewer approved (the approval policy names them).
GUARDED_ENVIRONMENTS: tuple[str, ...] = (Environment.STAGING.value, Environment.PROD.value)


def sor_url_variable(environment: str) -> str:
    """The variable naming ``environment``'s system of record: ``AGENTOPS_SOR_URL`` for prod
    (the name existing deployments already set), ``AGENTOPS_SOR_URL_<ENVIRONMENT>`` for every
    other one, so an environment never acts on another's data by sharing a variable."""
    known = {Environment.PROD: EnvVar.SOR_URL, Environment.DEV: EnvVar.SOR_URL_DEV,
             Environment.STAGING: EnvVar.SOR_URL_STAGING}
    if environment in known:
        return known[environment].value
    return f"{EnvVar.SOR_URL}_{re.sub(r'[^A-Za-z0-9]', '_', environment).upper()}"


def sor_file_name(environment: str) -> str:
    """Where ``environment``'s own SQLite system of record used to live, directly in the state
    folder: ``system_of_record.db`` for prod, ``system_of_record_<environment>.db``."""
    if environment == Environment.PROD:
        return "system_of_record.db"
    return f"system_of_record_{re.sub(r'[^A-Za-z0-9_.-]', '_', environment)}.db"


def sor_file(home: Path, environment: str) -> Path:
    """``environment``'s own SQLite system of record (the local default), in a folder of its own,
    ``<home>/system_of_record/<environment>/system_of_record.db``: a confined serving process
    (serving/confine.py) may write that folder (SQLite makes its journal beside the file) and
    nothing else of the state folder. A file left at the old place (:func:`sor_file_name`) is
    moved there the first time its path is asked for."""
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", environment)
    path = Path(home) / "system_of_record" / folder / "system_of_record.db"
    legacy = Path(home) / sor_file_name(environment)
    if legacy.is_file() and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        legacy.rename(path)
    return path


def sor_url(environment: str, env: Mapping[str, str], home: Path) -> str:
    """``environment``'s system of record: the URL its variable names in ``env``
    (:func:`sor_url_variable`), else its own SQLite file under the state folder ``home``
    (:func:`sor_file`); never another environment's. What settings report and what the deployer
    hands a serving process."""
    return env.get(sor_url_variable(environment), "").strip() or f"sqlite:///{sor_file(home, environment)}"


def environment(value: str) -> Environment:
    """``value`` as an Environment, or a ValueError naming the valid ones."""
    try:
        return Environment(value)
    except ValueError:
        raise ValueError(f"unknown environment {value!r}; valid: {', '.join(ENVIRONMENTS)}") from None


# URL schemes (before any ``+driver``) that name a SQL database rather than a file or a server of
# another kind: a Feast registry given as such a URL is a SQL registry.
SQL_URL_SCHEMES = frozenset({"postgresql", "postgres", "mysql", "mariadb", "sqlite", "mssql", "oracle"})


class Mode(StrEnum):
    LOCAL = "local"
    PRODUCTION = "production"


class Alias(StrEnum):
    """MLflow registered-model aliases."""

    CHAMPION = "champion"  # what serves in prod
    CHALLENGER = "challenger"  # the newest registered candidate


_PINNED_MODEL = re.compile(r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,255})/(?P<version>[0-9]{1,18})$")


def pinned_version(model_uri: str, version: str | int | None = None) -> str:
    """The registry version ``model_uri`` pins (``models:/<agent>/<digits>``), as a label.

    Metrics, canary health, traces, shadow tags and the audit log name a served model by this
    label, so it is read from the URI, never taken beside it: a ``version`` given too must be the
    same number (else version 3's errors would count against 2). An alias
    (``models:/<agent>@champion``) pins nothing: whoever can move it would decide what serves,
    outside the audit log. ValueError naming what is wrong."""
    match = _PINNED_MODEL.match(model_uri) if isinstance(model_uri, str) else None
    if match is None:
        alias = " (an alias moves outside the audit log)" if "@" in str(model_uri) else ""
        raise ValueError(f"model_uri {model_uri!r} does not pin a version{alias}: expected "
                         "models:/<agent>/<version number>")
    pinned = str(int(match["version"]))
    given = None if version is None or isinstance(version, bool) else str(version)
    if version is not None and given not in (pinned, match["version"]):
        raise ValueError(f"'version' {version!r} does not match model_uri {model_uri!r}, which is "
                         f"version {pinned}: the version reported is the one the URI loads")
    return pinned


class VersionTag(StrEnum):
    """MLflow model-version tags. They are a view for people and the MLflow UI: the pipeline's
    decisions read the audit log and signed statements, never these."""

    STATUS = "approval_status"  # pending | approved | rejected | refused | promoted
    REVIEWER = "approval_reviewer"  # the approvers whose signed approvals count, comma-separated
    COMMENT = "approval_comment"
    DECIDED_AT = "approval_at"
    REFUSAL = "approval_refusal_reason"
    GATE = "evaluation_gate"  # passed | failed
    FROZEN = "frozen"  # "true" when drift froze the version
    FROZEN_REASON = "frozen_reason"
    ROLLED_BACK = "rolled_back"  # the reason
    ROLLED_BACK_AT = "rolled_back_at"
    PROMOTED_PROD = "promoted_prod_at"
    ARTIFACTS_SHA256 = "artifacts_sha256"
    REPORT_SHA256 = "evaluation_report_sha256"


# A reviewer's signed decision travels to the pipeline as this tag (one per reviewer); the value
# is a DSSE envelope (see agentops_pipelines.governance.signing). The tag is transport only.
DECISION_TAG_PREFIX = "agentops.decision."


class RunTag(StrEnum):
    """Dagster run tags. ``ROLLOUT`` (``<agent>/<environment>``, see :func:`rollout_tags`) carries
    the one-rollout-per-(agent, environment) limit in dagster.yaml (``tag_concurrency_limits``):
    one agent's long canary bake never queues another agent's rollback."""

    AGENT = "agentops/agent"
    ENVIRONMENT = "agentops/environment"
    ROLLOUT = "agentops/rollout"
    VERSION = "agentops/version"
    REVIEWER = "agentops/reviewer"


def rollout_tags(agent: str, environment: str) -> dict[str, str]:
    """The run tags of a run that deploys ``agent`` to ``environment``."""
    return {RunTag.AGENT: agent, RunTag.ENVIRONMENT: environment, RunTag.ROLLOUT: f"{agent}/{environment}"}


class EnvVar(StrEnum):
    """Environment variables the project reads (at the edge: settings, CLI, a process's main)."""

    HOME = "AGENTOPS_HOME"
    MODE = "AGENTOPS_MODE"
    MLFLOW_ARTIFACT_ROOT = "AGENTOPS_MLFLOW_ARTIFACT_ROOT"
    MLFLOW_UI_URL = "AGENTOPS_MLFLOW_UI_URL"
    # Feast: the feature repo folder, the project (Redis keys and registry rows per project), the
    # Redis online store, the registry (a file or a SQLAlchemy URL). Served models read them too.
    FEAST_DIR = "AGENTOPS_FEAST_DIR"
    FEAST_PROJECT = "AGENTOPS_FEAST_PROJECT"
    FEAST_REDIS = "AGENTOPS_FEAST_REDIS"
    FEAST_REGISTRY = "AGENTOPS_FEAST_REGISTRY"
    # "1": Feast's own typeguard checks stay on (features/feast_import.py), to debug a Feast call
    FEAST_TYPECHECKS = "AGENTOPS_FEAST_TYPECHECKS"
    APPROVERS_FILE = "AGENTOPS_APPROVERS_FILE"
    AGENTS_DIR = "AGENTOPS_AGENTS_DIR"  # the folder of agent YAML files (default: agents/)
    AUDIT_DB_URL = "AGENTOPS_AUDIT_DB_URL"
    AUDIT_KEY_FILE = "AGENTOPS_AUDIT_KEY_FILE"
    AUDIT_ANCHOR = "AGENTOPS_AUDIT_ANCHOR"
    SIGNING_KEY_DIR = "AGENTOPS_SIGNING_KEY_DIR"
    SERVING_ADMIN_TOKEN = "AGENTOPS_SERVING_ADMIN_TOKEN"
    SERVING_ROLE = "AGENTOPS_SERVING_ROLE"
    MINILM_DIR = "AGENTOPS_MINILM_DIR"  # the MiniLM weights' folder (default: the installed package)
    # Agents that act (agent/actions.py): the system of record's database URL, one per
    # environment (:func:`sor_url_variable`; a secret in production; default a SQLite file per
    # environment under AGENTOPS_HOME), "off" to serve without running tools, the refund limit
    # above which a person decides, and the share of live requests the serving process scores
    # with the code scorers (online evaluation). AGENTOPS_SOR_URL is prod's, and the one variable
    # a serving process reads: the deployer puts its own environment's URL there.
    SOR_URL = "AGENTOPS_SOR_URL"
    SOR_URL_DEV = "AGENTOPS_SOR_URL_DEV"
    SOR_URL_STAGING = "AGENTOPS_SOR_URL_STAGING"
    REFUND_LIMIT = "AGENTOPS_REFUND_LIMIT"
    ONLINE_EVAL_SAMPLE_RATE = "AGENTOPS_ONLINE_EVAL_SAMPLE_RATE"
    # LLM agents (agent/llm): an OpenAI-compatible endpoint. The key is read by name where a call
    # is made and never stored in settings, models, logs or MLflow.
    LLM_BASE_URL = "AGENTOPS_LLM_BASE_URL"
    LLM_MODEL = "AGENTOPS_LLM_MODEL"
    LLM_API_KEY = "AGENTOPS_LLM_API_KEY"
    LLM_RESPONSE_FORMAT = "AGENTOPS_LLM_RESPONSE_FORMAT"
    # true: refuse to run a candidate's model code where the kernel has no Landlock (sandbox/)
    SANDBOX_REQUIRE_LANDLOCK = "AGENTOPS_SANDBOX_REQUIRE_LANDLOCK"


class ShadowTag(StrEnum):
    """Model-version tags the shadow comparison leaves on the challenger version, for its
    reviewers: context before any canary. A serving process writes them and holds no audit key,
    so ``agentops status`` shows them marked unverified, never as evidence."""

    PRIMARY = "agentops.shadow.primary_version"
    REQUESTS = "agentops.shadow.requests"
    PRIMARY_PASS = "agentops.shadow.primary_pass_rate"
    CHALLENGER_PASS = "agentops.shadow.challenger_pass_rate"
    AGREEMENT = "agentops.shadow.tool_agreement"
    MCNEMAR_P = "agentops.shadow.mcnemar_p"
    VERDICT = "agentops.shadow.verdict"  # better | worse | no_difference | too_few
    RECORDED_AT = "agentops.shadow.recorded_at"


SHADOW_TAG_PREFIX = "agentops.shadow."
DEFAULT_REFUND_LIMIT = 100.0
DEFAULT_ONLINE_EVAL_SAMPLE_RATE = 0.1
