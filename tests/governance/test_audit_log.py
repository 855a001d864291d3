"""The audit log on SQLite: append-only, keyed, sequenced, anchored; every tampering shows.

Each attack test does what an adversary with write access to the database file would do (with
sqlite3, around our code) and checks that ``verify()`` names it. On the old log (an unkeyed SHA-256
chain, anchored nowhere, triggers recreated on connect) each of these verified as intact.
"""

import hashlib
import hmac
import json
import multiprocessing
import sqlite3

import pytest

from agentops_pipelines.governance.audit_log import TABLE, AuditStore, AuditTampered


def store_at(folder, create_key=True) -> AuditStore:
    return AuditStore(f"sqlite:///{folder}/audit.db", folder / "secrets" / "audit.key", folder / "anchor.jsonl",
                      create_key=create_key)


@pytest.fixture
def audit(tmp_path):
    s = store_at(tmp_path)
    for v in (1, 2, 3, 4):
        s.record("approve", "support_agent", actor="alice", version=v, reason="ok", details={"n": v})
    assert s.verify().ok
    yield s
    s.dispose()


def raw(tmp_path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "audit.db", isolation_level=None)


def problems(s: AuditStore) -> str:
    result = s.verify()
    assert not result.ok
    return " | ".join(result.problems)


def test_records_who_what_when_why_in_order(audit):
    audit.record("promote", "support_agent", actor="promotion_job:1", version=3, environment="prod",
                 reason="approved by alice")
    entries = audit.entries("support_agent")
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert (entries[-1].action, entries[-1].actor, entries[-1].version, entries[-1].environment) == (
        "promote", "promotion_job:1", "3", "prod")
    assert entries[0].details == {"n": 1} and entries[0].at < entries[-1].at
    assert all(b.prev_mac == a.mac for a, b in zip(entries, entries[1:], strict=False))
    assert audit.entries("other_agent") == []
    assert audit.verify().summary().startswith("5 entries; MAC chain intact and anchored at entry 5")


def test_the_key_lives_outside_the_database_and_only_its_owner_reads_it(audit, tmp_path):
    key = (tmp_path / "secrets" / "audit.key")
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    dump = "\n".join(raw(tmp_path).iterdump())
    assert key.read_bytes().hex() not in dump


