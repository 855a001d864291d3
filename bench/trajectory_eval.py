"""Agents that act: trajectory evaluation time and the executor's per-request latency.

    .venv/bin/python bench/trajectory_eval.py                 # print the section
    .venv/bin/python bench/trajectory_eval.py --write         # also replace it in BENCHMARKS.md
    .venv/bin/python bench/trajectory_eval.py --lifecycle [--write]   # the asset, candidate + champion

Set-up (not timed): the system of record seeded into a temporary SQLite file, and the support
desk's real router (``SupportDeskAgent.train`` on three generated days, features from the
generator's customer snapshot, served through ``router_from_model`` with an in-memory feature
lookup standing in for the online store).

1. In-process evaluation, ``--repeat`` times, each on a fresh copy of the seeded database:
   generate ``--cases`` golden cases, run each through the executor (real reads and writes),
   score with the six code scorers. Medians.
2. ``mlflow.genai.evaluate`` with the same scorers (``mlflow_scorers()``) on ``--mlflow-cases`` of
   those trajectories, SQLite tracking store, ``MLFLOW_GENAI_EVAL_MAX_WORKERS`` workers; and once
   with a single scorer, to compare with the issue's figure.
3. Executor latency: ``--requests`` requests (the golden texts in turn, each a new request id, so
   writes really run: refunds, cancellations, address changes, tickets ...), one thread, then the
   same count over ``--threads`` threads sharing one executor. p50/p99 per request.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
SECTION = "## Agents that act: trajectory evaluation and executor latency"
DAYS = (date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3))


def train_router():
    import pandas as pd

    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.data.generator import customer_snapshot, generate_requests

    agent = SupportDeskAgent()
    frames = [generate_requests(d).merge(customer_snapshot(d), on="customer_id") for d in DAYS]
    router = agent.train(pd.concat(frames, ignore_index=True), {})
    # The snapshot's columns; the two the feature pipeline derives from past requests
    # (requests_7d, escalations_30d) get the router's neutral value, in training and here alike.
    snap = customer_snapshot(DAYS[-1] + timedelta(days=1)).set_index("customer_id")
    columns = [c for c in agent.feature_columns if c in snap.columns]
    rows = {cid: {c: (v.item() if hasattr(v, "item") else v) for c, v in r.items()}
            for cid, r in snap[columns].iterrows()}

    def lookup(ids: list[str]) -> dict[str, list]:
        return {c: [rows[i][c] for i in ids] for c in columns}

    return router, tuple(columns), lookup


def open_loop(ex, texts, rate: float, n: int, workers: int) -> list[float]:
    """``n`` requests sent on a fixed schedule (``rate`` a second) to ``workers`` threads; each
    latency counts from the request's scheduled time, so queueing shows (no coordinated omission)."""
    import queue

    q: queue.Queue = queue.Queue()
    out: list[float] = []

    def work() -> None:
        while (item := q.get()) is not None:
            j, due = item
            text, cid = texts[j % len(texts)]
            ex.run(f"open-{j}", text, cid)
            out.append((time.perf_counter() - due) * 1000)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for th in threads:
        th.start()
    start = time.perf_counter() + 0.05
    for j in range(n):
        due = start + j / rate
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        q.put((j, due))
    for _ in threads:
        q.put(None)
    for th in threads:
        th.join()
    return out


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


LIFECYCLE_SECTION = "## Trajectory evaluation in the lifecycle (the trajectory_evaluation asset)"


