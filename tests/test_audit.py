"""The audit log is append-only, ordered, and shows tampering."""

import sqlite3

import pytest

from agentops_pipelines.resources.audit import AuditLog


@pytest.fixture
def audit(tmp_path):
    return AuditLog(url=f"sqlite:///{tmp_path}/audit.db")


def test_records_who_what_when_why_in_order(audit):
    audit.record("approve", "support_agent", actor="alice", version=3, reason="looks good", details={"comment": "ok"})
    audit.record("promote", "support_agent", actor="dagster:run-1", version=3, environment="prod", reason="approved by alice")
    entries = audit.entries("support_agent")
    assert [(e.action, e.actor, e.version, e.environment) for e in entries] == [
        ("approve", "alice", "3", None), ("promote", "dagster:run-1", "3", "prod")]
    assert entries[0].details == {"comment": "ok"} and entries[0].at < entries[1].at
    assert entries[1].prev_hash == entries[0].hash
    assert audit.verify() == []
    assert audit.entries("other_agent") == []


def test_the_database_refuses_updates_and_deletes(audit, tmp_path):
    audit.record("freeze", "support_agent", actor="drift_sensor", version=2, reason="drift share 0.6")
    conn = sqlite3.connect(tmp_path / "audit.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE agentops_audit SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM agentops_audit")


def test_tampering_around_the_triggers_breaks_the_chain(audit, tmp_path):
    for v in (1, 2, 3):
        audit.record("approve", "support_agent", actor="alice", version=v)
    conn = sqlite3.connect(tmp_path / "audit.db")
    conn.execute("DROP TRIGGER agentops_audit_no_update")
    conn.execute("UPDATE agentops_audit SET actor = 'mallory' WHERE id = 2")
    conn.commit()
    assert audit.verify() == [2]


def test_bad_entries_are_refused(audit):
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record("delete_everything", "support_agent", actor="alice")
    with pytest.raises(ValueError, match="actor"):
        audit.record("approve", "support_agent", actor="")
