"""Compaction of the inference log: one file per day instead of one per second, with nothing lost
or counted twice, even when a compaction stops half-way."""

from __future__ import annotations

import os
import time

import pandas as pd

from agentops_pipelines.serving.inference_log import (
    COMPACTED_PREFIX,
    InferenceLogWriter,
    LogEntry,
    compact_day,
    compact_inference_log,
    day_files,
    read_inference_log,
)

DAY = "2026-11-30"
RECEIVED = pd.Timestamp(f"{DAY}T12:00:00", tz="UTC").timestamp()


def _entry(i: int) -> LogEntry:
    return LogEntry(RECEIVED + i, f"r-{i}", "stable", "1", 200, None, 1.0,
                    pd.DataFrame({"text": [f"text {i}"], "customer_id": [f"C{i}"]}),
                    [{"tool": "track_order", "confidence": 0.5, "escalated": False}],
                    [{"orders_30d": i}])  # fmt: skip


def _write_small_files(folder, n: int) -> None:
    """``n`` files, one request each, as a writer flushing every second writes them."""
    writer = InferenceLogWriter(folder, "prod", flush_seconds=3600, compact_every=0).start()
    for i in range(n):
        writer.append(_entry(i))
        writer.flush()
    writer.close()
    old = time.time() - 3600  # past the grace period
    for f in (folder / f"date={DAY}").glob("*.parquet"):
        os.utime(f, (old, old))


def test_a_day_of_small_files_becomes_one_file_with_the_same_rows(tmp_path):
    _write_small_files(tmp_path, 12)
    part = tmp_path / f"date={DAY}"
    before = read_inference_log(tmp_path, DAY, DAY)
    assert len(list(part.glob("*.parquet"))) == 12

    written = compact_inference_log(tmp_path, before="2026-12-01")
    assert [p.name.startswith(COMPACTED_PREFIX) for p in written] == [True]
    assert [f.name for f in part.glob("*.parquet")] == [written[0].name]
    after = read_inference_log(tmp_path, DAY, DAY)
    pd.testing.assert_frame_equal(after, before)
    assert after["request_id"].tolist() == [f"r-{i}" for i in range(12)]
    assert after["orders_30d"].tolist() == list(range(12))
    assert compact_inference_log(tmp_path, before="2026-12-01") == []  # nothing left to merge


def test_today_and_young_files_are_left_alone(tmp_path):
    _write_small_files(tmp_path, 3)
    assert compact_inference_log(tmp_path, before=DAY) == []  # the day is not over
    fresh = tmp_path / f"date={DAY}"
    for f in fresh.glob("*.parquet"):
        os.utime(f)  # just written
    assert compact_inference_log(tmp_path, before="2026-12-01") == []
    assert len(list(fresh.glob("*.parquet"))) == 3


def test_a_compaction_stopped_before_deleting_counts_nothing_twice(tmp_path):
    _write_small_files(tmp_path, 5)
    part = tmp_path / f"date={DAY}"
    sources = sorted(part.glob("*.parquet"))
    saved = {f: f.read_bytes() for f in sources}
    compacted = compact_day(part)
    for f, data in saved.items():  # as if the process died between the rename and the deletions
        f.write_bytes(data)
    assert day_files(part) == [compacted]
    assert len(read_inference_log(tmp_path, DAY, DAY)) == 5

    late = InferenceLogWriter(tmp_path, "prod", flush_seconds=3600, compact_every=0).start()
    late.append(_entry(99))  # a request of that day written after the compaction
    late.close()
    old = time.time() - 3600
    for f in part.glob("*.parquet"):
        os.utime(f, (old, old))
    again = compact_day(part)
    assert [f.name for f in part.glob("*.parquet")] == [again.name]  # leftovers deleted too
    df = read_inference_log(tmp_path, DAY, DAY)
    assert df["request_id"].tolist() == [f"r-{i}" for i in (0, 1, 2, 3, 4, 99)]


def test_the_writer_compacts_past_days_on_start(tmp_path):
    _write_small_files(tmp_path, 4)
    writer = InferenceLogWriter(tmp_path, "prod", flush_seconds=3600, compact_every=3600).start()
    part = tmp_path / f"date={DAY}"
    deadline = time.monotonic() + 30
    while len(list(part.glob("*.parquet"))) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert [f.name.startswith(COMPACTED_PREFIX) for f in part.glob("*.parquet")] == [True]
    assert len(read_inference_log(tmp_path, DAY, DAY)) == 4


def test_a_writer_process_cleans_bad_rows_alone_and_counts_them(tmp_path):
    counts: dict[str, int] = {}
    writer = InferenceLogWriter(tmp_path, "prod", flush_seconds=3600, compact_every=0, process=True,
                                on_rows=lambda kind, n: counts.__setitem__(kind, counts.get(kind, 0) + n)).start()  # fmt: skip
    for i in range(6):
        writer.append(_entry(i))
    bad = _entry(6)
    writer.append(LogEntry(bad.received, "r-6", "stable", "1", 200, None, 1.0,
                           pd.DataFrame({"text": ["order \ud800"], "customer_id": ["C6"]}),
                           bad.predictions, bad.features))  # fmt: skip
    writer.close()
    df = read_inference_log(tmp_path, DAY, DAY)
    assert df["request_id"].tolist() == [f"r-{i}" for i in range(7)]
    assert df["text"].tolist()[-1] == "order ?"
    assert counts == {"written": 7, "cleaned": 1} and writer.files_written == 1


_CRASH = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from tests.serving.test_inference_log_compaction import _entry
from agentops_pipelines.serving.inference_log import InferenceLogWriter
writer = InferenceLogWriter({folder!r}, "prod", compact_every=0, process=True).start()
for i in range(10):
    writer.append(_entry(i))
time.sleep(1.0)  # the rows are shipped within a quarter of a second
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no close(), no flush
"""


def test_when_the_serving_process_crashes_its_writer_process_writes_what_it_holds(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = _CRASH.format(root=root, folder=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=120)
    assert proc.returncode == -9
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(f"date={DAY}/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_inference_log(tmp_path, DAY, DAY)["request_id"].tolist() == [f"r-{i}" for i in range(10)]
