"""The HTTP process a deployment runs: one MLflow pyfunc model behind a small, fast server.

Endpoints:

- ``POST /invocations``: MLflow's scoring formats (JSON ``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``; ``text/csv``) → ``{"predictions": [...]}`` plus ``X-Model-Version``.
- ``GET /health`` (alias ``/ping``): 200 with the model being served, 503 until one is loaded.
- ``POST /admin/load`` ``{"model_uri", "version"}``: load in the request thread, then swap
  atomically; requests already running finish on the old model, a failed load keeps it.

Layout, so that metrics, traffic splitting and request logging slot in later: ``ServingState``
holds the current ``LoadedModel`` (swapped under a lock); the request handler only moves bytes and
delegates to plain functions (``parse_request``, ``handle_invocations``, ``handle_health``,
``handle_admin_load``) that return a ``Response`` and can be tested without a socket.

Errors are JSON ``{"error_code", "message"}`` with a 4xx status for a bad request and 500 for a
failing model; tracebacks go to the log, never to the client.

mlflow is imported only when a model is loaded; the tracking and registry URIs come from
``MLFLOW_TRACKING_URI`` (read by mlflow itself).
"""

from __future__ import annotations

import argparse
import hmac
import inspect
import io
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger("agentops_pipelines.serving")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_DRAIN_BYTES = 16 * 1024 * 1024  # an oversized body up to this is read and dropped, then 413
REQUIRED_COLUMNS: tuple[str, ...] = ("text",)
STRING_COLUMNS: tuple[str, ...] = ("text", "customer_id")
JSON_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
ADMIN_TOKEN_ENV = "AGENTOPS_SERVING_ADMIN_TOKEN"
JSON_CT = "application/json"


# --------------------------------------------------------------------------------------------
# Errors and responses


