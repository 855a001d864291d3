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
- a batch never exceeds ``max_rows`` rows unless a single request is larger.

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

Infer = Callable[[pd.DataFrame], tuple[Any, Any]]  # frame -> (predictions, features or None)


class Overloaded(Exception):
    """More rows are queued than ``max_queue_rows``: shed load rather than queue for seconds."""


class _Item:
    __slots__ = ("frame", "key", "done", "result", "error")

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.key = tuple(frame.columns)
        self.done = threading.Event()
        self.result: tuple[Any, Any] | None = None
        self.error: BaseException | None = None


class Batcher:
    def __init__(
        self,
        infer: Infer,
        max_rows: int = 64,
        max_queue_rows: int = 4096,
        timeout_s: float = 30.0,
        name: str = "model",
    ):
        self._infer = infer
        self.max_rows = max(1, max_rows)
        self.max_queue_rows = max_queue_rows
        self.timeout_s = timeout_s
        self.batchable = True
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._retired = False
        self._closed = False
        self.batches = 0
        self.items = 0
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def predict(self, frame: pd.DataFrame) -> tuple[Any, Any]:
        """(predictions, features) for ``frame``, predicted on the batcher's thread."""
        item = _Item(frame)
        n = len(frame)
        with self._cond:
            if not self._closed:
                if self._queued_rows and self._queued_rows + n > self.max_queue_rows:
                    raise Overloaded(
                        f"{self._queued_rows} rows are waiting to be predicted (limit "
                        f"{self.max_queue_rows})"
                    )
                self._pending.append(item)
                self._queued_rows += n
                self._cond.notify()
                queued = True
            else:
                queued = False
        if not queued:
            return self._infer(frame)
        if not item.done.wait(self.timeout_s):
            raise TimeoutError(f"no prediction within {self.timeout_s:.0f}s")
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def retire(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._retired = True
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

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
            try:
                self._predict_group(batch)
            except BaseException as e:  # a bug here must not strand the waiting requests
                logger.exception("batch failed")
                for item in batch:
                    if not item.done.is_set():
                        item.error = e
                        item.done.set()

    def _take(self) -> list[_Item]:
        """The oldest request and the queued requests with its columns, up to ``max_rows``."""
        first = self._pending.popleft()
        batch, rows = [first], len(first.frame)
        if self.batchable and self._pending:
            keep: deque[_Item] = deque()
            while self._pending:
                item = self._pending.popleft()
                n = len(item.frame)
                if item.key == first.key and rows + n <= self.max_rows:
                    batch.append(item)
                    rows += n
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
        frame = pd.concat([item.frame for item in batch], ignore_index=True)
        try:
            predictions, features = self._infer(frame)
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
        start = 0
        for item in batch:
            end = start + len(item.frame)
            item.result = (_rows(predictions, start, end), _rows(features, start, end))
            item.done.set()
            start = end

    def _predict_one(self, item: _Item) -> None:
        try:
            item.result = self._infer(item.frame)
        except Exception as e:
            item.error = e
        item.done.set()


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
        return value.iloc[start:end].reset_index(drop=True)
    return value[start:end]
