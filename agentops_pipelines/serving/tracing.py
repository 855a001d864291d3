"""MLflow traces of served requests, as they were served: every failed request and a sample.

Nothing is re-run. The request path only takes timestamps (``time.time_ns()``: start, parsed,
routed, predicted, answered) and the model reports the wall-clock times of its own steps
(``predict_with_steps``: feature lookup, routing, tool call; shared by the requests of one
micro-batch). ``Tracer.submit`` hands that record, with the first rows of the request and of its
predictions as plain values, to an exporter (never blocking: a full queue drops the job and counts
it), which builds the trace after the fact with those times::

    invocations (CHAIN; tags: environment, version, role, request id, status)
    ├── parse (PARSER)                  body -> rows
    ├── routing (CHAIN)                 stable or canary, which version
    ├── <agent> (AGENT)                 waiting for the batch + the model
    │   ├── feature_lookup (RETRIEVER)  the features the model used
    │   ├── route (LLM)                 tool and confidence
    │   └── tool:<name> (TOOL)          the tool call's arguments -> the answer
    └── answer (PARSER)                 predictions -> the JSON response

The trace's ``client_request_id`` and its tag ``agentops.request_id`` are the ``X-Request-Id``, so
a request can be searched for (``tags.`agentops.request_id` = '...'``). Each trace is exported
synchronously as it ends (MLflow's async export off), so a failed export is seen and counted as
``failed``, never as ``logged``. At most ``max_per_second`` traces are made on average, and as
many at once (a token bucket, as the exporter's own budget: an error storm must not become a
tracing storm); the rest are dropped and counted. Until 2026-12-05 the cap was one trace per
``1/max_per_second`` seconds, with no burst: two requests served less than that apart lost the
second trace even far below the rate. Traces go to ``experiment`` when it
exists, else to the experiment of the run that logged the model.

Where the export runs (``mode``):

- ``"process"`` (the server's default): a small child process that imports mlflow but no model
  and never predicts. It is started before the serving process confines itself (``confine.py``)
  and is the one process of a deployment that writes to MLflow: traces, and the evaluation
  worker's flagged requests and shadow evidence (``mlflow_writes.py``, on a second socket). What
  it receives comes from a process that runs a model nobody may have reviewed, so it arrives as
  JSON datagrams (never pickles: unpickling runs code) and :meth:`TraceJob.from_plain` checks
  each field. It writes only where its (agent, environment) may (:class:`Scope`): traces of
  versions of its own registered model, to the configured experiment or their runs' (the run and
  logged model come from the registry, never from the datagram); and at most ``max_per_second``
  traces whatever the serving process sends (the rest dropped and counted, in its log). It never
  waits on the serving process. MLflow's export to its SQL store costs ~60-100 ms of CPU per trace (a
  transaction per span, measured here): on a thread of the serving process that GIL time showed
  in every request (p50 3.3 -> 8.0 ms at 200 requests/s with 1% traced). The child exits when the
  serving process is gone (it checks its parent every second), so it is never orphaned.
- ``"thread"``: a thread of the calling process (tests, tools).

Imports nothing from the rest of the serving package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import pandas as pd

from agentops_pipelines.serving.batching import plain_rows
from agentops_pipelines.serving.mlflow_writes import Budget

logger = logging.getLogger("agentops_pipelines.serving.tracing")

MAX_OUTPUT_ROWS = 20
MAX_JOB_BYTES = 1 << 20  # one job's datagram
RESULTS_POLL_S = 1.0  # how often the serving process looks whether its exporter still runs
MAX_EXPORTS_PER_SECOND = 50.0  # the exporter's own cap when the server's is off (0)
MODES = ("process", "thread")
_EXPORT_LOGGERS = ("mlflow.tracing.export.mlflow_v3", "mlflow.tracing.export", "mlflow.tracing")


@dataclass(frozen=True)
class TraceJob:
    """One request to trace, as plain values (it crosses to the exporter process)."""

    model_uri: str
    version: str
    agent: str
    request_id: str
    role: str
    status: int
    error: str | None
    latency_ms: float
    reason: str  # "sampled" or "error"
    run_id: str | None = None
    model_id: str | None = None
    rows: int = 0
    inputs: list = field(default_factory=list)  # the first rows of the request, as dicts
    outputs: list = field(default_factory=list)  # the first rows of the predictions
    features: list = field(default_factory=list)  # the first rows of the features used
    marks: dict[str, int] = field(default_factory=dict)  # start, parsed, routed, predicted, end
    steps: list = field(default_factory=list)  # (name, span type, start ns, end ns)

    @classmethod
    def of(cls, model: Any, frame: pd.DataFrame, request_id: str, role: str, status: int,
           error: str | None, latency_ms: float, reason: str, *, predictions: Any = None,
           features: Any = None, marks: dict | None = None, steps: list | None = None) -> TraceJob:  # fmt: skip
        return cls(
            model_uri=model.model_uri, version=str(model.version), agent=str(model.agent),
            request_id=request_id, role=role, status=status, error=error, latency_ms=latency_ms,
            reason=reason, run_id=getattr(model, "run_id", None),
            model_id=getattr(model, "model_id", None), rows=len(frame), inputs=_records(frame),
            outputs=_records(predictions), features=_records(features), marks=dict(marks or {}),
            steps=[tuple(step) for step in steps or []],
        )  # fmt: skip

    @classmethod
    def from_plain(cls, value: Any) -> TraceJob:
        """A job as the serving process sent it (JSON), every field checked: ValueError."""
        if not isinstance(value, dict) or set(value) != {f.name for f in fields(cls)}:
            raise ValueError("not a trace job (its exact fields)")
        kinds = {"model_uri": str, "version": str, "agent": str, "request_id": str, "role": str, "reason": str,
                 "status": int, "rows": int, "latency_ms": (int, float), "inputs": list, "outputs": list,
                 "features": list, "marks": dict, "steps": list, "error": (str, type(None)),
                 "run_id": (str, type(None)), "model_id": (str, type(None))}
        for name, kind in kinds.items():
            if not isinstance(value[name], kind) or isinstance(value[name], bool):
                raise ValueError(f"{name}: not a {kind}")
            if isinstance(value[name], str) and len(value[name]) > 10_000:
                raise ValueError(f"{name}: longer than 10,000 characters")
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in value["marks"].items()):
            raise ValueError("marks: not names and nanoseconds")
        for step in value["steps"]:
            if (not isinstance(step, list) or len(step) not in (4, 5) or not all(isinstance(x, str) for x in step[:2])
                    or not all(isinstance(x, int) for x in step[2:4]) or (len(step) == 5 and not isinstance(step[4], dict))):
                raise ValueError("steps: not (name, span type, start ns, end ns[, details])")
        return cls(**{**value, "steps": [tuple(step) for step in value["steps"]]})


class _ExportFailures(logging.Handler):
    """Counts the warnings MLflow's exporter logs on the tracer thread (it never raises)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread: int | None = None
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.count += 1


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
        agent: str | None = None,
        enabled: bool = True,
    ):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"trace sample rate must be in [0, 1], got {sample_rate}")
        if mode not in MODES:
            raise ValueError(f"tracing mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.environment = environment
        self.sample_rate = sample_rate
        self.max_queue = max_queue
        self.max_per_second = max_per_second
        self.experiment = experiment or None
        # the registered model whose versions' traces, dataset and tags the exporter may write
        # (None: a model served from a path: traces to the configured experiment only)
        self.agent = agent
        self.enabled = enabled  # False: no traces at all (the exporter still makes the worker's writes)
        self._writes: socket.socket | None = None
        self._on_result = on_result or (lambda reason, result: None)
        self._random = random.random
        self._queue: Any = None
        self._thread: threading.Thread | None = None
        self._process: Any = None
        self._results: Any = None
        self._results_thread: threading.Thread | None = None
        # None: no cap (max_per_second 0)
        self._budget = Budget(max_per_second, max(1, int(max_per_second))) if max_per_second > 0 else None
        self._experiments: dict[str, str | None] = {}
        self._closing = False

    def sample(self) -> bool:
        return self.sample_rate > 0.0 and self._random() < self.sample_rate

    def admit(self, reason: str) -> bool:
        """Whether a trace may be made now (under the rate cap); a refused one is counted as
        dropped. Called before the job is built, so a dropped trace costs the request nothing."""
        if self._queue is None or not self.enabled:
            return False
        if self._budget is not None and not self._budget.take():
            self._on_result(reason, "dropped")
            return False
        return True

    def submit(self, job: TraceJob, admitted: bool = False) -> bool:
        """Queue ``job``; False (counted as dropped) when over the rate cap or the queue is full."""
        if self._queue is None or not (admitted or self.admit(job.reason)):
            return False
        try:
            self._queue.put_nowait(job)
            return True
        except (queue.Full, ValueError, OSError):  # ValueError, OSError: a closed queue
            self._on_result(job.reason, "dropped")
            return False

    def start(self) -> Tracer:
        if self.mode == "thread":
            self._queue = queue.Queue(maxsize=self.max_queue)
            self._thread = threading.Thread(target=self._serve, args=(self._queue, self._on_result),
                                            name="tracer", daemon=True)  # fmt: skip
            self._thread.start()
            return self
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        jobs, jobs_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._writes, writes_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        jobs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._queue = _Datagrams(jobs)
        self._results, results_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._process = ctx.Process(
            target=_exporter_main,
            args=(jobs_child, writes_child, results_child, self.environment, self.experiment, self.agent,
                  self.max_per_second, os.getpid(), logging.getLogger().getEffectiveLevel()),
            name="agentops-trace-exporter", daemon=True,
        )  # fmt: skip
        self._process.start()
        for end in (jobs_child, writes_child, results_child):
            end.close()
        return self

    def listen(self) -> Tracer:
        """Start reading the exporter's results (process mode). A separate step because the
        serving process confines itself between ``start`` and this: Landlock restricts the
        calling thread and the threads it starts later, so no thread may exist before then."""
        if self._process is not None and self._results_thread is None:
            self._results_thread = threading.Thread(target=self._read_results, name="tracer-results", daemon=True)
            self._results_thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Export what is queued for up to ``timeout`` seconds, then stop."""
        worker = self._thread or self._process
        if self._queue is None or worker is None:
            return
        self._closing = True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=max(0.1, timeout))
        except (queue.Full, ValueError, OSError):
            pass
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.warning("the tracer did not finish within %.0fs", timeout)
            if self._process is not None:
                try:
                    self._process.terminate()
                    self._process.join(2)
                except PermissionError:  # a confined process may not signal it (Landlock scopes
                    pass  # signals): it exits within a second of its parent (it checks)
        if self._results_thread is not None:
            self._results_thread.join(max(0.0, deadline - time.monotonic()) + 1)
        if self._process is not None:
            self._queue.close()

    def writes_channel(self) -> socket.socket | None:
        """The exporter's write socket, for the evaluation worker (``mlflow_writes.py``)."""
        return self._writes

    @property
    def alive(self) -> bool:
        worker = self._thread or self._process
        return worker is not None and worker.is_alive()

    def _read_results(self) -> None:
        # A datagram socket does not see its peer close: a timeout lets this thread notice an
        # exporter that was killed (once a second: nothing beside 200 requests a second).
        self._results.settimeout(RESULTS_POLL_S)
        while True:
            try:
                item = json.loads(self._results.recv(1024))
            except TimeoutError:
                if self._process.is_alive():
                    continue
                break
            except (EOFError, OSError, ValueError):
                break
            if item is None:
                break
            self._on_result(*item)
        if not self._closing:  # it died (killed for memory, a crash in MLflow's native code)
            self._process.join(1.0)
            logger.error(
                "the trace exporter (pid %s) is gone, exit code %s: no more traces, flagged requests "
                "or shadow evidence reach MLflow until this serving process restarts (it started "
                "before the process confined itself, and a confined process cannot start another "
                "that may write to MLflow); agentops_trace_exporter_up reads 0",
                self._process.pid, self._process.exitcode,
            )  # fmt: skip

    # -- the exporter (a thread here, or the child process)

    def _serve(self, jobs: Any, report: Callable[[str, str], None], parent: int = 0) -> None:
        failures = _ExportFailures()
        failures.thread = threading.get_ident()
        try:
            import mlflow
            import mlflow.tracing.fluent  # noqa: F401

            mlflow.get_tracking_uri()
        except Exception:
            logger.warning("tracing is unavailable", exc_info=True)
        for name in _EXPORT_LOGGERS:
            logging.getLogger(name).addHandler(failures)
        try:
            while True:
                try:
                    job = jobs.get(timeout=1.0)
                except queue.Empty:
                    if parent and os.getppid() != parent:  # the serving process is gone
                        return
                    continue
                except (EOFError, OSError):
                    return
                if job is None:
                    break
                before = failures.count
                try:
                    ok = self.trace(job)
                except Exception:
                    logger.exception("tracing request %s failed", job.request_id)
                    ok = False
                report(job.reason, "logged" if ok and failures.count == before else "failed")
        finally:
            for name in _EXPORT_LOGGERS:
                logging.getLogger(name).removeHandler(failures)

    def trace(self, job: TraceJob) -> bool:
        """Build and export the trace of ``job``; False if MLflow made no trace."""
        import mlflow
        from mlflow.entities import SpanStatus, SpanStatusCode
        from mlflow.entities.span import NoOpSpan

        marks = job.marks
        start = marks.get("start") or time.time_ns() - int(job.latency_ms * 1e6)
        end = marks.get("end") or start + int(job.latency_ms * 1e6)
        parsed = marks.get("parsed", start)
        routed = marks.get("routed", parsed)
        predicted = marks.get("predicted", end)
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
        inputs = job.inputs
        root = mlflow.start_span_no_context(
            "invocations", span_type="CHAIN", inputs={"request_id": job.request_id, "rows": inputs},
            attributes={"environment": self.environment, "model_version": job.version,
                        "role": job.role, "status": job.status,
                        "served_latency_ms": round(job.latency_ms, 3)},
            tags=tags, experiment_id=self._experiment_id(job.run_id), start_time_ns=start,
        )  # fmt: skip
        if isinstance(root, NoOpSpan):
            return False
        _write_each_trace_once()
        self._identify(root, job)

        def child(name, span_type, t0, t1, parent=root, inputs=None, outputs=None, attrs=None):
            span = mlflow.start_span_no_context(
                name, span_type=span_type, parent_span=parent, inputs=inputs,
                attributes=attrs or {}, start_time_ns=t0,
            )  # fmt: skip
            span.end(outputs=outputs, end_time_ns=max(t0, t1))
            return span

        child("parse", "PARSER", start, parsed, outputs={"rows": job.rows})
        child("routing", "CHAIN", parsed, routed, outputs={"role": job.role, "version": job.version})
        agent = mlflow.start_span_no_context(
            job.agent, span_type="AGENT", parent_span=root, inputs=inputs, start_time_ns=routed
        )
        tools = _column(job.outputs, "tool")
        for name, span_type, t0, t1, *details in job.steps:
            if details:  # an acting agent's step (serving/acting.py): inputs, outputs, error
                _step_span(agent, name, span_type, t0, t1, details[0])
            elif name == "feature_lookup":
                child(name, span_type, t0, t1, agent, {"customer_id": _column(job.inputs, "customer_id")},
                      job.features)  # fmt: skip
            elif name == "route":
                child(name, span_type, t0, t1, agent, {"text": _column(job.inputs, "text")},
                      {"tool": tools, "confidence": _column(job.outputs, "confidence")})  # fmt: skip
            elif name == "tool":
                label = f"tool:{tools[0]}" if tools else "tool"
                child(label, span_type, t0, t1, agent, {"tool_call": _column(job.outputs, "tool_call")},
                      {"answer": _column(job.outputs, "answer")})  # fmt: skip
            elif name != job.agent:
                child(name, span_type, t0, t1, agent)
        if job.status >= 500:
            agent.set_status(SpanStatus(SpanStatusCode.ERROR, job.error or ""))
        agent.end(outputs=job.outputs, end_time_ns=max(routed, predicted))
        child("answer", "PARSER", predicted, end, outputs=job.outputs)
        if job.status >= 500:
            root.set_status(SpanStatus(SpanStatusCode.ERROR, job.error or ""))
            root.set_attribute("served_error", job.error or "")
        root.end(outputs=job.outputs if job.status < 500 else {"error": job.error},
                 end_time_ns=end)  # fmt: skip
        return True

    @staticmethod
    def _identify(root: Any, job: TraceJob) -> None:
        """The request id as the trace's client request id, and the logged model's id."""
        try:
            from mlflow.tracing.constant import TraceMetadataKey
            from mlflow.tracing.trace_manager import InMemoryTraceManager

            with InMemoryTraceManager.get_instance().get_trace(root.trace_id) as trace:
                if trace is not None:
                    trace.info.client_request_id = job.request_id
                    if job.model_id:
                        trace.info.trace_metadata[TraceMetadataKey.MODEL_ID] = job.model_id
        except Exception:
            logger.debug("could not set the client request id", exc_info=True)

    def _experiment_id(self, run_id: str | None) -> str | None:
        """The experiment for the traces. Never creates one (it would keep its artifacts under
        the server's working directory)."""
        import mlflow

        if self.experiment:
            if self.experiment not in self._experiments:
                found = mlflow.get_experiment_by_name(self.experiment)
                if found is None:
                    logger.warning("no MLflow experiment %r: tracing to the model's experiment",
                                   self.experiment)  # fmt: skip
                self._experiments[self.experiment] = found.experiment_id if found else None
            if self._experiments[self.experiment] is not None:
                return self._experiments[self.experiment]
        if run_id:
            if run_id not in self._experiments:
                try:
                    self._experiments[run_id] = (
                        mlflow.MlflowClient().get_run(run_id).info.experiment_id
                    )
                except Exception as e:
                    logger.warning("no experiment for run %s (%s): tracing to the active one",
                                   run_id, e)  # fmt: skip
                    self._experiments[run_id] = None
            return self._experiments[run_id]
        return None


def _write_each_trace_once() -> None:
    """Have MLflow write a finished trace in one go instead of span by span.

    MLflow 3's exporter writes every span to a SQL tracking store as the span ends (a transaction
    of about a dozen statements each) and then the trace. Our spans are made after the request,
    all at once, so the per-span writes buy nothing: with them a 9-span trace cost 53 ms of CPU on
    SQLite, without them 7.8 ms (the spans go with the trace as its data artifact, MLflow's path for
    stores without span logging; ``mlflow.get_trace``, the UI and tag searches read them as
    before). The exporter keeps this switch on itself (it turns it off when a store cannot log
    spans); if a later MLflow drops it, nothing changes but the cost.
    """
    from mlflow.tracing.provider import _get_trace_exporter

    exporter = _get_trace_exporter()
    if getattr(exporter, "_store_supports_log_spans", False):
        exporter._store_supports_log_spans = False


def _step_span(agent, name, span_type, t0, t1, details: dict) -> None:
    """A step of an acting agent (serving/acting.py): its inputs, outputs and error as recorded,
    its attributes (an LLM call's token counts) and its child steps (the LLM call of ``decide``)."""
    import mlflow
    from mlflow.entities import SpanStatus, SpanStatusCode

    span = mlflow.start_span_no_context(
        name, span_type=span_type, parent_span=agent, inputs=details.get("inputs"),
        attributes={"latency_ms": round((t1 - t0) / 1e6, 3), **(details.get("attributes") or {})},
        start_time_ns=t0,
    )  # fmt: skip
    for child in details.get("children") or ():
        _step_span(span, *child)
    error = details.get("error")
    status = SpanStatus(SpanStatusCode.ERROR, str(error)) if error else SpanStatus(SpanStatusCode.OK)
    span.end(outputs=details.get("outputs"), status=status, end_time_ns=max(t0, t1))


class _Datagrams:
    """The serving process's end of the exporter's job socket, used like a queue: each job one
    JSON datagram (``None``: stop); a full buffer is ``queue.Full``."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)

    def put_nowait(self, job: TraceJob | None) -> None:
        data = b"null" if job is None else json.dumps(asdict(job), default=str).encode()
        if len(data) > MAX_JOB_BYTES:
            raise queue.Full
        try:
            self.sock.send(data)
        except BlockingIOError:
            raise queue.Full from None

    def put(self, job: TraceJob | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.put_nowait(job)
            except queue.Full:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self.sock.close()


class Scope:
    """Where an exporter may write a trace: for ``agent``'s registered versions only, each job
    checked against the registry (its ``models:/<agent>/...`` URI and version) and given that
    version's run and logged model (its experiment is the run's, unless the exporter has one
    configured), whatever run or model the job names. With no registered model (a model served
    from a path) no run or logged model is named at all: the configured (or default) experiment.
    ``check`` raises ValueError for a job of any other model."""

    def __init__(self, agent: str | None, client: Any = None):
        self.agent = agent
        self._client = client
        self._versions: dict[str, tuple[str | None, str | None]] = {}  # version -> (run id, model id)

    def check(self, job: TraceJob) -> TraceJob:
        if self.agent is None:
            return replace(job, run_id=None, model_id=None)
        if not job.model_uri.startswith((f"models:/{self.agent}/", f"models:/{self.agent}@")):
            raise ValueError(f"model_uri: not a version of {self.agent!r}")
        run_id, model_id = self._version(job.version)
        return replace(job, run_id=run_id, model_id=model_id)

    def _version(self, version: str) -> tuple[str | None, str | None]:
        if version not in self._versions:
            if not version.isdigit() or len(version) > 18:
                raise ValueError(f"version: not a version number: {version[:40]!r}")
            try:
                found = self.client().get_model_version(self.agent, version)
            except Exception as e:  # noqa: BLE001 - MLflow's error for a version that does not exist
                raise ValueError(f"version {version} of {self.agent!r}: {str(e)[:200]}") from None
            self._versions[version] = (found.run_id or None, getattr(found, "model_id", None) or None)
        return self._versions[version]

    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient()
        return self._client


class _Inbox:
    """The exporter's end of the job socket: ``get`` as on a queue. Each datagram is spent from
    ``budget`` before anything else (over it: dropped), then parsed, checked
    (:meth:`TraceJob.from_plain`) and scoped (:class:`Scope`: else refused); ``tally`` counts
    and logs what was dropped or refused, never a line per datagram."""

    def __init__(self, sock: socket.socket, scope: Scope, budget, tally):
        self.sock, self.scope, self.budget, self.tally = sock, scope, budget, tally

    def get(self, timeout: float) -> TraceJob | None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = self.sock.recv(MAX_JOB_BYTES)
            except TimeoutError:
                raise queue.Empty from None
            job = self.job(data)
            if job is not False:
                return job
            if time.monotonic() > deadline:
                raise queue.Empty from None

    def job(self, data: bytes) -> TraceJob | None | bool:
        """The checked job in ``data``, None for the stop message, False for one not taken."""
        if data == b"null":
            return None
        if not self.budget.take():
            self.tally.add("dropped", "over the exporter's trace budget")
            return False
        try:
            return self.scope.check(TraceJob.from_plain(json.loads(data)))
        except Exception as e:  # noqa: BLE001 - any bad input is refused, never a crash of the exporter
            self.tally.add("refused", f"{type(e).__name__}: {e}")
            return False


def _exporter_main(jobs, writes, results, environment, experiment, agent, max_per_second, parent,
                   log_level) -> None:
    """The exporter process: builds and exports the traces it receives and makes the evaluation
    worker's MLflow writes (on a thread); never loads a model, never unpickles their input, never
    waits on the serving process (a result it does not read is dropped)."""
    import signal

    from agentops_pipelines.serving import mlflow_writes

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # export as each trace ends
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        os.nice(10)  # traces can wait: requests cannot (2 cores: the exporter must not take one)
    except OSError:
        pass
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s [trace exporter]: %(message)s"
    )
    tracer = Tracer(environment, experiment=experiment)
    direct = mlflow_writes.DirectWrites(agent or "agent", experiment, environment)
    threading.Thread(target=mlflow_writes.serve, name="mlflow-writes", daemon=True,
                     args=(writes, direct, lambda: os.getppid() == parent)).start()  # fmt: skip
    rate = max_per_second if max_per_second > 0 else MAX_EXPORTS_PER_SECOND
    inbox = _Inbox(jobs, Scope(agent), mlflow_writes.Budget(rate, max(1, int(rate))),
                   mlflow_writes.Tally("trace jobs from the serving process"))

    def report(reason: str, result: str) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: the serving process does not read
            results.send(json.dumps([reason, result]).encode(), socket.MSG_DONTWAIT)

    try:
        tracer._serve(inbox, report, parent)
    finally:
        with contextlib.suppress(OSError):
            results.send(b"null", socket.MSG_DONTWAIT)
        results.close()


def _records(frame: Any) -> list:
    if isinstance(frame, pd.DataFrame):  # on the event loop: one NumPy read, not to_dict (~10x)
        frame = plain_rows(frame.head(MAX_OUTPUT_ROWS))
    if isinstance(frame, pd.Series):
        return [_plain(v) for v in frame.head(MAX_OUTPUT_ROWS).tolist()]
    if isinstance(frame, list):  # row dicts (batching.plain_rows) or values
        return [{str(k): _plain(v) for k, v in r.items()} if isinstance(r, dict) else _plain(r)
                for r in frame[:MAX_OUTPUT_ROWS]]  # fmt: skip
    if hasattr(frame, "tolist"):
        return frame[:MAX_OUTPUT_ROWS].tolist()
    return []


def _column(records: list, name: str) -> list:
    return [r.get(name) for r in records if isinstance(r, dict)]


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
