"""MLflow traces of served requests: every failed request and a sample of the others.

The request thread never traces: it decides (``Tracer.sample()``, one ``random()`` call) and hands
the request's frame over (``Tracer.submit``, never blocking; a full queue drops the job and counts
it). The tracer re-runs the request through the model's ``predict_traced`` (``AgentModel``: spans
``feature_lookup``, ``route``, ``tool:<name>``) inside a root span ``invocations`` tagged with
the environment, version, role and request id, or wraps a plain ``predict`` in one span when the
model has no traced path. A request that fails again records the exception on its spans (status
ERROR).

Where the re-run happens (measured on the support-desk model, 200 requests/s, 1% sampled):

- ``mode="process"`` (the server's default): in a child process that loads the model versions it
  is asked about (by URI, once each). A traced call costs ~25 ms of Python against ~8 ms for a
  plain predict; in the serving process, even on its own thread, that GIL time showed in every
  request's latency (p99 140 -> 200 ms, p50 +5 to 10 ms, in turns on a busy 2-core machine).
  Out of the process it costs the serving process only pickling the frame (~0.1 ms, on the
  queue's feeder thread). The price is a second copy of the model in memory.
- ``mode="thread"``: a thread of the serving process (no second model; for tests and small pods).

At most ``max_per_second`` traces are made (an error storm must not become a tracing storm); the
rest are dropped and counted. Traces go to ``experiment`` when it exists, else to the experiment
of the run that logged the model (next to its training traces), else to MLflow's active one. The
trace's ``client_request_id`` is the request id (``X-Request-Id``), so a request can be found.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

logger = logging.getLogger("agentops_pipelines.serving.tracing")

MAX_OUTPUT_ROWS = 20
MODES = ("process", "thread")


@dataclass(frozen=True)
class TraceJob:
    model_uri: str
    version: str
    agent: str
    frame: pd.DataFrame
    request_id: str
    role: str
    status: int
    error: str | None
    latency_ms: float
    reason: str  # "sampled" or "error"
    run_id: str | None = None
    model_id: str | None = None
    model: Any = None  # the LoadedModel, in thread mode only (never pickled)

    @classmethod
    def of(cls, model: Any, frame: pd.DataFrame, request_id: str, role: str, status: int,
           error: str | None, latency_ms: float, reason: str) -> TraceJob:  # fmt: skip
        return cls(
            model_uri=model.model_uri, version=str(model.version), agent=str(model.agent),
            frame=frame, request_id=request_id, role=role, status=status, error=error,
            latency_ms=latency_ms, reason=reason, run_id=getattr(model, "run_id", None),
            model_id=getattr(model, "model_id", None), model=model,
        )  # fmt: skip


@dataclass(frozen=True)
class Preload:
    """Ask the tracing process to load a version now (at deploy time, not at its first trace)."""

    model_uri: str
    version: str


class Tracer:
    def __init__(
        self,
        environment: str,
        sample_rate: float = 0.01,
        max_queue: int = 256,
        max_per_second: float = 20.0,
        experiment: str | None = None,
        on_result: Callable[[str, str], None] | None = None,
        mode: str = "thread",
    ):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"trace sample rate must be in [0, 1], got {sample_rate}")
        if mode not in MODES:
            raise ValueError(f"tracing mode must be one of {MODES}, got {mode!r}")
        self.environment = environment
        self.sample_rate = sample_rate
        self.max_queue = max_queue
        self.max_per_second = max_per_second
        self.experiment = experiment or None
        self.mode = mode
        self._on_result = on_result or (lambda reason, result: None)
        self._random = random.random
        self._queue: Any = None
        self._thread: threading.Thread | None = None
        self._process: Any = None
        self._results: Any = None
        self._results_thread: threading.Thread | None = None

    def sample(self) -> bool:
        return self.sample_rate > 0.0 and self._random() < self.sample_rate

    def submit(self, job: TraceJob) -> bool:
        """Queue ``job`` for tracing; False (and counted as dropped) when the queue is full."""
        if self._queue is None:
            return False
        if self.mode == "process":
            job = replace(job, model=None)
        try:
            self._queue.put_nowait(job)
            return True
        except (queue.Full, ValueError, OSError):  # ValueError, OSError: a closed queue
            self._on_result(job.reason, "dropped")
            return False

    def prepare(self, model: Any) -> None:
        """A version is being served: the tracing process loads it now, so that the first trace
        neither waits for the load nor spends its CPU while requests are being served."""
        if self.mode != "process" or self._queue is None:
            return
        try:
            self._queue.put_nowait(Preload(model.model_uri, str(model.version)))
        except (queue.Full, ValueError, OSError):
            pass

    def start(self) -> Tracer:
        if self.mode == "thread":
            self._queue = queue.Queue(maxsize=self.max_queue)
            runner = _Runner(self.environment, self.experiment, self.max_per_second)
            self._thread = threading.Thread(
                target=runner.serve, args=(self._queue, self._on_result, None), name="tracer",
                daemon=True,
            )  # fmt: skip
            self._thread.start()
            return self
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._queue = ctx.Queue(maxsize=self.max_queue)
        self._results = ctx.Queue()
        self._process = ctx.Process(
            target=_child_main,
            args=(self._queue, self._results, self.environment, self.experiment,
                  self.max_per_second, logging.getLogger().getEffectiveLevel()),
            name="agentops-tracer", daemon=True,
        )  # fmt: skip
        self._process.start()
        self._results_thread = threading.Thread(
            target=self._read_results, name="tracer-results", daemon=True
        )
        self._results_thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Trace what is queued for up to ``timeout`` seconds, then stop."""
        if self._queue is None:
            return
        deadline = time.monotonic() + timeout
        worker = self._thread or self._process
        try:
            self._queue.put(None, timeout=max(0.1, deadline - time.monotonic()))
        except (queue.Full, ValueError, OSError):
            pass
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.warning("the tracer did not finish within %.0fs", timeout)
            if self._process is not None:
                self._process.terminate()
                self._process.join(2)
        if self._results_thread is not None:
            self._results_thread.join(max(0.0, deadline - time.monotonic()) + 1)
        if self._process is not None:
            self._queue.cancel_join_thread()  # never block the exit on jobs nobody will read
            self._queue.close()

    @property
    def alive(self) -> bool:
        worker = self._thread or self._process
        return worker is not None and worker.is_alive()

    def _read_results(self) -> None:
        while True:
            try:
                item = self._results.get()
            except (EOFError, OSError, ValueError):
                return
            if item is None:
                return
            self._on_result(*item)