def lifecycle(cases: int, repeat: int, write: bool) -> int:
    """The ``trajectory_evaluation`` asset itself (``dg.materialize``), candidate and champion on
    ``cases`` golden cases: a seeded system of record, the pyfunc models loaded from MLflow, both
    run through the executor, scored, and every table, metric and the report logged to SQLite."""
    import dagster as dg
    import mlflow

    from agentops_pipelines.agent.model import AgentModel
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.assets.trajectory import TrajectoryConfig, build_trajectory_asset
    from agentops_pipelines.resources.audit import AuditLog
    from agentops_pipelines.resources.feast import FeastResource
    from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER, LakeIOManager
    from agentops_pipelines.resources.llm import LLMEndpointResource
    from agentops_pipelines.resources.mlflow import MlflowResource

    agent = SupportDeskAgent()
    tmp = Path(tempfile.mkdtemp(prefix="agentops-bench-traj-"))
    try:
        store = MlflowResource(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=str(tmp / "artifacts"))
        store.configure()
        router, _, _ = train_router()
        runs = []
        for _ in range(2):  # a candidate and a champion
            with mlflow.start_run(experiment_id=store.experiment_id(agent.name)) as run:
                mlflow.pyfunc.log_model(name="agent", python_model=AgentModel(
                    agent.name, router, agent.feature_columns, {}, agent.escalation_tool, "{{tool}}", "prompts:/x/1"))
            runs.append(run.info.run_id)
        mv = mlflow.register_model(f"runs:/{runs[1]}/agent", agent.name)
        audit = AuditLog(url=f"sqlite:///{tmp / 'audit.db'}", key_file=str(tmp / "audit.key"),
                         anchor_path=str(tmp / "audit.anchor"), create_key=True)
        # The champion is what the audit log says serves in prod (the alias is only a view of it).
        audit.record("promote", agent.name, actor="bench", version=mv.version, environment="prod",
                     reason="bench: the champion", details={"approvers": []})
        trained = dg.AssetSpec([agent.name, "trained_agent"])
        asset = build_trajectory_asset(agent, trained)
        resources = {"mlflow_store": store, "feast": FeastResource(repo_dir=str(tmp / "feast"), registry=str(tmp / "feast" / "registry.db")),
                     LAKE_IO_MANAGER: LakeIOManager(root=str(tmp / "lake")), "audit": audit,
                     "llm": LLMEndpointResource()}
        seconds, md = [], {}
        for _ in range(repeat):
            t = time.perf_counter()
            result = dg.materialize([trained, asset], resources=resources, run_config=dg.RunConfig(ops={
                f"{agent.name}__trajectory_evaluation": TrajectoryConfig(candidate_run_id=runs[0], cases=cases)}))
            seconds.append(time.perf_counter() - t)
            md = {k: v.value for k, v in result.asset_materializations_for_node(f"{agent.name}__trajectory_evaluation")[0].metadata.items()}
            print(f"trajectory_evaluation: {seconds[-1]:.1f} s, gate passed {md['gate_passed']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cpu = time.process_time()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    section = f"""{LIFECYCLE_SECTION}

`.venv/bin/python bench/trajectory_eval.py --lifecycle --write` ({date.today():%Y-%m-%d}, {os.cpu_count()} CPUs shared
with five other engineers' work: **noisy machine**, load average {load} at the end). One `dg.materialize`
of the asset: seed a system of record, load the candidate's and the champion's pyfunc models from
MLflow (SQLite), run **{cases} golden cases for each** through the executor (real reads and writes on
SQLite copies), score with the six scorers, McNemar on whole cases, log metrics, five tables and the
HTML report to the candidate's run. Goal: ≥ 500 cases in under 60 s.

| runs | median (s) | min (s) | max (s) | cases per model |
|---:|---:|---:|---:|---:|
| {len(seconds)} | {statistics.median(seconds):.1f} | {min(seconds):.1f} | {max(seconds):.1f} | {md.get('cases')} |

In the last run the candidate's own run and scoring took {md.get('seconds')} s (the rest: seeding, two
model loads, the champion's run, MLflow logging). Process CPU time for the whole benchmark
(training the router included): {cpu:.0f} s. Gate on the trained router: {'passed' if md.get('gate_passed') else 'failed'};
tool choice {md.get('trajectory_tool_choice')}, policy compliance {md.get('trajectory_policy_compliance')}.
`mlflow.genai.evaluate` is not used for the gate: at the ~3 cases/s measured in "Agents that act" above, 520 cases
would take minutes; the same scorer functions run in process and their tables are logged.
"""
    print(section)
    if write:
        write_section(ROOT / "BENCHMARKS.md", LIFECYCLE_SECTION, section)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lifecycle", action="store_true", help="only the trajectory_evaluation asset's time")
    p.add_argument("--cases", type=int, default=520)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mlflow-cases", type=int, default=60)
    p.add_argument("--mlflow-workers", type=int, default=2)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests a second")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.lifecycle:
        return lifecycle(args.cases, args.repeat, args.write)

    from agentops_pipelines.agent.actions import Actions
    from agentops_pipelines.agent.scorers import (
        evaluate_trajectories,
        golden_cases,
        mlflow_records,
        mlflow_scorers,
        runner,
    )
    from agentops_pipelines.agent.system_of_record import SystemOfRecord
    from agentops_pipelines.agent.trajectory import Executor, router_from_model

    tmp = Path(tempfile.mkdtemp(prefix="agentops-bench-act-"))
    try:
        t = time.perf_counter()
        template = tmp / "template.db"
        SystemOfRecord(f"sqlite:///{template}").ensure().dispose()
        seed_s = time.perf_counter() - t
        t = time.perf_counter()
        model, columns, lookup = train_router()
        train_s = time.perf_counter() - t
        route = router_from_model(model, columns)

        def fresh(name: str) -> SystemOfRecord:
            shutil.copy(template, tmp / f"{name}.db")
            return SystemOfRecord(f"sqlite:///{tmp / name}.db")

        # 1. in process ------------------------------------------------------------------------
        runs, ev, cases, sor = [], None, [], None
        for i in range(args.repeat):
            sor = fresh(f"eval{i}")
            t0 = time.perf_counter()
            cases = golden_cases(sor, args.cases)
            t1 = time.perf_counter()
            ev = evaluate_trajectories(cases, runner(Executor(Actions(sor), route, lookup)))
            t2 = time.perf_counter()
            runs.append({"generate": t1 - t0, "run": ev.seconds["run"], "score": ev.seconds["score"], "total": t2 - t0})
            print(f"in process {i + 1}/{args.repeat}: {runs[-1]}", flush=True)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

        # 2. mlflow.genai.evaluate --------------------------------------------------------------
        import mlflow

        os.environ["MLFLOW_GENAI_EVAL_MAX_WORKERS"] = str(args.mlflow_workers)
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'tracking.db'}")
        exp = mlflow.create_experiment("trajectory-eval", artifact_location=str(tmp / "artifacts"))
        mlflow.set_experiment(experiment_id=exp)
        picked = cases[: args.mlflow_cases]
        sor2 = fresh("sor-for-mlflow")
        trajectories = [runner(Executor(Actions(sor2), route, lookup))(c) for c in picked]
        records = mlflow_records(picked, trajectories)
        mlflow_runs = {}
        for label, scorers in (("six scorers", mlflow_scorers()), ("one scorer", mlflow_scorers(["tool_choice"]))):
            t = time.perf_counter()
            result = mlflow.genai.evaluate(data=records, scorers=scorers)
            secs = time.perf_counter() - t
            mlflow_runs[label] = (secs, len(records) / secs, result.metrics)
            print(f"mlflow.genai.evaluate ({label}): {len(records)} cases in {secs:.1f} s", flush=True)
        local = evaluate_trajectories(picked, lambda c, it=iter(trajectories): next(it))
        agree = all(abs(float(mlflow_runs["six scorers"][2][k]) - v) < 1e-9 for k, v in local.metrics.items())

        # 3. executor latency ------------------------------------------------------------------
        sor3 = fresh("latency")
        ex = Executor(Actions(sor3), route, lookup)
        texts = [(c.text, c.customer_id) for c in cases]
        for j in range(100):  # warm-up: connections, statement caches, the router's scorer
            ex.run(f"warm-{j}", *texts[j % len(texts)])

        def serve(ids: range, out: list[float]) -> None:
            for j in ids:
                text, cid = texts[j % len(texts)]
                t = time.perf_counter()
                ex.run(f"lat-{j}", text, cid)
                out.append((time.perf_counter() - t) * 1000)

        single: list[float] = []
        t = time.perf_counter()
        serve(range(args.requests), single)
        single_rate = args.requests / (time.perf_counter() - t)
        before = sor3.count("tool_calls")
        multi: list[list[float]] = [[] for _ in range(args.threads)]
        threads = [threading.Thread(target=serve, args=(range(args.requests + k, 2 * args.requests, args.threads), multi[k]))
                   for k in range(args.threads)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        multi_rate = args.requests / (time.perf_counter() - t)
        writes = sor3.count("tool_calls") - before
        flat = [x for m in multi for x in m]
        paced = open_loop(ex, texts, args.rate, args.requests, args.threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    per_scorer = "\n".join(f"| {r.scorer} | {r.mean:.3f} | {r.failed} |" for r in ev.per_scorer.itertuples())
    per_tool = "\n".join(f"| {r.expected_tool} | {r.cases} | {r.tool_choice:.2f} | {r.argument_correctness:.2f} | "
                         f"{r.outcome_match:.2f} | {r.policy_compliance:.2f} |" for r in ev.per_tool.itertuples())
    steps = "\n".join(f"| {r.step} | {r.count} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.errors} |"
                      for r in ev.per_step.itertuples())
    six, one = mlflow_runs["six scorers"], mlflow_runs["one scorer"]
    decide = next(r for r in ev.per_step.itertuples() if r.step == "decide")
    section = f"""{SECTION}

`.venv/bin/python bench/trajectory_eval.py --write` ({date.today():%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} CPUs
shared with other work: load average {load} at the end; Python {platform.python_version()}). The system of record on a SQLite file
(seeded in {seed_s:.1f} s), the support desk's trained router ({train_s:.1f} s to train on three generated
days), the executor doing real reads and writes (`agentops_pipelines/agent/trajectory.py`).

**{args.cases} golden cases, in process** (median of {args.repeat}, each on a fresh copy of the database).
Goal: under 60 s.

| stage | median (s) |
|---|---:|
| generate the golden cases from the database | {med['generate']:.2f} |
| run them through the executor (real tool calls) | {med['run']:.2f} |
| score (six code scorers) | {med['score']:.2f} |
| total | {med['total']:.2f} |

**The same scorers in `mlflow.genai.evaluate`** ({len(records)} of those trajectories as answer sheets,
SQLite tracking store, `MLFLOW_GENAI_EVAL_MAX_WORKERS={args.mlflow_workers}`): six scorers {six[0]:.1f} s,
**{six[1]:.2f} cases/s**; one scorer {one[0]:.1f} s, **{one[1]:.2f} cases/s** (the issue saw about 8).
At {six[1]:.2f} cases/s, {args.cases} cases would take {args.cases / six[1]:.0f} s: the gate scores in process
with the same functions and logs the table to the evaluation run (mlflow.genai.evaluate stays for
small sets and live traces). Its metrics equal the in-process ones on the same trajectories:
{'yes' if agree else 'NO'} (also `tests/agents_act/test_scorers.py`). With more workers than the SQLite store's
connection pool, traces fail to log ("QueuePool limit ... reached") and the run waits on timeouts.

The trained router on the golden cases (last run):

| scorer | mean | failed |
|---|---:|---:|
{per_scorer}

| expected tool | cases | tool choice | arguments | outcome | policy |
|---|---:|---:|---:|---:|---:|
{per_tool}

| step | count | p50 (ms) | p99 (ms) | errors (tool errors include expected rejections) |
|---|---:|---:|---:|---:|
{steps}

**Executor latency per request** (the golden texts in turn, each a new request id; context read,
router, argument parsing, tool call with its write, answer; no HTTP, no tracing). The issue's bar
for the whole served request later: p99 ≤ 20 ms at 200 requests/s.

| load | requests | p50 (ms) | p99 (ms) | max (ms) | requests/s |
|---|---:|---:|---:|---:|---:|
| 1 thread | {len(single)} | {quantile(single, 0.5):.2f} | {quantile(single, 0.99):.2f} | {max(single):.2f} | {single_rate:.0f} |
| {args.threads} threads, closed loop (as fast as they go) | {len(flat)} | {quantile(flat, 0.5):.2f} | {quantile(flat, 0.99):.2f} | {max(flat):.2f} | {multi_rate:.0f} |
| {args.threads} threads, open loop at {args.rate:.0f}/s (from the scheduled time) | {len(paced)} | {quantile(paced, 0.5):.2f} | {quantile(paced, 0.99):.2f} | {max(paced):.2f} | {args.rate:.0f} |

{writes} of the {len(flat)} requests in the closed-loop run executed a write (recorded in `tool_calls`).
The closed loop keeps {args.threads} requests in flight: its latency is mostly waiting for the GIL and
for SQLite's single writer (threads of one process queue on a lock in `SystemOfRecord`, not in
SQLite's sleeping busy handler). The open loop is the issue's load shape. The router's step
(pure CPU, no I/O) has p50 {decide.p50_ms:.2f} ms and p99 {decide.p99_ms:.2f} ms in the evaluation above: on this shared
machine the tails are mostly other processes' CPU time, so the p99 figures are upper bounds; the
p50s are the cost.
"""
    print(section)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", SECTION, section)
        print(f"wrote the '{SECTION}' section of BENCHMARKS.md")
    return 0


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) one ``## `` section; re-read right before writing, touch nothing else."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + body.rstrip("\n") + "\n" + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new)


if __name__ == "__main__":
    raise SystemExit(main())
