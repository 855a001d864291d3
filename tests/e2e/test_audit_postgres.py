"""The audit log on the real Postgres: append-only enforced by the server, tampering detected,
concurrent writers serialized (an advisory lock), first use free of schema races."""

import multiprocessing

import pytest
import sqlalchemy as sa

from agentops_pipelines.governance.audit_log import TABLE, AuditStore
from tests.helpers import fresh_postgres_database


@pytest.fixture
def pg_url():
    yield from fresh_postgres_database("agentops_audit")


def store(pg_url, folder) -> AuditStore:
    return AuditStore(pg_url, folder / "audit.key", folder / "anchor.jsonl", create_key=True)


def test_append_only_and_tamper_evident_on_postgres(pg_url, tmp_path):
    audit = store(pg_url, tmp_path)
    audit.record("approve", "support_agent", actor="alice", version=1, reason="ok")
    audit.record("rollback", "support_agent", actor="prometheus_alert_sensor", version=1, environment="prod",
                 reason="AgentHighErrorRate firing")
    assert [e.action for e in audit.entries("support_agent")] == ["approve", "rollback"]
    assert audit.verify().ok
    engine = sa.create_engine(pg_url)
    for statement in (f"UPDATE {TABLE} SET actor = 'mallory'", f"DELETE FROM {TABLE}", f"TRUNCATE {TABLE}"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    # a second store on the same database and anchor keeps the chain
    store(pg_url, tmp_path).record("freeze", "support_agent", actor="drift_sensor", version=1)
    assert audit.verify().ok
    # the database's owner drops the triggers and deletes the last entry: both show
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TRIGGER {TABLE}_no_change ON {TABLE}")
        conn.exec_driver_sql(f"DELETE FROM {TABLE} WHERE seq = 3")
    result = audit.verify()
    assert not result.ok
    text = " | ".join(result.problems)
    assert "no_change" in text and "the anchor records entry 3 but the log ends at entry 2" in text
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {TABLE}")
    assert "is gone" in " | ".join(audit.verify().problems)
    engine.dispose()
    audit.dispose()


def _write(pg_url, folder, worker, n):
    s = store(pg_url, folder)
    for i in range(n):
        s.record("deploy", "support_agent", actor=f"worker-{worker}", version=i, environment="dev")
    s.dispose()


def test_six_concurrent_writers_on_first_use_lose_nothing(pg_url, tmp_path):
    """Six processes start on an empty database at once: no schema race, no fork, no loss."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_write, args=(pg_url, tmp_path, w, 30)) for w in range(6)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0] * 6
    result = store(pg_url, tmp_path).verify()
    assert result.ok, result.problems
    assert [e.seq for e in result.entries] == list(range(1, 181))
