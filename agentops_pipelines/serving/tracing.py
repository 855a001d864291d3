"""MLflow traces of served requests: every failed request and a sample of the others.

The request thread never traces: it decides (``Tracer.sample()``, one ``random()`` call) and hands
the request's frame to a background thread (``Tracer.submit``, never blocking; a full queue drops
the job and counts it). The thread re-runs the request through the model's ``predict_traced``
(``AgentModel``: spans ``feature_lookup``, ``route``, ``tool:<name>``) inside a root span
``invocations`` tagged with the environment, version and role, or wraps a plain ``predict`` in one
span when the model has no traced path. A traced request that fails again records the exception
on its spans (status ERROR). Measured on the support-desk model: a traced call costs about 25 ms
(p50) against 8 ms for ``predict``, so tracing on the request thread would own the p99 at a 1%
sample rate; off it, it costs the hot path nothing but some CPU (capped by ``max_per_second``).

Traces go to ``experiment`` when given, else to the experiment of the run that logged the model
(next to its training traces), else to MLflow's active experiment. The trace's
``client_request_id`` is the request id (``X-Request-Id``), so a request can be looked up by it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

logger = logging.getLogger("agentops_pipelines.serving.tracing")

MAX_OUTPUT_ROWS = 20


@dataclass(frozen=True)
class TraceJob:
    model: Any  # a LoadedModel
    frame: pd.DataFrame
    request_id: str
    role: str
    status: int
    error: str | None
    latency_ms: float
    reason: str  # "sampled" or "error"


class Tracer:
    def __init__(
        self,
        environment: str,
        sample_rate: float = 0.01,
        max_queue: int = 256,
        max_per_second: float = 20.0,
        experiment: str | None = None,
        on_result: Callable[[str, str], None] | None = None,
    ):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"trace sample rate must be in [0, 1], got {sample_rate}")
        self.environment = environment
        self.sample_rate = sample_rate
        self.max_per_second = max_per_second
        self.experiment = experiment or None
        self._on_result = on_result or (lambda reason, result: None)
        self._queue: queue.Queue[TraceJob | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._experiments: dict[str, str | None] = {}  # run id or name -> experiment id
        self._active_experiment: str | None = None  # experiment id
        self._random = random.random
        self.traced = 0

    def sample(self) -> bool:
        return self.sample_rate > 0.0 and self._random() < self.sample_rate

    def submit(self, job: TraceJob) -> bool:
        """Queue ``job`` for tracing; False (and counted as dropped) when the queue is full."""
        if self._thread is None:
            return False
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self._on_result(job.reason, "dropped")
            return False

    def start(self) -> Tracer:
        self._thread = threading.Thread(target=self._run, name="tracer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Trace what is queued for up to ``timeout`` seconds, then stop."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning(
                "tracer did not finish within %.0fs; %d jobs left", timeout, self._queue.qsize()
            )
        else:
            self._flush()

    # -- the thread

    def _run(self) -> None:
        self._warm_up()
        interval = 1.0 / self.max_per_second if self.max_per_second > 0 else 0.0
        next_at = 0.0
        while True:
            job = self._queue.get()
            if job is None:
                return
            now = time.monotonic()
            if now < next_at:  # over the rate cap: drop rather than fall behind
                self._on_result(job.reason, "dropped")
                continue
            next_at = now + interval
            try:
                self.trace(job)
                self.traced += 1
                self._on_result(job.reason, "logged")
            except Exception:
                logger.exception("tracing request %s failed", job.request_id)
                self._on_result(job.reason, "failed")

    @staticmethod
    def _warm_up() -> None:
        """Import the tracing stack at start, not at the first trace under traffic (its imports
        load shared libraries with the GIL held)."""
        try:
            import mlflow
            import mlflow.tracing.fluent  # noqa: F401

            mlflow.get_tracking_uri()
        except Exception:
            logger.warning("tracing is unavailable", exc_info=True)

    def trace(self, job: TraceJob) -> None:
        """Re-run ``job`` through the model with tracing on (this thread only)."""
        import mlflow

        self._use_experiment(job.model)
        model = job.model
        tags = {
            "agentops.environment": self.environment,
            "agentops.model_version": str(model.version),
            "agentops.model_uri": str(model.model_uri),
            "agentops.role": job.role,
            "agentops.agent": str(model.agent),
            "agentops.request_id": job.request_id,
            "agentops.trace_reason": job.reason,
            "agentops.status": str(job.status),
        }
        with mlflow.start_span(name="invocations", span_type="CHAIN") as root:
            root.set_inputs({"request_id": job.request_id, "rows": len(job.frame),
                             "columns": [str(c) for c in job.frame.columns]})  # fmt: skip
            root.set_attributes({"environment": self.environment, "model_version": str(model.version),
                                 "role": job.role, "status": job.status,
                                 "served_latency_ms": round(job.latency_ms, 3)})  # fmt: skip
            if job.error:
                root.set_attribute("served_error", job.error)
            update: dict[str, Any] = {"tags": tags, "client_request_id": job.request_id}
            if getattr(model, "model_id", None):
                update["model_id"] = model.model_id
            mlflow.update_current_trace(**update)
            try:
                out = self._predict(model, job.frame)
            except Exception as e:  # the model fails again: the spans show where
                root.record_exception(e)
                return
            root.set_outputs(_preview(out))

    @staticmethod
    def _predict(model: Any, frame: pd.DataFrame) -> Any:
        traced = getattr(model, "predict_traced", None)
        if traced is not None:
            return traced(frame)
        import mlflow

        with mlflow.start_span(name=str(model.agent), span_type="AGENT") as span:
            span.set_inputs(frame.head(MAX_OUTPUT_ROWS).to_dict("records"))
            out = model.predict(frame)
            span.set_outputs(_preview(out))
        return out

    def _use_experiment(self, model: Any) -> None:
        """Point MLflow at the experiment for ``model``'s traces. Never creates an experiment
        (one created here would keep its artifacts under the server's working directory)."""
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
        run_id = getattr(model, "run_id", None)
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
