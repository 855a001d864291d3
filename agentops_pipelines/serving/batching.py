"""Adaptive micro-batching: one thread per served model, merging the requests that wait.

Why: a scikit-learn router costs about the same for 1 row as for 16 (the support-desk model:
~8 ms either way on this machine, almost all per-call overhead), and the GIL lets one process run
one predict at a time. Predicting each request on its own thread caps a process at ~100 requests/s
with queueing delays in seconds beyond; predicting whatever is waiting as one frame keeps up with
hundreds per second at the latency of about two predict calls. Nothing waits on purpose: a lone
request is predicted at once, so low traffic pays only a thread hand-off (~0.1 ms).

Rules that keep a batched answer identical to an unbatched one:

- only requests with the same columns (in the same order) are merged, so a request that brings its
  own feature values never lends them to (or takes them from) another;
- a merged predict that raises is retried request by request, so only the bad request fails;
- a model whose output cannot be split back by rows (not one row per input row, or not a
  DataFrame, Series, array or list) is marked unbatchable and predicted request by request;
- a batch never exceeds ``max_rows`` rows nor ``max_chars`` characters of text (the model's cost
  grows with the text it reads) unless a single request is larger;
- the model's result is a tuple whose first two items (predictions, features) are split back by
  rows; further items (the model's step timings) are shared by the requests of the batch.

Per-request pandas work is what bounded throughput (a profile at saturation: building, merging
and slicing one-row DataFrames cost more CPU than the model), so a batch is merged from each
request's values (one NumPy read per request, one DataFrame built per batch, instead of
``pd.concat``), and with ``plain=True`` a DataFrame result is read once per batch into plain row
dicts (``NaN`` -> ``None``) that each request gets a list slice of, instead of an ``iloc`` slice
per request. The JSON answer, the metrics and the inference log then read lists, not DataFrames.

``predict`` blocks the calling thread; ``submit`` takes a callback instead, so no thread waits per
request. ``inline=True`` starts no thread: the owner calls ``run_pending`` (the asyncio server does,
on its event loop, once the requests that arrived together are parsed). One thread then does all
the Python work, and nothing waits for the GIL: with a predict thread, every system call of the
event loop (a socket read or write) handed the GIL to the predict thread, and getting it back took
up to the switch interval (throughput stalled near 450 requests/s with the server at 0.7 cores).

A retired batcher (its model swapped out) finishes what is queued, then its thread exits; a
request that reaches it after that predicts on its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pandas as pd

logger = logging.getLogger("agentops_pipelines.serving.batching")

Infer = Callable[[pd.DataFrame], tuple]  # frame -> (predictions, features or None, ...)
Done = Callable[[tuple | None, BaseException | None], None]


class Overloaded(Exception):
    """More rows are queued than ``max_queue_rows``: shed load rather than queue for seconds."""


class _Item:
    __slots__ = ("frame", "key", "chars", "callback", "done", "result", "error")

    def __init__(self, frame: pd.DataFrame, chars: int = 0, callback: Done | None = None):
        self.frame = frame
        self.key = tuple(frame.columns)
        self.chars = chars
        self.callback = callback
        self.done = threading.Event() if callback is None else None
        self.result: tuple | None = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        if self.callback is not None:
            try:
                self.callback(self.result, self.error)
            except Exception:
                logger.exception("a batch callback failed")
        else:
            self.done.set()

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


class Batcher:
    def __init__(
        self,
        infer: Infer,
        max_rows: int = 64,
        max_queue_rows: int = 4096,
        max_chars: int = 65_536,
        timeout_s: float = 30.0,
        name: str = "model",
        inline: bool = False,
        plain: bool = False,
    ):
        self._infer = infer
        self.max_rows = max(1, max_rows)
        self.max_queue_rows = max_queue_rows
        self.max_chars = max(1, max_chars)
        self.timeout_s = timeout_s
        self.batchable = True
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._retired = False
        self._closed = False
        self.batches = 0
        self.items = 0
        self.inline = inline
        self.plain = plain  # DataFrame results -> lists of row dicts (see the module's docstring)
        self.scheduled = False  # inline: a ``run_pending`` call is due on the owner's loop
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        if not inline:
            self._thread.start()

    def predict(self, frame: pd.DataFrame, chars: int = 0) -> tuple:
        """The model's result for ``frame``, predicted on the batcher's thread."""
        item = _Item(frame, chars)
        if not self._enqueue(item):
            return self._infer(frame)
        if not item.done.wait(self.timeout_s):
            raise TimeoutError(f"no prediction within {self.timeout_s:.0f}s")
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def submit(self, frame: pd.DataFrame, callback: Done, chars: int = 0) -> bool:
        """Queue ``frame``; ``callback(result, error)`` is called on the batcher's thread. False
        when the batcher is retired (the caller predicts elsewhere); ``Overloaded`` when full."""
        return self._enqueue(_Item(frame, chars, callback))

    def _enqueue(self, item: _Item) -> bool:
        n = len(item.frame)
        with self._cond:
            if self._closed:
                return False
            if self._queued_rows and self._queued_rows + n > self.max_queue_rows:
                raise Overloaded(
                    f"{self._queued_rows} rows are waiting to be predicted (limit "
                    f"{self.max_queue_rows})"
                )
            self._pending.append(item)
            self._queued_rows += n
            self._cond.notify()
        return True

    def run_pending(self) -> bool:
        """Inline mode: predict one batch of what is queued on the calling thread; True if more
        is waiting."""
        with self._cond:
            if not self._pending:
                return False
            batch = self._take()
        self._predict_batch(batch)
        with self._cond:
            return bool(self._pending)

    def retire(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._retired = True
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() if not self.inline else not self._retired

    @property
    def queued_rows(self) -> int:
        """Rows submitted and not yet taken into a batch: what ``max_queue_rows`` caps."""
        with self._cond:
            return self._queued_rows

    # -- the thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._retired:
                    self._cond.wait()
                if not self._pending:
                    self._closed = True
                    return
                batch = self._take()
            self._predict_batch(batch)

    def _predict_batch(self, batch: list[_Item]) -> None:
        """Predict ``batch``; a failure finishes every waiting request with the error."""
        try:
            self._predict_group(batch)
        except BaseException as e:  # a bug here must not strand the waiting requests
            logger.exception("batch failed")
            for item in batch:
                if not item.finished:
                    item.error = e
                    item.finish()

    def _take(self) -> list[_Item]:
        """The oldest request and the queued requests with its columns, up to ``max_rows`` rows
        and ``max_chars`` characters."""
        first = self._pending.popleft()
        batch, rows, chars = [first], len(first.frame), first.chars
        if self.batchable and self._pending:
            keep: deque[_Item] = deque()
            while self._pending:
                item = self._pending.popleft()
                n = len(item.frame)
                if (
                    item.key == first.key
                    and rows + n <= self.max_rows
                    and chars + item.chars <= self.max_chars
                ):
                    batch.append(item)
                    rows += n
                    chars += item.chars
                else:
                    keep.append(item)
            self._pending = keep
        self._queued_rows -= rows
        return batch

    def _predict_group(self, batch: list[_Item]) -> None:
        self.batches += 1
        self.items += len(batch)
        if len(batch) == 1:
            self._predict_one(batch[0])
            return
        frame = merged(batch[0].key, [item.frame for item in batch])
        try:
            result = self._infer(frame)
            predictions, features = result[0], result[1]
        except Exception:
            for item in batch:  # find the request that fails; the others get their answers
                self._predict_one(item)
            return
        total = len(frame)
        if _length(predictions) != total or (features is not None and _length(features) != total):
            self.batchable = False
            logger.warning("the model's output cannot be split by rows: batching is off")
            for item in batch:
                self._predict_one(item)
            return
        if self.plain:
            predictions, features = plain_rows(predictions), plain_rows(features)
        start = 0
        for item in batch:
            end = start + len(item.frame)
            item.result = (_rows(predictions, start, end), _rows(features, start, end), *result[2:])
            item.finish()
            start = end

    def _predict_one(self, item: _Item) -> None:
        try:
            result = self._infer(item.frame)
            if self.plain and isinstance(result, tuple) and len(result) >= 2:
                result = (plain_rows(result[0]), plain_rows(result[1]), *result[2:])
            item.result = result
        except Exception as e:
            item.error = e
        item.finish()


def merged(columns: tuple, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``frames`` (all with ``columns``) as one frame with the column types
    ``pd.concat`` gives: one NumPy read per frame, one object frame, its types inferred once
    (~10x cheaper than ``pd.concat`` on one-row frames: ~75 us for 32 against ~1 ms)."""
    import numpy as np

    if any(not f.columns.is_unique for f in frames):  # never from the server (refused as 400)
        return pd.concat(frames, ignore_index=True)
    values = np.concatenate([f.to_numpy(dtype=object) for f in frames])
    out = pd.DataFrame(values, index=pd.RangeIndex(len(values)), columns=frames[0].columns,
                       dtype=object, copy=False)  # fmt: skip
    return out.infer_objects()


def plain_rows(value: Any) -> Any:
    """A DataFrame as a list of ``{column: value}`` dicts of Python values, a missing value
    (NaN, NaT, NA) as ``None``; anything else as it is. One NumPy read for the whole frame."""
    if not isinstance(value, pd.DataFrame):
        return value
    import numpy as np

    names = [str(c) for c in value.columns]
    out = []
    for row in value.to_numpy(dtype=object).tolist():
        record = {}
        for name, v in zip(names, row, strict=True):
            if isinstance(v, float):
                v = None if v != v else v
            elif isinstance(v, np.generic):
                v = v.item()
                v = None if isinstance(v, float) and v != v else v
            elif v is pd.NaT or v is pd.NA:
                v = None
            record[name] = v
        out.append(record)
    return out


def _length(value: Any) -> int:
    if isinstance(value, pd.DataFrame | pd.Series | list) or (
        hasattr(value, "shape") and hasattr(value, "__getitem__") and len(value.shape) >= 1
    ):
        return len(value)
    return -1


def _rows(value: Any, start: int, end: int) -> Any:
    if value is None:
        return None
    if isinstance(value, pd.DataFrame | pd.Series):
        return value.iloc[start:end]  # its index is never read (records, arrays, lists)
    return value[start:end]
