"""The audit log: every registration, decision, promotion, rollback and freeze, tamper-evident.

MLflow keeps no audit log (mlflow#2169); this is ours, and the pipeline's source of truth for who
approved what (model-version tags are only a view of it). One table, ``agentops_audit_log``, in
SQLite under the state folder or in Postgres. What protects it:

- **Append-only in the database**: triggers refuse UPDATE, DELETE (and TRUNCATE on Postgres). They
  are created once, with the table; a write or a verification that finds one missing says so and
  never recreates it quietly.
- **Sequence numbers and a keyed MAC chain**: entry ``n`` carries ``seq = n`` and
  ``mac = HMAC-SHA256(key, [seq, previous mac, at, actor, action, agent, version, environment,
  reason, details])``. The key is a secret kept outside the database (a file, mode 0600: under
  the state folder locally, a mounted secret in production), so whoever can write rows cannot
  compute a valid MAC for a forged or edited row, nor rewrite the chain.
- **An anchor outside the database**: after each write the head ``(seq, mac)`` is appended, with
  its own MAC, to an append-only checkpoint file. Deleting the last rows, every row, the table or
  the whole database leaves the anchor pointing at entries that are gone.
- **One writer at a time**: an exclusive lock on the anchor file, ``BEGIN IMMEDIATE`` on SQLite
  and an advisory lock on Postgres, held from reading the head to anchoring the new one, so
  concurrent writers never fork the chain and first use never races on the schema.

:meth:`AuditStore.verify` detects an edited row, a deleted middle row, deleted last rows, all rows
deleted, a forged row, a rewritten chain, a dropped table or database, and dropped triggers. It
does not protect against someone who holds the MAC key *and* can rewrite both the database and the
anchor file: keep the key, the database and the anchor under different owners in production.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

TABLE = "agentops_audit_log"
GENESIS = "0" * 64
ACTIONS = ("register", "approve", "reject", "approval_refused", "deploy", "promote", "promotion_failed",
           "rollback", "rollback_impossible", "freeze", "unfreeze", "deployment_refused")
_PG_LOCK_ID = 0x61756469  # "audi": pg_advisory_lock key of the writer lock
_COLUMNS = ("seq", "at", "actor", "action", "agent", "version", "environment", "reason", "details",
            "prev_mac", "mac")
_TRIGGERS = {"sqlite": {f"{TABLE}_no_update", f"{TABLE}_no_delete"},
             "postgresql": {f"{TABLE}_no_change", f"{TABLE}_no_truncate"}}
_SCHEMA = {
    "sqlite": [
        f"""CREATE TABLE {TABLE} (
            seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            agent TEXT NOT NULL, version TEXT, environment TEXT, reason TEXT,
            details TEXT NOT NULL, prev_mac TEXT NOT NULL, mac TEXT NOT NULL)""",
        f"CREATE INDEX {TABLE}_agent_version ON {TABLE} (agent, version)",
        f"""CREATE TRIGGER {TABLE}_no_update BEFORE UPDATE ON {TABLE}
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        f"""CREATE TRIGGER {TABLE}_no_delete BEFORE DELETE ON {TABLE}
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ],
    "postgresql": [
        f"""CREATE TABLE {TABLE} (
            seq BIGINT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            agent TEXT NOT NULL, version TEXT, environment TEXT, reason TEXT,
            details TEXT NOT NULL, prev_mac TEXT NOT NULL, mac TEXT NOT NULL)""",
        f"CREATE INDEX {TABLE}_agent_version ON {TABLE} (agent, version)",
        """CREATE OR REPLACE FUNCTION agentops_audit_log_append_only() RETURNS trigger AS $$
           BEGIN RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql""",
        f"""CREATE TRIGGER {TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE}
            FOR EACH ROW EXECUTE FUNCTION agentops_audit_log_append_only()""",
        f"""CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
            FOR EACH STATEMENT EXECUTE FUNCTION agentops_audit_log_append_only()""",
    ],
}


class AuditTampered(RuntimeError):
    """The log, its anchor or its key is not as the pipeline left it: nothing is written, and
    decisions that rely on the log stop until a person looks."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    agent: str
    version: str | None
    environment: str | None
    reason: str | None
    details: dict
    prev_mac: str
    mac: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verification:
    entries: list[AuditEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    anchored_seq: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{len(self.entries)} entries; MAC chain intact and anchored at entry {self.anchored_seq}"
        return "AUDIT LOG NOT INTACT: " + "; ".join(self.problems)


def create_key_file(path: Path) -> bool:
    """Write a new 32-byte MAC key at ``path`` (mode 0600) unless one is there; True if made."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return True


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _mac(key: bytes, seq: int, prev_mac: str, at: str, actor: str, action: str, agent: str,
         version: str | None, environment: str | None, reason: str | None, details: str) -> str:
    payload = _encode([seq, prev_mac, at, actor, action, agent, version, environment, reason, details])
    return hmac.digest(key, payload.encode(), "sha256").hex()


def _anchor_check(key: bytes, seq: int, mac: str) -> str:
    return hmac.digest(key, f"anchor\0{seq}\0{mac}".encode(), "sha256").hex()


class AuditStore:
    """The audit log in the SQL database at ``url`` (SQLAlchemy URL), keyed by the secret in
    ``key_file`` and anchored in ``anchor_path``. ``create_key``: make the key on first use if
    neither the log nor the anchor exists yet (local mode); production mounts it."""

    def __init__(self, url: str, key_file: Path, anchor_path: Path, create_key: bool = False):
        self.url, self.key_file, self.anchor_path = url, Path(key_file), Path(anchor_path)
        self.create_key = create_key
        self._engine = None

    # -- connections and locks -------------------------------------------------------------

    def engine(self):
        if self._engine is None:
            import sqlalchemy as sa

            if self.url.startswith("sqlite:///"):
                Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(self.url, connect_args={"timeout": 60})

                @sa.event.listens_for(engine, "connect")
                def _no_pysqlite_transactions(dbapi_connection, _record):
                    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves

                @sa.event.listens_for(engine, "begin")
                def _begin(conn):  # writers take SQLite's write lock before reading the head
                    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("writer") else "BEGIN")
            else:
                engine = sa.create_engine(self.url, pool_pre_ping=True)
            self._engine = engine
        return self._engine

    @property
    def dialect(self) -> str:
        return "postgresql" if self.engine().dialect.name == "postgresql" else "sqlite"

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def _writer(self) -> Iterator:
        """An exclusive writer: the anchor file's lock (every process on this machine), plus a
        session advisory lock on Postgres (every pod), held until the new head is anchored."""
        self.anchor_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.anchor_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self.engine().connect() as conn:
                conn.info["writer"] = True
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_ID})")
                    conn.commit()
                try:
                    yield conn, fd
                finally:
                    if self.dialect == "postgresql":
                        conn.rollback()
                        conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_ID})")
                        conn.commit()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def exclusive(self, name: str, holder: str, timeout_s: float = 900.0, on_wait=None) -> Iterator[None]:
        """Hold the named lock (e.g. ``rollout:<agent>:<environment>``) across processes: an
        advisory lock on Postgres (every pod), a file lock beside the anchor otherwise. Waits up
        to ``timeout_s``, calling ``on_wait(holder_of_the_lock)`` once; TimeoutError after."""
        import time

        deadline, told = time.monotonic() + timeout_s, False
        if self.dialect == "postgresql":
            lock_id = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            with self.engine().connect() as conn:
                while not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({lock_id})").scalar():
                    conn.commit()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} is held by another run; gave up after {timeout_s:.0f} s")
                    if on_wait and not told:
                        on_wait("another run")
                        told = True
                    time.sleep(1.0)
                conn.commit()
                try:
                    yield
                finally:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({lock_id})")
                    conn.commit()
            return
        folder = self.anchor_path.parent / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} is held by {path.read_text() or 'another run'}; "
                                           f"gave up after {timeout_s:.0f} s") from None
                    if on_wait and not told:
                        on_wait(path.read_text() or "another run")
                        told = True
                    time.sleep(0.5)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder} ({name}, pid {os.getpid()})".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing releases the lock

    # -- the key and the anchor ---------------------------------------------------------------

    def _key(self, may_create: bool) -> bytes:
        try:
            key = self.key_file.read_bytes()
        except FileNotFoundError:
            if not (may_create and self.create_key):
                raise AuditTampered(f"the audit key {self.key_file} is missing: the log can be neither "
                                    "written nor verified without it") from None
            create_key_file(self.key_file)
            key = self.key_file.read_bytes()
        if len(key) < 32:
            raise AuditTampered(f"the audit key {self.key_file} is shorter than 32 bytes")
        return key

    def _anchors(self, key: bytes) -> tuple[list[tuple[int, str]], list[str]]:
        """Anchored (seq, mac) pairs in file order, and problems with lines that do not check."""
        try:
            lines = self.anchor_path.read_text().splitlines()
        except FileNotFoundError:
            return [], []
        anchors, problems = [], []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                seq, mac = int(item["seq"]), str(item["mac"])
                ok = hmac.compare_digest(str(item["check"]), _anchor_check(key, seq, mac))
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                problems.append(f"anchor line {number} of {self.anchor_path} is not one the pipeline wrote")
                continue
            anchors.append((seq, mac))
        return anchors, problems

    def _anchor_head(self, key: bytes) -> tuple[int, str]:
        """The last anchored (seq, mac): writers append in order under the lock, so it is the
        file's last line (read from the end: a write costs the same on a long log)."""
        try:
            with self.anchor_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return 0, GENESIS
        for line in reversed(tail):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                seq, mac = int(item["seq"]), str(item["mac"])
                if hmac.compare_digest(str(item["check"]), _anchor_check(key, seq, mac)):
                    return seq, mac
            except (ValueError, KeyError, TypeError):
                pass
            raise AuditTampered(f"the last line of the anchor {self.anchor_path} is not one the pipeline wrote")
        return 0, GENESIS

    # -- schema ---------------------------------------------------------------------------------

    def _table_exists(self, conn) -> bool:
        if self.dialect == "postgresql":
            return conn.exec_driver_sql(f"SELECT to_regclass('{TABLE}') IS NOT NULL").scalar()
        return conn.exec_driver_sql(
            f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{TABLE}'").scalar() == 1

    def _missing_triggers(self, conn) -> set[str]:
        if self.dialect == "postgresql":
            rows = conn.exec_driver_sql(
                f"SELECT tgname FROM pg_trigger WHERE tgrelid = '{TABLE}'::regclass AND NOT tgisinternal")
        else:
            rows = conn.exec_driver_sql(
                f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = '{TABLE}'")
        return _TRIGGERS[self.dialect] - {r[0] for r in rows}

    # -- write ----------------------------------------------------------------------------------

    def record(self, action: str, agent: str, *, actor: str, version: str | int | None = None,
               environment: str | None = None, reason: str | None = None,
               details: dict | None = None) -> AuditEntry:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
        if not actor or not agent:
            raise ValueError("an audit entry needs an actor (who) and an agent")
        version = None if version is None else str(version)
        details_json = json.dumps(details or {}, sort_keys=True, default=str, ensure_ascii=False)
        with self._writer() as (conn, fd):
            anchored_before = self.anchor_path.stat().st_size > 0
            with conn.begin():
                table = self._table_exists(conn)
                has_rows = table and conn.exec_driver_sql(f"SELECT 1 FROM {TABLE} LIMIT 1").first() is not None
                key = self._key(may_create=not anchored_before and not has_rows)
                anchored = self._anchor_head(key)
                if not table:
                    if anchored[0]:
                        raise AuditTampered(f"the table {TABLE} is gone but its anchor records "
                                            f"{anchored[0]} entries: the log was dropped")
                    for statement in _SCHEMA[self.dialect]:
                        conn.exec_driver_sql(statement)
                missing = self._missing_triggers(conn)
                if missing:
                    raise AuditTampered(f"the append-only triggers {sorted(missing)} were dropped")
                head = conn.exec_driver_sql(f"SELECT seq, mac FROM {TABLE} ORDER BY seq DESC LIMIT 1").first()
                seq, prev = (int(head[0]), head[1]) if head else (0, GENESIS)
                if seq < anchored[0]:
                    raise AuditTampered(f"the log ends at entry {seq} but its anchor records entry "
                                        f"{anchored[0]}: entries were deleted")
                seq += 1
                at = datetime.now(UTC).isoformat(timespec="microseconds")
                mac = _mac(key, seq, prev, at, actor, action, agent, version, environment, reason, details_json)
                import sqlalchemy as sa

                conn.execute(sa.text(
                    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES (:seq, :at, :actor, :action, "
                    ":agent, :version, :environment, :reason, :details, :prev_mac, :mac)"),
                    {"seq": seq, "at": at, "actor": actor, "action": action, "agent": agent,
                     "version": version, "environment": environment, "reason": reason,
                     "details": details_json, "prev_mac": prev, "mac": mac})
            line = json.dumps({"seq": seq, "mac": mac, "at": at, "check": _anchor_check(key, seq, mac)})
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        return AuditEntry(seq, at, actor, action, agent, version, environment, reason, details or {}, prev, mac)

    def initialize(self) -> bool:
        """Make the key (if missing) and anchor the empty log (sequence 0), so that deleting the
        log together with its anchor later shows. True if anything was created."""
        made = create_key_file(self.key_file)
        key = self._key(may_create=False)
        with self._writer() as (_conn, fd):
            if self.anchor_path.stat().st_size == 0:
                line = json.dumps({"seq": 0, "mac": GENESIS, "at": "", "check": _anchor_check(key, 0, GENESIS)})
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
                made = True
        return made

    # -- read and verify ----------------------------------------------------------------------

    def _rows(self, agent: str | None = None, version: str | int | None = None,
              limit: int | None = None) -> list[AuditEntry]:
        import sqlalchemy as sa

        with self.engine().connect() as conn:
            if not self._table_exists(conn):
                return []
            query, params, clauses = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE}", {}, []
            if agent:
                clauses.append("agent = :agent")
                params["agent"] = agent
            if version is not None:
                clauses.append("version = :version")
                params["version"] = str(version)
            if clauses:
                query += " WHERE " + " AND ".join(clauses)
            query += " ORDER BY seq DESC"
            if limit:
                query += " LIMIT :limit"
                params["limit"] = int(limit)
            rows = conn.execute(sa.text(query), params).fetchall()
        return [_entry(row) for row in reversed(rows)]

    def entries(self, agent: str | None = None, version: str | int | None = None,
                limit: int | None = None) -> list[AuditEntry]:
        """Entries oldest first, unverified (use :meth:`verify` before relying on them)."""
        return self._rows(agent, version, limit)

    def _anchors_after_writers(self, key: bytes) -> list[tuple[int, str]]:
        """The anchor as it stands once no writer on this machine is between commit and anchor."""
        fd = os.open(self.anchor_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if self.dialect == "postgresql":  # writers in other pods hold the advisory lock
                with self.engine().connect() as conn:
                    conn.exec_driver_sql(f"SELECT pg_advisory_lock_shared({_PG_LOCK_ID})")
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock_shared({_PG_LOCK_ID})")
            return self._anchors(key)[0]
        finally:
            os.close(fd)  # releases the lock

    def verify(self) -> Verification:
        """Check every entry's MAC, the sequence, the triggers and the anchor."""
        problems: list[str] = []
        try:
            key = self._key(may_create=False)
        except AuditTampered as exc:
            rows_exist = bool(self._rows(limit=1)) or self.anchor_path.exists()
            return Verification([], [str(exc)] if rows_exist else [], 0)
        anchors, bad_lines = self._anchors(key)
        problems += bad_lines
        with self.engine().connect() as conn:
            table = self._table_exists(conn)
            missing = self._missing_triggers(conn) if table else set()
        if not anchors and not bad_lines:
            problems.append(f"the anchor {self.anchor_path} is missing or empty: the log cannot be "
                            "proven complete (deleted with the log?)")
        if not table:
            if max(anchors, default=(0, ""))[0] > 0:
                problems.append(f"the table {TABLE} is gone (dropped, or the database was deleted or "
                                f"replaced) but the anchor records {max(anchors)[0]} entries")
            return Verification([], problems, max(anchors, default=(0, ""))[0])
        if missing:
            problems.append(f"the append-only triggers {sorted(missing)} were dropped")
        with self.engine().connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} ORDER BY seq").fetchall()
        entries: list[AuditEntry] = []
        prev, expected_seq, by_seq = GENESIS, 1, {}
        for row in rows:
            seq, at, actor, action, agent, version, environment, reason, details, prev_mac, mac = row
            seq = int(seq)
            if seq != expected_seq:
                problems.append(f"entries {expected_seq}..{seq - 1} are missing (deleted)"
                                if seq > expected_seq else f"entry {seq} is out of sequence")
            if prev_mac != prev:
                problems.append(f"entry {seq} does not follow entry {seq - 1} (chain broken)")
            if not hmac.compare_digest(mac, _mac(key, seq, prev_mac, at, actor, action, agent, version,
                                                 environment, reason, details)):
                problems.append(f"entry {seq} has an invalid MAC (edited or forged)")
            entries.append(_entry(row))
            by_seq[seq] = mac
            prev, expected_seq = mac, seq + 1
        head = entries[-1].seq if entries else 0
        anchored = max(anchors, default=(0, GENESIS))  # read before the rows: never ahead of them
        if anchors and anchored[0] < head:
            # A writer may have committed entries after the anchor was read, and anchors each one
            # right after its commit, under the anchor file's exclusive lock: wait for that lock
            # (shared), then read the anchor again. What is still missing then was never anchored.
            anchors = self._anchors_after_writers(key)
            anchored = max(anchors, default=(0, GENESIS))
        if anchored[0] > head:
            problems.append(f"the anchor records entry {anchored[0]} but the log ends at entry {head}: "
                            + ("every entry was deleted" if head == 0 else "the last entries were deleted"))
        elif anchors and anchored[0] < head:
            problems.append(f"entries {anchored[0] + 1}..{head} are not anchored (added behind the "
                            "pipeline's back, or the anchor file was cut)")
        mismatched = [seq for seq, mac in anchors if seq in by_seq and by_seq[seq] != mac]
        if mismatched:
            problems.append(f"entries {mismatched[:5]} differ from what was anchored (chain rewritten)")
        return Verification(entries, problems, anchored[0])


def _entry(row) -> AuditEntry:
    return AuditEntry(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                      json.loads(row[8] or "{}"), row[9], row[10])