def _child_main(jobs, results, environment, experiment, max_per_second, log_level) -> None:
    """The tracing process: loads models by URI and traces the jobs it receives."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    # This process exists to trace: export each trace as it ends, so that stopping never waits on
    # (or loses) a background export queue.
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s [tracer]: %(message)s"
    )
    runner = _Runner(environment, experiment, max_per_second)
    try:
        runner.serve(jobs, lambda reason, result: results.put((reason, result)), _ModelCache())
    finally:
        results.put(None)
        results.close()
        results.join_thread()


class _ModelCache:
    """The few model versions being traced (stable, canary, the one before), loaded by URI."""

    def __init__(self, size: int = 3):
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._size = size

    def get(self, job: TraceJob | Preload) -> Any:
        key = (job.model_uri, job.version)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        from agentops_pipelines.serving.app import load_pyfunc, warm_up

        model = load_pyfunc(job.model_uri, job.version)
        warm_up(model)  # its lazy imports (e.g. Feast, ~5 s) now, not in the first trace
        self._models[key] = model
        while len(self._models) > self._size:
            self._models.popitem(last=False)
        return model


class _Runner:
    """Traces jobs one at a time (on the tracer thread, or in the tracer process)."""

    def __init__(self, environment: str, experiment: str | None, max_per_second: float):
        self.environment = environment
        self.experiment = experiment
        self.interval = 1.0 / max_per_second if max_per_second > 0 else 0.0
        self._experiments: dict[str, str | None] = {}  # run id or name -> experiment id
        self._active_experiment: str | None = None

    def serve(self, jobs, report: Callable[[str, str], None], models: _ModelCache | None) -> None:
        self._warm_up()
        next_at = 0.0
        while True:
            try:
                job = jobs.get()
            except (EOFError, OSError):  # the serving process is gone
                return
            if job is None:
                break
            if isinstance(job, Preload):
                try:
                    models.get(job)
                except Exception:
                    logger.warning("could not load %s (version %s) for tracing", job.model_uri,
                                   job.version, exc_info=True)  # fmt: skip
                continue
            now = time.monotonic()
            if now < next_at:  # over the rate cap: drop rather than fall behind
                report(job.reason, "dropped")
                continue
            next_at = now + self.interval
            try:
                model = job.model if job.model is not None else models.get(job)
                self.trace(job, model)
                report(job.reason, "logged")
            except Exception:
                logger.exception("tracing request %s failed", job.request_id)
                report(job.reason, "failed")
        self._flush()

    @staticmethod
    def _warm_up() -> None:
        """Import the tracing stack before the first job, not while it is waited for."""
        try:
            import mlflow
            import mlflow.tracing.fluent  # noqa: F401

            mlflow.get_tracking_uri()
        except Exception:
            logger.warning("tracing is unavailable", exc_info=True)

    def trace(self, job: TraceJob, model: Any) -> None:
        """Re-run ``job`` through ``model`` with tracing on."""
        import mlflow

        self._use_experiment(job.run_id or getattr(model, "run_id", None))
        tags = {
            "agentops.environment": self.environment,
            "agentops.model_version": job.version,
            "agentops.model_uri": job.model_uri,
            "agentops.role": job.role,
            "agentops.agent": job.agent,
            "agentops.request_id": job.request_id,
            "agentops.trace_reason": job.reason,
            "agentops.status": str(job.status),
        }
        with mlflow.start_span(name="invocations", span_type="CHAIN") as root:
            root.set_inputs({"request_id": job.request_id, "rows": len(job.frame),
                             "columns": [str(c) for c in job.frame.columns]})  # fmt: skip
            root.set_attributes({"environment": self.environment, "model_version": job.version,
                                 "role": job.role, "status": job.status,
                                 "served_latency_ms": round(job.latency_ms, 3)})  # fmt: skip
            if job.error:
                root.set_attribute("served_error", job.error)
            update: dict[str, Any] = {"tags": tags, "client_request_id": job.request_id}
            if job.model_id:
                update["model_id"] = job.model_id
            mlflow.update_current_trace(**update)
            try:
                out = self._predict(model, job)
            except Exception as e:  # the model fails again: the spans show where
                root.record_exception(e)
                return
            root.set_outputs(_preview(out))

    @staticmethod
    def _predict(model: Any, job: TraceJob) -> Any:
        traced = getattr(model, "predict_traced", None)
        if traced is not None:
            return traced(job.frame)
        import mlflow

        with mlflow.start_span(name=job.agent, span_type="AGENT") as span:
            span.set_inputs(job.frame.head(MAX_OUTPUT_ROWS).to_dict("records"))
            out = model.predict(job.frame)
            span.set_outputs(_preview(out))
        return out

    def _use_experiment(self, run_id: str | None) -> None:
        """Point MLflow at the experiment for the traces. Never creates an experiment (one created
        here would keep its artifacts under the server's working directory)."""
        import mlflow

        target = None
        if self.experiment:
            if self.experiment not in self._experiments:
                found = mlflow.get_experiment_by_name(self.experiment)
                if found is None:
                    logger.warning("no MLflow experiment %r: tracing to the model's experiment",
                                   self.experiment)  # fmt: skip
                self._experiments[self.experiment] = found.experiment_id if found else None
            target = self._experiments[self.experiment]
        if target is None and run_id:
            if run_id not in self._experiments:
                try:
                    self._experiments[run_id] = (
                        mlflow.MlflowClient().get_run(run_id).info.experiment_id
                    )
                except Exception as e:
                    logger.warning(
                        "no experiment for run %s (%s): tracing to the active one", run_id, e
                    )
                    self._experiments[run_id] = None
            target = self._experiments[run_id]
        if target is not None and target != self._active_experiment:
            mlflow.set_experiment(experiment_id=target)
            self._active_experiment = target

    @staticmethod
    def _flush() -> None:
        try:
            import sys

            if "mlflow" in sys.modules:
                import mlflow

                mlflow.flush_trace_async_logging(terminate=False)
        except Exception:
            logger.debug("flushing traces failed", exc_info=True)


def _preview(out: Any) -> Any:
    if isinstance(out, pd.DataFrame):
        return out.head(MAX_OUTPUT_ROWS).to_dict("records")
    if isinstance(out, pd.Series):
        return out.head(MAX_OUTPUT_ROWS).tolist()
    if hasattr(out, "tolist"):
        return out[:MAX_OUTPUT_ROWS].tolist()
    return out if isinstance(out, list | dict | str | int | float | bool) else str(out)
