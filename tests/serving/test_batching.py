"""Micro-batching: merged predicts, isolated failures, column sets kept apart, limits, overload."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from agentops_pipelines.serving.batching import Batcher, Overloaded
from tests.serving.support import gate_infer, submit_all, wait_until


def test_batcher_merges_waiting_requests_and_isolates_failures():
    calls: list[int] = []
    gate = threading.Event()
    batcher = Batcher(gate_infer(calls, gate), max_rows=64)
    first, first_threads = submit_all(batcher, ["first"])
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    results, threads = submit_all(batcher, [f"t{i}" for i in range(10)] + ["boom"])
    while batcher.queued_rows < 11 and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for t in first_threads + threads:
        t.join(5)
    assert first["first"] == ["first"]
    assert all(results[f"t{i}"] == [f"t{i}"] for i in range(10))  # each gets its own rows back
    assert isinstance(results["boom"], ValueError)
    assert calls[:2] == [1, 11]  # the 11 waiting requests went in one call
    assert sorted(calls[2:]) == [1] * 11  # that call failed: retried one by one
    batcher.retire()


def test_batcher_keeps_column_sets_apart_and_limits_rows():
    calls: list[int] = []
    gate = threading.Event()
    batcher = Batcher(gate_infer(calls, gate), max_rows=4)
    blocker, blocker_threads = submit_all(batcher, ["blocker"])
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    plain, t1 = submit_all(batcher, [f"p{i}" for i in range(6)])
    with_feature, t2 = submit_all(batcher, [f"f{i}" for i in range(3)], {"orders_30d": [3]})
    while batcher.queued_rows < 9 and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for t in blocker_threads + t1 + t2:
        t.join(5)
    assert all(plain[f"p{i}"] == [f"p{i}"] for i in range(6))
    assert all(with_feature[f"f{i}"] == [f"f{i}"] for i in range(3))
    assert max(calls) <= 4 and sum(calls) == 10


def test_batcher_splits_unbatchable_output_by_request():
    calls: list[int] = []
    busy, release = threading.Event(), threading.Event()

    def infer(frame):
        calls.append(len(frame))
        if not busy.is_set():
            busy.set()
            release.wait(5)
        return {"n": len(frame)}, None  # not one row per input row: cannot be split

    batcher = Batcher(infer)
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(batcher.predict(pd.DataFrame({"text": ["x"]}))[0]))
        for _ in range(3)
    ]  # fmt: skip
    threads[0].start()
    assert busy.wait(5)
    for t in threads[1:]:
        t.start()
    wait_until(lambda: batcher.queued_rows == 2)
    release.set()
    for t in threads:
        t.join(5)
    assert results == [{"n": 1}] * 3
    assert calls == [1, 2, 1, 1] and batcher.batchable is False
    batcher.retire()


def test_batcher_retire_and_overload():
    batcher = Batcher(lambda f: (pd.DataFrame({"n": [len(f)] * len(f)}), None))
    assert batcher.predict(pd.DataFrame({"text": ["a"]}))[0]["n"].tolist() == [1]
    batcher.retire()
    wait_until(lambda: not batcher.alive)
    assert batcher.predict(pd.DataFrame({"text": ["late"]}))[0]["n"].tolist() == [1]  # inline

    gate = threading.Event()
    small = Batcher(lambda f: (gate.wait(5), (pd.DataFrame({"n": [1] * len(f)}), None))[1],
                    max_queue_rows=2)  # fmt: skip
    first = threading.Thread(target=lambda: small.predict(pd.DataFrame({"text": ["a"]})))
    first.start()
    wait_until(lambda: small.batches == 1)  # the first request is being predicted
    waiting = threading.Thread(target=lambda: small.predict(pd.DataFrame({"text": ["b", "c"]})))
    waiting.start()
    wait_until(lambda: small.queued_rows == 2)
    with pytest.raises(Overloaded, match="2 rows are waiting"):
        small.predict(pd.DataFrame({"text": ["d"]}))
    gate.set()
    first.join(5)
    waiting.join(5)
    small.retire()


def test_batcher_bounds_a_batch_by_characters_and_calls_back():
    calls: list[int] = []
    gate = threading.Event()
    batcher = Batcher(gate_infer(calls, gate), max_rows=64, max_chars=100)
    blocker, blocker_threads = submit_all(batcher, ["blocker"])
    wait_until(lambda: calls == [1])
    done: list = []
    for i in range(4):  # 4 requests of 40 characters: at most 2 fit in one predict call
        batcher.submit(pd.DataFrame({"text": [f"{i}" * 40]}), lambda r, e: done.append((r, e)), 40)
    gate.set()
    for t in blocker_threads:
        t.join(5)
    wait_until(lambda: len(done) == 4)
    assert calls[1:] == [2, 2] and all(e is None for _, e in done)
    assert sorted(r[0]["echo"].tolist()[0][0] for r, _ in done) == ["0", "1", "2", "3"]
    batcher.retire()


def test_a_merged_batch_is_the_frame_pd_concat_gives():
    """The batch the model gets is built from the requests' values, not with ``pd.concat``; the
    columns keep the types each request's own frame had."""
    import numpy as np

    from agentops_pipelines.serving.batching import merged

    frames = [
        pd.DataFrame({"text": ["a"], "customer_id": ["C1"], "n": [1], "x": [0.5], "ok": [True]}),
        pd.DataFrame({"text": ["b"], "customer_id": [None], "n": [2], "x": [np.nan], "ok": [False]}),
    ]
    out = merged(tuple(frames[0].columns), frames)
    pd.testing.assert_frame_equal(out, pd.concat(frames, ignore_index=True))


def test_plain_rows_are_python_values_with_missing_as_none():
    import json

    import numpy as np

    from agentops_pipelines.serving.batching import plain_rows

    frame = pd.DataFrame({"tool": ["a", None], "confidence": [0.25, np.nan], "escalated": [True, False],
                          "n": np.array([1, 2], dtype=np.int64)})  # fmt: skip
    rows = plain_rows(frame)
    assert rows == [{"tool": "a", "confidence": 0.25, "escalated": True, "n": 1},
                    {"tool": None, "confidence": None, "escalated": False, "n": 2}]  # fmt: skip
    assert all(type(r["n"]) is int and type(r["escalated"]) is bool for r in rows)
    json.dumps(rows, allow_nan=False)  # strict JSON: no NaN reaches a client
    batcher = Batcher(lambda f: (frame.iloc[: len(f)], None), plain=True, inline=True)
    done: list = []
    batcher.submit(pd.DataFrame({"text": ["x"]}), lambda r, e: done.append(r))
    batcher.run_pending()
    assert done[0][0] == rows[:1]
