"""The audit log on the real Postgres: append-only enforced by the server."""

import uuid

import pytest
import sqlalchemy as sa

from agentops_pipelines.resources.audit import AuditLog

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_url():
    try:
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc.__class__.__name__}")
    name = f"agentops_audit_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def test_append_only_on_postgres(pg_url):
    audit = AuditLog(url=pg_url)
    audit.record("approve", "support_agent", actor="alice", version=1, reason="ok")
    audit.record("rollback", "support_agent", actor="prometheus_alert_sensor", version=1, environment="prod",
                 reason="AgentHighErrorRate firing")
    assert [e.action for e in audit.entries("support_agent")] == ["approve", "rollback"]
    assert audit.verify() == []
    engine = sa.create_engine(pg_url)
    for statement in ("UPDATE agentops_audit SET actor = 'mallory'", "DELETE FROM agentops_audit"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    engine.dispose()
    # a second resource on the same database sees the same log and keeps the chain
    AuditLog(url=pg_url).record("freeze", "support_agent", actor="drift_sensor", version=1)
    assert audit.verify() == []
    audit._engine.dispose()
