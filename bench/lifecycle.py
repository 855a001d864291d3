"""Wall time of the whole lifecycle on the embedded defaults (install excluded).

    .venv/bin/python bench/lifecycle.py [--repeat 3] [--days 3]

Each repeat starts from an empty AGENTOPS_HOME: ingest N days (dataset, gates, features), the
training job (training set → trained agent → evaluation report → registered version), then the
deployment to dev (serving process started and healthy). Stage times are medians over repeats.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

STAGES = ("ingest", "training", "deploy", "total")

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import dagster as dg
from agentops_pipelines.definitions import build_definitions
defs = build_definitions()
days = json.loads(sys.argv[1])
out = {}
with dg.instance_for_test() as instance:
    t = time.perf_counter()
    for day in days:
        assert defs.resolve_job_def("support_agent_ingest_job").execute_in_process(instance=instance, partition_key=day).success
    out["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    assert defs.resolve_job_def("support_agent_training_job").execute_in_process(instance=instance).success
    out["training"] = time.perf_counter() - t
    t = time.perf_counter()
    assert defs.resolve_job_def("support_agent_deploy_job").execute_in_process(instance=instance, partition_key="dev").success
    out["deploy"] = time.perf_counter() - t
    defs.resources["deployer"].stop("dev")
out["total"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()
    days = [f"2026-11-{d:02d}" for d in range(1, args.days + 1)]
    results = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as home:
            env = dict(os.environ, AGENTOPS_HOME=home, GX_ANALYTICS_ENABLED="False")
            env.pop("MLFLOW_TRACKING_URI", None)
            proc = subprocess.run([sys.executable, "-c", CHILD, __import__("json").dumps(days)], env=env,
                                  capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"run {i} failed:\n{proc.stderr[-3000:]}")
            results.append(__import__("json").loads(line[0][7:]))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in results[-1].items()), flush=True)
    print(f"\n{args.days} days × 800 requests, {args.repeat} runs, fresh AGENTOPS_HOME each (process start included in total)\n")
    print("| stage | median (s) | min (s) | max (s) |\n|---|---|---|---|")
    for stage in STAGES:
        xs = [r[stage] for r in results]
        print(f"| {stage} | {statistics.median(xs):.1f} | {min(xs):.1f} | {max(xs):.1f} |")


if __name__ == "__main__":
    main()
