"""Feast around the customer features: offline partitions, registry, online store.

Layout under ``repo_dir`` (a folder under the state folder)::

    repo_dir/
      feature_store.yaml        rendered from this resource's config: ``feast -c repo_dir ...`` works
                                (passwords appear as ${AGENTOPS_FEAST_REGISTRY} / ${AGENTOPS_FEAST_REDIS})
      repo.py                   generated; builds the same objects, so ``feast apply`` from the CLI
                                registers them instead of deleting everything it cannot see
      online_store.db           the SQLite online store (when ``online_store="sqlite"``)
      offline/                  the offline store (override with ``offline_dir``)
        customer_profile/date=YYYY-MM-DD.parquet
        customer_activity/date=YYYY-MM-DD.parquet
        .staging/               temporary files, renamed into place. Not inside a view folder: dask
                                reads EVERY *.parquet file there, hidden (.x / _x) ones included

Each agent has its own store of this layout, ``repo_dir/agents/<agent>/`` with project
``<project>_<agent>`` (:meth:`FeastResource.for_agent`): the assets use that, never the shared one,
so one agent's ingest never overwrites another's partitions, registry entries or online values.

The offline data sits next to the store's config (not in the lake) because Feast reads each view's
folder as one dataset: everything in it must be a committed, schema-identical partition. The lake's
gate decides what gets here; this folder is what Feast serves from.

``feast`` is imported inside methods only: importing this module stays fast.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    import pandas as pd

from agentops_pipelines.feature_repo.definitions import (
    ACTIVITY_VIEW,
    CREATED_FIELD,
    FEATURE_DEFAULTS,
    JOIN_KEY,
    PROFILE_VIEW,
    TIMESTAMP_FIELD,
    VIEW_FEATURES,
)
from agentops_pipelines.features.online import (  # one definition, shared with served models
    AGENTS_FOLDER,
    FEATURES,
    OnlineLookup,
    StoreConfig,
    redis_connection_string,
)
from agentops_pipelines.features.online import is_sql_url as _is_sql_url

__all__ = ["FEATURES", "FeastResource", "redis_connection_string"]

# Activity computed from day D's requests becomes visible just after D ends. One microsecond
# before midnight keeps it inside D's partition window (so materializing D's window picks it up)
# while no request of D with second (or millisecond) resolution can see its own day's counts.
ACTIVITY_LAG = timedelta(days=1) - timedelta(microseconds=1)
_ROW = "__agentops_row"


def _redis_kwargs(connection_string: str) -> dict:
    """redis-py keyword arguments from Feast's ``host:port,key=value,...`` (first host only)."""
    kwargs: dict[str, Any] = {}
    hosts = []
    for part in connection_string.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            try:
                kwargs[key] = json.loads(value)
            except json.JSONDecodeError:
                kwargs[key] = value
        elif part.strip():
            hosts.append(part.strip())
    host, _, port = (hosts[0] if hosts else "127.0.0.1:6379").rpartition(":")
    return {"host": host or "127.0.0.1", "port": int(port or 6379), **kwargs}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fill(df: pd.DataFrame) -> pd.DataFrame:
    """Missing features -> defaults ("unknown" for plan_tier, 0 for counts), with stable dtypes."""
    import pandas as pd

    for name in FEATURES:
        default = FEATURE_DEFAULTS[name]
        column = df[name] if name in df else pd.Series(default, index=df.index)
        if isinstance(default, str):
            df[name] = column.astype(object).where(column.notna(), default).astype(str)
        else:
            df[name] = pd.to_numeric(column, errors="coerce").fillna(default).astype("int64")
    return df


