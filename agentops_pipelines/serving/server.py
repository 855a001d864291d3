"""The serving process: an ASGI app on uvicorn (httptools), and its ``main``.

uvicorn does the HTTP: framing (one valid ``Content-Length`` or chunked encoding; duplicate or
malformed lengths are a 400 from llhttp before the app sees anything), keep-alive, graceful
shutdown. ``GuardedProtocol`` (uvicorn's httptools protocol, subclassed) adds the limits it lacks:
a cap on open connections, a deadline for the request head and one for the body (slowloris), and a
cap on the head's size; each refusal is counted (``agentops_rejections_total{reason}``). The app
never parses lengths or headers: it reads the body uvicorn hands over, stopping at
``max_body_bytes``, and takes ``Content-Type``, ``Authorization`` and ``X-Request-Id`` from the
header list uvicorn parsed.

Overload answers 503 with ``Retry-After`` at once: more than ``max_connections`` connections, more
than ``max_concurrent`` requests in flight, or a model queue longer than its limit.

One thread does all the Python work: the event loop reads requests, and between two polls of its
sockets predicts what arrived meanwhile as one micro-batch per served model (``batching.py``,
inline). Nothing waits for the GIL, and no thread is started per request or connection. A model
that waits on another service for each request (an LLM agent's endpoint) predicts on a bounded
pool of threads of its own (``--predict-threads``), apart from the pool admin loads use.

``main`` refuses to start without an admin token (``--admin-token-file``, else the environment
variable ``AGENTOPS_SERVING_ADMIN_TOKEN``). On SIGTERM the process stops accepting connections,
reports not-ready, lets in-flight requests finish (``--drain-seconds``), then flushes the
inference log and the traces. The inference log is converted, written and compacted by a child
process (``inference_log.py``) fed with plain rows: its Arrow conversion held the GIL for ms at a
time beside the event loop. The child writes what it holds when this process dies, even by
``kill -9``; it dies with it.

What a client sees, decided (issue 10):

- ``GET /metrics`` stays open on the serving port, unauthenticated: Prometheus scrapes it there
  (``deploy/prometheus``, the pods' annotations), and it holds counts and latencies per agent,
  version, tool and error code, never request content, ids or secrets. What it tells an outsider
  (request rates, versions served) is what a client learns anyway. Where that is too much, keep
  the port behind the load balancer's path rules (only ``/invocations`` public).
- ``X-Model-Version`` is sent with every answer: support and clients need to say which version
  answered, and hot-swap and canary tests read it. The role (stable or canary) is not sent
  (``X-Model-Role`` is gone); a client who compares versions can tell which arm it hit, but canary
  health counts only server errors and latency after ``min_requests``, under the text and compute
  budgets, so knowing the arm gives no lever on the decision.

CPU per request (bench/serving_latency.py, BENCHMARKS.md): the request path builds one pandas
object per request (its one-row frame, as one object block), the batch is merged from NumPy reads
and its results are read once into row dicts (``batching.py``), so the JSON answer, the metrics
and the inference log never touch a DataFrame per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agentops_pipelines.serving.admin import ADMIN_POST, handle_admin_stats
from agentops_pipelines.serving.confine import ConfinementError, apply, private_tmp, serving_policy
from agentops_pipelines.serving.handlers import (
    RETRY_AFTER,
    begin_invocation,
    finish_invocation,
    handle_health,
    handle_livez,
    handle_metrics,
    handle_readyz,
    reject_invocation,
)
from agentops_pipelines.serving.inference_log import InferenceLogWriter
from agentops_pipelines.serving.metrics import ServingMetrics
from agentops_pipelines.serving.models import LoadedModel
from agentops_pipelines.serving.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_REQUEST_CHARS,
    DEFAULT_MAX_ROWS,
    RequestError,
    Response,
    error_response,
)
from agentops_pipelines.serving.state import (
    DEFAULT_BATCH_MAX_ROWS,
    DEFAULT_MAX_CONCURRENT,
    ServingState,
    registered_name,
)
from agentops_pipelines.serving.tracing import Tracer
from agentops_pipelines.serving.traffic import ROLES, STABLE
from agentops_pipelines.vocabulary import EnvVar, pinned_version

logger = logging.getLogger("agentops_pipelines.serving")

ADMIN_TOKEN_ENV = EnvVar.SERVING_ADMIN_TOKEN.value  # read by the serving process (serving/server.py)
DEFAULT_TRACE_SAMPLE_RATE = 0.01
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEEP_ALIVE = 30
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_PREDICT_THREADS = 32  # io-bound predictions (LLM calls) in flight at once
_KNOWN = {"/invocations", "/health", "/ping", "/livez", "/readyz", "/metrics", "/admin/stats",
          *ADMIN_POST}  # fmt: skip


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The ASGI app


class ServingApp:
    def __init__(self, state: ServingState, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 predict_threads: int = DEFAULT_PREDICT_THREADS):
        from concurrent.futures import ThreadPoolExecutor

        self.state = state
        self.max_body_bytes = max_body_bytes
        # Predictions that wait on another service (an LLM agent's endpoint, io_bound: never
        # batched) run here, not in the loop's default pool that /admin/load and /admin/shadow
        # use: a slow or hanging endpoint then cannot hold up a load, a rollback's hot swap or
        # the shadow's commands, and at most ``predict_threads`` such calls are in flight.
        self.predict_pool = ThreadPoolExecutor(predict_threads, thread_name_prefix="agentops-predict")

    def close(self) -> None:
        self.predict_pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # uvicorn runs with lifespan "off"
            return
        started = time.perf_counter()
        try:
            response, close = await self._route(scope, receive, started)
        except _Disconnected:
            return
        except Exception as e:  # never drop a connection without an answer
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            response, close = error_response(500, "INTERNAL_ERROR", type(e).__name__), True
        headers = [(b"content-type", response.content_type.encode()),
                   (b"content-length", str(len(response.body)).encode())]  # fmt: skip
        headers += [(k.lower().encode(), v.encode()) for k, v in response.headers]
        if close or self.state.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _route(self, scope: dict, receive: Any, started: float) -> tuple[Response, bool]:
        method, path = scope["method"], scope["path"]
        state = self.state
        if path == "/invocations":
            request_id = _header(scope, b"x-request-id")
            if method != "POST":
                error = RequestError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}")
                return reject_invocation(state, error, started, request_id), False
            if not state.try_enter():
                error = RequestError(
                    503, "OVERLOADED",
                    f"{state.max_concurrent} requests are in flight; retry later", RETRY_AFTER,
                )  # fmt: skip
                return reject_invocation(state, error, started, request_id), True
            try:
                try:
                    body = await self._body(receive)
                except _TooLarge:
                    error = RequestError(
                        413, "REQUEST_TOO_LARGE",
                        f"the body exceeds the limit of {self.max_body_bytes} bytes",
                    )  # fmt: skip
                    return reject_invocation(state, error, started, request_id), True
                return await self._invoke(body, _header(scope, b"content-type"), request_id,
                                          started), False  # fmt: skip
            finally:
                state.leave()
        if method == "POST" and path in ADMIN_POST:
            try:
                body = await self._body(receive)
            except _TooLarge:
                return error_response(413, "REQUEST_TOO_LARGE", "the body is too large"), True
            handler = ADMIN_POST[path]
            args = (state, body, _header(scope, b"content-type"), _header(scope, b"authorization"))
            if path in ("/admin/load", "/admin/shadow"):  # loading takes seconds: off the event loop
                return await asyncio.get_running_loop().run_in_executor(None, handler, *args), False
            return handler(*args), False
        if method in ("GET", "HEAD"):
            if path in ("/health", "/ping"):
                return handle_health(state), False
            if path == "/livez":
                return handle_livez(state), False
            if path == "/readyz":
                return handle_readyz(state), False
            if path == "/metrics":
                return handle_metrics(state), False
            if path == "/admin/stats":
                query = scope.get("query_string", b"").decode("latin-1")
                return handle_admin_stats(state, query, _header(scope, b"authorization")), False
        if path in _KNOWN:
            return error_response(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}"), False
        return error_response(404, "ENDPOINT_NOT_FOUND", f"no endpoint {path}"), False

    async def _body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _invoke(self, body: bytes, content_type: str | None, request_id: str | None,
                      started: float) -> Response:  # fmt: skip
        state = self.state
        pending = begin_invocation(state, body, content_type, request_id, started)
        if isinstance(pending, Response):
            return pending
        loop = asyncio.get_running_loop()
        batcher = pending.served.batcher
        result, error = None, None
        queued = False
        if batcher is not None:
            future = loop.create_future()
            if batcher.inline:
                def done(result: tuple | None, error: BaseException | None) -> None:
                    _resolve(future, result, error)
            else:
                def done(result: tuple | None, error: BaseException | None) -> None:
                    loop.call_soon_threadsafe(_resolve, future, result, error)

            try:
                queued = batcher.submit(pending.frame, done, pending.chars)
            except Exception as e:  # Overloaded
                error = e
            if queued:
                if batcher.inline and not batcher.scheduled:
                    batcher.scheduled = True
                    loop.call_soon(_drain, loop, batcher)
                result, error = await future
        if batcher is None or (not queued and error is None):
            try:
                result = await loop.run_in_executor(self.predict_pool, pending.served.infer_now, pending.frame)
            except Exception as e:
                error = e
        return finish_invocation(state, pending, result, error)


def _drain(loop: asyncio.AbstractEventLoop, batcher: Any) -> None:
    """One micro-batch on the event loop; the next one after the loop has polled its sockets
    again (requests that arrive meanwhile join it)."""
    if batcher.run_pending():
        loop.call_soon(_drain, loop, batcher)
    else:
        batcher.scheduled = False


def _resolve(future: asyncio.Future, result: Any, error: Any) -> None:
    if not future.done():
        future.set_result((result, error))


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


# --------------------------------------------------------------------------------------------
# uvicorn, with the limits it does not have


def guarded_protocol(
    max_connections: int,
    header_timeout: float,
    body_timeout: float,
    max_header_bytes: int,
    on_reject: Any = None,
) -> type:
    """uvicorn's httptools protocol with a connection cap, head/body deadlines and a head size
    cap. Each refusal calls ``on_reject(reason)``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    report = on_reject or (lambda reason: None)

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                report("connections")
                self._refuse(503, b"Service Unavailable", retry=True)
                return
            self._arm(header_timeout, "header_timeout")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._arm(header_timeout, "header_timeout")

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value))
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._arm(body_timeout, "body_timeout")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_header_bytes:
                report("header_too_large")
                self._refuse(431, b"Request Header Fields Too Large")
                raise _HeadTooLarge

        def data_received(self, data: bytes) -> None:
            try:
                super().data_received(data)
            except _HeadTooLarge:
                pass

        def _arm(self, seconds: float, reason: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire, reason)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self, reason: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            report(reason)
            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self._refuse(408, b"Request Timeout")
            else:
                self.transport.close()

        def _refuse(self, status: int, reason: bytes, retry: bool = False) -> None:
            self._disarm()
            if self.cycle is not None and self.cycle.response_started:
                self.transport.close()
                return
            body = b'{"error_code": "' + reason.upper().replace(b" ", b"_") + b'"}'
            head = [b"HTTP/1.1 %d " % status, reason, b"\r\ncontent-type: application/json\r\n",
                    b"content-length: %d\r\nconnection: close\r\n" % len(body)]  # fmt: skip
            if retry:
                head.append(b"retry-after: 1\r\n")
            self.transport.write(b"".join(head) + b"\r\n" + body)
            self.transport.close()
            if self.cycle is not None:
                self.cycle.response_complete = True

    return GuardedProtocol


