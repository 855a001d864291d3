"""What importing Feast costs a process, with and without typeguard's import-time instrumentation.

Usage (from the project root)::

    .venv/bin/python bench/feast_import.py            # 7 alternating rounds, ~1 minute
    .venv/bin/python bench/feast_import.py --rounds 11

Each round starts two fresh interpreters, in alternating order: one builds the code location's
Feast objects (``feature_repo.definitions.feature_objects``, which imports ``feast`` through
``features.feast_import.load_feast``), the other does the same with ``AGENTOPS_FEAST_TYPECHECKS=1``
(typeguard instruments Feast as a plain ``import feast`` does). Each child reports its own CPU time
(``time.process_time``) from before the import to after the objects exist. Reported: the medians,
their ratio, and the CPU each process saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
started = time.process_time()
from agentops_pipelines.feature_repo.definitions import feature_objects
feature_objects(sys.argv[1])
print(json.dumps({"cpu_s": time.process_time() - started}))
"""


def one(typechecks: bool, folder: str) -> float:
    env = {**os.environ, "AGENTOPS_FEAST_TYPECHECKS": "1" if typechecks else "", "FEAST_USAGE": "False"}
    out = subprocess.run([sys.executable, "-c", CHILD, folder], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="feast-import-")
    one(False, folder)  # warm the page cache and the bytecode
    without, with_checks = [], []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for typechecks in order:
            (with_checks if typechecks else without).append(one(typechecks, folder))
        print(f"round {r}: load_feast {without[-1]:.2f} s, typeguard on {with_checks[-1]:.2f} s", flush=True)
    a, b = statistics.median(without), statistics.median(with_checks)
    print(f"\nCPU to import Feast and build the feature objects (median of {args.rounds}):")
    print(f"  load_feast (typeguard left out): {a:.2f} s ({min(without):.2f}-{max(without):.2f})")
    print(f"  typeguard on (a plain import):   {b:.2f} s ({min(with_checks):.2f}-{max(with_checks):.2f})")
    print(f"  ratio {a / b:.2f}; {b - a:.2f} s of CPU saved per process that imports Feast")


if __name__ == "__main__":
    main()
