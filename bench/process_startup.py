"""What a process pays before its first request: importing Feast, and loading the model.

Usage (from the project root)::

    .venv/bin/python bench/process_startup.py            # 7 alternating rounds, ~2 minutes
    .venv/bin/python bench/process_startup.py --rounds 11

**Feast.** Each round starts two fresh interpreters, in alternating order: one builds the code location's
Feast objects (``feature_repo.definitions.feature_objects``, which imports ``feast`` through
``features.feast_import.load_feast``), the other does the same with ``AGENTOPS_FEAST_TYPECHECKS=1``
(typeguard instruments Feast as a plain ``import feast`` does). Each child reports its own CPU time
(``time.process_time``) from before the import to after the objects exist.

**The model.** A tiny pyfunc model (pinned requirements, as the lifecycle logs them) saved to a
folder; each round starts two fresh interpreters, alternating: one loads it with
``model_loading.load_model`` (our requirements check), the other with ``mlflow.pyfunc.load_model``
(MLflow's, which maps every installed module to its package first). Each reports its CPU from
before ``import mlflow.pyfunc`` to after the load.

Reported for each: the medians, their ratio, and the CPU each process saves.
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

MODEL_CODE = """
import mlflow
import pandas as pd


class Model(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"tool": ["track_order"] * len(model_input)})


mlflow.models.set_model(Model())
"""

LOAD_CHILD = """
import json, sys, time
started = time.process_time()
import mlflow.pyfunc
if sys.argv[2] == "ours":
    from agentops_pipelines.model_loading import load_model
    load_model(sys.argv[1])
else:
    mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps({"cpu_s": time.process_time() - started}))
"""

CHILD = """
import json, sys, time
started = time.process_time()
from agentops_pipelines.feature_repo.definitions import feature_objects
feature_objects(sys.argv[1])
print(json.dumps({"cpu_s": time.process_time() - started}))
"""


def child_cpu(code: str, *args: str, env: dict[str, str] | None = None) -> float:
    """The CPU seconds a fresh interpreter running ``code`` reports (its last line, JSON)."""
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["cpu_s"]


def one(typechecks: bool, folder: str) -> float:
    env = {**os.environ, "AGENTOPS_FEAST_TYPECHECKS": "1" if typechecks else "", "FEAST_USAGE": "False"}
    return child_cpu(CHILD, folder, env=env)


def save_model(folder: Path) -> str:
    import mlflow.pyfunc

    code = folder / "model.py"
    code.write_text(MODEL_CODE)
    path = folder / "model"
    mlflow.pyfunc.save_model(str(path), python_model=str(code),
                             pip_requirements=["mlflow", "pandas", "scikit-learn", "numpy"])
    return str(path)


def load_once(model_dir: str, how: str) -> float:
    return child_cpu(LOAD_CHILD, model_dir, how)


def report(title: str, a_name: str, a: list[float], b_name: str, b: list[float], saved: str) -> None:
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"\n{title} (median of {len(a)}):")
    print(f"  {a_name}: {ma:.2f} s ({min(a):.2f}-{max(a):.2f})")
    print(f"  {b_name}: {mb:.2f} s ({min(b):.2f}-{max(b):.2f})")
    print(f"  ratio {ma / mb:.2f}; {mb - ma:.2f} s of CPU saved per process that {saved}")


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
    model_dir = save_model(Path(folder))
    load_once(model_dir, "ours")
    ours, mlflows = [], []
    for r in range(args.rounds):
        for how in (("ours", "mlflow") if r % 2 == 0 else ("mlflow", "ours")):
            (ours if how == "ours" else mlflows).append(load_once(model_dir, how))
        print(f"round {r}: model_loading.load_model {ours[-1]:.2f} s, mlflow.pyfunc.load_model {mlflows[-1]:.2f} s",
              flush=True)
    report("CPU to import Feast and build the feature objects", "load_feast (typeguard left out)", without,
           "typeguard on (a plain import)  ", with_checks, "imports Feast")
    report("CPU to import mlflow.pyfunc and load a model", "model_loading.load_model (our check)", ours,
           "mlflow.pyfunc.load_model (MLflow's)", mlflows, "loads a model")


if __name__ == "__main__":
    main()
