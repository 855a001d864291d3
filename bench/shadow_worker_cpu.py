"""What the shadow challenger costs the evaluation worker: CPU per shadowed request, in process.

Usage (from the project root)::

    .venv/bin/python bench/shadow_worker_cpu.py
    git archive main agentops_pipelines | tar -x -C /tmp/before
    .venv/bin/python bench/shadow_worker_cpu.py --baseline before=/tmp/before

The p99 that shadow adds (``bench/acting_latency.py``) needs a quiet machine; the CPU the worker
spends per shadowed request is the cause, and CPU time holds on a shared one. Set-up: the
support-desk router registered twice (versions 1 and 2), the seeded system of record, and 600
primary requests served for real by version 1 (golden cases, ``predict_acting``, one at a time as
the serving path does) whose jobs are what the serving process hands the worker. Each code copy
(this checkout and each ``--baseline NAME=FOLDER``) runs in a child process whose ``sys.path``
starts with it: the worker (``online_eval._Worker``) with version 2 loaded in shadow handles the
jobs with its challenger batch (``online_eval.SHADOW_BATCH``, 4 as shipped) set to each of the
``--batches`` sizes, ``--reps`` times, the copies alternating; reported: the median CPU ms per
shadowed request (``time.process_time``: the worker's pauses between slices are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, os, pickle, socket, sys, time
sys.path.insert(0, sys.argv[1])
from agentops_pipelines.serving.online_eval import _Worker
jobs = pickle.loads(open(sys.argv[2], "rb").read())
sizes = [int(s) for s in sys.argv[3].split(",")]
ours, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
worker = _Worker(ours, "support_agent", "bench", os.environ["AGENTOPS_SOR_URL"], 100.0, None)
worker.shadow_load({"model_uri": "models:/support_agent/2", "version": "2", "primary_version": "1"})
assert worker.challenger is not None, worker.state
worker.handle_many(jobs[:64])  # first calls: imports, caches
out = {}
import agentops_pipelines.serving.online_eval as online_eval
for size in sizes:
    online_eval.SHADOW_BATCH = size  # a copy from before it existed ran each handle_many as one batch
    started = time.process_time()
    for k in range(0, len(jobs), size):
        worker.handle_many(jobs[k:k + size])
    out[size] = (time.process_time() - started) / len(jobs) * 1000
print("RESULT " + json.dumps(out))
"""


def primary_jobs(sor_url: str, n: int) -> list[dict]:
    """``n`` requests served by version 1 for real, as the jobs the worker receives."""
    import mlflow
    import pandas as pd

    from agentops_pipelines.agent.actions import Actions, Policy
    from agentops_pipelines.agent.scorers import golden_cases
    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    sor = SystemOfRecord(sor_url).ensure()
    cases = golden_cases(sor, n)
    model = mlflow.pyfunc.load_model("models:/support_agent/1").unwrap_python_model()
    executor = model.executor(Actions(sor, Policy(100.0)))
    jobs = []
    for i, c in enumerate(cases):
        frame = pd.DataFrame({"text": [c.text], "customer_id": [c.customer_id], "request_id": [f"p-{i}"]})
        t = model.predict_acting(executor, frame)[0]["_trajectory"].iloc[0]
        first = (t["steps"][0].get("outputs") or {}) if t["steps"] else {}
        # "features": what the serving process sent before the worker read them from the trajectory
        jobs.append({"request_id": t["request_id"], "version": "1", "trajectory": t, "score": False,
                     "shadow": True, "features": dict(first.get("features") or {})})
    sor.dispose()
    return jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=FOLDER")
    p.add_argument("--batches", default="1,4,64", help="batch sizes, comma-separated")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--requests", type=int, default=600)
    args = p.parse_args(argv)

    from tests.helpers import register_versions

    work = Path(tempfile.mkdtemp(prefix="shadow-worker-cpu-"))
    uri = f"sqlite:///{work}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
           "AGENTOPS_HOME": str(work), "AGENTOPS_SOR_URL": f"sqlite:///{work}/system_of_record.db"}
    os.environ.update(env)
    register_versions(uri, 2)
    jobs = primary_jobs(env["AGENTOPS_SOR_URL"], args.requests)
    (work / "jobs.pickle").write_bytes(pickle.dumps(jobs))
    copies = [("this checkout", str(ROOT))] + [tuple(b.split("=", 1)) for b in args.baseline]
    results: dict[str, list[dict]] = {name: [] for name, _ in copies}
    loads = []
    for rep in range(args.reps):
        for name, folder in copies if rep % 2 == 0 else copies[::-1]:
            loads.append(os.getloadavg()[0])
            done = subprocess.run([sys.executable, "-c", CHILD, str(Path(folder).resolve()), str(work / "jobs.pickle"),
                                   args.batches], env=env, capture_output=True, text=True, timeout=1800)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            results[name].append({int(k): v for k, v in json.loads(line[7:]).items()})
            print(name, rep, results[name][-1], flush=True)
    sizes = [int(s) for s in args.batches.split(",")]
    baseline_flags = "".join(f" --baseline {b}" for b in args.baseline)
    print(f"\n`.venv/bin/python bench/shadow_worker_cpu.py --batches {args.batches} --reps {args.reps}"
          f"{baseline_flags}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.requests} shadowed requests per run, 1-minute load average {min(loads):.1f}–{max(loads):.1f})\n")
    print("| code | " + " | ".join(f"batch {s}: CPU ms/request (median, range)" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, runs in results.items():
        cells = [f"{statistics.median(r[s] for r in runs):.3f} ({min(r[s] for r in runs):.3f}–"
                 f"{max(r[s] for r in runs):.3f})" for s in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
