"""FeastResource: offline partitions, point-in-time joins, materialization, online lookups.

A two-day synthetic repo (2,000 customers) on the file offline store; SQLite online store by
default, the real Redis at 127.0.0.1:6379 (db 13) when reachable.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agentops_pipelines.data.generator import customer_ids, customer_snapshot
from agentops_pipelines.feature_repo.definitions import (
    ACTIVITY_FEATURES,
    FEATURE_REFS,
    PROFILE_FEATURES,
)
from agentops_pipelines.resources.feast import FeastResource

DAY1, DAY2 = date(2024, 3, 1), date(2024, 3, 2)
FEATURES = PROFILE_FEATURES + ACTIVITY_FEATURES
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 13


def at(day: date, hours: float = 0.0) -> pd.Timestamp:
    return pd.Timestamp(day.isoformat(), tz="UTC") + pd.Timedelta(hours=hours)


def activity_for(day: date) -> pd.DataFrame:
    """Counts that identify the day they came from: escalations_30d == day of month."""
    ids = customer_ids()
    return pd.DataFrame({
        "customer_id": ids,
        "requests_7d": (np.arange(len(ids)) % 5 + 10 * day.day).astype("int64"),
        "escalations_30d": np.full(len(ids), day.day, dtype="int64"),
    })


def write_two_days(resource: FeastResource) -> dict[date, pd.DataFrame]:
    profiles = {}
    for day in (DAY1, DAY2):
        profiles[day] = customer_snapshot(day)
        resource.write_partition(day, profiles[day], activity_for(day))
    return profiles


def changed_customer(profiles: dict[date, pd.DataFrame]) -> str:
    """A customer whose profile differs between the two days on a count feature."""
    a, b = profiles[DAY1].set_index("customer_id"), profiles[DAY2].set_index("customer_id")
    diff = (a["orders_30d"] != b["orders_30d"]) & (a["open_tickets"] != b["open_tickets"])
    return str(diff[diff].index[0])


def make_resource(root: Path, online_store: str = "sqlite", registry: str | None = None,
                  project: str = "agentops_test") -> FeastResource:
    return FeastResource(
        repo_dir=str(root / "feast"),
        registry=registry or str(root / "feast" / "registry.db"),
        online_store=online_store,
        project=project,
    )


@pytest.fixture(autouse=True)
def _no_feast_telemetry(monkeypatch):
    monkeypatch.setenv("FEAST_USAGE", "False")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A SQLite-backed store with two days written and applied."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEAST_USAGE", "False")
        resource = make_resource(tmp_path_factory.mktemp("feast"))
        profiles = write_two_days(resource)
        resource.apply()
        yield resource, profiles


def test_importing_the_resource_does_not_import_feast():
    code = (
        "import sys, agentops_pipelines.resources.feast, "
        "agentops_pipelines.feature_repo.definitions; "
        "sys.exit(1 if 'feast' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


INSTRUMENTED = """
import json, os, sys, typeguard
real = typeguard.typechecked
from agentops_pipelines.feature_repo.definitions import feature_objects
objects = feature_objects(sys.argv[1])  # imports feast the way every process of ours does
import feast
print(json.dumps({
    "restored": typeguard.typechecked is real,
    "instrumented": [cls.__name__ for cls in (feast.FeatureView, feast.Entity, feast.Field, feast.FileSource)
                     if "TypeCheckMemo" in cls.__init__.__code__.co_names],
    "objects": [type(o).__name__ for o in objects],
}))
"""


@pytest.mark.parametrize("typechecks", ["", "1"])
def test_feast_is_imported_without_typeguards_instrumentation_unless_asked(tmp_path, typechecks):
    """typeguard rebuilt every decorated Feast function at import (2.7 s of CPU in each serving
    process and run); ``load_feast`` leaves that out, restores the decorator for everyone else,
    and AGENTOPS_FEAST_TYPECHECKS=1 brings the checks back."""
    import json
    import os

    env = {**os.environ, "AGENTOPS_FEAST_TYPECHECKS": typechecks}
    out = subprocess.run([sys.executable, "-c", INSTRUMENTED, str(tmp_path)], env=env,
                         capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["restored"] is True
    assert seen["objects"] == ["Entity", "FeatureView", "FeatureView"]
    everything = ["FeatureView", "Entity", "Field", "FileSource"]
    assert seen["instrumented"] == (everything if typechecks else [])


def test_feature_constants():
    assert FEATURE_REFS[0] == "customer_profile:plan_tier"
    assert FEATURE_REFS[-1] == "customer_activity:escalations_30d"
    assert len(FEATURE_REFS) == 10
    assert list(customer_snapshot(DAY1).columns) == ["customer_id", *PROFILE_FEATURES]


def test_write_partition_layout_timestamps_and_overwrite(tmp_path):
    resource = make_resource(tmp_path)
    written = resource.write_partition(DAY1, customer_snapshot(DAY1), activity_for(DAY1))
    resource.write_partition(DAY2, customer_snapshot(DAY2), activity_for(DAY2))
    offline = tmp_path / "feast" / "offline"
    assert written["customer_profile"] == {
        "path": str(offline / "customer_profile" / "date=2024-03-01.parquet"),
        "rows": 2000,
        "event_timestamp": "2024-03-01T00:00:00+00:00",
    }
    profile = pd.read_parquet(written["customer_profile"]["path"])
    activity = pd.read_parquet(written["customer_activity"]["path"])
    assert list(profile.columns) == ["customer_id", *PROFILE_FEATURES, "event_timestamp", "created"]
    assert (profile["event_timestamp"] == at(DAY1)).all()
    # Activity of day 1 becomes visible at the end of day 1, inside day 1's window.
    assert (activity["event_timestamp"] > at(DAY1, 23.9999)).all()
    assert (activity["event_timestamp"] < at(DAY2)).all()
    assert str(activity["created"].dtype) == "datetime64[ns, UTC]"

    # Re-running day 1 replaces day 1 only; no temporary files are left where Feast reads.
    day2_before = (offline / "customer_activity" / "date=2024-03-02.parquet").read_bytes()
    new = activity_for(DAY1).assign(requests_7d=99)
    resource.write_partition(DAY1, customer_snapshot(DAY1), new)
    assert (pd.read_parquet(written["customer_activity"]["path"])["requests_7d"] == 99).all()
    assert (offline / "customer_activity" / "date=2024-03-02.parquet").read_bytes() == day2_before
    for view in ("customer_profile", "customer_activity"):
        assert sorted(p.name for p in (offline / view).iterdir()) == [
            "date=2024-03-01.parquet", "date=2024-03-02.parquet"]

    with pytest.raises(ValueError, match="missing columns"):
        resource.write_partition(DAY1, customer_snapshot(DAY1).drop(columns="plan_tier"),
                                 activity_for(DAY1))
    with pytest.raises(ValueError, match="duplicate customer_id"):
        resource.write_partition(DAY1, customer_snapshot(DAY1),
                                 pd.concat([activity_for(DAY1)] * 2))


def test_historical_features_are_point_in_time_correct(repo):
    resource, profiles = repo
    cust = changed_customer(profiles)
    p1 = profiles[DAY1].set_index("customer_id").loc[cust]
    p2 = profiles[DAY2].set_index("customer_id").loc[cust]
    cases = [  # (request_id, customer, time)
        ("day2", cust, at(DAY2, 10)),
        ("day1", cust, at(DAY1, 10)),
        ("day1-last-second", cust, at(DAY1, 24) - pd.Timedelta(seconds=1)),
        ("before-data", cust, at(DAY1) - pd.Timedelta(hours=1)),
        ("stranger", "C99999", at(DAY2, 10)),
        ("profile-expired", cust, at(DAY2, 24 * 3)),
        ("day2-dup", cust, at(DAY2, 10)),  # same key as "day2": Feast would collapse them
    ]
    entity_df = pd.DataFrame(cases, columns=["request_id", "customer_id", "event_timestamp"])
    entity_df["text"] = [f"text {i}" for i in range(len(entity_df))]
    entity_df["tool"] = "track_order"
    entity_df.index = [f"row{i}" for i in range(len(entity_df))][::-1]  # a non-default index

    out = resource.historical_features(entity_df)
    assert list(out.columns) == [*entity_df.columns, *FEATURES]
    pd.testing.assert_frame_equal(out[entity_df.columns], entity_df)
    got = out.set_index("request_id")

    for name in PROFILE_FEATURES:
        assert got.loc["day2", name] == p2[name], name
        assert got.loc["day2-dup", name] == p2[name], name
        assert got.loc["day1", name] == p1[name], name
        assert got.loc["day1-last-second", name] == p1[name], name
    assert got.loc["day2", "orders_30d"] != got.loc["day1", "orders_30d"]
    # Activity: day 1's counts only after day 1 ends; nothing before.
    assert got.loc["day2", "escalations_30d"] == 1
    assert got.loc["day1", "escalations_30d"] == 0
    assert got.loc["day1-last-second", "escalations_30d"] == 0
    # Before any data, unknown customers and an expired profile get the defaults.
    for rid in ("before-data", "stranger"):
        assert got.loc[rid, "plan_tier"] == "unknown"
        assert (got.loc[rid, FEATURES[1:]] == 0).all()
    assert got.loc["profile-expired", "plan_tier"] == "unknown"
    assert got.loc["profile-expired", "orders_30d"] == 0
    assert got.loc["profile-expired", "escalations_30d"] == 2  # 30-day TTL still holds
    assert out["plan_tier"].dtype == object
    assert all(out[name].dtype == "int64" for name in FEATURES[1:])


def test_historical_features_bulk_matches_an_as_of_join(repo):
    """~2,400 random requests over four days against a pandas reference, in shuffled order."""
    resource, profiles = repo
    rng = np.random.default_rng(3)
    n = 2400
    ids = np.array(customer_ids() + ["C99998"])
    entity_df = pd.DataFrame({
        "request_id": [f"r{i:05d}" for i in range(n)],
        "customer_id": rng.choice(ids, n),
        "event_timestamp": at(DAY1, -24) + pd.to_timedelta(rng.integers(0, 4 * 86400, n), unit="s"),
        "text": rng.choice(["where is my order", "refund please", "reset password"], n),
    })
    out = resource.historical_features(entity_df)
    assert len(out) == n
    assert out["request_id"].tolist() == entity_df["request_id"].tolist()

    def as_of(rows: pd.DataFrame, ttl: timedelta, columns: list[str]) -> pd.DataFrame:
        left = entity_df[["request_id", "customer_id", "event_timestamp"]].sort_values("event_timestamp")
        right = rows.sort_values("ts")
        joined = pd.merge_asof(left, right, left_on="event_timestamp", right_on="ts",
                               by="customer_id", tolerance=pd.Timedelta(ttl))
        return joined.set_index("request_id").loc[entity_df["request_id"], columns]

    profile_rows = pd.concat([profiles[d].assign(ts=at(d)) for d in (DAY1, DAY2)])
    activity_rows = pd.concat([
        activity_for(d).assign(ts=at(d, 24) - pd.Timedelta(microseconds=1)) for d in (DAY1, DAY2)])
    expected = pd.concat([as_of(profile_rows, timedelta(days=2), PROFILE_FEATURES),
                          as_of(activity_rows, timedelta(days=30), ACTIVITY_FEATURES)], axis=1)
    expected["plan_tier"] = expected["plan_tier"].fillna("unknown")
    expected = expected.fillna(0)
    got = out.set_index("request_id")[FEATURES]
    for name in FEATURES:
        assert (got[name].to_numpy() == expected[name].to_numpy()).all(), name


def test_materialize_then_online_features_serve_the_latest_values(repo):
    resource, profiles = repo
    cust = changed_customer(profiles)
    ids = [cust, "C99999", cust]  # order kept, duplicates allowed
    day1_window = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
                   - timedelta(microseconds=1))
    # Only day 1 on disk for now: move day 2 out of the view folders (dask reads every
    # *.parquet in them, hidden names included) so the window is not extended past day 1.
    aside = resource.offline_path.parent / "aside"
    moved = {path: aside / path.parent.name for path in
             resource.offline_path.glob("*/date=2024-03-02.parquet")}
    for path, folder in moved.items():
        folder.mkdir(parents=True, exist_ok=True)
        path.rename(folder / path.name)
    try:
        done = resource.materialize(*day1_window)
    finally:
        for path, folder in moved.items():
            (folder / path.name).rename(path)
    assert done == {"views": ["customer_profile", "customer_activity"],
                    "start": "2024-03-01T00:00:00+00:00", "end": "2024-03-01T23:59:59.999999+00:00"}
    day1 = resource.online_features(ids)
    p1 = profiles[DAY1].set_index("customer_id").loc[cust]
    assert day1.loc[0, "orders_30d"] == p1["orders_30d"]
    assert day1.loc[0, "escalations_30d"] == 1

    resource.materialize(datetime(2024, 3, 2, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC))
    online = resource.online_features(ids)
    assert online["customer_id"].tolist() == ids
    assert list(online.columns) == ["customer_id", *FEATURES]
    p2 = profiles[DAY2].set_index("customer_id").loc[cust]
    for i in (0, 2):
        for name in PROFILE_FEATURES:
            assert online.loc[i, name] == p2[name], name
        assert online.loc[i, "escalations_30d"] == 2
    assert online.loc[0, "orders_30d"] != day1.loc[0, "orders_30d"]
    assert online.loc[1, "plan_tier"] == "unknown"
    assert (online.loc[1, FEATURES[1:]] == 0).all()

    # A backfill of day 1 must not roll the online store back (SQLite overwrites blindly).
    assert resource.materialize(*day1_window)["end"] == "2024-03-02T23:59:59.999999+00:00"
    pd.testing.assert_frame_equal(resource.online_features(ids), online)
    assert resource.online_features([]).columns.tolist() == ["customer_id", *FEATURES]


def test_no_partitions_yet_gives_defaults(tmp_path):
    resource = make_resource(tmp_path)
    entity_df = pd.DataFrame({"customer_id": ["C00001"], "event_timestamp": [at(DAY1, 5)],
                              "request_id": ["x"]})
    out = resource.historical_features(entity_df)
    assert out.loc[0, "plan_tier"] == "unknown" and out.loc[0, "requests_7d"] == 0
    assert resource.materialize(datetime(2024, 3, 1), datetime(2024, 3, 2))["views"] == []


def test_sql_registry_apply_is_idempotent_and_yaml_is_rendered(tmp_path):
    resource = make_resource(tmp_path, registry=f"sqlite:///{tmp_path / 'sql_registry.db'}")
    assert resource.check() == {"online_store": resource.online_store_label, "registry": "sql"}
    assert resource.apply() == ["customer", "customer_profile", "customer_activity"]
    resource.apply()
    store = resource.store()
    assert sorted(fv.name for fv in store.list_feature_views()) == [
        "customer_activity", "customer_profile"]
    assert store.get_feature_view("customer_profile").ttl == timedelta(days=2)
    assert store.get_feature_view("customer_activity").ttl == timedelta(days=30)
    yaml_text = (tmp_path / "feast" / "feature_store.yaml").read_text()
    assert "registry_type: sql" in yaml_text and "online_store.db" in yaml_text
    assert (tmp_path / "feast" / "repo.py").exists()


def test_check_names_an_unreachable_redis(tmp_path):
    resource = make_resource(tmp_path, online_store="127.0.0.1:1,db=13")
    with pytest.raises(ConnectionError, match=r"Redis online store at 127\.0\.0\.1:1,db=13"):
        resource.check()


def test_rendered_config_keeps_passwords_off_disk(tmp_path):
    resource = make_resource(tmp_path, online_store="redis://:s3cret@10.0.0.5:6380/4",
                             registry="postgresql+psycopg://feast:s3cret@db:5432/feast")
    assert resource.repo_config_dict()["online_store"]["connection_string"] == (
        "10.0.0.5:6380,db=4,password=s3cret")
    resource._render()
    text = (tmp_path / "feast" / "feature_store.yaml").read_text()
    assert "s3cret" not in text
    assert "${AGENTOPS_FEAST_REGISTRY}" in text and "${AGENTOPS_FEAST_REDIS}" in text
    assert "s3cret" not in resource.online_store_label


def _redis_or_skip():
    redis = pytest.importorskip("redis")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB,
                         socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT} ({exc})")
    return client


def test_redis_online_store(tmp_path):
    client = _redis_or_skip()
    project = f"agentops_test_{uuid.uuid4().hex[:8]}"  # Redis keys include the project
    resource = make_resource(tmp_path, online_store=f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
                             project=project)
    try:
        assert resource.check()["online_store"].startswith("Redis online store at 127.0.0.1:6379,db=13")
        profiles = write_two_days(resource)
        resource.apply()
        resource.materialize(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC))
        assert any(client.scan_iter(match=f"*{project}*", count=1000))  # this project's rows
        cust = changed_customer(profiles)
        online = resource.online_features(["C99999", cust])
        assert online["customer_id"].tolist() == ["C99999", cust]
        row = online.set_index("customer_id").loc[cust]
        expected = profiles[DAY2].set_index("customer_id").loc[cust]
        for name in PROFILE_FEATURES:
            assert row[name] == expected[name], name
        assert row["escalations_30d"] == 2
        assert online.loc[0, "plan_tier"] == "unknown"
    finally:
        # only this project's keys: the database is shared with other tests and other runs
        for key in client.scan_iter(match=f"*{project}*", count=1000):
            client.delete(key)
        client.close()


PROMETHEUS_AFTER_FEAST = """
import json, os, sys, warnings
from agentops_pipelines.feature_repo.definitions import feature_objects
feature_objects(sys.argv[1])  # imports Feast the way every process of ours does
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, values
registry = CollectorRegistry()
served = Counter("served", "requests", registry=registry)
served.inc(3)
info = Gauge("info", "model", ["version"], registry=registry)
info.labels("1").set(1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    info.clear()
print(json.dumps({"variables": sorted(k for k in os.environ if k.upper().startswith("PROMETHEUS_MULTIPROC")),
                  "in_memory": values.ValueClass is values.MutexValue,
                  "shown": "served_total 3.0" in generate_latest(registry).decode(),
                  "warnings": [str(w.message) for w in caught]}))
"""


def test_importing_feast_leaves_this_process_metrics_in_memory(tmp_path):
    """Feast's import named a Prometheus multiprocess folder in the environment (for its own
    feature server): metrics created after it were kept in files that /metrics never showed,
    every clear() warned, and every process started later inherited the folder."""
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", PROMETHEUS_AFTER_FEAST, str(tmp_path)], env=env,
                         capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"variables": [], "in_memory": True, "shown": True, "warnings": []}