def test_the_database_refuses_updates_and_deletes(audit, tmp_path):
    conn = raw(tmp_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(f"UPDATE {TABLE} SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(f"DELETE FROM {TABLE}")


def test_an_edited_row_is_detected(audit, tmp_path):
    conn = raw(tmp_path)
    conn.execute(f"DROP TRIGGER {TABLE}_no_update")
    conn.execute(f"UPDATE {TABLE} SET actor = 'mallory' WHERE seq = 2")
    found = problems(audit)
    assert "entry 2 has an invalid MAC" in found


def test_dropped_triggers_are_reported_and_never_recreated_quietly(audit, tmp_path):
    raw(tmp_path).execute(f"DROP TRIGGER {TABLE}_no_delete")
    assert f"{TABLE}_no_delete" in problems(audit)
    with pytest.raises(AuditTampered, match="triggers"):
        audit.record("approve", "support_agent", actor="alice", version=5)
    fresh = store_at(tmp_path)  # a new connection, as the next process would open
    assert f"{TABLE}_no_delete" in problems(fresh)
    names = {r[0] for r in raw(tmp_path).execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert f"{TABLE}_no_delete" not in names


def test_a_deleted_middle_row_is_detected(audit, tmp_path):
    conn = raw(tmp_path)
    conn.execute(f"DROP TRIGGER {TABLE}_no_delete")
    conn.execute(f"DELETE FROM {TABLE} WHERE seq = 2")
    assert "entries 2..2 are missing" in problems(audit)


def test_deleted_last_rows_are_detected(audit, tmp_path):
    conn = raw(tmp_path)
    conn.execute(f"DROP TRIGGER {TABLE}_no_delete")
    conn.execute(f"DELETE FROM {TABLE} WHERE seq >= 3")
    assert "the anchor records entry 4 but the log ends at entry 2" in problems(audit)


def test_all_rows_deleted_is_detected(audit, tmp_path):
    conn = raw(tmp_path)
    conn.execute(f"DROP TRIGGER {TABLE}_no_delete")
    conn.execute(f"DELETE FROM {TABLE}")
    assert "every entry was deleted" in problems(audit)


def test_a_forged_row_with_a_recomputed_hash_is_detected(audit, tmp_path):
    conn = raw(tmp_path)
    last_mac = conn.execute(f"SELECT mac FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()[0]
    at = "2026-12-01T10:00:00.000000+00:00"
    # what the old log's verify accepted: a SHA-256 over the fields (anyone can compute it)
    forged = hashlib.sha256(json.dumps([5, last_mac, at, "alice", "approve"]).encode()).hexdigest()
    conn.execute(f"INSERT INTO {TABLE} VALUES (5, ?, 'alice', 'approve', 'support_agent', '9', NULL, 'forged', '{{}}', ?, ?)",
                 (at, last_mac, forged))
    found = problems(audit)
    assert "entry 5 has an invalid MAC" in found and "not anchored" in found


def test_a_rewritten_chain_is_detected(audit, tmp_path):
    conn = raw(tmp_path)
    conn.execute(f"DROP TRIGGER {TABLE}_no_update")
    rows = conn.execute(f"SELECT seq, at, actor, action, agent, version, environment, reason, details FROM {TABLE} "
                        "ORDER BY seq").fetchall()
    guessed_key, prev = b"k" * 32, "0" * 64  # the attacker does not have the key
    for seq, at, actor, action, agent, version, env, reason, details in rows:
        actor = "mallory" if seq == 2 else actor
        payload = json.dumps([seq, prev, at, actor, action, agent, version, env, reason, details], separators=(",", ":"))
        mac = hmac.new(guessed_key, payload.encode(), hashlib.sha256).hexdigest()
        conn.execute(f"UPDATE {TABLE} SET actor = ?, prev_mac = ?, mac = ? WHERE seq = ?", (actor, prev, mac, seq))
        prev = mac
    found = problems(audit)
    assert "entry 1 has an invalid MAC" in found and "chain rewritten" in found


def test_a_dropped_table_is_detected_and_not_recreated(audit, tmp_path):
    raw(tmp_path).execute(f"DROP TABLE {TABLE}")
    assert "is gone" in problems(audit)
    with pytest.raises(AuditTampered, match="gone"):
        audit.record("approve", "support_agent", actor="alice", version=5)


def test_a_deleted_database_file_is_detected(audit, tmp_path):
    audit.dispose()
    (tmp_path / "audit.db").unlink()
    assert "is gone" in problems(store_at(tmp_path))


def test_a_deleted_anchor_or_key_is_detected(audit, tmp_path):
    (tmp_path / "anchor.jsonl").unlink()
    assert "anchor" in problems(audit)
    (tmp_path / "secrets" / "audit.key").unlink()
    assert "audit key" in problems(store_at(tmp_path))
    with pytest.raises(AuditTampered, match="audit key"):
        store_at(tmp_path).record("approve", "support_agent", actor="alice", version=5)


def test_a_forged_anchor_line_is_detected(audit, tmp_path):
    with (tmp_path / "anchor.jsonl").open("a") as f:
        f.write(json.dumps({"seq": 9, "mac": "0" * 64, "at": "x", "check": "0" * 64}) + "\n")
    assert "not one the pipeline wrote" in problems(audit)


def test_bad_entries_are_refused(audit):
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record("delete_everything", "support_agent", actor="alice")
    with pytest.raises(ValueError, match="actor"):
        audit.record("approve", "support_agent", actor="")


def _write_entries(folder, worker: int, n: int) -> None:
    s = store_at(folder)
    for i in range(n):
        s.record("deploy", "support_agent", actor=f"worker-{worker}", version=i, environment="dev")
    s.dispose()


def test_six_concurrent_writers_leave_a_chain_that_verifies(tmp_path):
    """Six processes, 30 entries each, all starting on an empty state folder (first use)."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_write_entries, args=(tmp_path, w, 30)) for w in range(6)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0] * 6
    result = store_at(tmp_path).verify()
    assert result.ok, result.problems
    assert [e.seq for e in result.entries] == list(range(1, 181))
    assert sorted({e.actor for e in result.entries}) == [f"worker-{w}" for w in range(6)]


def test_deleting_the_log_together_with_its_anchor_is_detected(tmp_path):
    s = store_at(tmp_path, create_key=False)
    assert s.initialize() is True  # production set-up: key and the anchor of the empty log
    assert s.verify().ok and s.initialize() is False
    s.record("approve", "support_agent", actor="alice", version=1)
    s.dispose()
    (tmp_path / "audit.db").unlink()
    (tmp_path / "anchor.jsonl").unlink()
    assert "anchor" in problems(store_at(tmp_path))


def test_verify_beside_a_writer_waits_for_its_anchor_instead_of_crying_tampering(audit, monkeypatch):
    """A reader that verifies while a writer has committed an entry but not yet anchored it (the
    approval sensor writing while `agentops approve --wait` polls) must not report the new entry
    as "not anchored": that false alarm once failed a reviewer's `--wait` under load."""
    import threading

    from agentops_pipelines.governance import audit_log

    real_check, paused, release = audit_log._anchor_check, threading.Event(), threading.Event()
    writer: dict = {}

    def check_then_pause_in_the_writer(key, seq, mac):  # record(): after the commit, before the anchor
        if threading.current_thread() is writer.get("thread") and seq == 5 and not paused.is_set():
            paused.set()
            release.wait(10)
        return real_check(key, seq, mac)

    monkeypatch.setattr(audit_log, "_anchor_check", check_then_pause_in_the_writer)
    writer["thread"] = threading.Thread(target=lambda: audit.record(
        "approve", "support_agent", actor="bob", version=5, reason="ok"))
    writer["thread"].start()
    assert paused.wait(10), "the writer never reached its anchor"
    result: dict = {}
    reader = threading.Thread(target=lambda: result.setdefault("verification", audit.verify()))
    reader.start()
    reader.join(0.5)  # old code: returned at once with "entries 5..5 are not anchored"
    release.set()
    reader.join(10)
    writer["thread"].join(10)
    verification = result["verification"]
    assert verification.ok, verification.problems
    assert [e.seq for e in verification.entries][-1] == 5