class RequestError(Exception):
    """A request the server refuses: becomes ``{"error_code", "message"}`` with ``status``."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_CT
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(payload).encode(), JSON_CT, headers)


def error_response(status: int, error_code: str, message: str) -> Response:
    return json_response(status, {"error_code": error_code, "message": message})


# --------------------------------------------------------------------------------------------
# Parsing: request body -> DataFrame


def _split_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    mime, *parts = (p.strip() for p in content_type.split(";"))
    params = {}
    for part in parts:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return mime.lower(), params


def _frame(build: Callable[[], pd.DataFrame], what: str) -> pd.DataFrame:
    try:
        return build()
    except Exception as e:  # pandas raises ValueError, TypeError, ... on shapes it cannot use
        raise RequestError(400, "BAD_REQUEST", f"{what} is not a valid table: {e}") from None


def _frame_from_rows_or_columns(data: Any, key: str) -> pd.DataFrame:
    """``instances`` / ``inputs``: a list of records, a dict of columns, or one record."""
    if isinstance(data, list):
        if not all(isinstance(row, dict) for row in data):
            raise RequestError(
                400,
                "BAD_REQUEST",
                f"'{key}' must be a list of objects (records) or an object of columns",
            )
        return _frame(lambda: pd.DataFrame.from_records(data), f"'{key}'")
    if isinstance(data, dict):
        if data and all(isinstance(v, list) for v in data.values()):
            return _frame(lambda: pd.DataFrame(data), f"'{key}'")
        if not any(isinstance(v, list | dict) for v in data.values()):
            return _frame(lambda: pd.DataFrame([data]), f"'{key}'")  # a single record
    raise RequestError(
        400, "BAD_REQUEST", f"'{key}' must be a list of objects (records) or an object of columns"
    )


def parse_json_payload(payload: Any) -> pd.DataFrame:
    """A decoded MLflow scoring JSON payload -> DataFrame."""
    if not isinstance(payload, dict):
        raise RequestError(
            400, "BAD_REQUEST", f"expected a JSON object with one of the keys {list(JSON_FORMATS)}"
        )
    keys = [k for k in JSON_FORMATS if k in payload]
    if len(keys) != 1:
        raise RequestError(
            400,
            "BAD_REQUEST",
            f"expected exactly one of the keys {list(JSON_FORMATS)}, got {sorted(payload)}",
        )
    key = keys[0]
    if extra := sorted(set(payload) - {key}):
        raise RequestError(
            400, "BAD_REQUEST", f"unsupported keys {extra} (params are not supported)"
        )
    data = payload[key]
    if key == "dataframe_split":
        if (
            not isinstance(data, dict)
            or "data" not in data
            or set(data) - {"columns", "data", "index"}
        ):
            raise RequestError(
                400,
                "BAD_REQUEST",
                "'dataframe_split' must be an object with 'data' and optionally 'columns', 'index'",
            )
        return _frame(
            lambda: pd.DataFrame(
                data["data"], columns=data.get("columns"), index=data.get("index")
            ),
            "'dataframe_split'",
        )
    if key == "dataframe_records":
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise RequestError(400, "BAD_REQUEST", "'dataframe_records' must be a list of objects")
        return _frame(lambda: pd.DataFrame.from_records(data), "'dataframe_records'")
    return _frame_from_rows_or_columns(data, key)


def parse_csv(body: bytes, string_columns: tuple[str, ...] = STRING_COLUMNS) -> pd.DataFrame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, "BAD_REQUEST", f"CSV body is not valid UTF-8: {e}") from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=dict.fromkeys(string_columns, str))
    except Exception as e:
        raise RequestError(400, "BAD_REQUEST", f"body is not valid CSV: {e}") from None


def parse_request(
    body: bytes, content_type: str | None, string_columns: tuple[str, ...] = STRING_COLUMNS
) -> pd.DataFrame:
    """The body of a ``POST /invocations`` -> DataFrame, or ``RequestError`` (4xx)."""
    mime, params = _split_content_type(content_type)
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise RequestError(
            415, "UNSUPPORTED_MEDIA_TYPE", f"only UTF-8 is supported, got charset={charset}"
        )
    if not body and mime in (JSON_CT, "text/csv"):
        raise RequestError(400, "BAD_REQUEST", "the request body is empty")
    if mime == JSON_CT:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, "MALFORMED_REQUEST", f"body is not valid JSON: {e}") from None
        return parse_json_payload(payload)
    if mime == "text/csv":
        return parse_csv(body, string_columns)
    raise RequestError(
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        f"Content-Type must be application/json or text/csv, got {content_type or 'none'!r}",
    )


def validate_frame(df: pd.DataFrame, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Refuse a frame without the model's required columns, or with nulls in them."""
    if missing := [c for c in required if c not in df.columns]:
        raise RequestError(
            400,
            "BAD_REQUEST",
            f"missing required column(s) {missing}; got columns {[str(c) for c in df.columns]}",
        )
    for c in required:
        if df[c].isna().any():
            raise RequestError(400, "BAD_REQUEST", f"required column {c!r} has null values")
    return df


# --------------------------------------------------------------------------------------------
# Predictions -> JSON


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


def predictions_json(predictions: Any) -> bytes:
    """``{"predictions": ...}`` as mlflow's scoring server writes it (DataFrames as records)."""
    if isinstance(predictions, pd.DataFrame | pd.Series):
        body = predictions.to_json(orient="records", date_format="iso", default_handler=str)
    else:
        if hasattr(predictions, "tolist"):
            predictions = predictions.tolist()
        body = json.dumps(predictions, default=_json_default)
    return b'{"predictions":' + body.encode() + b"}"


