"""Audit log: time to verify 100,000 entries, and the cost of one write.

    .venv/bin/python bench/audit_log.py [--entries 100000] [--rounds 3] [--postgres]

The 100,000 entries are written straight into the table with their real MACs and anchors (the
same functions ``record`` uses), so building the fixture takes seconds instead of the ~5 minutes
that 100,000 separate ``record`` calls take. ``verify`` then reads every row, recomputes every MAC,
checks the sequence, the triggers and every anchor line. Medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentops_pipelines.governance import audit_log as al  # noqa: E402


def build(store: al.AuditStore, n: int) -> None:
    import sqlalchemy as sa

    store.record("register", "bench_agent", actor="bench", version=0)  # creates schema and key
    key = store.key_file.read_bytes()
    head = store.entries()[-1]
    prev, rows, anchors = head.mac, [], []
    for seq in range(2, n + 1):
        at = f"2026-12-01T00:00:{seq % 60:02d}.{seq:06d}+00:00"
        details = json.dumps({"n": seq}, sort_keys=True)
        mac = al._mac(key, seq, prev, at, "bench", "deploy", "bench_agent", str(seq % 50), "dev", "bench", details)
        rows.append({"seq": seq, "at": at, "actor": "bench", "action": "deploy", "agent": "bench_agent",
                     "version": str(seq % 50), "environment": "dev", "reason": "bench", "details": details,
                     "prev_mac": prev, "mac": mac})
        anchors.append(json.dumps({"seq": seq, "mac": mac, "at": at, "check": al._anchor_check(key, seq, mac)}))
        prev = mac
    with store.engine().begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {al.TABLE} ({', '.join(al._COLUMNS)}) VALUES (:seq, :at, :actor, "
                             ":action, :agent, :version, :environment, :reason, :details, :prev_mac, :mac)"), rows)
    with store.anchor_path.open("a") as f:
        f.write("\n".join(anchors) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--postgres", action="store_true", help="on the local Postgres (127.0.0.1:5432) instead of SQLite")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url, admin = f"sqlite:///{folder}/audit.db", None
        if args.postgres:
            import sqlalchemy as sa

            name = f"agentops_bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        store = al.AuditStore(url, folder / "audit.key", folder / "anchor.jsonl", create_key=True)
        try:
            t0 = time.perf_counter()
            build(store, args.entries)
            print(f"fixture: {args.entries} entries in {time.perf_counter() - t0:.1f} s")
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                result = store.verify()
                times.append(time.perf_counter() - t0)
                assert result.ok and len(result.entries) == args.entries, result.problems[:3]
            writes = []
            for i in range(200):
                t0 = time.perf_counter()
                store.record("deploy", "bench_agent", actor="bench", version=i, environment="dev")
                writes.append(time.perf_counter() - t0)
            print(f"verify {args.entries} entries: median {statistics.median(times):.2f} s "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times)}); "
                  f"one write: median {statistics.median(writes) * 1000:.1f} ms, "
                  f"p99 {sorted(writes)[197] * 1000:.1f} ms ({'Postgres' if args.postgres else 'SQLite'})")
        finally:
            store.dispose()
            if admin is not None:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
