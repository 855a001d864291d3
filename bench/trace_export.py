"""CPU per exported trace: MLflow's default (every span written as it ends) against one write per
trace (what the serving trace exporter does, ``serving/tracing.py::_write_each_trace_once``).

Each mode runs in a fresh process on its own SQLite tracking store: 5 warm-up traces, then
``--traces`` traces of 9 spans (a root, an agent span, 7 steps), as the exporter makes them.

    .venv/bin/python bench/trace_export.py --traces 60
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def one_mode(mode: str, folder: str, n: int) -> None:
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # as the exporter process sets it
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    from agentops_pipelines.serving.tracing import _write_each_trace_once

    mlflow.set_tracking_uri(f"sqlite:///{folder}/{mode}.db")
    experiment = mlflow.set_experiment("trace-export").experiment_id

    def trace(i: int) -> None:
        root = mlflow.start_span_no_context("invocations", span_type="CHAIN", inputs={"i": i},
                                            tags={"agentops.request_id": f"r{i}"}, experiment_id=experiment)  # fmt: skip
        if mode == "once":
            _write_each_trace_once()
        agent = mlflow.start_span_no_context("agent", span_type="AGENT", parent_span=root)
        for k in range(7):
            mlflow.start_span_no_context(f"step{k}", parent_span=agent, inputs={"k": k}).end(outputs={"k": k})
        agent.end(outputs={"ok": True})
        root.end(outputs={"ok": True})

    for i in range(5):
        trace(i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        trace(i)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    spans = len(mlflow.MlflowClient().search_traces([experiment], max_results=1)[0].data.spans)
    print(f"{mode:9s} {cpu / n * 1000:6.1f} ms CPU per trace, {wall / n * 1000:6.1f} ms wall, {spans} spans read back")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=60)
    parser.add_argument("--mode", choices=["per-span", "once"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        one_mode(args.mode, args.folder, args.traces)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("per-span", "once"):
            subprocess.run([sys.executable, __file__, "--mode", mode, "--folder", folder,
                            "--traces", str(args.traces)], check=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
