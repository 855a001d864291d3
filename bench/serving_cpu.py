"""CPU time per request of the serving path, in process: a measure that holds on a shared machine.

Usage (from the project root; a registered support-desk model, e.g. the one
``bench/serving_latency.py`` trains)::

    AGENTOPS_HOME=... .venv/bin/python bench/serving_cpu.py --model-uri models:/support_agent/1 \\
        --tracking-uri sqlite:///.../mlflow.db [--baseline before=FOLDER] [--inference-log]

What a served request costs the serving process's event-loop thread without the HTTP layer:
``begin_invocation`` (parse, route, checks), the micro-batch (merge, the model's predict, split)
and ``finish_invocation`` (JSON answer, metrics, inference-log hand-off), for one-row requests
arriving ``B`` at a time (one micro-batch each), ``time.process_time`` per request. Requests/s and
wall-clock latencies depend on what else runs on the machine; CPU time per request much less, and
before/after ratios taken in alternating runs not at all.

``--baseline NAME=FOLDER`` measures another copy of the package (``git archive`` of an older
commit's ``agentops_pipelines/`` into FOLDER) in the same alternating runs: each measurement is a
child process whose ``sys.path`` starts with the code it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serving_latency import TEXTS as SERVING_TEXTS  # noqa: E402 - the bench folder is on the path
from serving_latency import bodies  # noqa: E402

# Six of the serving benchmark's texts (the ones every figure of this benchmark was measured on).
TEXTS = SERVING_TEXTS[:5] + SERVING_TEXTS[8:9]

# Runs in a child process whose sys.path[0] is the code measured (no import of this checkout);
# the request bodies (``serving_latency.bodies``) arrive on its stdin as a JSON list.
CHILD = r"""
import json, sys, tempfile, time
from agentops_pipelines.serving.handlers import begin_invocation, finish_invocation
from agentops_pipelines.serving.inference_log import InferenceLogWriter
from agentops_pipelines.serving.metrics import ServingMetrics
from agentops_pipelines.serving.state import ServingState

model_uri, version, sizes, n, log = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
bodies = [body.encode() for body in json.load(sys.stdin)]
writer = InferenceLogWriter(tempfile.mkdtemp(), "bench").start() if log == "1" else None
state = ServingState("bench", agent=model_uri.split("/")[1], metrics=ServingMetrics("bench"),
                     inline_batching=True, inference_log=writer)
state.load(model_uri, version)
batcher = state.routing.stable.batcher

def run(size, count):
    started = time.process_time()
    for first in range(0, count, size):
        waiting = []
        for body in bodies[first:first + size]:
            pending = begin_invocation(state, body, "application/json", None)
            out = {}
            batcher.submit(pending.frame, lambda r, e, out=out: out.update(r=r, e=e), pending.chars)
            waiting.append((pending, out))
        while batcher.run_pending():
            pass
        for pending, out in waiting:
            assert finish_invocation(state, pending, out["r"], out["e"]).status == 200
    return (time.process_time() - started) / count * 1000.0

result = {}
for size in (int(s) for s in sizes.split(",")):
    run(size, min(n, 200))  # warm-up
    result[size] = run(size, n)
if writer is not None:
    writer.close()
print("RESULT " + json.dumps(result))
"""


def measure(code: Path, model_uri: str, version: str, sizes: str, n: int, log: bool) -> dict[int, float]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model_uri, version, sizes, str(n), "1" if log else "0"],
        input=json.dumps([body.decode() for body in bodies(n, TEXTS)]),
        cwd=code, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"measuring {code} failed:\n{out.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(line.removeprefix("RESULT ")).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-uri", required=True)
    p.add_argument("--version", default="")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI for --model-uri")
    p.add_argument("--sizes", default="1,8,32", help="requests per micro-batch")
    p.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating runs per code (medians)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=FOLDER")
    p.add_argument("--inference-log", action="store_true",
                   help="with an inference log (a thread here, as --inference-log-thread)")  # fmt: skip
    args = p.parse_args(argv)
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    version = args.version or args.model_uri.rstrip("/").rsplit("/", 1)[-1]
    codes = [("this checkout", ROOT)] + [
        (name, Path(folder).resolve())
        for name, _, folder in (b.partition("=") for b in args.baseline)
    ]
    results: dict[str, list[dict[int, float]]] = {name: [] for name, _ in codes}
    load_before = os.getloadavg()
    for turn in range(args.rounds):
        for name, code in codes[turn % len(codes):] + codes[: turn % len(codes)]:
            r = measure(code, args.model_uri, version, args.sizes, args.requests, args.inference_log)
            results[name].append(r)
            print(f"round {turn + 1}: {name}: " + ", ".join(f"B={k} {v:.3f} ms" for k, v in r.items()),
                  flush=True)  # fmt: skip
    load_after = os.getloadavg()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"\nload average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print("| code | " + " | ".join(f"{s} per batch (ms CPU/request)" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name, runs in results.items():
        cells = []
        for s in sizes:
            values = [r[s] for r in runs]
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
