"""The public endpoints as plain functions of the serving state (no HTTP here).

- ``POST /invocations``: MLflow's scoring formats (``protocol.py``) -> ``{"predictions": [...]}``
  with ``X-Model-Version`` and ``X-Request-Id`` (the client's, or a new one). Which role (stable
  or canary) served it is not told to the client.
- ``GET /health`` (alias ``/ping``): 200 with the versions being served, 503 until one is loaded.
- ``GET /livez``: 200 whenever the process answers HTTP. ``GET /readyz``: 200 when a model is
  loaded and the process is not draining, else 503 (Kubernetes probes).
- ``GET /metrics``: Prometheus text format (``metrics.py``).

An invocation runs in three steps so that the asyncio server never blocks on the model:
``begin_invocation`` (parse, route, validate: a ``Response`` for a refused request, else a
``Pending``), the prediction (the served model's batcher), ``finish_invocation`` (JSON, record).
``handle_invocations`` chains them on the calling thread (tests, tools).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from agentops_pipelines.serving.acting import (
    REQUEST_ID_COLUMN,
    StepFailed,
    failed_trajectory,
    flagged,
    split_trajectories,
    trace_steps,
)
from agentops_pipelines.serving.batching import Overloaded
from agentops_pipelines.serving.protocol import (
    JSON_CT,
    RequestError,
    Response,
    error_body,
    json_response,
    parse_request,
    predictions_json,
    prepare_frame,
    text_chars,
    with_column,
)
from agentops_pipelines.serving.state import Served, ServingState, health_payload
from agentops_pipelines.serving.traffic import CANARY, STABLE, goes_to_canary

# Bounded (the id is a key of the system of record's writes: ``<id>.<row>`` must fit its 128
# characters) and plain (it lands in logs, tags and SQL parameters).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
RETRY_AFTER = (("Retry-After", "1"),)


def new_request_id(supplied: str | None = None) -> str:
    """The client's id when it is a sane one, else 128 random bits in hex. Not from the OS's
    random source: it is an id, not a secret, and ``os.urandom`` is a system call that gives the
    GIL away (measured: ~0.5 ms per request under load, waiting to get it back)."""
    if supplied and _REQUEST_ID.match(supplied):
        return supplied
    return f"{_random_bits(128):032x}"


_random_bits = random.Random().getrandbits


def row_request_ids(request_id: str, rows: int) -> str | list[str]:
    """Each row's idempotency key: ``<id>`` for the first, ``<id>.<i>`` after. Made here, per
    request, because a micro-batch mixes requests: a retry that arrives while its first attempt
    is in flight lands in the same batch with the same id, and must stay the same request."""
    return request_id if rows == 1 else [request_id, *(f"{request_id}.{i}" for i in range(1, rows))]


def _first(frame: pd.DataFrame, column: str) -> Any:
    if column not in frame.columns or not len(frame):
        return None
    return frame[column].iat[0]


def _headers(served: Served | None, request_id: str) -> tuple[tuple[str, str], ...]:
    if served is None:
        return (("X-Request-Id", request_id),)
    return (("X-Model-Version", served.model.version), ("X-Request-Id", request_id))


@dataclass
class Pending:
    """A request accepted for prediction."""

    served: Served
    role: str
    frame: pd.DataFrame
    chars: int
    request_id: str
    started: float
    received: float
    sampled: bool
    marks: dict[str, int]


def begin_invocation(
    state: ServingState,
    body: bytes,
    content_type: str | None,
    request_id: str | None = None,
    started: float | None = None,
) -> Response | Pending:
    started = time.perf_counter() if started is None else started
    marks = {"start": time.time_ns()}
    received = time.time()
    request_id = new_request_id(request_id)
    routing = state.routing
    served, role = routing.stable, STABLE
    try:
        if served is None:
            raise RequestError(503, "MODEL_NOT_LOADED", "no model is loaded yet", RETRY_AFTER)
        frame = parse_request(body, content_type, routing.string_columns)
        marks["parsed"] = time.time_ns()
        if routing.canary is not None and goes_to_canary(
            routing.canary_share, _first(frame, "customer_id"), request_id
        ):
            served, role = routing.canary, CANARY
        frame = prepare_frame(frame, served.model, state.limits)
        if served.model.acts:  # the idempotency keys of the request's writes (acting.py)
            frame = with_column(frame, REQUEST_ID_COLUMN, row_request_ids(request_id, len(frame)))
        marks["routed"] = time.time_ns()
    except RequestError as e:
        state.record(
            served, role, e.status, started, request_id=request_id, error_code=e.error_code
        )
        return Response(e.status, error_body(e), JSON_CT, (*_headers(served, request_id), *e.headers))
    if frame.empty:
        state.record(served, role, 200, started, request_id=request_id)
        return Response(200, b'{"predictions":[]}', JSON_CT, _headers(served, request_id))
    sampled = state.tracer is not None and state.tracer.sample()
    chars = text_chars(frame, served.model.string_columns)
    return Pending(served, role, frame, chars, request_id, started, received, sampled, marks)


def finish_invocation(
    state: ServingState, p: Pending, result: tuple | None, error: BaseException | None
) -> Response:
    served, role = p.served, p.role
    headers = _headers(served, p.request_id)
    p.marks["predicted"] = time.time_ns()
    if isinstance(error, Overloaded):
        e = RequestError(503, "OVERLOADED", f"the server is overloaded: {error}; retry later")
        state.record(served, role, 503, p.started, request_id=p.request_id, error_code=e.error_code)
        return Response(503, error_body(e), JSON_CT, (*headers, *RETRY_AFTER))
    trajectories: list[dict] = []
    if error is None:
        predictions, features = result[0], result[1]
        steps = result[2] if len(result) > 2 else []
        predictions, trajectories = split_trajectories(predictions)
        error = failed_trajectory(trajectories)
        if error is None:
            try:
                out = predictions_json(predictions)
            except Exception as e:
                error = e
    if error is not None:
        state.log_model_error(served.model, error, p.request_id)
        if isinstance(error, StepFailed):  # the step's own error stays in the log and the trace
            e = RequestError(500, "INTERNAL_ERROR", f"a step of the request failed on our side; "
                                                    f"its trace is kept under request id {p.request_id}")
        else:
            e = RequestError(500, "INTERNAL_ERROR", f"prediction failed: {type(error).__name__}: {error}")
        p.marks["end"] = time.time_ns()
        state.record(
            served, role, 500, p.started, received=p.received, request_id=p.request_id,
            error_code=e.error_code, error=str(error), frame=p.frame, marks=p.marks,
            **({"steps": trace_steps(trajectories[0])} if trajectories else {}),
        )  # fmt: skip
        return Response(500, error_body(e), JSON_CT, headers)
    p.marks["end"] = time.time_ns()
    reason, sampled = None, p.sampled
    if trajectories and state.tracer is not None and not sampled and any(flagged(t) for t in trajectories):
        reason, sampled = "flagged", True
    if trajectories and sampled:  # the steps of the first row become the trace's spans
        steps = trace_steps(trajectories[0])
    state.record(
        served, role, 200, p.started, received=p.received, request_id=p.request_id,
        frame=p.frame, predictions=predictions, features=features, sampled=sampled,
        marks=p.marks, steps=steps, reason=reason,
    )  # fmt: skip
    if trajectories and state.evaluator is not None:
        _evaluate(state, served, role, trajectories)
    return Response(200, out, JSON_CT, headers)


def _evaluate(state: ServingState, served: Served, role: str, trajectories: list[dict]) -> None:
    """Hand the request to the evaluation worker (online_eval.py) when it is sampled for online
    evaluation or a challenger runs in shadow beside the stable version. Never waits."""
    shadow = role == STABLE and state.shadow_version is not None and (
        state.shadow_share >= 1.0 or _random_bits(32) < state.shadow_share * 4294967296.0)
    score = state.evaluator.sample()
    if not (shadow or score):
        return
    for t in trajectories:  # the worker finds the features and the customer in the trajectory
        state.evaluator.submit({"request_id": t["request_id"], "version": served.model.version,
                                "trajectory": t, "score": score, "shadow": shadow})


def handle_invocations(
    state: ServingState,
    body: bytes,
    content_type: str | None,
    request_id: str | None = None,
    started: float | None = None,
) -> Response:
    """One invocation on the calling thread (blocks while the model predicts)."""
    pending = begin_invocation(state, body, content_type, request_id, started)
    if isinstance(pending, Response):
        return pending
    try:
        result, error = pending.served.infer(pending.frame, pending.chars), None
    except Exception as e:
        result, error = None, e
    return finish_invocation(state, pending, result, error)


def reject_invocation(
    state: ServingState, error: RequestError, started: float, request_id: str | None = None
) -> Response:
    """A request to /invocations refused before its body was parsed (size, method, overload)."""
    request_id = new_request_id(request_id)
    stable = state.routing.stable
    state.record(stable, STABLE, error.status, started, request_id=request_id,
                 error_code=error.error_code)  # fmt: skip
    return Response(
        error.status, error_body(error), JSON_CT, (*_headers(stable, request_id), *error.headers)
    )


def handle_health(state: ServingState) -> Response:
    return json_response(200 if state.current else 503, health_payload(state))


def handle_livez(state: ServingState) -> Response:
    return json_response(200, {"status": "alive"})


def handle_readyz(state: ServingState) -> Response:
    if state.ready:
        return json_response(200, {"status": "ready", "version": state.current.version})
    reason = "draining" if state.draining else "no model is loaded yet"
    return json_response(503, {"status": "not ready", "reason": reason}, RETRY_AFTER)


def handle_metrics(state: ServingState) -> Response:
    if state.evaluator is not None:
        state.evaluator.poll()  # the online-evaluation counters catch up with the worker
    body, content_type = state.metrics.render()
    return Response(200, body, content_type)
