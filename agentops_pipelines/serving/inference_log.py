"""The inference log: every request a model answered, and its predictions, as Parquet files.

Written by the serving process, read by drift detection and audits::

    <folder>/date=YYYY-MM-DD/<pid>-<seq>.parquet      (UTC date of the request)

One row per predicted row, columns (``SCHEMA``): ``request_id``, ``row`` (its position in the
request), ``timestamp`` (UTC, when the request arrived), ``environment``, ``model_version``,
``role`` (stable|canary), ``status`` (HTTP status: 200, or 5xx when the model failed),
``error_code`` (null when ok), ``customer_id``, ``text``, ``tool``, ``confidence``, ``escalated``,
``latency_ms`` (server-side, for the whole request), then one column per feature the model used
(filled by the model from the online store, or sent in the request). Requests refused before
reaching a model (4xx) have no rows: they are counted in the metrics.

The request thread only appends references to a buffer; a background thread turns them into a
table and writes a file every ``flush_seconds`` or ``flush_rows`` rows, and at ``close()`` (the
server calls it on SIGTERM after draining in-flight requests). A file appears atomically (written
to a hidden temporary name, then renamed), so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger("agentops_pipelines.serving.inference_log")

SCHEMA: dict[str, str] = {
    "request_id": "string",
    "row": "int32",
    "timestamp": "timestamp[us, tz=UTC]",
    "environment": "string",
    "model_version": "string",
    "role": "string",
    "status": "int16",
    "error_code": "string",
    "customer_id": "string",
    "text": "string",
    "tool": "string",
    "confidence": "double",
    "escalated": "bool",
    "latency_ms": "double",
}
BASE_COLUMNS = tuple(SCHEMA)


@dataclass(frozen=True)
class LogEntry:
    """One request, as the request thread hands it over (no copying, no conversion)."""

    received: float  # time.time() when the request arrived
    request_id: str
    role: str
    version: str
    status: int
    error_code: str | None
    latency_ms: float
    requests: pd.DataFrame
    predictions: Any = None  # a DataFrame with tool / confidence / escalated, or None
    features: pd.DataFrame | None = None

    @property
    def rows(self) -> int:
        return len(self.requests)


class InferenceLogWriter:
    """Buffers ``LogEntry`` objects and writes them as Parquet from a background thread."""

    def __init__(
        self,
        folder: str | os.PathLike,
        environment: str,
        flush_seconds: float = 10.0,
        flush_rows: int = 5000,
        max_buffered_rows: int = 500_000,
        on_rows: Callable[[str, int], None] | None = None,
    ):
        self.folder = Path(folder)
        self.environment = environment
        self.flush_seconds = flush_seconds
        self.flush_rows = max(1, flush_rows)
        self.max_buffered_rows = max_buffered_rows
        self._on_rows = on_rows or (lambda result, n: None)
        self._entries: list[LogEntry] = []
        self._rows = 0
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._seq = 0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self.files_written = 0

    def start(self) -> InferenceLogWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()
        return self

    def append(self, entry: LogEntry) -> None:
        n = entry.rows
        if n == 0:
            return
        with self._cond:
            if not self._closed:
                if self._rows + n > self.max_buffered_rows:
                    dropped = True
                else:
                    dropped = False
                    self._entries.append(entry)
                    self._rows += n
                    if self._rows >= self.flush_rows:
                        self._cond.notify()
                if not dropped:
                    return
        if self._closed:  # a request that finished after close(): write it on its own
            self._write([entry])
            return
        self._on_rows("dropped", n)
        logger.warning("inference log buffer full (%d rows): dropped %d rows", self._rows, n)

    def flush(self) -> list[Path]:
        """Write what is buffered now; returns the files written."""
        with self._cond:
            entries, self._entries, self._rows = self._entries, [], 0
        return self._write(entries)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after a last flush; later appends are written synchronously."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("inference log thread did not stop within %.0fs", timeout)
        with self._cond:
            self._closed = True
        self.flush()

    # -- internals

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            with self._cond:
                while not self._closing and self._rows < self.flush_rows:
                    remaining = last + self.flush_seconds - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                closing = self._closing
            last = time.monotonic()
            try:
                self.flush()
            except Exception:  # never let the thread die: the next flush may succeed
                logger.exception("inference log flush failed")
            if closing:
                return

    def _write(self, entries: list[LogEntry]) -> list[Path]:
        if not entries:
            return []
        by_date: dict[str, list[LogEntry]] = {}
        for e in entries:
            day = datetime.fromtimestamp(e.received, UTC).date().isoformat()
            by_date.setdefault(day, []).append(e)
        written = []
        with self._write_lock:
            for day, group in sorted(by_date.items()):
                n = sum(e.rows for e in group)
                try:
                    written.append(self._write_file(day, group))
                    self._on_rows("written", n)
                except Exception:
                    logger.exception("could not write %d inference-log rows for %s", n, day)
                    self._on_rows("dropped", n)
        return written

    def _write_file(self, day: str, entries: list[LogEntry]) -> Path:
        import pyarrow.parquet as pq

        table = to_table(entries, self.environment)
        folder = self.folder / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            path = folder / f"{self._pid}-{self._seq:06d}.parquet"
            self._seq += 1
            if not path.exists():  # a previous process with the same pid wrote here
                break
        tmp = folder / f".{path.name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        self.files_written += 1
        return path


def _column(frame: Any, name: str, n: int) -> list:
    if isinstance(frame, pd.DataFrame) and name in frame.columns:
        return frame[name].tolist()
    return [None] * n


def to_table(entries: list[LogEntry], environment: str):
    """The entries as a ``pyarrow.Table`` with ``SCHEMA`` columns, then the feature columns."""
    import pyarrow as pa

    cols: dict[str, list] = {name: [] for name in BASE_COLUMNS if name != "environment"}
    features: dict[str, list] = {}
    total = 0
    for e in entries:
        n = e.rows
        cols["request_id"] += [e.request_id] * n
        cols["row"] += range(n)
        cols["timestamp"] += [int(e.received * 1_000_000)] * n
        cols["model_version"] += [e.version] * n
        cols["role"] += [e.role] * n
        cols["status"] += [e.status] * n
        cols["error_code"] += [e.error_code] * n
        cols["latency_ms"] += [e.latency_ms] * n
        cols["customer_id"] += [
            None if _null(v) else str(v) for v in _column(e.requests, "customer_id", n)
        ]
        cols["text"] += [None if _null(v) else str(v) for v in _column(e.requests, "text", n)]
        predictions = e.predictions if isinstance(e.predictions, pd.DataFrame) else None
        if predictions is not None and len(predictions) != n:
            predictions = None
        cols["tool"] += [None if _null(v) else str(v) for v in _column(predictions, "tool", n)]
        cols["confidence"] += _column(predictions, "confidence", n)
        cols["escalated"] += [None if _null(v) else bool(v) for v in _column(predictions, "escalated", n)]
        if isinstance(e.features, pd.DataFrame) and len(e.features) == n:
            for name in e.features.columns:
                if name in SCHEMA:
                    continue
                values = features.setdefault(str(name), [None] * total)
                values += e.features[name].tolist()
        total += n
        for values in features.values():
            values += [None] * (total - len(values))
    arrays = {
        "request_id": pa.array(cols["request_id"], pa.string()),
        "row": pa.array(cols["row"], pa.int32()),
        "timestamp": pa.array(cols["timestamp"], pa.timestamp("us", tz="UTC")),
        "environment": pa.array([environment] * total, pa.string()),
        "model_version": pa.array(cols["model_version"], pa.string()),
        "role": pa.array(cols["role"], pa.string()),
        "status": pa.array(cols["status"], pa.int16()),
        "error_code": pa.array(cols["error_code"], pa.string()),
        "customer_id": pa.array(cols["customer_id"], pa.string()),
        "text": pa.array(cols["text"], pa.string()),
        "tool": pa.array(cols["tool"], pa.string()),
        "confidence": _float_array(cols["confidence"]),
        "escalated": pa.array(cols["escalated"], pa.bool_()),
        "latency_ms": pa.array(cols["latency_ms"], pa.float64()),
    }
    for name, values in features.items():
        arrays[name] = _any_array(values)
    return pa.table(arrays)


def _null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _float_array(values: list):
    import pyarrow as pa

    try:
        return pa.array(values, pa.float64(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        return pa.array([_to_float(v) for v in values], pa.float64(), from_pandas=True)


def _to_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _any_array(values: list):
    """Let Arrow infer a feature's type; a column of mixed types is kept as strings."""
    import pyarrow as pa

    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array([None if _null(v) else str(v) for v in values], pa.string())


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def read_inference_log(
    folder: str | os.PathLike, start: date | str, end: date | str
) -> pd.DataFrame:
    """All rows logged from ``start`` to ``end`` (UTC dates, both included), oldest first.

    Files from several processes and model versions are concatenated; a feature missing from
    some files is null there. With nothing logged, an empty frame with the ``SCHEMA`` columns.
    """
    import pyarrow.parquet as pq

    first, last = _as_date(start), _as_date(end)
    root = Path(folder)
    frames = []
    if root.is_dir():
        for part in sorted(root.glob("date=*")):
            try:
                day = date.fromisoformat(part.name.removeprefix("date="))
            except ValueError:
                continue
            if not (first <= day <= last) or not part.is_dir():
                continue
            for f in sorted(part.glob("*.parquet")):
                if not f.name.startswith("."):
                    frames.append(pq.read_table(f).to_pandas())
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty_frame()
    out = pd.concat(frames, ignore_index=True, sort=False)
    return out.sort_values(["timestamp", "request_id", "row"], kind="stable").reset_index(drop=True)


def _empty_frame() -> pd.DataFrame:
    return to_table([], "").to_pandas()
