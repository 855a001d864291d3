"""The online feature lookup: one plain module used by the Feast resource (code location) and by
served models (serving processes), so a served model imports nothing from the code location's
Dagster resources or settings.

:class:`StoreConfig` says where Feast's registry and online store are; :func:`config_from_environ`
reads it from a process's environment (the variables `resources/settings.py` documents), once, at
that process's edge; :class:`OnlineLookup` answers ``{column: values}`` for customer ids.
``feast`` is imported inside methods only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from agentops_pipelines.feature_repo.definitions import FEATURE_DEFAULTS, FEATURE_REFS, JOIN_KEY
from agentops_pipelines.vocabulary import SQL_URL_SCHEMES, EnvVar

FEATURES: list[str] = [ref.split(":", 1)[1] for ref in FEATURE_REFS]
AGENTS_FOLDER = "agents"  # <feast dir>/agents/<agent>/: one agent's rendered config, store, offline data
_NOT_PROJECT_CHAR = re.compile(r"[^A-Za-z0-9_]")


def agent_project(project: str, agent: str) -> str:
    """The Feast project holding ``agent``'s features: ``<project>_<agent>``, a valid Feast name
    (letters, digits, underscores). Feast keys registry rows, SQLite online tables
    (``<project>_<view>``) and Redis keys by project, so two agents never share a value."""
    slug = _NOT_PROJECT_CHAR.sub("_", agent).strip("_")
    if not slug:
        raise ValueError(f"agent name {agent!r} gives no Feast project name")
    return f"{project}_{slug}"


def _agent_registry(registry: str, folder: str) -> str:
    """A file registry per agent (``<dir>/agents/<agent>/<name>``): Feast rewrites a file
    registry whole on every apply, so two agents applying at once would drop each other's
    entries. A SQL registry is shared: its rows are per project, updated one by one."""
    if is_sql_url(registry):
        return registry
    head, sep, name = registry.rstrip("/").rpartition("/")
    return f"{head}{sep}{AGENTS_FOLDER}/{folder}/{name}"


def is_sql_url(registry: str) -> bool:
    scheme = urlparse(registry).scheme.split("+", 1)[0].lower()
    return "://" in registry and scheme in SQL_URL_SCHEMES


def redis_connection_string(value: str) -> str:
    """Feast's ``host:port,db=N,password=...`` form from itself or a ``redis://`` URL."""
    if not value.startswith(("redis://", "rediss://")):
        return value
    url = urlparse(value)
    parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}"]
    db = url.path.lstrip("/")
    if db:
        parts.append(f"db={int(db)}")
    if url.username and url.username != "default":
        parts.append(f"username={unquote(url.username)}")
    if url.password:
        parts.append(f"password={unquote(url.password)}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


@dataclass(frozen=True)
class StoreConfig:
    """Where the feature store lives: ``repo_dir`` (SQLite online store and rendered config),
    ``registry`` (a file path or a SQLAlchemy URL), ``online_store`` ("sqlite" or Redis)."""

    repo_dir: Path
    registry: str
    online_store: str = "sqlite"
    project: str = "agentops"
    registry_cache_ttl_seconds: int = 60

    def repo_config_dict(self) -> dict:
        """Feast's ``feature_store.yaml`` contents (plain data; nothing is created)."""
        repo_dir = Path(self.repo_dir).resolve()
        if is_sql_url(self.registry):
            registry: dict = {"registry_type": "sql", "path": self.registry,
                              "cache_ttl_seconds": self.registry_cache_ttl_seconds,
                              "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True}}
        else:
            path = self.registry
            if "://" not in path:  # a local file; s3:// and gs:// stay as they are
                path = str(Path(path).expanduser().resolve())
            registry = {"registry_type": "file", "path": path, "cache_ttl_seconds": self.registry_cache_ttl_seconds}
        if self.online_store == "sqlite":
            online: dict = {"type": "sqlite", "path": str(repo_dir / "online_store.db")}
        else:
            online = {"type": "redis", "redis_type": "redis",
                      "connection_string": redis_connection_string(self.online_store)}
        return {"project": self.project, "provider": "local", "registry": registry, "online_store": online,
                "offline_store": {"type": "file"}, "entity_key_serialization_version": 3}

    def for_agent(self, agent: str) -> StoreConfig:
        """``agent``'s own store: its project, folder (SQLite online store, rendered config) and,
        for a file registry, registry file. Redis and a SQL registry are shared, keyed by project."""
        if self.is_scoped_to(agent):  # a deployer already gave this process the agent's store
            return self
        project = agent_project(self.project, agent)
        folder = project.removeprefix(f"{self.project}_")
        return replace(self, repo_dir=Path(self.repo_dir) / AGENTS_FOLDER / folder,
                       registry=_agent_registry(self.registry, folder), project=project)

    def is_scoped_to(self, agent: str) -> bool:
        """Whether this is already ``agent``'s own store (its folder and project)."""
        folder = agent_project("x", agent).removeprefix("x_")
        repo_dir = Path(self.repo_dir)
        return (repo_dir.name == folder and repo_dir.parent.name == AGENTS_FOLDER
                and self.project.endswith(f"_{folder}"))

    def environ(self) -> dict[str, str]:
        """The ``AGENTOPS_FEAST_*`` variables naming this store's folder, project and registry
        file (not a SQL registry URL or the Redis string: those are shared, and may hold passwords)."""
        out = {EnvVar.FEAST_DIR.value: str(Path(self.repo_dir).resolve()), EnvVar.FEAST_PROJECT.value: self.project}
        if not is_sql_url(self.registry):
            out[EnvVar.FEAST_REGISTRY.value] = self.registry
        return out

    @property
    def has_online_store(self) -> bool:
        """False for an embedded SQLite store nothing was materialized into yet."""
        return self.online_store != "sqlite" or (Path(self.repo_dir) / "online_store.db").exists()


def config_from_environ(environ: Mapping[str, str], home: Path) -> StoreConfig:
    """The store a process's environment names (``AGENTOPS_FEAST_*``), under ``home`` by default."""
    return StoreConfig(
        repo_dir=Path(environ.get(EnvVar.FEAST_DIR) or home / "feast"),
        registry=environ.get(EnvVar.FEAST_REGISTRY) or str(home / "feast" / "registry.db"),
        online_store=environ.get(EnvVar.FEAST_REDIS) or "sqlite",
        project=environ.get(EnvVar.FEAST_PROJECT) or "agentops",
    )


def agent_environ(environ: Mapping[str, str], agent: str) -> dict[str, str]:
    """The ``AGENTOPS_FEAST_*`` variables a serving process of ``agent`` gets: the store the
    parent's ``environ`` names, scoped to ``agent`` (see :meth:`StoreConfig.for_agent`)."""
    return config_from_environ(environ, default_home(environ)).for_agent(agent).environ()


def served_config(environ: Mapping[str, str], agent: str) -> StoreConfig:
    """The store a served model of ``agent`` reads: the one its process's environment names,
    scoped to the agent. A deployer sets the agent's ``AGENTOPS_FEAST_*`` variables already;
    ``mlflow models serve`` or an in-process evaluation may have only ``AGENTOPS_HOME``."""
    return config_from_environ(environ, default_home(environ)).for_agent(agent)


def default_home(environ: Mapping[str, str]) -> Path:
    """The state folder a process's environment names (``AGENTOPS_HOME``, else the project's
    ``.agentops/``, as in resources/settings.py)."""
    return Path(environ.get(EnvVar.HOME) or Path(__file__).resolve().parents[2] / ".agentops").resolve()


@dataclass
class OnlineLookup:
    """``lookup(customer_ids) -> {column: values}``: the latest online values, in order; unknown
    customers get the features' defaults. Opens the store on first use."""

    config: StoreConfig
    _store: Any = field(default=None, repr=False)

    def store(self):
        if self._store is None:
            from agentops_pipelines.features.feast_import import load_feast

            load_feast()
            from feast import FeatureStore, RepoConfig

            repo_dir = Path(self.config.repo_dir).resolve()
            repo_dir.mkdir(parents=True, exist_ok=True)
            self._store = FeatureStore(repo_path=str(repo_dir),
                                       config=RepoConfig(repo_path=repo_dir, **self.config.repo_config_dict()))
        return self._store

    def __call__(self, customer_ids: list[str]) -> dict[str, list]:
        ids = [str(c) for c in customer_ids]
        columns: dict[str, list] = {JOIN_KEY: ids}
        if not ids:
            return {**columns, **{name: [] for name in FEATURES}}
        values = self.store().get_online_features(features=FEATURE_REFS, entity_rows={JOIN_KEY: ids}).to_dict()
        for name in FEATURES:
            default = FEATURE_DEFAULTS[name]
            cast = str if isinstance(default, str) else int
            columns[name] = [default if v is None else cast(v) for v in values[name]]
        return columns
