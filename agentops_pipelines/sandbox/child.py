"""The sandbox's child process: confine itself, then load the model and run one task.

``python -I -m agentops_pipelines.sandbox.child <workdir>``. Everything before :func:`confine`
is ours (stdlib only: the model's packages are not imported yet); everything after may be the
model's. The answer is one JSON document on the file descriptor that was stdout when the process
started; the model's own prints go to stderr (the parent's log), so they cannot forge it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

#: The largest file the child may write (its log, the model's scratch files).
MAX_FILE_BYTES = 256 << 20


def confine(request: dict, workdir: Path) -> None:
    """Landlock (and seccomp) as the parent asked, before any model code runs. ``env-only``: the
    parent found no Landlock and allowed that; the environment it gave us is then all there is."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if request["isolation"] == "env-only":
        print("agentops sandbox: NO Landlock on this kernel: the model runs with a scrubbed "
              "environment only, and can read whatever this user can", file=sys.stderr)
        return
    from agentops_pipelines.sandbox import landlock, seccomp

    landlock.restrict(read=request["read"], write=[workdir], connect_ports=request["connect_ports"])
    if request["isolation"] == "landlock+seccomp":
        seccomp.install()


def load(model_dir: Path):
    """The model's Python object (its ``load_context`` runs here)."""
    from agentops_pipelines.model_loading import load_model

    return load_model(str(model_dir)).unwrap_python_model()


def classify(model, workdir: Path, request: dict) -> dict:
    """Each input set's tools and confidences (``predict``), and single-request latencies."""
    import pandas as pd

    from agentops_pipelines.evaluation import latency_ms

    sets = {}
    for name in request["sets"]:
        out = model.predict(None, pd.read_parquet(workdir / f"{name}.parquet"))
        sets[name] = {"tool": [str(t) for t in out["tool"]], "confidence": [float(c) for c in out["confidence"]]}
    cases = pd.read_parquet(workdir / f"{request['latency_set']}.parquet")
    lat = latency_ms(lambda row: model.predict(None, row), cases, request["latency_samples"])
    return {"sets": sets, "latency_ms": lat["samples"]}


def route(model, workdir: Path, request: dict) -> dict:
    """The router's labels and, when the golden cases apply to it, its decision on each case."""
    from agentops_pipelines.agent.trajectory import router_from_model
    from agentops_pipelines.trajectory_gate import applicable_labels

    router = getattr(model, "router", None)
    if router is None:
        return {"router": False, "labels": None, "decisions": None}
    known = getattr(router, "classes", None) or getattr(router, "tools", None)
    labels = [str(t) for t in known] if known else None
    if applicable_labels(labels, request["expected_tools"]) is not None:
        return {"router": True, "labels": labels, "decisions": None}
    decide = router_from_model(router, tuple(getattr(model, "feature_columns", ())))
    inputs = json.loads((workdir / "inputs.json").read_text())
    return {"router": True, "labels": labels, "decisions": [_decision(decide, i["text"], i["features"]) for i in inputs]}


def _decision(decide, text: str, features: dict) -> dict:
    start = time.perf_counter()
    try:
        tool, confidence, *usage = decide(text, features)
    except Exception as exc:  # noqa: BLE001 - a failed decision is the case's error, as in the executor
        return {"error": f"{type(exc).__name__}: {exc}"[:1000], "ms": (time.perf_counter() - start) * 1000}
    return {"tool": str(tool), "confidence": float(confidence), "ms": (time.perf_counter() - start) * 1000,
            "usage": usage[0] if usage and isinstance(usage[0], dict) else None}


TASKS = {"classify": classify, "route": route}


def main(workdir: Path) -> None:
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # print() from here on goes to the log
    request = json.loads((workdir / "request.json").read_text())
    confine(request, workdir)
    model = load(workdir / request["model_dir"])
    result = TASKS[request["task"]](model, workdir, request)
    answer.write(json.dumps(result, allow_nan=False, default=str))
    answer.close()


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]))
    except BaseException:  # noqa: BLE001 - the model's error, for the parent's message
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        # Exit now: an interpreter teardown after a model's failure can abort in a native
        # library's thread ("terminate called without an active exception", SIGABRT), which
        # would hide the traceback's exit code behind a signal.
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)  # the answer is written and closed: no teardown for the same reason
