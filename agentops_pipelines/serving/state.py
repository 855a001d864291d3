"""What a serving process serves and everything a request reports to.

Versions and traffic: a *stable* version takes every request, or all but ``canary_share`` of them
when a *canary* is loaded. The split is sticky per ``customer_id`` (of the request's first row),
by request id otherwise (``traffic.py``). Loading a stable version drops the canary unless
``keep_canary``; loading the canary version again only changes its share. A model is loaded
outside any lock that requests take, then the routing (one immutable object) is replaced at once:
requests already running finish on the model they started with, a failed load keeps what is
served. The role a request was served by is for the admin (stats, metrics, inference log,
traces), never told to the client.

Which models may be loaded: only pinned versions of the registered model the process started
with (``models:/<agent>/<digits>``, ``pinned_model``), labelled with the version the URI names;
never an alias (it moves outside the audit log), a path, a ``runs:/``, ``file:`` or any other URI,
and never another agent's model.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import pandas as pd

from agentops_pipelines.serving.acting import Acting
from agentops_pipelines.serving.batching import Batcher
from agentops_pipelines.serving.inference_log import InferenceLogWriter, LogEntry
from agentops_pipelines.serving.metrics import DEFAULT_AGENT, NO_VERSION, ServingMetrics
from agentops_pipelines.serving.models import LoadedModel, freeze_heap, load_pyfunc, same, warm_up
from agentops_pipelines.serving.online_eval import EvalWorker
from agentops_pipelines.serving.protocol import (
    DEFAULT_MAX_REQUEST_CHARS,
    DEFAULT_MAX_ROWS,
    STRING_COLUMNS,
    Limits,
    RequestError,
)
from agentops_pipelines.serving.tracing import TraceJob, Tracer
from agentops_pipelines.serving.traffic import CANARY, ROLES, STABLE, OutcomeRing
from agentops_pipelines.vocabulary import pinned_version

logger = logging.getLogger("agentops_pipelines.serving")

DEFAULT_BATCH_MAX_ROWS = 64
DEFAULT_CANARY_SHARE = 0.1
DEFAULT_MAX_CONCURRENT = 256
_REGISTERED = re.compile(r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,255})(?:/(?P<version>[0-9]{1,18})|@(?P<alias>[A-Za-z0-9][A-Za-z0-9_-]{0,255}))$")


def registered_name(model_uri: str) -> str | None:
    """The registered model's name in ``models:/<name>/<version>`` or ``models:/<name>@<alias>``,
    None for any other URI (runs:/, file:, paths, ...)."""
    match = _REGISTERED.match(model_uri)
    return match.group("name") if match else None


def allowed_model_uri(model_uri: str, agent: str | None) -> str:
    """``model_uri`` if it names a version or alias of the registered model ``agent``; a 4xx
    ``RequestError`` otherwise."""
    if agent is None:
        raise RequestError(
            403, "FORBIDDEN",
            "this process was not started from a registered model: it cannot load another",
        )  # fmt: skip
    match = _REGISTERED.match(model_uri) if isinstance(model_uri, str) else None
    if match is None:
        raise RequestError(
            400, "BAD_REQUEST",
            f"model_uri must be models:/{agent}/<version> or models:/{agent}@<alias>; "
            "paths and other URI schemes are not loaded",
        )  # fmt: skip
    if match.group("name") != agent:
        raise RequestError(
            403, "FORBIDDEN", f"this process serves {agent!r}: it does not load another agent"
        )
    return model_uri


def pinned_model(model_uri: str, agent: str | None, version: str | int | None = None) -> tuple[str, str]:
    """``(model_uri, version)`` when ``model_uri`` pins a version of the registered model ``agent``:
    the version label comes from the URI (``vocabulary.pinned_version``), a ``version`` sent beside
    it must agree and an alias is refused; a 4xx ``RequestError`` naming what is wrong otherwise."""
    allowed_model_uri(model_uri, agent)
    try:
        return model_uri, pinned_version(model_uri, version)
    except ValueError as e:
        raise RequestError(400, "BAD_REQUEST", str(e)) from None


class Served:
    """A model as installed in the routing, with its predict thread (``batching.py``)."""

    def __init__(
        self,
        model: LoadedModel,
        batch_max_rows: int = DEFAULT_BATCH_MAX_ROWS,
        features: bool = True,
        batch_max_chars: int = DEFAULT_MAX_REQUEST_CHARS,
        inline: bool = False,
    ):
        self.model = model
        self.infer_now = model.infer if features else model.infer_without_features
        self.batcher = (
            Batcher(self.infer_now, max_rows=batch_max_rows, max_chars=batch_max_chars,
                    name=f"v{model.version}", inline=inline, plain=True)
            if batch_max_rows > 0 and not model.io_bound
            else None
        )  # fmt: skip

    def infer(self, frame: pd.DataFrame, chars: int = 0) -> tuple[Any, Any, list]:
        """(predictions, features or None: only wanted by the inference log, the model's steps)."""
        if self.batcher is None or self.batcher.inline:
            return self.infer_now(frame)
        return self.batcher.predict(frame, chars)

    def retire(self) -> None:
        if self.batcher is not None:
            self.batcher.retire()


@dataclass(frozen=True)
class Routing:
    """Immutable: requests read it once; every change replaces it."""

    stable: Served | None = None
    canary: Served | None = None
    canary_share: float = 0.0

    @cached_property
    def string_columns(self) -> tuple[str, ...]:
        cols = self.stable.model.string_columns if self.stable else STRING_COLUMNS
        if self.canary:
            cols = tuple(dict.fromkeys((*cols, *self.canary.model.string_columns)))
        return cols

    def served(self) -> list[tuple[str, Served]]:
        return [(r, s) for r, s in ((STABLE, self.stable), (CANARY, self.canary)) if s is not None]


class ServingState:
    """What is served and everything a request reports to. Readers take ``routing`` once."""

    def __init__(
        self,
        environment: str,
        loader: Callable[[str, str], LoadedModel] = load_pyfunc,
        admin_token: str | None = None,
        *,
        agent: str | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_text_chars: int | None = None,
        max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        batch_max_rows: int = DEFAULT_BATCH_MAX_ROWS,
        metrics: ServingMetrics | None = None,
        inference_log: InferenceLogWriter | None = None,
        tracer: Tracer | None = None,
        ring_capacity: int = 100_000,
        freeze_gc: bool = False,
        pod_role: str = STABLE,
        inline_batching: bool = False,
        acting: Acting | None = None,
        evaluator: EvalWorker | None = None,
        isolation: str = "unconfined",
    ):
        if pod_role not in ROLES:
            raise ValueError(f"pod_role must be one of {list(ROLES)}, got {pod_role!r}")
        self.environment = environment
        # The role of the whole process in its environment. On Kubernetes each pod serves one
        # model and the canary is a Deployment of its own: its pods say "canary" (headers,
        # inference log, traces, metrics, stats) although their one model is loaded as stable.
        self.pod_role = pod_role
        # Without a token every admin call is refused (the server refuses to start without one).
        self.admin_token = admin_token or None
        self.agent = agent  # the registered model this process may load versions of
        self.max_rows = max_rows
        self._max_text_chars = max_text_chars  # None: derived from the stable model
        self.max_request_chars = max_request_chars
        self.max_concurrent = max_concurrent
        self.batch_max_rows = batch_max_rows
        self.inline_batching = inline_batching  # the asyncio server predicts on its loop
        self.metrics = metrics or ServingMetrics(environment, process_metrics=False)
        self.inference_log = inference_log
        self.tracer = tracer
        self.outcomes = OutcomeRing(ring_capacity)
        self.freeze_gc = freeze_gc
        self.draining = False
        self._loader = loader
        self._routing = Routing()
        self._swap_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time
        self._on_swap: list[Callable[[LoadedModel], None]] = []
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._error_log_at = 0.0
        self._limits = Limits(max_rows, max_text_chars or 4096, max_request_chars)
        # Agents that act (acting.py) and their online evaluation and shadow (online_eval.py)
        self.acting = acting
        self.evaluator = evaluator
        self.shadow_version: str | None = None  # the challenger running in shadow, if any
        self.shadow_share = 1.0  # the share of the stable version's requests it also answers
        if evaluator is not None:
            evaluator.on_restart = self._evaluator_restarted
        # What confines the models' code (serving/confine.py): reported in /health and the state file
        self.isolation = isolation
        self.metrics.llm_calls.served = self._routers  # LLM calls and failures, read at scrape time

    # -- reading

    def _routers(self) -> list[tuple[str, str, Any]]:
        """(agent, version, router) of each model served now (the router: None for a model that
        is no ``AgentModel``)."""
        return [(s.model.agent, s.model.version, getattr(s.model.python_model, "router", None))
                for _, s in self.routing.served()]

    @property
    def routing(self) -> Routing:
        return self._routing

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def ready(self) -> bool:
        return self._routing.stable is not None and not self.draining

    @property
    def current(self) -> LoadedModel | None:
        """The stable model."""
        stable = self._routing.stable
        return stable.model if stable else None

    @property
    def canary(self) -> LoadedModel | None:
        canary = self._routing.canary
        return canary.model if canary else None

    # -- changing

    def on_swap(self, callback: Callable[[LoadedModel], None]) -> None:
        """Call ``callback(stable_model)`` after every routing change (state file, ...)."""
        self._on_swap.append(callback)

    def load(
        self,
        model_uri: str,
        version: str,
        force: bool = False,
        role: str = STABLE,
        canary_share: float | None = None,
        keep_canary: bool = False,
    ) -> tuple[LoadedModel, bool]:
        """Load and install as ``role``; returns (model, loaded). Raises what the loader raises
        (keeping what is served) or a 409 ``RequestError``. Without ``force``, the uri and version
        already serving in that role is not reloaded (a canary's share still changes)."""
        if role not in ROLES:
            raise RequestError(400, "BAD_REQUEST", f"role must be one of {list(ROLES)}")
        version = str(version)
        with self._load_lock:
            routing = self._routing
            if role == CANARY:
                share = DEFAULT_CANARY_SHARE if canary_share is None else canary_share
                if routing.stable is None:
                    raise RequestError(
                        409, "NO_STABLE_VERSION", "load a stable version before a canary"
                    )
                if same(routing.stable.model, model_uri, version):
                    raise RequestError(
                        409, "CONFLICT", f"version {version} ({model_uri}) is the stable version"
                    )
                if not force and routing.canary and same(routing.canary.model, model_uri, version):
                    self._change(lambda r: replace(r, canary_share=share) if r.canary else r)
                    return routing.canary.model, False
                model = self._attach(self._loader(model_uri, version))
                self.swap(model, CANARY, canary_share=share)
                return model, True
            current = routing.stable
            if not force and current and same(current.model, model_uri, version):
                if routing.canary and not keep_canary:
                    self._change(lambda r: replace(r, canary=None, canary_share=0.0))
                return current.model, False
            model = self._attach(self._loader(model_uri, version))
            self.swap(model, STABLE, keep_canary=keep_canary)
            return model, True

    def _attach(self, model: LoadedModel) -> LoadedModel:
        """The model acting (acting.py) when it can; the evaluation worker starts with the first."""
        if self.acting is None:
            return model
        model = self.acting.attach(model)
        if model.acts and self.evaluator is not None and not self.evaluator.started:
            self.evaluator.start()
            self.evaluator.bind_metrics(self.metrics.registry)
        return model

    # -- shadow (online_eval.py runs the challenger; shadow.py compares)

    def shadow_load(self, model_uri: str, version: str, share: float = 1.0) -> dict:
        """Run ``model_uri`` (a version of this agent) in shadow beside the stable version, on
        ``share`` of its requests (its CPU, in the worker, is proportional)."""
        if self.evaluator is None or self.acting is None or not self.acting.settings.enabled:
            raise RequestError(409, "NO_SHADOW", "this process does not act (no system of record): "
                                                 "there is nothing to shadow")
        stable = self._routing.stable
        if stable is None or not stable.model.acts:
            raise RequestError(409, "NO_SHADOW", "the stable version does not act: load one that does first")
        if same(stable.model, model_uri, version):
            raise RequestError(409, "CONFLICT", f"version {version} is the stable version")
        snap = self.evaluator.command({"kind": "shadow_load", "model_uri": model_uri, "version": str(version),
                                       "primary_version": stable.model.version})
        if snap.get("shadow_error"):
            raise RequestError(422, "SHADOW_LOAD_FAILED", f"could not run {model_uri} in shadow: {snap['shadow_error']}")
        self.shadow_version, self.shadow_share = str(version), share
        return snap

    def _evaluator_restarted(self, reason: str) -> None:
        """The evaluation worker died and a new one runs: no challenger runs in it any more."""
        if self.shadow_version is not None:
            logger.error("%s: challenger version %s no longer runs in shadow (load it again with "
                         "/admin/shadow)", reason, self.shadow_version)
            self.shadow_version = None

    def shadow_unload(self, record: bool = True) -> dict:
        if self.evaluator is None or self.shadow_version is None:
            raise RequestError(409, "NO_SHADOW", "no challenger is running in shadow")
        self.shadow_version = None
        return self.evaluator.command({"kind": "shadow_unload", "record": record})

    def swap(
        self,
        model: LoadedModel,
        role: str = STABLE,
        canary_share: float | None = None,
        keep_canary: bool = False,
    ) -> None:
        """Install ``model`` as ``role`` (a new stable drops the canary unless ``keep_canary``)."""
        if self.freeze_gc:
            warm_up(model)
            freeze_heap()
        served = Served(model, self.batch_max_rows, features=self.inference_log is not None,
                        batch_max_chars=self.max_request_chars, inline=self.inline_batching)  # fmt: skip
        if role == CANARY:
            share = DEFAULT_CANARY_SHARE if canary_share is None else canary_share
            self._change(lambda r: replace(r, canary=served, canary_share=share))
        elif keep_canary:
            self._change(lambda r: replace(r, stable=served))
        else:
            self._change(lambda r: Routing(stable=served))

    def promote(self) -> LoadedModel:
        """The canary becomes the stable version (same loaded model, no reload)."""
        with self._load_lock:
            if self._routing.canary is None:
                raise RequestError(409, "NO_CANARY", "there is no canary to promote")
            return self._change(lambda r: Routing(stable=r.canary)).stable.model

    def abort(self) -> LoadedModel | None:
        """Drop the canary; returns it (None when there was none)."""
        with self._load_lock:
            canary = self._routing.canary
            if canary is not None:
                self._change(lambda r: replace(r, canary=None, canary_share=0.0))
            return canary.model if canary else None

    def _change(self, update: Callable[[Routing], Routing]) -> Routing:
        with self._swap_lock:
            old = self._routing
            new = update(old)
            self._routing = new
        kept = {id(s) for _, s in new.served()}
        for _, served in old.served():
            if id(served) not in kept:
                served.retire()  # finishes its queued requests, then its thread ends
        self._publish(new)
        return new

    def _publish(self, routing: Routing) -> None:
        if routing.stable is not None:
            text = self._max_text_chars or routing.stable.model.default_max_text_chars()
            self._limits = Limits(self.max_rows, text, self.max_request_chars)
        try:
            self.metrics.set_models(
                [(s.model.agent, s.model.version, self.reported(role), s.model.model_uri)
                 for role, s in routing.served()],
                (routing.stable.model.agent if routing.stable else DEFAULT_AGENT,
                 routing.canary_share if routing.canary else 0.0),
            )  # fmt: skip
        except Exception:
            logger.exception("updating the model metrics failed")
        if routing.stable is None:
            return
        for callback in self._on_swap:
            try:
                callback(routing.stable.model)
            except Exception:
                logger.exception("on_swap callback failed")

    def close(self) -> None:
        for _, served in self._routing.served():
            served.retire()
        if self.evaluator is not None:
            self.evaluator.close()
        if self.acting is not None:
            self.acting.close()

    # -- requests in flight (for a clean stop)

    def enter(self) -> None:
        with self._in_flight_lock:
            self._in_flight += 1

    def try_enter(self) -> bool:
        """Count one more request in flight, unless ``max_concurrent`` already are."""
        with self._in_flight_lock:
            if self._in_flight >= self.max_concurrent:
                return False
            self._in_flight += 1
            return True

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def leave(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._in_flight_lock:
                if self._in_flight <= 0:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def reported(self, role: str) -> str:
        """The role a request is reported under: the pod's, when the pod is a canary."""
        return CANARY if self.pod_role == CANARY else role

    # -- recording one request

    def record(
        self,
        served: Served | None,
        role: str,
        status: int,
        started: float,
        *,
        received: float = 0.0,
        request_id: str = "",
        error_code: str | None = None,
        error: str | None = None,
        frame: pd.DataFrame | None = None,
        predictions: Any = None,
        features: Any = None,
        sampled: bool = False,
        marks: dict[str, int] | None = None,
        steps: list | None = None,
        reason: str | None = None,
    ) -> None:
        """Metrics, the stats ring, the inference log and tracing for one finished request.
        Never raises: reporting must not fail a request."""
        latency_s = time.perf_counter() - started
        model = served.model if served else None
        try:
            tools, escalations, rows = None, 0, 0
            if isinstance(predictions, pd.DataFrame):
                rows = len(predictions)
                if "tool" in predictions.columns:
                    tools = predictions["tool"].tolist()
                if "escalated" in predictions.columns:
                    escalations = int(predictions["escalated"].sum())
            elif isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
                rows = len(predictions)  # row dicts from the batcher (batching.plain_rows)
                if "tool" in predictions[0]:
                    tools = [r.get("tool") for r in predictions]
                escalations = sum(1 for r in predictions if r.get("escalated"))
            version = model.version if model else NO_VERSION
            self.metrics.observe(
                model.agent if model else DEFAULT_AGENT, version, status, latency_s,
                error_code=error_code, tools=tools, escalations=escalations, rows=rows,
            )  # fmt: skip
            self.outcomes.add(role, version, status, latency_s * 1000.0)
            if model is None or frame is None or not len(frame):
                return
            if self.inference_log is not None:
                self.inference_log.append(
                    LogEntry(received, request_id, self.reported(role), model.version, status, error_code,
                             latency_s * 1000.0, frame, predictions, features)
                )  # fmt: skip
            reason = "error" if status >= 500 else reason or "sampled"
            if self.tracer is not None and (sampled or status >= 500) and self.tracer.admit(reason):
                self.tracer.submit(
                    TraceJob.of(model, frame, request_id, self.reported(role), status, error,
                                latency_s * 1000.0, reason, predictions=predictions,
                                features=features, marks=marks or {}, steps=steps or []),
                    admitted=True,
                )  # fmt: skip
        except Exception:
            logger.exception("recording request %s failed", request_id)

    def log_model_error(self, model: LoadedModel, e: BaseException, request_id: str) -> None:
        """A traceback at most once a second; one line otherwise (an error storm must not flood
        the log or spend the CPU on formatting)."""
        now = time.monotonic()
        if now - self._error_log_at >= 1.0:
            self._error_log_at = now
            logger.error(
                "predict failed (model %s version %s, request %s)",
                model.model_uri, model.version, request_id, exc_info=e,
            )  # fmt: skip
        else:
            logger.warning(
                "predict failed (version %s, request %s): %s: %s",
                model.version, request_id, type(e).__name__, e,
            )  # fmt: skip


def health_payload(state: ServingState) -> dict[str, Any]:
    routing = state.routing
    model = routing.stable.model if routing.stable else None
    canary = routing.canary.model if routing.canary else None
    return {
        "status": "ok" if model else "loading",
        "model_uri": model.model_uri if model else None,
        "version": model.version if model else None,
        "agent": model.agent if model else None,
        "environment": state.environment,
        "loaded_at": model.loaded_at if model else None,
        "canary_model_uri": canary.model_uri if canary else None,
        "canary_version": canary.version if canary else None,
        "canary_share": routing.canary_share if canary else 0.0,
        "canary_loaded_at": canary.loaded_at if canary else None,
        "pod_role": state.pod_role,
        "pid": os.getpid(),
        "isolation": state.isolation,
    }


def llm_call_stats(router: Any) -> dict[str, Any]:
    """An LLM agent's calls to its endpoint since this process loaded the version: llm_calls,
    llm_failures and llm_failure_reasons ({reason: count}); {} for a router that makes none.

    A failed call is answered with a hand-over, so the request succeeds and the error rate does
    not see it: canary health reads these (``rollout.health_problem``)."""
    counts = getattr(router, "llm_call_counts", None)
    if not callable(counts):
        return {}
    made, failed = counts()
    return {"llm_calls": int(made), "llm_failures": int(sum(failed.values())),
            "llm_failure_reasons": {reason: int(n) for reason, n in failed.items() if n}}


def stats_payload(state: ServingState, window_s: float) -> dict[str, Any]:
    routing = state.routing
    versions = {
        STABLE: routing.stable.model.version if routing.stable else None,
        CANARY: routing.canary.model.version if routing.canary else None,
    }
    stats = state.outcomes.stats(window_s, versions)
    for role, served in routing.served():
        stats[role]["model_uri"] = served.model.model_uri
        stats[role] |= llm_call_stats(getattr(served.model.python_model, "router", None))
    if state.pod_role == CANARY:  # a canary pod: its one model is the environment's canary
        stats[CANARY], stats[STABLE] = stats[STABLE], None
    return {
        "environment": state.environment,
        "window_s": window_s,
        "covered_s": stats.pop("covered_s"),
        "canary_share": routing.canary_share if routing.canary else 0.0,
        # the process that writes traces and the evaluation worker's evidence to MLflow
        "trace_exporter": "off" if state.tracer is None else ("up" if state.tracer.alive else "down"),
        **stats,
    }