# --------------------------------------------------------------------------------------------
# Models and the serving state


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model, immutable: a swap replaces the whole object."""

    model_uri: str
    version: str
    predict: Callable[[pd.DataFrame], Any]
    required_columns: tuple[str, ...] = REQUIRED_COLUMNS
    string_columns: tuple[str, ...] = STRING_COLUMNS
    loaded_at: str = field(default_factory=lambda: _now())
    load_seconds: float = 0.0
    direct_predict: bool = False  # True: the PythonModel's predict is called without pyfunc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _direct_predict(pyfunc: Any) -> Callable[[pd.DataFrame], Any] | None:
    """The unwrapped PythonModel's predict, when it takes a DataFrame as is; else None."""
    try:
        python_model = pyfunc.unwrap_python_model()
        hints = getattr(python_model, "predict_type_hints", None)
        if hints is not None and hints.input not in (None, Any, pd.DataFrame):
            return None  # pyfunc converts the frame to the hinted type: keep its predict
        context = getattr(pyfunc._model_impl, "context", None)
        parameters = [
            p for p in inspect.signature(python_model.predict).parameters if p != "params"
        ]
    except Exception:
        return None
    fn = python_model.predict
    if "context" in parameters or len(parameters) == 2:
        return lambda df: fn(context, df)
    if len(parameters) == 1:
        return fn
    return None


