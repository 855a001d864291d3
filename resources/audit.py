"""The audit log: every approval, rejection, promotion, rollback and freeze — who, what, when, why.

MLflow keeps no audit log (mlflow#2169); this is ours. One append-only table in the project's
database (SQLite under the state folder, or Postgres in production). Append-only is enforced by
the database itself (triggers refuse UPDATE and DELETE), and each entry carries a SHA-256 chained
over the previous entry, so an edit made around the triggers shows up in ``verify()``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

ACTIONS = ("approve", "reject", "approval_refused", "promote", "promotion_failed", "rollback",
           "rollback_impossible", "freeze", "unfreeze", "register", "deploy")

_SCHEMA = {
    "sqlite": [
        """CREATE TABLE IF NOT EXISTS agentops_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, agent TEXT NOT NULL, version TEXT, environment TEXT,
            reason TEXT, details TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
        """CREATE TRIGGER IF NOT EXISTS agentops_audit_no_update BEFORE UPDATE ON agentops_audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER IF NOT EXISTS agentops_audit_no_delete BEFORE DELETE ON agentops_audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ],
    "postgresql": [
        """CREATE TABLE IF NOT EXISTS agentops_audit (
            id BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, agent TEXT NOT NULL, version TEXT, environment TEXT,
            reason TEXT, details TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
        """CREATE OR REPLACE FUNCTION agentops_audit_append_only() RETURNS trigger AS $$
           BEGIN RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql""",
        """DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'agentops_audit_no_change') THEN
               CREATE TRIGGER agentops_audit_no_change BEFORE UPDATE OR DELETE ON agentops_audit
               FOR EACH ROW EXECUTE FUNCTION agentops_audit_append_only();
             END IF;
           END $$""",
    ],
}
_COLUMNS = ("id", "at", "actor", "action", "agent", "version", "environment", "reason", "details", "prev_hash", "hash")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    action: str
    agent: str
    version: str | None
    environment: str | None
    reason: str | None
    details: dict
    prev_hash: str
    hash: str


def _digest(prev_hash: str, at: str, actor: str, action: str, agent: str, version, environment, reason, details: str) -> str:
    payload = json.dumps([prev_hash, at, actor, action, agent, version, environment, reason, details])
    return hashlib.sha256(payload.encode()).hexdigest()


class AuditLog(dg.ConfigurableResource):
    """Append-only audit entries in a SQL database given by a SQLAlchemy URL."""

    url: str
    _engine = PrivateAttr(default=None)

    def _connect(self):
        import sqlalchemy as sa

        if self._engine is None:
            if self.url.startswith("sqlite:///"):
                Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(self.url, pool_pre_ping=True)
            with engine.begin() as conn:
                for statement in _SCHEMA["postgresql" if engine.dialect.name == "postgresql" else "sqlite"]:
                    conn.exec_driver_sql(statement)
            self._engine = engine
        return self._engine

    def record(self, action: str, agent: str, *, actor: str, version: str | int | None = None,
               environment: str | None = None, reason: str | None = None, details: dict | None = None) -> AuditEntry:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
        if not actor:
            raise ValueError("an audit entry needs an actor (who)")
        import sqlalchemy as sa

        engine = self._connect()
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        version = None if version is None else str(version)
        details_json = json.dumps(details or {}, sort_keys=True, default=str)
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # one writer at a time keeps the chain linear
                conn.exec_driver_sql("LOCK TABLE agentops_audit IN SHARE ROW EXCLUSIVE MODE")
            prev = conn.exec_driver_sql("SELECT hash FROM agentops_audit ORDER BY id DESC LIMIT 1").scalar()
            prev = prev or "genesis"
            digest = _digest(prev, at, actor, action, agent, version, environment, reason, details_json)
            new_id = conn.execute(sa.text(
                "INSERT INTO agentops_audit (at, actor, action, agent, version, environment, reason, details, prev_hash, hash) "
                "VALUES (:at, :actor, :action, :agent, :version, :environment, :reason, :details, :prev, :hash) RETURNING id"),
                {"at": at, "actor": actor, "action": action, "agent": agent, "version": version,
                 "environment": environment, "reason": reason, "details": details_json, "prev": prev,
                 "hash": digest}).scalar_one()
        return AuditEntry(new_id, at, actor, action, agent, version, environment, reason, details or {}, prev, digest)

    def entries(self, agent: str | None = None, version: str | int | None = None, limit: int = 1000) -> list[AuditEntry]:
        import sqlalchemy as sa

        query = f"SELECT {', '.join(_COLUMNS)} FROM agentops_audit"
        clauses, params = [], {}
        if agent:
            clauses.append("agent = :agent")
            params["agent"] = agent
        if version is not None:
            clauses.append("version = :version")
            params["version"] = str(version)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY id DESC LIMIT :limit"
        params["limit"] = limit
        with self._connect().connect() as conn:
            rows = conn.execute(sa.text(query), params).fetchall()
        return [AuditEntry(*row[:8], json.loads(row[8] or "{}"), row[9], row[10]) for row in reversed(rows)]

    def verify(self) -> list[int]:
        """Ids of entries whose hash chain does not hold (empty: the log is intact)."""
        broken, prev = [], "genesis"
        for e in self.entries(limit=10**9):
            details = json.dumps(e.details, sort_keys=True, default=str)
            if e.prev_hash != prev or e.hash != _digest(prev, e.at, e.actor, e.action, e.agent, e.version,
                                                        e.environment, e.reason, details):
                broken.append(e.id)
            prev = e.hash
        return broken