class _HeadTooLarge(Exception):
    pass


def uvicorn_server(app: ServingApp, args: argparse.Namespace, metrics: ServingMetrics):
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    protocol: Any = guarded_protocol(
        args.max_connections, args.header_timeout, args.body_timeout, args.max_header_bytes,
        metrics.reject,
    )  # fmt: skip
    if args.http == "h11":  # for comparing parsers only: no connection cap, no head/body deadline
        protocol = "h11"
    config = uvicorn.Config(
        app, http=protocol, loop=loop, lifespan="off", ws="none", interface="asgi3",
        access_log=False, log_config=None, server_header=False, date_header=False,
        timeout_keep_alive=args.keep_alive_timeout, timeout_graceful_shutdown=args.drain_seconds,
        backlog=2048,
    )  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True  # /readyz answers 503 from now on
            super().handle_exit(sig, frame)

    return Server(config)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def url_of(host: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --------------------------------------------------------------------------------------------
# The process


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def remove_state_file(path: Path, pid: int) -> None:
    """Remove the state file if it is still this process's (a successor may own it)."""
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _share(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m agentops_pipelines.serving", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-uri", required=True, help="e.g. models:/support_agent/3 (an alias is refused)")
    p.add_argument(
        "--version", default=None,
        help="the version reported; for models:/<agent>/<version> it is read from the URI (a "
        "different one is refused), required for any other URI",
    )  # fmt: skip
    p.add_argument("--environment", required=True, help="dev, staging, production, ...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 binds an ephemeral port")
    p.add_argument("--state-file", default=None, help="JSON written on start, removed on shutdown")
    p.add_argument(
        "--admin-token-file", default="",
        help=f"file holding the admin bearer token (else env {ADMIN_TOKEN_ENV}); required",
    )  # fmt: skip
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows per request")
    p.add_argument(
        "--max-text-chars", type=int, default=0,
        help="characters per text value; 0: 4x the longest training text when the model says, "
        "else 4096",
    )  # fmt: skip
    p.add_argument(
        "--max-request-chars", type=int, default=DEFAULT_MAX_REQUEST_CHARS,
        help="characters of text per request and per micro-batch (the compute budget)",
    )  # fmt: skip
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    p.add_argument(
        "--max-concurrent-requests", type=int, default=DEFAULT_MAX_CONCURRENT,
        help="requests in flight before new ones get 503 + Retry-After",
    )  # fmt: skip
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                   help="seconds to receive a request's head")  # fmt: skip
    p.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                   help="seconds to receive a request's body")  # fmt: skip
    p.add_argument("--keep-alive-timeout", type=int, default=DEFAULT_KEEP_ALIVE,
                   help="seconds an idle keep-alive connection stays open")  # fmt: skip
    p.add_argument("--max-header-bytes", type=int, default=DEFAULT_MAX_HEADER_BYTES)
    p.add_argument("--predict-threads", type=_positive, default=DEFAULT_PREDICT_THREADS,
                   help="threads for predictions that wait on another service (an LLM endpoint)")  # fmt: skip
    p.add_argument(
        "--http", choices=("httptools", "h11"), default="httptools",
        help="HTTP parser; h11 (benchmarks only) runs without the connection cap and deadlines",
    )  # fmt: skip
    p.add_argument(
        "--batch-max-rows", type=int, default=DEFAULT_BATCH_MAX_ROWS,
        help="rows merged into one predict call; 0 predicts each request on its own",
    )  # fmt: skip
    p.add_argument(
        "--predict-thread", action="store_true",
        help="predict on a thread of its own instead of on the event loop (for a model that "
        "waits on I/O: the loop then keeps answering while it predicts, at about half the "
        "throughput)",
    )  # fmt: skip
    p.add_argument(
        "--trace-sample-rate", type=_share, default=DEFAULT_TRACE_SAMPLE_RATE,
        help="share of successful requests traced in MLflow (failed ones always are)",
    )  # fmt: skip
    p.add_argument(
        "--trace-experiment", default="",
        help="MLflow experiment for traces (default: the model's training experiment)",
    )  # fmt: skip
    p.add_argument(
        "--trace-max-per-second", type=float, default=5.0,
        help="traces exported per second at most (each costs the exporter ~0.1 s of CPU); the "
        "rest are dropped and counted",
    )  # fmt: skip
    p.add_argument("--no-tracing", action="store_true", help="trace nothing, not even errors")
    p.add_argument("--inference-log-dir", default="", help="Parquet inference log; empty: none")
    p.add_argument("--inference-log-flush-seconds", type=float, default=1.0)
    p.add_argument("--inference-log-flush-rows", type=int, default=50_000)
    p.add_argument(
        "--inference-log-thread", action="store_true",
        help="convert and write the inference log on a thread of this process instead of a "
        "child process (its Arrow conversion then takes the event loop's GIL time)",
    )  # fmt: skip
    p.add_argument(
        "--drain-seconds", type=int, default=5,
        help="on SIGTERM, how long in-flight requests may take to finish",
    )  # fmt: skip
    p.add_argument(
        "--pod-role", choices=ROLES, default=os.environ.get(EnvVar.SERVING_ROLE) or STABLE,
        help="the role this process reports (env AGENTOPS_SERVING_ROLE; set on the canary pods "
        "of a Kubernetes rollout, where each pod serves one model)",
    )  # fmt: skip
    p.add_argument("--sor-fallback", choices=("local", "off"), default="local",
                   help="without AGENTOPS_SOR_URL: act on this environment's own SQLite file under "
                        "AGENTOPS_HOME (local), or do not act (off: Kubernetes pods)")
    p.add_argument("--read", action="append", default=[], metavar="PATH",
                   help="a further path the model may read (confinement: serving/confine.py)")
    p.add_argument("--connect-port", action="append", type=int, default=[], metavar="PORT",
                   help="a further TCP port the model may connect to (an LLM agent's endpoint)")
    p.add_argument("--require-landlock", action="store_true",
                   default=_flag(os.environ.get(EnvVar.SANDBOX_REQUIRE_LANDLOCK, "")),
                   help="refuse to serve where the kernel has no Landlock (ABI 4+) instead of serving "
                        "unconfined (env AGENTOPS_SANDBOX_REQUIRE_LANDLOCK; on in production)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def read_admin_token(path: str) -> str:
    """The admin token from ``path`` (preferred) or the environment; '' when there is none."""
    if path:
        file = Path(path)
        token = file.read_text().strip()
        if file.stat().st_mode & 0o077:
            logger.warning("%s is readable by others than its owner: chmod 600 it", path)
        return token
    return os.environ.get(ADMIN_TOKEN_ENV, "").strip()


def served_version(model_uri: str, version: str | None) -> str:
    """The version label of the model the process starts with. A registered model's must be a
    pinned version (``vocabulary.pinned_version``): a pod started from ``@champion`` would serve
    whatever whoever can move the alias chose, at every restart, outside the audit log. Any other
    URI (a path, ``runs:/``: admin loads are then refused) needs ``--version``. ValueError."""
    if model_uri.startswith("models:/"):
        return pinned_version(model_uri, version)
    if not version:
        raise ValueError(f"--version is required for {model_uri!r} (not a registered model version)")
    return version


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args.version = served_version(args.model_uri, args.version)
    except ValueError as e:
        logger.error("refusing to start: %s", e)
        return 2
    try:
        admin_token = read_admin_token(args.admin_token_file)
    except OSError as e:
        logger.error("cannot read the admin token file: %s", e)
        return 2
    if not admin_token:
        logger.error(
            "refusing to start without an admin token: pass --admin-token-file PATH or set %s",
            ADMIN_TOKEN_ENV,
        )
        return 2
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no *_created series: half the scrape size, nothing alerts on them
    # Other threads (inference log, admin loads) hold the GIL for ms at a time; a 1 ms switch
    # interval bounds how long the event loop waits for it.
    sys.setswitchinterval(0.001)
    metrics = ServingMetrics(args.environment)
    agent = registered_name(args.model_uri)
    acting, evaluator = _acting(args.environment, agent, args.sor_fallback)
    # The exporter is the one process that writes to MLflow (traces, and the evaluation worker's
    # flagged requests and shadow evidence): started before this process confines itself.
    tracer = Tracer(
        args.environment, sample_rate=args.trace_sample_rate, max_per_second=args.trace_max_per_second,
        experiment=args.trace_experiment or None, on_result=metrics.trace, mode="process",
        agent=agent, enabled=not args.no_tracing,
    ).start() if not args.no_tracing or evaluator is not None else None  # fmt: skip
    if tracer is not None:
        metrics.watch_exporter(agent or "", lambda: tracer.alive)
    if evaluator is not None:
        evaluator.writer = tracer.writes_channel()
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    url = url_of(args.host, port)
    pid, started_at = os.getpid(), _now()
    state_file = Path(args.state_file).resolve() if args.state_file else None
    tmp = private_tmp()
    try:
        isolation = _confine(args, state_file, acting, tmp)
    except ConfinementError as e:
        logger.error("refusing to serve: %s", e)
        if tracer is not None:
            tracer.close(timeout=1.0)
        shutil.rmtree(tmp, ignore_errors=True)
        return 3
    if tracer is not None:
        tracer.listen()  # its thread starts confined, like every thread from here on
    inference_log = None
    if args.inference_log_dir:  # its process starts confined, like the models' code
        inference_log = InferenceLogWriter(
            args.inference_log_dir, args.environment,
            flush_seconds=args.inference_log_flush_seconds,
            flush_rows=args.inference_log_flush_rows, on_rows=metrics.log_rows,
            process=not args.inference_log_thread,
        ).start()  # fmt: skip
    state = ServingState(
        args.environment, admin_token=admin_token, agent=agent,
        max_rows=args.max_rows, max_text_chars=args.max_text_chars or None,
        max_request_chars=args.max_request_chars, max_concurrent=args.max_concurrent_requests,
        batch_max_rows=args.batch_max_rows, metrics=metrics, inference_log=inference_log,
        tracer=tracer, freeze_gc=True, pod_role=args.pod_role,
        inline_batching=not args.predict_thread, acting=acting, evaluator=evaluator, isolation=isolation,
    )  # fmt: skip

    def write_state(model: LoadedModel | None) -> None:
        if state_file is None:
            return
        canary = state.canary
        write_json_atomic(
            state_file,
            {
                "pid": pid, "host": args.host, "port": port, "url": url,
                "model_uri": model.model_uri if model else args.model_uri,
                "version": model.version if model else str(args.version),
                "environment": args.environment, "started_at": started_at,
                "status": "serving" if model else "loading",
                "loaded_at": model.loaded_at if model else None,
                "canary_model_uri": canary.model_uri if canary else None,
                "canary_version": canary.version if canary else None,
                "canary_share": state.routing.canary_share if canary else 0.0,
                "inference_log_dir": args.inference_log_dir or None,
                "trace_sample_rate": args.trace_sample_rate if tracer and tracer.enabled else 0.0,
                "isolation": isolation,
            },
        )  # fmt: skip

    app = ServingApp(state, args.max_body_bytes, args.predict_threads)
    server = uvicorn_server(app, args, metrics)
    exit_code = [0]

    def initial_load() -> None:
        try:
            model, _ = state.load(args.model_uri, args.version)
            logger.info(
                "serving %s version %s on %s (loaded in %.2fs, direct predict: %s, text limit %d)",
                model.model_uri, model.version, url, model.load_seconds, model.direct_predict,
                state.limits.max_text_chars,
            )  # fmt: skip
        except Exception as e:
            logger.exception("loading the model failed")
            logger.error(  # last, on one line, so the tail of the log says why
                "could not load %s (version %s): %s: %s",
                args.model_uri, args.version, type(e).__name__, e,
            )  # fmt: skip
            exit_code[0] = 1
            server.should_exit = True

    state.on_swap(write_state)
    # uvicorn re-raises the signal it caught once it has stopped: this handler takes it, so the
    # inference log and the traces are flushed below instead of the process dying there.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    write_state(None)
    threading.Thread(target=initial_load, name="initial-load", daemon=True).start()
    logger.info("listening on %s (environment %s, pid %d)", url, args.environment, pid)
    try:
        server.run(sockets=[sock])
    finally:
        state.draining = True
        app.close()
        state.close()
        if inference_log is not None:
            inference_log.close(timeout=5.0)
            logger.info("inference log: %d files written", inference_log.files_written)
        if tracer is not None:
            tracer.close(timeout=2.0)
        if state_file is not None:
            remove_state_file(state_file, pid)
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("stopped (exit code %d)", exit_code[0])
    return exit_code[0]


def _confine(args: argparse.Namespace, state_file: Path | None, acting, tmp: Path) -> str:
    """Confine this process (serving/confine.py) before any model loads; its isolation."""
    os.environ["TMPDIR"] = str(tmp)  # MLflow downloads a model's artifacts there
    tempfile.tempdir = str(tmp)
    policy = serving_policy(
        os.environ, own_folder=state_file.parent if state_file else None, tmp=tmp,
        inference_log_dir=args.inference_log_dir, sor_url=acting.settings.sor_url if acting else "",
        model_uri=args.model_uri, read=args.read, connect_ports=args.connect_port,
        require_landlock=args.require_landlock,
    )  # fmt: skip
    return apply(policy)


def _acting(environment: str, agent: str | None, sor_fallback: str = "local"):
    """Agents that act (serving/acting.py) and their evaluation worker (online_eval.py), from
    this process's environment (read here, once)."""
    from agentops_pipelines.serving.acting import Acting, ActSettings
    from agentops_pipelines.serving.online_eval import EvalWorker

    settings = ActSettings.from_environ(os.environ, environment, sor_fallback)
    if not settings.enabled:
        return None, None
    evaluator = EvalWorker(agent or "agent", environment, settings.sor_url, settings.refund_limit,
                           settings.online_eval_sample_rate)  # started by the first model that acts
    return Acting(settings), evaluator


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")