def _signature_columns(pyfunc: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Required and string columns: ours (``text``) plus the model signature's."""
    required, strings = list(REQUIRED_COLUMNS), list(STRING_COLUMNS)
    try:
        inputs = pyfunc.metadata.get_input_schema()
        if inputs is not None and inputs.has_input_names():
            required += [c for c in inputs.required_input_names() if c not in required]
            strings += [
                s.name
                for s in inputs.inputs
                if getattr(getattr(s, "type", None), "name", None) == "string"
                and s.name not in strings
            ]
    except Exception:
        logger.warning("could not read the model signature; requiring only %s", required)
    return tuple(required), tuple(strings)


def load_pyfunc(model_uri: str, version: str) -> LoadedModel:
    """Load with ``mlflow.pyfunc.load_model`` and pick the fastest safe predict."""
    import mlflow.pyfunc

    started = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    direct = _direct_predict(pyfunc)
    required, strings = _signature_columns(pyfunc)
    return LoadedModel(
        model_uri=model_uri,
        version=str(version),
        predict=direct or pyfunc.predict,
        required_columns=required,
        string_columns=strings,
        load_seconds=time.perf_counter() - started,
        direct_predict=direct is not None,
    )


class ServingState:
    """The model being served. Readers take ``current`` once per request; ``load`` swaps it."""

    def __init__(
        self,
        environment: str,
        loader: Callable[[str, str], LoadedModel] = load_pyfunc,
        admin_token: str | None = None,
    ):
        self.environment = environment
        self.admin_token = admin_token or None
        self._loader = loader
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time
        self._on_swap: list[Callable[[LoadedModel], None]] = []

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def on_swap(self, callback: Callable[[LoadedModel], None]) -> None:
        """Call ``callback(new_model)`` after every swap (state file, metrics, ...)."""
        self._on_swap.append(callback)

    def load(self, model_uri: str, version: str, force: bool = False) -> tuple[LoadedModel, bool]:
        """Load and swap; returns (model, swapped). Raises what the loader raises, keeping the
        old model. Without ``force``, the same uri and version already served is not reloaded."""
        with self._load_lock:
            current = self._current
            if (
                not force
                and current
                and (current.model_uri, current.version) == (model_uri, str(version))
            ):
                return current, False
            model = self._loader(model_uri, str(version))
            self.swap(model)
            return model, True

    def swap(self, model: LoadedModel) -> None:
        with self._swap_lock:
            self._current = model
        for callback in self._on_swap:
            try:
                callback(model)
            except Exception:
                logger.exception("on_swap callback failed")


# --------------------------------------------------------------------------------------------
# Endpoints as plain functions


def handle_invocations(state: ServingState, body: bytes, content_type: str | None) -> Response:
    model = state.current
    if model is None:
        return error_response(503, "MODEL_NOT_LOADED", "no model is loaded yet")
    headers = (("X-Model-Version", model.version),)
    try:
        df = validate_frame(
            parse_request(body, content_type, model.string_columns), model.required_columns
        )
    except RequestError as e:
        return Response(e.status, _error_body(e), JSON_CT, headers)
    if df.empty:
        return Response(200, b'{"predictions":[]}', JSON_CT, headers)
    try:
        out = predictions_json(model.predict(df))
    except Exception as e:
        logger.exception("predict failed (model %s version %s)", model.model_uri, model.version)
        return Response(
            500,
            _error_body(
                RequestError(500, "INTERNAL_ERROR", f"prediction failed: {type(e).__name__}: {e}")
            ),
            JSON_CT,
            headers,
        )
    return Response(200, out, JSON_CT, headers)


def _error_body(e: RequestError) -> bytes:
    return json.dumps({"error_code": e.error_code, "message": e.message}).encode()


def health_payload(state: ServingState) -> dict[str, Any]:
    model = state.current
    return {
        "status": "ok" if model else "loading",
        "model_uri": model.model_uri if model else None,
        "version": model.version if model else None,
        "environment": state.environment,
        "loaded_at": model.loaded_at if model else None,
        "pid": os.getpid(),
    }


def handle_health(state: ServingState) -> Response:
    return json_response(200 if state.current else 503, health_payload(state))


def _check_admin(state: ServingState, authorization: str | None) -> None:
    if state.admin_token is None:
        return
    supplied = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(supplied.encode(), state.admin_token.encode()):
        raise RequestError(
            401, "UNAUTHENTICATED", "admin endpoints need 'Authorization: Bearer <token>'"
        )


def handle_admin_load(
    state: ServingState, body: bytes, content_type: str | None, authorization: str | None = None
) -> Response:
    try:
        _check_admin(state, authorization)
        if _split_content_type(content_type)[0] != JSON_CT:
            raise RequestError(
                415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json"
            )
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, "MALFORMED_REQUEST", f"body is not valid JSON: {e}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("model_uri"), str):
            raise RequestError(400, "BAD_REQUEST", 'expected {"model_uri": str, "version": str}')
        version = payload.get("version")
        if not isinstance(version, str | int) or isinstance(version, bool) or str(version) == "":
            raise RequestError(400, "BAD_REQUEST", "'version' must be a non-empty string")
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message)
    previous = state.current
    try:
        model, swapped = state.load(
            payload["model_uri"], str(version), force=bool(payload.get("force"))
        )
    except Exception as e:
        logger.exception("loading %s (version %s) failed", payload["model_uri"], version)
        status = 500
        code_of = getattr(e, "get_http_status_code", None)
        if callable(code_of) and 400 <= (code := code_of()) < 600:
            status = code
        return error_response(
            status,
            "MODEL_LOAD_FAILED",
            f"could not load {payload['model_uri']!r} (version {version}): {type(e).__name__}: {e}; "
            f"still serving {previous.model_uri + ' version ' + previous.version if previous else 'nothing'}",
        )
    if swapped:
        logger.info(
            "swapped to %s version %s (loaded in %.2fs)",
            model.model_uri,
            model.version,
            model.load_seconds,
        )
    return json_response(
        200,
        {
            **health_payload(state),
            "swapped": swapped,
            "previous_version": previous.version if previous else None,
            "load_seconds": round(model.load_seconds, 3),
        },
    )


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class ServingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed ACKs
    timeout = 60  # seconds a keep-alive connection may sit idle
    server: ServingHTTPServer
    server_version = "agentops-serving"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            response = self._route(method)
        except Exception as e:  # never let a bug drop the connection without an answer
            logger.exception("unhandled error on %s %s", method, self.path)
            response = error_response(500, "INTERNAL_ERROR", f"{type(e).__name__}: {e}")
        self._send(response)

    def _route(self, method: str) -> Response:
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if method == "POST":
            body = self._read_body()
            if isinstance(body, Response):
                return body
            if path == "/invocations":
                return handle_invocations(state, body, self.headers.get("Content-Type"))
            if path == "/admin/load":
                return handle_admin_load(
                    state, body, self.headers.get("Content-Type"), self.headers.get("Authorization")
                )
        elif path in ("/health", "/ping"):
            return handle_health(state)
        if path in ("/invocations", "/admin/load", "/health", "/ping"):
            return error_response(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}")
        return error_response(404, "ENDPOINT_NOT_FOUND", f"no endpoint {path}")

    def _read_body(self) -> bytes | Response:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            return error_response(
                411, "LENGTH_REQUIRED", "send a Content-Length (chunked bodies are not supported)"
            )
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return error_response(400, "BAD_REQUEST", f"invalid Content-Length {raw!r}")
        limit = self.server.max_body_bytes
        if length > limit:
            self.close_connection = True
            self._discard(length)  # so the client reads our 413 instead of a connection reset
            return error_response(
                413,
                "REQUEST_TOO_LARGE",
                f"body of {length} bytes exceeds the limit of {limit} bytes",
            )
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        remaining = min(length, MAX_DRAIN_BYTES)
        try:
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, 65536))):
                remaining -= len(chunk)
        except OSError:
            pass

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            self.wfile.write(response.body)
        except OSError:  # the client went away
            self.close_connection = True

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the hot path stays quiet; request logging will hook in here

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class ServingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not delay shutdown
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        state: ServingState,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.max_body_bytes = max_body_bytes
        super().__init__(address, ServingHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m agentops_pipelines.serving", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-uri", required=True, help="e.g. models:/support-agent/3")
    p.add_argument("--version", required=True, help="the model version being served (reported)")
    p.add_argument("--environment", required=True, help="dev, staging, production, ...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 binds an ephemeral port")
    p.add_argument("--state-file", default=None, help="JSON written on start, removed on shutdown")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state = ServingState(args.environment, admin_token=os.environ.get(ADMIN_TOKEN_ENV))
    server = ServingHTTPServer((args.host, args.port), state, args.max_body_bytes)
    if state.admin_token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("/admin/load is open on %s: set %s", args.host, ADMIN_TOKEN_ENV)
    pid, started_at = os.getpid(), _now()
    state_file = Path(args.state_file).resolve() if args.state_file else None

    def write_state(model: LoadedModel | None) -> None:
        if state_file is None:
            return
        write_json_atomic(
            state_file,
            {
                "pid": pid,
                "host": args.host,
                "port": server.port,
                "url": server.url,
                "model_uri": model.model_uri if model else args.model_uri,
                "version": model.version if model else str(args.version),
                "environment": args.environment,
                "started_at": started_at,
                "status": "serving" if model else "loading",
                "loaded_at": model.loaded_at if model else None,
            },
        )

    stop = threading.Event()
    exit_code = [0]

    def initial_load() -> None:
        try:
            model, _ = state.load(args.model_uri, args.version)
            logger.info(
                "serving %s version %s on %s (loaded in %.2fs, direct predict: %s)",
                model.model_uri,
                model.version,
                server.url,
                model.load_seconds,
                model.direct_predict,
            )
        except Exception as e:
            logger.exception("loading the model failed")
            logger.error(  # last, on one line, so the tail of the log says why
                "could not load %s (version %s): %s: %s",
                args.model_uri, args.version, type(e).__name__, e,
            )  # fmt: skip
            exit_code[0] = 1
            stop.set()

    state.on_swap(write_state)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    write_state(None)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    threading.Thread(target=initial_load, name="initial-load", daemon=True).start()
    logger.info("listening on %s (environment %s, pid %d)", server.url, args.environment, pid)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        if state_file is not None:
            remove_state_file(state_file, pid)
        logger.info("stopped (exit code %d)", exit_code[0])
    return exit_code[0]
