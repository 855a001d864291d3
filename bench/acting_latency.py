"""Agents that act: the served multi-step request, and what a shadow challenger costs the primary.

Usage (from the project root)::

    .venv/bin/python bench/acting_latency.py                 # ~3 minutes
    .venv/bin/python bench/acting_latency.py --write         # also update BENCHMARKS.md
    git archive main agentops_pipelines | tar -x -C /tmp/before
    .venv/bin/python bench/acting_latency.py --baseline before=/tmp/before   # A/B against main

Set-up (a temporary folder): the support-desk router trained on a generated day and registered
twice (versions 1 and 2, the same router), the demo system of record (SQLite, seeded), and one
serving process as deployed (inference log on, 1% traced, online evaluation sampling 10%) serving
version 1 with its tools running against that database.

Load: open loop at ``--rate`` requests/s for ``--duration`` seconds per round over 32 keep-alive
connections; each latency counts from the request's scheduled send time (no coordinated
omission). Each request is a golden case's text and customer (orders, refunds, cancellations,
address changes, subscriptions, promo codes, hand-overs ...) with its own ``X-Request-Id``, so
every request runs fetch context → decide → extract arguments → tool (real SQLite reads and
writes, idempotency row included) → observe → answer.

Shadow on vs off: the same process, version 2 loaded in shadow (``POST /admin/shadow``) for one
round and unloaded for the next, in counterbalanced order (off then on in even rounds, on then
off in odd ones), so machine noise and what drifts over the run (the system of record and the logs
grow) hit both alike; until 2026-12-04 "on" always came second. Reported: per-round p50/p99, the medians, the p99 difference and ratio, and the CPU of the
serving process and its helpers (the evaluation worker included).

``--baseline NAME=FOLDER`` adds a serving process run from another copy of the package (``git
archive`` of an older commit's ``agentops_pipelines/`` into FOLDER), with its own copy of the
system of record, measured in the same rounds: each round serves every server's off and on turns
in turn (the order rotating from round to round), so the before/after comparison of "what shadow
adds" is paired round by round. Only one server has traffic at a time.

Known limit: a baseline folder's shadow turns fail. A confined server may read its package's
folder but not the folder above it, so its spawned evaluation worker cannot import the copy from
there and falls through to the editable install, which the confinement does not let it read.
To compare two versions of the worker, serve this checkout twice (``--baseline other=.``) and key a
temporary edit on the server's copy of the system of record (``sor-0`` in its URL), as the runs of
2026-12-05 in BENCHMARKS.md did.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from serving_latency import (  # noqa: E402 - the bench folder is on the path from here
    ADMIN_TOKEN,
    ours,
    quantile,
    send_on_schedule,
    write_section,
)

SECTION = "## Agents that act: multi-step serving and shadow"


def open_loop(url: str, requests: list[tuple[str, bytes]], rate: float, connections: int = 32):
    """(latencies in ms from the scheduled send, statuses, outcomes) of ``requests`` (request id,
    body) sent at ``rate``; no retry (a request acts: it is sent once)."""
    latency, status, outcome, _ = send_on_schedule(
        url, [body for _, body in requests], rate, connections,
        headers=[{"X-Request-Id": rid} for rid, _ in requests],
        answer=lambda raw: json.loads(raw)["predictions"][0].get("outcome"), reconnects=0)
    return latency, status, outcome


def admin(url: str, payload: dict) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=180)
    conn.request("POST", "/admin/shadow", json.dumps(payload).encode(),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    if response.status != 200:
        raise SystemExit(f"/admin/shadow {payload}: {response.status} {body}")
    return body


def submit_cost(sor_url: str, cases, n: int = 2000) -> float:
    """Median µs the request path spends handing one request to the evaluation worker (pickling
    its real trajectory and appending it to the queue the sender thread sends from): what shadow
    and online evaluation cost the primary's thread, measured in process (CPU-bound, so little
    moved by other load)."""
    from agentops_pipelines.agent.actions import Actions
    from agentops_pipelines.agent.system_of_record import SystemOfRecord
    from agentops_pipelines.agent.trajectory import Executor
    from agentops_pipelines.serving.online_eval import EvalWorker

    sor = SystemOfRecord(sor_url)
    executor = Executor(Actions(sor, dry_run=True), lambda text, f: ("track_order", 0.9))
    trajectories = [executor.run(f"c{i}", c.text, c.customer_id).to_dict() for i, c in enumerate(cases[:200])]
    sor.dispose()
    worker = EvalWorker("bench", "bench", sor_url, 100.0, 0.0).start()
    try:
        times = []
        for i in range(n):
            t = trajectories[i % len(trajectories)]
            job = {"request_id": t["request_id"], "version": "1", "trajectory": t,
                   "score": False, "shadow": False}
            t0 = time.perf_counter()
            worker.submit(job)
            times.append((time.perf_counter() - t0) * 1e6)
            if i % 50 == 0:
                time.sleep(0.01)  # let the worker read: measure sends, not a full buffer
        return statistics.median(times)
    finally:
        worker.close()


def request_path(model_uri: str, challenger: str, sor_url: str, cases, blocks: int = 6, n: int = 400) -> list[dict]:
    """The primary's request path in process (parse → executor with real SQLite reads and writes →
    JSON → record), shadow off and on in alternating blocks: thread CPU per request (CPU time is
    what other load moves least) and wall p50/p99. The challenger runs in the worker process."""
    from agentops_pipelines.serving.acting import Acting, ActSettings
    from agentops_pipelines.serving.handlers import handle_invocations
    from agentops_pipelines.serving.online_eval import EvalWorker
    from agentops_pipelines.serving.state import ServingState

    agent, version = model_uri.split("/")[1], model_uri.split("/")[-1]
    settings = ActSettings(sor_url, 100.0, 0.1)
    state = ServingState("bench", acting=Acting(settings), agent=agent,
                         evaluator=EvalWorker(agent, "bench", sor_url, 100.0, 0.1), batch_max_rows=0)
    state.load(model_uri, version)
    out = []
    try:
        for b in range(blocks):
            shadow = b % 2 == 1
            if shadow:
                state.shadow_load(f"models:/{agent}/{challenger}", challenger)
            cpu, wall = [], []
            for i in range(n):
                c = cases[(b * n + i) % len(cases)]
                body = json.dumps({"dataframe_records": [{"text": c.text, "customer_id": c.customer_id}]}).encode()
                t0, c0 = time.perf_counter(), time.thread_time()
                handle_invocations(state, body, "application/json", f"ip{b}-{i}")
                cpu.append((time.thread_time() - c0) * 1e3)
                wall.append((time.perf_counter() - t0) * 1e3)
            if shadow:
                state.shadow_unload(record=False)
            out.append({"block": b, "shadow": shadow, "cpu_ms": statistics.mean(cpu),
                        "p50_ms": quantile(wall, 0.5), "p99_ms": quantile(wall, 0.99)})
            print(json.dumps(out[-1]), flush=True)
    finally:
        state.close()
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process descending from it (Linux): the serving process
    and its helpers, the evaluation worker included (it runs in a session of its own, out of the
    server's process group)."""
    tick, stats = os.sysconf("SC_CLK_TCK"), {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted, grew = {pid}, True
    while grew:  # parents before children whatever the order /proc lists them in
        grew = False
        for p, (ppid, _) in stats.items():
            if ppid in wanted and p not in wanted:
                wanted.add(p)
                grew = True
    return sum(cpu for p, (_, cpu) in stats.items() if p in wanted)


def turn(url: str, pid: int, reqs: list[tuple[str, bytes]], rate: float, shadow: tuple[str, str] | None) -> dict:
    """One measured turn of ``reqs`` at ``rate`` on one server, ``shadow`` (model URI, version)
    loaded for it or not: latency quantiles, the process group's CPU, what the challenger compared."""
    if shadow:
        admin(url, {"action": "load", "model_uri": shadow[0], "version": shadow[1]})
    load0, cpu0, t0 = os.getloadavg()[0], tree_cpu_seconds(pid), time.perf_counter()
    latency, status, outcome = open_loop(url, reqs, rate)
    wall = time.perf_counter() - t0
    cpu = (tree_cpu_seconds(pid) - cpu0) / wall
    summary = admin(url, {"action": "unload", "record": False})["shadow"] if shadow else None
    done = [v for v in latency if v is not None]
    outcomes: dict = {}
    for o in outcome:
        outcomes[o] = outcomes.get(o, 0) + 1
    return {"shadow": bool(shadow), "sent": len(reqs), "ok": sum(1 for s in status if s == 200),
            "p50_ms": quantile(done, 0.5), "p99_ms": quantile(done, 0.99), "max_ms": max(done),
            "server_cpu": cpu, "cpu_ms_per_request": cpu * wall / len(reqs) * 1000,
            "achieved_rps": sum(1 for s in status if s == 200) / wall, "outcomes": outcomes,
            "shadowed": summary["requests"] if summary else 0,
            "load": (load0, os.getloadavg()[0])}


def ab_lines(rows: list[dict], names: list[str]) -> list[str]:
    """Per server: medians off/on and the paired per-round p99 difference (median, range)."""
    orders: list[str] = []
    out = ["| server | p99 off (median) | p99 on (median) | p99 added by shadow, per round | median added | "
           "CPU ms/request off → on | shadowed / sent |", "|---|---|---|---|---|---|---|"]
    for name in names:
        mine = [r for r in rows if r["server"] == name]
        rounds = sorted({r["round"] for r in mine})
        added = [next(r["p99_ms"] for r in mine if r["round"] == k and r["shadow"])
                 - next(r["p99_ms"] for r in mine if r["round"] == k and not r["shadow"]) for k in rounds]
        off = [r for r in mine if not r["shadow"]]
        on = [r for r in mine if r["shadow"]]
        by_order = {first: [a for k, a in zip(rounds, added, strict=True) if (k % 2 == 1) == first]
                    for first in (False, True)}
        out_order = [f"{name}: p99 added when shadow came second (rounds 0, 2, ...): "
                     f"{', '.join(f'{a:+.2f}' for a in by_order[False]) or '–'}; when it came first: "
                     f"{', '.join(f'{a:+.2f}' for a in by_order[True]) or '–'}"]
        out.append(
            f"| {name} | {statistics.median(r['p99_ms'] for r in off):.2f} | "
            f"{statistics.median(r['p99_ms'] for r in on):.2f} | {', '.join(f'{a:+.2f}' for a in added)} | "
            f"{statistics.median(added):+.2f} | {statistics.median(r['cpu_ms_per_request'] for r in off):.2f} → "
            f"{statistics.median(r['cpu_ms_per_request'] for r in on):.2f} | "
            f"{sum(r['shadowed'] for r in on)} / {sum(r['sent'] for r in on)} |")
        orders.extend(out_order)
    return out + [""] + orders


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration", type=float, default=15.0, help="seconds per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per configuration (off and on alternate)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=FOLDER",
                   help="a server run from another copy of the package (git archive of an older commit "
                        "into FOLDER/agentops_pipelines), measured in the same rounds")
    p.add_argument("--skip-in-process", action="store_true", help="skip the in-process request-path blocks")
    p.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out

    import shutil

    import mlflow

    from agentops_pipelines.agent.scorers import golden_cases
    from agentops_pipelines.agent.system_of_record import SystemOfRecord
    from tests.helpers import AGENT, register_versions

    work = Path(tempfile.mkdtemp(prefix="agentops-acting-bench-"))
    uri = f"sqlite:///{work}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = uri
    versions = register_versions(uri, 2)
    # Each system of record in a folder of its own: a confined server may write its database's
    # folder (the journal), never the state folder itself (serving/confine.py).
    (work / "sor").mkdir()
    sor = SystemOfRecord(f"sqlite:///{work}/sor/system_of_record.db").ensure()
    cases = golden_cases(sor, 1500)
    sor.dispose()  # checkpoints the WAL into the file: each baseline gets a copy of it
    per_round = int(args.rate * args.duration)
    servers = [("this checkout", None, sor.url)]
    for i, baseline in enumerate(args.baseline):
        name, _, folder = baseline.partition("=")
        copy = work / f"sor-{i}" / "system_of_record.db"
        copy.parent.mkdir()
        shutil.copy(work / "sor" / "system_of_record.db", copy)
        servers.append((name, str(Path(folder).resolve()), f"sqlite:///{copy}"))
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        running = []
        for i, (name, code, sor_url) in enumerate(servers):
            env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "AGENTOPS_SOR_URL": sor_url,
                   "AGENTOPS_HOME": str(work)}
            url, pid = stack.enter_context(ours(f"models:/{AGENT}/{versions[0]}", versions[0], work,
                                                 name=f"serving-{i}", env=env, code=code))
            warm = [(f"warm{i}-{j}", body(c)) for j, c in enumerate(cases[:200])]
            open_loop(url, warm, 50.0)
            running.append((name, url, pid))
        for i, (_, url, _) in enumerate(running):  # an unmeasured turn at the full rate each:
            n = int(args.rate * min(args.duration, 5.0))  # the first turn was always the slowest
            open_loop(url, [(f"hot{i}-{j}", body(cases[j % len(cases)])) for j in range(n)], args.rate)
        for k in range(args.rounds):
            order = running[k % len(running):] + running[:k % len(running)]
            for s, (name, url, pid) in enumerate(order):
                challenger = (f"models:/{AGENT}/{versions[1]}", versions[1])
                # off then on in even rounds, on then off in odd ones: what drifts over the run
                # (the system of record and the logs grow, caches warm) falls on both sides alike
                for shadow in ((None, challenger) if k % 2 == 0 else (challenger, None)):
                    t = 2 * (k * len(running) + s) + bool(shadow)
                    reqs = [(f"{name[:1]}{k}-{t}-{i}", body(cases[(t * per_round + i) % len(cases)]))
                            for i in range(per_round)]
                    row = {"server": name, "round": k, **turn(url, pid, reqs, args.rate, shadow)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    names = [name for name, _, _ in servers]
    mine = [r for r in rows if r["server"] == names[0]]
    submit_us = submit_cost(sor.url, cases)
    blocks = [] if args.skip_in_process else request_path(f"models:/{AGENT}/{versions[0]}", versions[1], sor.url, cases)
    loads = [x for r in rows for x in r["load"]]
    lines = [
        f"Command: `.venv/bin/python bench/acting_latency.py --rate {args.rate:g} --duration {args.duration:g} "
        f"--rounds {args.rounds}{''.join(f' --baseline {b}' for b in args.baseline)}"
        f"{' --skip-in-process' if args.skip_in_process else ''}` (measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average "
        f"{min(loads):.1f}–{max(loads):.1f} during the turns, on {os.cpu_count()} cores).", "",
        "Each request: fetch context → decide (trained router) → extract arguments → tool against "
        "SQLite (reads, and writes with their idempotency row) → observe → answer; a golden case's "
        "text, a new `X-Request-Id` each. Served as deployed (inference log, 1% traces, online "
        "evaluation of 10%).", "",
        "| server | round | shadow | sent | ok | achieved req/s | p50 ms | p99 ms | max ms | server CPU (cores) | "
        "CPU ms/request | shadowed | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['server']} | {r['round']} | {'on' if r['shadow'] else 'off'} | {r['sent']} | {r['ok']} | "
          f"{r['achieved_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
          f"{r['server_cpu']:.2f} | {r['cpu_ms_per_request']:.2f} | {r['shadowed']} | "
          f"{r['load'][0]:.1f}–{r['load'][1]:.1f} |" for r in rows],
        "", *ab_lines(rows, names), "",
        f"Medians for {names[0]}: p50 off {statistics.median(r['p50_ms'] for r in mine if not r['shadow']):.2f} ms, "
        f"on {statistics.median(r['p50_ms'] for r in mine if r['shadow']):.2f} ms. On the request path, handing a "
        f"request to the evaluation worker (pickling its trajectory, appending it to the sender's queue) takes "
        f"{submit_us:.0f} µs (median of 2,000, in process).", "",
    ]
    if blocks:
        ip = {name: {k: statistics.median(r[k] for r in blocks if r["shadow"] == flag)
                     for k in ("cpu_ms", "p50_ms", "p99_ms")} for name, flag in (("off", False), ("on", True))}
        lines += [
            "**The primary's request path in process** (no HTTP: parse → executor with real SQLite reads "
            "and writes → JSON → metrics, inference-log-free; 400 requests per block, shadow off and on "
            "alternating, the challenger in the worker process):", "",
            "| block | shadow | thread CPU ms/request | wall p50 ms | wall p99 ms |", "|---|---|---|---|---|",
            *[f"| {r['block']} | {'on' if r['shadow'] else 'off'} | {r['cpu_ms']:.2f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} |" for r in blocks], "",
            f"Medians: off {ip['off']['cpu_ms']:.2f} ms CPU, p99 {ip['off']['p99_ms']:.2f} ms; on "
            f"{ip['on']['cpu_ms']:.2f} ms CPU, p99 {ip['on']['p99_ms']:.2f} ms: shadow adds "
            f"{ip['on']['cpu_ms'] - ip['off']['cpu_ms']:+.3f} ms of CPU and "
            f"{ip['on']['p99_ms'] - ip['off']['p99_ms']:+.2f} ms of p99 to the primary's request path.", "",
        ]
    text = "\n".join(lines)
    print(f"{SECTION}\n\n{text}")
    if args.write:
        write_section(text, SECTION)
    mlflow.set_tracking_uri(None)
    return 0


def body(case) -> bytes:
    return json.dumps({"dataframe_records": [{"text": case.text, "customer_id": case.customer_id}]}).encode()


if __name__ == "__main__":
    sys.exit(main())
