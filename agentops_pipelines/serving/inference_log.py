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

The request thread only appends references to a buffer; a background thread takes them every
quarter second (or 16 rows). With ``process=True`` (the serving process) it ships them as plain
row dicts through a pipe to a child process that converts them to Arrow and writes: the
conversion (C calls that hold the GIL for ms at a time) no longer competes with the event loop.
The child writes a file every ``flush_seconds`` (default 1) or ``flush_rows`` rows, at
``close()`` (the server calls it on SIGTERM after draining in-flight requests), and when the
serving process dies (the pipe ends): a ``kill -9`` loses at most the quarter second not shipped
yet. If the child dies, the thread converts and writes itself (``process=False`` does that from
the start). A row Arrow cannot take (a lone surrogate in a text) is cleaned (made valid UTF-8) or
dropped on its own and counted (``cleaned``, ``dropped``), never its batch. A file appears
atomically (written to a hidden temporary name, then renamed), so a reader never sees half a file.

**Compaction.** A process writes about one file a second: 86,400 small files a day per process,
and reading a day for drift then costs one Parquet open per file. ``compact_day`` merges a day's
files into one ``compacted-*.parquet`` file whose footer lists the files it replaces
(``agentops.replaces``), then deletes them. Readers skip a file a compacted file replaces, so a
crash between the new file's rename and the deletions double-counts nothing, and the next
compaction deletes the leftovers. Only files older than a grace period (``COMPACT_GRACE_SECONDS``)
are merged, under an exclusive lock per day (processes and pods share the folder). The writer
compacts the days before today on start and every hour (``compact_every``, its own thread:
Arrow's reads and writes release the GIL); ``compact_inference_log`` does the same for a folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
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
COMPACTED_PREFIX = "compacted-"
REPLACES_KEY = b"agentops.replaces"  # Parquet footer metadata of a compacted file
COMPACT_GRACE_SECONDS = 600.0
CHILD_START_SECONDS = 60.0  # close() waits this long for a writer process still starting  # a file younger than this may still have a neighbour coming


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
    """Buffers ``LogEntry`` objects and writes them as Parquet from a background thread.

    The thread converts what was appended to Arrow as soon as ``convert_rows`` rows wait, or every
    ``convert_seconds`` (small, even slices of work: converting costs ~70 us of GIL a request, so a
    second of traffic at 200 requests/s converted at once stalled every request for ~15 ms and
    owned the p99: 19 ms, against 7 ms in slices of 16), and writes one file per UTC date every
    ``flush_seconds`` or ``flush_rows`` rows, whichever comes first, and on ``close()``.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        environment: str,
        flush_seconds: float = 1.0,
        flush_rows: int = 50_000,
        convert_seconds: float = 0.25,
        convert_rows: int = 16,
        max_buffered_rows: int = 500_000,
        on_rows: Callable[[str, int], None] | None = None,
        compact_every: float = 3600.0,
        process: bool = False,
    ):
        self.folder = Path(folder)
        self.environment = environment
        self.flush_seconds = flush_seconds
        self.flush_rows = max(1, flush_rows)
        self.convert_seconds = max(0.01, min(convert_seconds, flush_seconds))
        self.convert_rows = max(1, convert_rows)
        self.max_buffered_rows = max_buffered_rows
        self._on_rows = on_rows or (lambda result, n: None)
        self._entries: list[LogEntry] = []  # appended, not converted yet
        self._woken = False  # the thread was notified and has not taken the entries yet
        self._rows = 0
        self._tables: dict[str, list[Any]] = {}  # UTC date -> converted tables, not written yet
        self._table_rows = 0
        self._oldest: float | None = None  # monotonic time of the oldest unwritten table
        self._cond = threading.Condition()
        self._io_lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._seq = 0
        # Files are named by writer: host (the pod, on Kubernetes, where many pods share one
        # folder and their pids repeat) and pid.
        self._writer = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', socket.gethostname())}-{os.getpid()}"
        self._thread: threading.Thread | None = None
        self.files_written = 0
        self.compact_every = compact_every  # seconds; 0: never compact
        self._compactor: threading.Thread | None = None
        self._stop = threading.Event()
        # process=True: a child process converts to Arrow, writes and compacts (``_writer_main``);
        # this process only ships plain rows to it. Falls back to the thread if the child dies.
        self.process = process
        self._jobs: Any = None  # Connection to the child
        self._child: Any = None
        self._results_thread: threading.Thread | None = None
        self._child_ready = threading.Event()  # the child has imported Arrow and waits for rows

    def start(self) -> InferenceLogWriter:
        # Import now: loading Arrow's shared libraries holds the GIL for ~0.2 s, which would
        # stall every request in flight if it happened at the first flush.
        import pyarrow.parquet  # noqa: F401

        self.folder.mkdir(parents=True, exist_ok=True)
        if self.process:
            self._start_child()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()
        if self.compact_every > 0 and self._child is None:
            self._compactor = threading.Thread(target=self._compact_loop,
                                               name="inference-log-compaction", daemon=True)  # fmt: skip
            self._compactor.start()
        return self

    def _start_child(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        jobs_read, self._jobs = ctx.Pipe(duplex=False)
        results, results_write = ctx.Pipe(duplex=False)
        self._child = ctx.Process(
            target=_writer_main, name="agentops-inference-log", daemon=True,
            args=(jobs_read, results_write, str(self.folder), self.environment,
                  self.flush_seconds, self.flush_rows, self._writer, self.compact_every,
                  logging.getLogger().getEffectiveLevel()),
        )  # fmt: skip
        self._child.start()
        jobs_read.close()
        results_write.close()
        self._results_thread = threading.Thread(target=self._read_results, args=(results,),
                                                name="inference-log-results", daemon=True)  # fmt: skip
        self._results_thread.start()

    def _read_results(self, results: Any) -> None:
        """The child's counts (written, cleaned, dropped rows; files) into this process's."""
        while True:
            try:
                kind, n = results.recv()
            except (EOFError, OSError):
                return
            if kind == "ready":
                self._child_ready.set()
            elif kind == "file":
                self.files_written += n
            else:
                self._on_rows(kind, n)

    def _ship(self, entries: list[LogEntry], final: bool = False) -> bool:
        """Send ``entries`` (as plain rows) to the child; False when it is gone (the caller
        writes them itself)."""
        try:
            if entries:
                self._jobs.send([_plain_entry(e) for e in entries])
            if final:
                self._jobs.send(None)
            return True
        except (OSError, ValueError):  # BrokenPipeError: the child died
            if self._child is not None:
                logger.error("the inference-log process is gone (exit code %s): writing here",
                             self._child.exitcode)  # fmt: skip
            self._child = None
            return False

    def _compact_loop(self) -> None:
        while not self._stop.is_set():
            try:
                compact_inference_log(self.folder)
            except Exception:  # a full disk today must not stop tomorrow's compaction
                logger.exception("inference log compaction failed")
            self._stop.wait(self.compact_every)

    def append(self, entry: LogEntry) -> None:
        """Called on the request thread: a list append under a lock, nothing else."""
        n = entry.rows
        if n == 0:
            return
        with self._cond:
            if self._closed:
                late = True
            elif self._rows + self._table_rows + n > self.max_buffered_rows:
                late = False
            else:
                self._entries.append(entry)
                self._rows += n
                if not self._woken and (
                    self._rows >= self.convert_rows
                    or self._rows + self._table_rows >= self.flush_rows
                ):
                    # Once per batch of entries: waking a thread that is already awake costs
                    # the request thread a lock round trip per request (4% of its CPU at 500/s).
                    self._woken = True
                    self._cond.notify()
                return
        if late:  # a request that finished after close(): write it on its own
            with self._io_lock:
                self._convert([entry])
                self._write_tables()
            return
        self._on_rows("dropped", n)
        logger.warning("inference log buffer full (%d rows): dropped %d rows", self._rows, n)

    def flush(self) -> list[Path]:
        """Convert and write everything buffered now; returns the files written."""
        with self._io_lock:
            self._convert(self._take())
            return self._write_tables()

    def close(self, timeout: float = 10.0) -> None:
        """A last flush, then stop the thread (and the child, which writes what it holds);
        later appends are written synchronously."""
        self._stop.set()
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("inference log thread did not stop within %.0fs", timeout)
        with self._cond:
            self._closed = True
        child = self._child
        if child is not None:
            self._ship(self._take(), final=True)
            # A child still starting (imports take seconds on a loaded machine) holds rows
            # already shipped: let it start before the flush's own deadline counts.
            if not self._child_ready.wait(CHILD_START_SECONDS):
                logger.warning("the inference-log process did not start within %.0fs",
                               CHILD_START_SECONDS)  # fmt: skip
            child.join(timeout)
            if child.is_alive():
                logger.warning("the inference-log process did not stop within %.0fs", timeout)
                child.terminate()
            if self._results_thread is not None:
                self._results_thread.join(2.0)
            self._child = None
        self.flush()

    # -- internals

    def _take(self) -> list[LogEntry]:
        with self._cond:
            entries, self._entries, self._rows = self._entries, [], 0
            self._woken = False
        return entries

    def _run(self) -> None:
        while True:
            with self._cond:
                if (
                    not self._closing
                    and self._rows < self.convert_rows
                    and self._rows + self._table_rows < self.flush_rows
                ):
                    self._cond.wait(self.convert_seconds)
                closing = self._closing
            if self._child is not None:
                if self._ship(self._take()):
                    if closing:
                        return  # close() sends the end to the child
                    continue
            try:
                with self._io_lock:
                    self._convert(self._take())
                    due = self._oldest is not None and (
                        time.monotonic() - self._oldest >= self.flush_seconds
                    )
                    if closing or due or self._table_rows >= self.flush_rows:
                        self._write_tables()
            except Exception:  # never let the thread die: the next round may succeed
                logger.exception("inference log flush failed")
            if closing:
                return

    def _convert(self, entries: list[LogEntry]) -> None:
        """Entries -> one Arrow table per UTC date, kept until written (caller holds _io_lock)."""
        if not entries:
            return
        by_date: dict[str, list[LogEntry]] = {}
        for e in entries:
            day = datetime.fromtimestamp(e.received, UTC).date().isoformat()
            by_date.setdefault(day, []).append(e)
        for day, group in by_date.items():
            try:
                tables = [to_table(group, self.environment)]
            except Exception:  # one bad row must not cost the others theirs: entry by entry
                tables = self._convert_one_by_one(group)
            tables = [t for t in tables if t is not None]
            if not tables:
                continue
            self._tables.setdefault(day, []).extend(tables)
            self._table_rows += sum(t.num_rows for t in tables)
            if self._oldest is None:
                self._oldest = time.monotonic()

    def _convert_one_by_one(self, group: list[LogEntry]) -> list[Any]:
        """Each entry alone; one that still fails is cleaned (strings made valid UTF-8) and
        counted ``cleaned``, or dropped alone and counted ``dropped``."""
        tables = []
        for entry in group:
            try:
                tables.append(to_table([entry], self.environment))
                continue
            except Exception:
                pass
            try:
                tables.append(to_table([_cleaned(entry)], self.environment))
                self._on_rows("cleaned", entry.rows)
                logger.warning("inference log: request %s cleaned (invalid text)", entry.request_id)
            except Exception:
                logger.exception("inference log: request %s dropped", entry.request_id)
                self._on_rows("dropped", entry.rows)
        return tables

    def _write_tables(self) -> list[Path]:
        """One file per date from the converted tables (caller holds _io_lock)."""
        import pyarrow as pa

        tables, self._tables, self._table_rows, self._oldest = self._tables, {}, 0, None
        written = []
        for day, parts in sorted(tables.items()):
            n = sum(t.num_rows for t in parts)
            try:
                table = pa.concat_tables(parts, promote_options="permissive")
                written.append(self._write_file(day, table))
                self._on_rows("written", n)
            except Exception:
                logger.exception("could not write %d inference-log rows for %s", n, day)
                self._on_rows("dropped", n)
        return written

    def _write_file(self, day: str, table: Any) -> Path:
        import pyarrow.parquet as pq

        folder = self.folder / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            path = folder / f"{self._writer}-{self._seq:06d}.parquet"
            self._seq += 1
            if not path.exists():  # a previous process with the same host and pid wrote here
                break
        tmp = folder / f".{path.name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        self.files_written += 1
        return path


def _plain_entry(e: LogEntry) -> LogEntry:
    """``e`` with its frames as row dicts (batching.plain_rows): cheap to pickle, no pandas."""
    from agentops_pipelines.serving.batching import plain_rows

    return LogEntry(e.received, e.request_id, e.role, e.version, e.status, e.error_code,
                    e.latency_ms, plain_rows(e.requests), plain_rows(e.predictions),
                    plain_rows(e.features))  # fmt: skip


def _writer_main(jobs, results, folder, environment, flush_seconds, flush_rows, name,
                 compact_every, log_level) -> None:  # fmt: skip
    """The inference-log process: converts what the serving process ships to Arrow, writes a
    file every ``flush_seconds``, compacts past days every ``compact_every`` seconds. When the
    serving process dies (the pipe ends) it writes what it holds and exits."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s [inference log]: %(message)s"
    )

    def report(kind: str, n: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            results.send((kind, n))

    writer = InferenceLogWriter(folder, environment, flush_seconds=flush_seconds,
                                flush_rows=flush_rows, on_rows=report, compact_every=0)  # fmt: skip
    writer._writer = name  # files named after the serving process (host and pid)
    writer.folder.mkdir(parents=True, exist_ok=True)
    report("ready", 0)
    next_compaction = time.monotonic() if compact_every > 0 else float("inf")

    def write() -> None:
        files = writer.files_written
        writer._write_tables()
        report("file", writer.files_written - files)

    # Entries wait here as shipped and are converted once per file: converting each quarter
    # second's batch on its own cost a fixed Arrow overhead per batch (more CPU per request
    # than the serving process saved, below saturation).
    pending: list[LogEntry] = []
    pending_rows, since = 0, None
    while True:
        now = time.monotonic()
        due = since + flush_seconds if since is not None else now + 1.0
        try:
            ready = jobs.poll(max(0.0, min(due, next_compaction) - now))
            batch = jobs.recv() if ready else []
        except (EOFError, OSError):
            batch = None  # the serving process is gone
        if batch is None:
            break
        pending.extend(batch)
        pending_rows += sum(e.rows for e in batch)
        if batch and since is None:
            since = time.monotonic()
        try:
            now = time.monotonic()
            if pending and (pending_rows >= flush_rows or now - since >= flush_seconds):
                entries, pending, pending_rows, since = pending, [], 0, None
                writer._convert(entries)
                write()
            if now >= next_compaction:
                next_compaction = now + compact_every
                compact_inference_log(folder)
        except Exception:  # never let the process die: the next round may succeed
            logger.exception("inference log round failed")
    try:
        writer._convert(pending)
        write()
    finally:
        results.close()


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate -> "?"
    return value


def _cleaned_frame(frame: Any) -> Any:
    if isinstance(frame, list):  # row dicts
        return [{k: _clean(v) for k, v in r.items()} if isinstance(r, dict) else _clean(r)
                for r in frame]  # fmt: skip
    if not isinstance(frame, pd.DataFrame):
        return frame
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = [_clean(v) for v in out[c].tolist()]
    return out


def _cleaned(e: LogEntry) -> LogEntry:
    return LogEntry(e.received, _clean(e.request_id), e.role, e.version, e.status, e.error_code,
                    e.latency_ms, _cleaned_frame(e.requests), _cleaned_frame(e.predictions),
                    _cleaned_frame(e.features))  # fmt: skip


def _values(frame: Any, n: int) -> tuple[tuple[str, ...], Any]:
    """(column names, an object ndarray of the values) of a frame with ``n`` rows, else empty."""
    import numpy as np

    if isinstance(frame, pd.DataFrame) and len(frame) == n:
        return tuple(str(c) for c in frame.columns), frame.to_numpy(dtype=object)
    if isinstance(frame, list) and n and len(frame) == n and all(isinstance(r, dict) for r in frame):
        keys = tuple(frame[0])  # row dicts (batching.plain_rows): the same keys in every row
        values = np.empty((n, len(keys)), dtype=object)
        for i, row in enumerate(frame):
            for j, key in enumerate(keys):
                values[i, j] = row.get(key)  # one by one: a value may itself be a list
        return tuple(str(k) for k in keys), values
    return (), np.empty((n, 0), dtype=object)


def to_table(entries: list[LogEntry], environment: str):
    """The entries as a ``pyarrow.Table`` with ``SCHEMA`` columns, then the feature columns.

    Each frame is read once as a NumPy array (~7 us) and stacked with the others of the same
    columns: reading columns of fresh DataFrames one by one costs ~30 us each, and 16 of them per
    request would cost more than everything else the log does.
    """
    import pyarrow as pa

    groups: dict[tuple, list] = {}
    for e in entries:
        n = e.rows
        (rc, rv), (pc, pv), (fc, fv) = (
            _values(e.requests, n), _values(e.predictions, n), _values(e.features, n)
        )  # fmt: skip
        groups.setdefault((rc, pc, fc), []).append((e, rv, pv, fv))
    if not groups:
        return _group_table(((), (), ()), [], environment)
    tables = [_group_table(key, items, environment) for key, items in groups.items()]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def _group_table(key: tuple, items: list, environment: str):
    import numpy as np
    import pyarrow as pa

    request_cols, prediction_cols, feature_cols = key
    counts = [e.rows for e, *_ in items]
    total = sum(counts)

    def stack(i: int, columns: tuple) -> Any:
        if not items:
            return np.empty((0, len(columns)), dtype=object)
        return np.concatenate([item[i] for item in items]) if len(items) > 1 else items[0][i]

    def column(values: Any, columns: tuple, name: str) -> list:
        return values[:, columns.index(name)].tolist() if name in columns else [None] * total

    def repeat(values: list, kind: Any) -> Any:
        return pa.array(np.repeat(np.asarray(values, dtype=object), counts), kind)

    def strings(values: list) -> Any:
        return pa.array([None if _null(v) else str(v) for v in values], pa.string())

    entries = [e for e, *_ in items]
    requests, predictions, features = (
        stack(1, request_cols), stack(2, prediction_cols), stack(3, feature_cols)
    )  # fmt: skip
    micros = np.asarray([int(e.received * 1_000_000) for e in entries], dtype=np.int64)
    rows = [np.arange(n, dtype=np.int32) for n in counts]
    arrays = {
        "request_id": repeat([e.request_id for e in entries], pa.string()),
        "row": pa.array(np.concatenate(rows) if rows else np.zeros(0, np.int32), pa.int32()),
        "timestamp": pa.array(np.repeat(micros, counts), pa.timestamp("us", tz="UTC")),
        "environment": pa.array([environment] * total, pa.string()),
        "model_version": repeat([e.version for e in entries], pa.string()),
        "role": repeat([e.role for e in entries], pa.string()),
        "status": repeat([e.status for e in entries], pa.int16()),
        "error_code": repeat([e.error_code for e in entries], pa.string()),
        "customer_id": strings(column(requests, request_cols, "customer_id")),
        "text": strings(column(requests, request_cols, "text")),
        "tool": strings(column(predictions, prediction_cols, "tool")),
        "confidence": _float_array(column(predictions, prediction_cols, "confidence")),
        "escalated": pa.array(
            [
                None if _null(v) else bool(v)
                for v in column(predictions, prediction_cols, "escalated")
            ],
            pa.bool_(),
        ),
        "latency_ms": repeat([e.latency_ms for e in entries], pa.float64()),
    }
    for j, name in enumerate(feature_cols):
        if name not in SCHEMA:
            arrays[name] = _any_array(features[:, j].tolist())
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


def _replaced(part: Path) -> set[str]:
    """The names of the files a compacted file in ``part`` replaces (read from footers only)."""
    import pyarrow.parquet as pq

    out: set[str] = set()
    for f in part.glob(f"{COMPACTED_PREFIX}*.parquet"):
        try:
            meta = pq.read_schema(f).metadata or {}
        except Exception:  # unreadable: its sources stay visible, nothing is lost
            logger.warning("cannot read the footer of %s", f, exc_info=True)
            continue
        out.update(n for n in meta.get(REPLACES_KEY, b"").decode().split("\n") if n)
    return out


def day_files(part: Path) -> list[Path]:
    """The Parquet files of one ``date=`` folder a reader takes: not hidden (being written), not
    replaced by a compacted file."""
    replaced = _replaced(part)
    return [
        f for f in sorted(part.glob("*.parquet"))
        if not f.name.startswith(".") and f.name not in replaced
    ]  # fmt: skip


def compact_day(part: str | os.PathLike, grace_seconds: float = COMPACT_GRACE_SECONDS) -> Path | None:
    """Merge the files of one ``date=`` folder older than ``grace_seconds`` into one compacted
    file; None when there was nothing to merge or another process holds the day's lock.

    The new file lists the files it replaces in its footer and appears atomically; the replaced
    files are deleted after it (a crash in between leaves them, skipped by readers)."""
    import fcntl

    import pyarrow as pa
    import pyarrow.parquet as pq

    part = Path(part)
    now = time.time()
    if sum(1 for f in day_files(part) if now - f.stat().st_mtime >= grace_seconds) < 2:
        return None  # nothing to merge: no lock file left behind in a folder that needs none
    with open(part / ".compact.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None
        replaced = _replaced(part)
        for leftover in (f for f in part.glob("*.parquet") if f.name in replaced):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()  # a previous compaction stopped before deleting it
        now = time.time()
        sources = [f for f in day_files(part) if now - f.stat().st_mtime >= grace_seconds]
        if len(sources) < 2:
            return None
        tables = [pq.read_table(f) for f in sources]
        table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables],
                                 promote_options="permissive")  # fmt: skip
        table = table.replace_schema_metadata({REPLACES_KEY: "\n".join(f.name for f in sources)})
        writer = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
        path = part / f"{COMPACTED_PREFIX}{writer}-{os.getpid()}-{time.time_ns()}.parquet"
        tmp = part / f".{path.name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        for f in sources:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        logger.info("compacted %d inference-log files (%d rows) into %s", len(sources),
                    table.num_rows, path)  # fmt: skip
        return path


def compact_inference_log(
    folder: str | os.PathLike, before: date | str | None = None,
    grace_seconds: float = COMPACT_GRACE_SECONDS,
) -> list[Path]:
    """Compact every day before ``before`` (default: today, UTC); returns the files written."""
    last = _as_date(before) if before is not None else datetime.now(UTC).date()
    written = []
    root = Path(folder)
    for part in sorted(root.glob("date=*")) if root.is_dir() else ():
        try:
            day = date.fromisoformat(part.name.removeprefix("date="))
        except ValueError:
            continue
        if day < last and part.is_dir() and (path := compact_day(part, grace_seconds)):
            written.append(path)
    return written


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
            for f in day_files(part):
                frames.append(pq.read_table(f).to_pandas())
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty_frame()
    out = pd.concat(frames, ignore_index=True, sort=False)
    return out.sort_values(["timestamp", "request_id", "row"], kind="stable").reset_index(drop=True)


def _empty_frame() -> pd.DataFrame:
    return to_table([], "").to_pandas()
