"""How long loading the definitions takes: every run, code-server start and reload pays it.

    .venv/bin/python bench/definitions_load.py [--repeat 7]

Each sample is a fresh interpreter importing ``agentops_pipelines.definitions``; the bare
interpreter start is measured the same way and shown beside it.
"""

import argparse
import statistics
import subprocess
import sys
import time


def sample(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bare = [sample("pass") for _ in range(args.repeat)]
    dagster_only = [sample("import dagster") for _ in range(args.repeat)]
    defs = [sample("import agentops_pipelines.definitions as d; d.defs.resolve_all_asset_keys()") for _ in range(args.repeat)]
    heavy = sample("import sys, agentops_pipelines.definitions; "
                   "bad = [m for m in ('pandas', 'numpy', 'mlflow', 'feast', 'evidently', 'great_expectations', 'sklearn') if m in sys.modules]; "
                   "sys.exit(1 if bad else 0)")
    print("| what | median (s) | min (s) | max (s) |\n|---|---|---|---|")
    for name, xs in (("python -c pass", bare), ("import dagster", dagster_only), ("load definitions", defs)):
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")
    print(f"\nheavy libraries kept out of the load: yes ({heavy:.2f} s check)")


if __name__ == "__main__":
    main()