class FeastResource(dg.ConfigurableResource):
    """The customer feature store: see the module docstring for the folder layout.

    - ``registry``: a file path (file registry), or a SQLAlchemy URL such as
      ``postgresql+psycopg://user:pw@host/db`` (SQL registry; ``sqlite:///path`` works too).
    - ``online_store``: ``"sqlite"`` (``repo_dir/online_store.db``) or a Redis connection string,
      ``"host:port,db=3"`` or ``"redis://host:port/3"``. Redis keys include ``project``, so a
      separate project or db number keeps tests and environments apart.
    - ``offline_dir``: where the daily Parquet partitions live; empty means ``repo_dir/offline``.
    """

    repo_dir: str
    registry: str
    online_store: str = "sqlite"
    project: str = "agentops"
    offline_dir: str = ""
    registry_cache_ttl_seconds: int = 60

    _store: Any = PrivateAttr(default=None)

    # ------------------------------------------------------------------ configuration
    @property
    def offline_path(self) -> Path:
        return Path(self.offline_dir or Path(self.repo_dir) / "offline").resolve()

    @property
    def online_store_label(self) -> str:
        if self.online_store == "sqlite":
            return f"SQLite online store at {Path(self.repo_dir).resolve() / 'online_store.db'}"
        shown = re.sub(r"password=[^,]*", "password=***", redis_connection_string(self.online_store))
        return f"Redis online store at {shown}"

    @property
    def config(self) -> StoreConfig:
        return StoreConfig(repo_dir=Path(self.repo_dir), registry=self.registry, online_store=self.online_store,
                           project=self.project, registry_cache_ttl_seconds=self.registry_cache_ttl_seconds)

    def repo_config_dict(self) -> dict:
        """The ``feature_store.yaml`` contents (plain data; nothing is created)."""
        return self.config.repo_config_dict()

    def for_agent(self, agent: str) -> FeastResource:
        """``agent``'s own feature store: project ``<project>_<agent>``, folder
        ``repo_dir/agents/<agent>/`` (rendered config, SQLite online store, offline partitions;
        a set ``offline_dir`` gets an ``agents/<agent>`` folder too) and, for a file registry, its
        own registry file. Redis and a SQL registry are shared, keyed by project. So two agents
        ingesting the same day never overwrite each other's partitions, registry entries or
        online values; a served model of ``agent`` reads the same store (deployers pass
        :func:`agentops_pipelines.features.online.agent_environ`)."""
        scoped = self.config.for_agent(agent)
        folder = Path(scoped.repo_dir).name
        offline = str(Path(self.offline_dir) / AGENTS_FOLDER / folder) if self.offline_dir else ""
        return FeastResource(repo_dir=str(scoped.repo_dir), registry=scoped.registry,
                             online_store=self.online_store, project=scoped.project, offline_dir=offline,
                             registry_cache_ttl_seconds=self.registry_cache_ttl_seconds)

    # ------------------------------------------------------------------ the store
    def _render(self) -> None:
        import yaml

        repo_dir = Path(self.repo_dir).resolve()
        repo_dir.mkdir(parents=True, exist_ok=True)
        header = "# Rendered by agentops_pipelines.resources.feast.FeastResource: do not edit.\n"
        config = self.repo_config_dict()
        # No secrets on disk: a password in the registry URL or the Redis string is rendered as
        # the environment variable settings.py reads it from (Feast expands ${VARS} in the yaml).
        if _is_sql_url(self.registry) and urlparse(self.registry).password:
            config["registry"]["path"] = "${AGENTOPS_FEAST_REGISTRY}"
        if "password=" in config["online_store"].get("connection_string", ""):
            config["online_store"]["connection_string"] = "${AGENTOPS_FEAST_REDIS}"
        files = {
            "feature_store.yaml": header + yaml.safe_dump(config, sort_keys=False),
            "repo.py": (
                header
                + "from pathlib import Path\n\n"
                + "from agentops_pipelines.feature_repo.definitions import feature_objects\n\n"
                + f"customer, customer_profile, customer_activity = feature_objects(Path({str(self.offline_path)!r}))\n"
            ),
            ".feastignore": f"offline/\n{AGENTS_FOLDER}/\n",  # agents' repos are their own projects
        }
        for name, text in files.items():
            path = repo_dir / name
            if path.exists() and path.read_text() == text:
                continue
            tmp = repo_dir / f".{name}.tmp-{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, path)

    def store(self):
        """A ``feast.FeatureStore`` for this config (cached on this instance)."""
        if self._store is None:
            from agentops_pipelines.features.feast_import import load_feast

            load_feast()
            from feast import FeatureStore, RepoConfig

            self._render()
            if not _is_sql_url(self.registry) and "://" not in self.registry:
                Path(self.registry).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            repo_dir = Path(self.repo_dir).resolve()
            config = RepoConfig(repo_path=repo_dir, **self.repo_config_dict())
            self._store = FeatureStore(repo_path=str(repo_dir), config=config)
        return self._store

    def apply(self) -> list[str]:
        """Register the entity and both views (idempotent). Returns the registered names."""
        from agentops_pipelines.feature_repo.definitions import feature_objects

        objects = feature_objects(self.offline_path)
        for view in VIEW_FEATURES:
            (self.offline_path / view).mkdir(parents=True, exist_ok=True)
        with self._writing():
            self.store().apply(objects)
        return [obj.name for obj in objects]

    def _writing(self):
        """One writer at a time per store on this machine (a file lock in its repo folder): a
        backfill runs days in parallel, and Feast rewrites a file registry whole on every apply
        and writes the SQLite online store without retrying on its lock."""
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def locked():
            Path(self.repo_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(self.repo_dir) / ".write.lock", "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield

        return locked()

    # ------------------------------------------------------------------ offline partitions
    def _view_files(self, view: str) -> list[Path]:
        folder = self.offline_path / view
        return sorted(folder.glob("*.parquet")) if folder.exists() else []

    def views_with_data(self) -> list[str]:
        return [view for view in VIEW_FEATURES if self._view_files(view)]

    def partition_path(self, view: str, day: date) -> Path:
        return self.offline_path / view / f"date={day:%Y-%m-%d}.parquet"

    def write_partition(self, day: date, profile: pd.DataFrame, activity: pd.DataFrame) -> dict:
        """Write day ``day``'s rows of both views; re-running a day replaces that day only.

        ``profile``: one row per customer, their state at the START of ``day`` (stamped day 00:00
        UTC). ``activity``: one row per customer, counts from ``day``'s requests (stamped just
        before day+1 00:00 UTC, so only later requests see them); give every customer a row,
        zeros included, or a quiet customer keeps their last counts for up to the 30-day TTL.
        Both get a ``created`` column (write time). Returns
        ``{view: {"path": str, "rows": int, "event_timestamp": str}}``.
        """
        import pandas as pd

        start = datetime.combine(day, time(0), tzinfo=UTC)
        frames = {PROFILE_VIEW: (profile, start), ACTIVITY_VIEW: (activity, start + ACTIVITY_LAG)}
        staged: dict[str, tuple[pd.DataFrame, datetime]] = {}
        for view, (df, stamp) in frames.items():  # validate both before writing either
            staged[view] = (self._partition_frame(view, df, stamp), stamp)
        created = pd.Timestamp.now(tz="UTC")
        staging = self.offline_path / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        out: dict[str, dict] = {}
        for view, (df, stamp) in staged.items():
            df[CREATED_FIELD] = pd.Series(created, index=df.index).astype("datetime64[ns, UTC]")
            path = self.partition_path(view, day)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = staging / f"{view}-{path.name}.{os.getpid()}.tmp"
            df.to_parquet(tmp, index=False)
            os.replace(tmp, path)
            out[view] = {"path": str(path), "rows": len(df), "event_timestamp": stamp.isoformat()}
        return out

    @staticmethod
    def _partition_frame(view: str, df: pd.DataFrame, stamp: datetime) -> pd.DataFrame:
        import pandas as pd

        features = VIEW_FEATURES[view]
        missing = [c for c in [JOIN_KEY, *features] if c not in df.columns]
        if missing:
            raise ValueError(f"{view}: missing columns {missing}")
        out = df[[JOIN_KEY, *features]].reset_index(drop=True).copy()
        if out[JOIN_KEY].isna().any():
            raise ValueError(f"{view}: null {JOIN_KEY}")
        out[JOIN_KEY] = out[JOIN_KEY].astype(str)
        dupes = out[JOIN_KEY][out[JOIN_KEY].duplicated()]
        if len(dupes):
            raise ValueError(f"{view}: duplicate {JOIN_KEY} {dupes.head(5).tolist()}")
        for name in features:  # identical dtypes in every file: dask reads the folder as one
            if isinstance(FEATURE_DEFAULTS[name], str):
                out[name] = out[name].astype(str)
            else:
                if out[name].isna().any():
                    raise ValueError(f"{view}: null values in {name}")
                out[name] = out[name].astype("int64")
        out[TIMESTAMP_FIELD] = pd.Series(stamp, index=out.index).astype("datetime64[ns, UTC]")
        return out

    # ------------------------------------------------------------------ serving
    def materialize(self, start: datetime, end: datetime) -> dict:
        """Load the latest row per customer with ``start <= event_timestamp <= end`` into the
        online store, for each view that has partitions (Feast cannot read an empty folder).

        The SQLite online store overwrites without comparing timestamps, so re-materializing an
        old window (a backfill) would roll customers back to old values; ``end`` is therefore
        extended to the newest partition's last event timestamp, and the online store ends on
        the latest values. Naive datetimes are taken as UTC. Returns
        ``{"views": [...], "start": iso, "end": iso}`` with the window actually used.
        """
        start, end = _utc(start), _utc(end)
        views = self.views_with_data()
        days = [
            date.fromisoformat(path.stem.removeprefix("date="))
            for view in views
            for path in self._view_files(view)
            if path.stem.startswith("date=")
        ]
        if days:
            end = max(end, datetime.combine(max(days), time(0), tzinfo=UTC) + ACTIVITY_LAG)
        if views:
            with self._writing():
                self.store().materialize(start, end, feature_views=views)
        return {"views": views, "start": start.isoformat(), "end": end.isoformat()}

    def historical_features(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time features for each row of ``entity_df`` (``customer_id``, ``event_timestamp``).

        Every input row comes back, in input order with its index and extra columns unchanged,
        followed by the feature columns (plain names). Rows with no value inside a view's TTL get
        the defaults ("unknown", 0). Naive timestamps are taken as UTC.
        """
        import numpy as np
        import pandas as pd

        for column in (JOIN_KEY, TIMESTAMP_FIELD):
            if column not in entity_df.columns:
                raise ValueError(f"entity_df needs a {column!r} column")
        clash = [c for c in FEATURES if c in entity_df.columns]
        if clash:
            raise ValueError(f"entity_df already has feature columns {clash}")
        keys = pd.DataFrame({
            JOIN_KEY: entity_df[JOIN_KEY].astype(str).to_numpy(),
            TIMESTAMP_FIELD: pd.to_datetime(entity_df[TIMESTAMP_FIELD], utc=True)
            .astype("datetime64[ns, UTC]")
            .reset_index(drop=True),
        })
        if keys[TIMESTAMP_FIELD].isna().any():
            raise ValueError("entity_df has null event_timestamp values")
        # The file offline store dedups on (customer_id, event_timestamp), reorders rows, and
        # drops an entity row when ANY requested view has rows for that customer but none inside
        # its TTL -- taking the other views' values with it. So: send each pair once with a row
        # key of ours, query one view at a time, and map every input row back by that key.
        unique = keys.drop_duplicates(ignore_index=True)
        unique = unique.assign(**{_ROW: np.arange(len(unique))})
        found = pd.DataFrame(index=pd.RangeIndex(len(unique)))
        if len(unique):
            for view in self.views_with_data():
                names = VIEW_FEATURES[view]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    result = self.store().get_historical_features(
                        entity_df=unique, features=[f"{view}:{name}" for name in names]
                    ).to_df()
                values = result.set_index(_ROW)[names].reindex(found.index)
                for name in names:
                    found[name] = values[name]
        position = pd.MultiIndex.from_frame(unique[[JOIN_KEY, TIMESTAMP_FIELD]]).get_indexer(
            pd.MultiIndex.from_frame(keys)
        )
        features = _fill(found.iloc[position].reset_index(drop=True))[FEATURES]
        features.index = entity_df.index
        return pd.concat([entity_df, features], axis=1)

    def online_feature_columns(self, customer_ids: list[str]) -> dict[str, list]:
        """Like :meth:`online_features` as ``{column: values}``, without pandas (~10x faster):
        the same lookup a served model makes (features/online.py)."""
        return OnlineLookup(self.config, self.store())(customer_ids)

    def online_features(self, customer_ids: list[str]) -> pd.DataFrame:
        """Latest online values: one row per id, in order; unknown customers get the defaults."""
        import pandas as pd

        columns = self.online_feature_columns(customer_ids)
        return pd.DataFrame({
            name: pd.Series(values, dtype=object if name in (JOIN_KEY, "plan_tier") else "int64")
            for name, values in columns.items()
        })

    # ------------------------------------------------------------------ health
    def check(self) -> dict:
        """Fail fast, naming the store, if the online store or a SQL registry is unreachable."""
        status: dict[str, str] = {}
        if self.online_store == "sqlite":
            repo_dir = Path(self.repo_dir).resolve()
            repo_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(repo_dir, os.W_OK):
                raise ConnectionError(f"{self.online_store_label}: {repo_dir} is not writable")
            status["online_store"] = self.online_store_label
        else:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis(
                **_redis_kwargs(redis_connection_string(self.online_store)),
                socket_connect_timeout=2,
                socket_timeout=2,
                retry=Retry(NoBackoff(), 0),  # redis-py retries for ~7 s by default
            )
            try:
                client.ping()
            except Exception as exc:  # noqa: BLE001 - report any failure the same way
                raise ConnectionError(
                    f"{self.online_store_label} is unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                client.close()
            status["online_store"] = self.online_store_label
        if _is_sql_url(self.registry):
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.registry, pool_pre_ping=True)
            try:
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
            except Exception as exc:  # noqa: BLE001
                url = sqlalchemy.engine.make_url(self.registry).render_as_string(hide_password=True)
                raise ConnectionError(
                    f"Feast SQL registry at {url} is unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                engine.dispose()
        status["registry"] = "sql" if _is_sql_url(self.registry) else "file"
        return status
