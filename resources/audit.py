"""The audit log as a Dagster resource: a thin shell over :mod:`agentops_pipelines.governance.audit_log`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from agentops_pipelines.governance.audit_log import (
    ACTIONS,
    AuditEntry,
    AuditStore,
    AuditTampered,
    Verification,
)

__all__ = ["ACTIONS", "AuditEntry", "AuditLog", "AuditTampered", "Verification"]


class AuditLog(dg.ConfigurableResource):
    """The keyed, anchored, append-only audit log (see governance/audit_log.py).

    ``url``: SQLAlchemy URL of its database. ``key_file``: the MAC key (a secret file, never in
    that database). ``anchor_path``: the append-only checkpoint file. ``create_key``: make the key
    on first use (local mode only; production mounts it)."""

    url: str
    key_file: str
    anchor_path: str
    create_key: bool = False
    _store = PrivateAttr(default=None)

    @property
    def store(self) -> AuditStore:
        if self._store is None:
            # Outside a run (the CLI) an EnvVar field is still the variable's name: read it here.
            url = self.url.get_value() if isinstance(self.url, dg.EnvVar) else self.url
            self._store = AuditStore(url, Path(self.key_file), Path(self.anchor_path), self.create_key)
        return self._store

    def record(self, action: str, agent: str, **kwargs) -> AuditEntry:
        return self.store.record(action, agent, **kwargs)

    def entries(self, agent: str | None = None, version: str | int | None = None,
                limit: int | None = None) -> list[AuditEntry]:
        return self.store.entries(agent, version, limit)

    def verify(self) -> Verification:
        return self.store.verify()
