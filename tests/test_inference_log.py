"""The inference log: Parquet files written in the background, read back by date range.

The end-to-end path (a real serving process, SIGTERM, nothing lost) is in test_serving.py.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import replace
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from agentops_pipelines.serving import inference_log
from agentops_pipelines.serving.inference_log import (
    BASE_COLUMNS,
    InferenceLogWriter,
    LogEntry,
    read_inference_log,
    to_table,
)


def _ts(day: str, hour: int = 12) -> float:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00").replace(tzinfo=UTC).timestamp()


def entry(
    day: str = "2026-11-02",
    request_id: str = "r1",
    texts: tuple[str, ...] = ("where is my order",),
    status: int = 200,
    features: dict | None = None,
    role: str = "stable",
    version: str = "3",
) -> LogEntry:
    n = len(texts)
    requests = pd.DataFrame({"text": list(texts), "customer_id": [f"C{i}" for i in range(n)]})
    predictions = (
        pd.DataFrame(
            {
                "tool": ["track_order"] * n,
                "confidence": [0.75] * n,
                "escalated": [False] * n,
                "answer": ["..."] * n,
            }
        )
        if status == 200
        else None
    )
    feats = pd.DataFrame({k: [v] * n for k, v in (features or {}).items()}) if features else None
    return LogEntry(
        received=_ts(day),
        request_id=request_id,
        role=role,
        version=version,
        status=status,
        error_code=None if status == 200 else "INTERNAL_ERROR",
        latency_ms=4.5,
        requests=requests,
        predictions=predictions,
        features=feats,
    )


def files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_to_table_schema_and_values():
    table = to_table(
        [
            entry(texts=("a", "b"), features={"orders_30d": 3, "plan_tier": "pro"}),
            entry(request_id="r2", status=500),  # a failed request: no predictions, no features
        ],
        "prod",
    )
    df = table.to_pandas()
    assert tuple(df.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert list(df.columns[len(BASE_COLUMNS) :]) == ["orders_30d", "plan_tier"]
    assert str(table.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert df["request_id"].tolist() == ["r1", "r1", "r2"]
    assert df["row"].tolist() == [0, 1, 0]
    assert df["text"].tolist() == ["a", "b", "where is my order"]
    assert df["customer_id"].tolist() == ["C0", "C1", "C0"]
    assert df["environment"].unique().tolist() == ["prod"]
    assert df["status"].tolist() == [200, 200, 500]
    assert df["error_code"].tolist() == [None, None, "INTERNAL_ERROR"]
    assert df["tool"].tolist() == ["track_order", "track_order", None]
    assert df["confidence"].iloc[:2].tolist() == [0.75, 0.75] and pd.isna(df["confidence"].iloc[2])
    assert df["escalated"].tolist()[:2] == [False, False] and pd.isna(df["escalated"].iloc[2])
    assert df["orders_30d"].iloc[:2].tolist() == [3, 3] and pd.isna(df["orders_30d"].iloc[2])
    assert df["timestamp"].iloc[0] == pd.Timestamp("2026-11-02T12:00:00Z")
    assert "answer" not in df.columns  # the log keeps the routing, not the generated text


def test_writer_flushes_on_close_into_date_partitions(tmp_path):
    writer = InferenceLogWriter(tmp_path, "dev", flush_seconds=3600, flush_rows=10_000).start()
    writer.append(entry("2026-11-01", "a"))
    writer.append(entry("2026-11-02", "b", texts=("x", "y")))
    writer.append(entry("2026-11-02", "c"))
    assert files(tmp_path) == []  # nothing due yet
    writer.close()
    writer_id = f"{socket.gethostname()}-{os.getpid()}"
    assert files(tmp_path) == [
        f"date=2026-11-01/{writer_id}-000000.parquet",
        f"date=2026-11-02/{writer_id}-000001.parquet",
    ]
    df = read_inference_log(tmp_path, date(2026, 11, 1), date(2026, 11, 2))
    assert df["request_id"].tolist() == ["a", "b", "b", "c"]
    assert read_inference_log(tmp_path, date(2026, 11, 2), date(2026, 11, 2))[
        "request_id"
    ].tolist() == ["b", "b", "c"]
    assert read_inference_log(tmp_path, "2026-11-03", "2026-11-30").empty

    writer.append(entry("2026-11-02", "late"))  # after close: written at once, not lost
    assert "late" in read_inference_log(tmp_path, "2026-11-02", "2026-11-02")["request_id"].tolist()


def test_pods_sharing_a_folder_keep_their_own_files(tmp_path, monkeypatch):
    """On Kubernetes many pods write one folder and their pids repeat (often 1): file names carry
    the host (the pod's name), so no pod overwrites another's rows."""
    for pod in ("support-agent-prod-7f9c-abcde", "support-agent-prod-7f9c-fghij"):
        monkeypatch.setattr(inference_log.socket, "gethostname", lambda pod=pod: pod)
        monkeypatch.setattr(inference_log.os, "getpid", lambda: 1)
        writer = InferenceLogWriter(tmp_path, "prod", flush_seconds=3600).start()
        writer.append(entry("2026-11-02", pod))
        writer.close()
    assert files(tmp_path) == [
        "date=2026-11-02/support-agent-prod-7f9c-abcde-1-000000.parquet",
        "date=2026-11-02/support-agent-prod-7f9c-fghij-1-000000.parquet",
    ]
    assert sorted(read_inference_log(tmp_path, "2026-11-02", "2026-11-02")["request_id"]) == [
        "support-agent-prod-7f9c-abcde", "support-agent-prod-7f9c-fghij"]


def test_writer_converts_in_small_slices(tmp_path, monkeypatch):
    """Converting holds the GIL (~70 us a request): the writer converts as soon as
    ``convert_rows`` rows wait instead of letting a whole interval pile up."""
    slices, converted = [], threading.Event()

    def watched_to_table(entries, environment):  # the conversion, seen from outside
        slices.append([e.request_id for e in entries])
        converted.set()
        return to_table(entries, environment)

    monkeypatch.setattr(inference_log, "to_table", watched_to_table)
    writer = InferenceLogWriter(tmp_path, "dev", flush_seconds=3600, convert_seconds=3600,
                                convert_rows=4).start()
    for i in range(3):
        writer.append(entry(request_id=f"r{i}"))
    # below the slice: nothing converted (it waits for more, or for convert_seconds: an hour)
    assert not converted.wait(0.3) and slices == []
    writer.append(entry(request_id="r3"))
    assert converted.wait(5)
    assert slices == [["r0", "r1", "r2", "r3"]]  # one slice, as soon as the fourth row came
    assert files(tmp_path) == []  # converted, not written: flush_seconds decides that
    writer.close()
    assert read_inference_log(tmp_path, "2026-11-02", "2026-11-02")["request_id"].tolist() == [
        "r0", "r1", "r2", "r3"]


def test_writer_flushes_by_rows_and_by_time(tmp_path):
    by_rows = InferenceLogWriter(
        tmp_path / "rows", "dev", flush_seconds=3600, flush_rows=5, convert_seconds=0.05
    ).start()
    for i in range(5):
        by_rows.append(entry(request_id=f"r{i}"))
    _wait_for(lambda: len(files(tmp_path / "rows")) == 1)
    by_rows.close()

    by_time = InferenceLogWriter(
        tmp_path / "time", "dev", flush_seconds=0.2, flush_rows=10_000, convert_seconds=0.05
    ).start()
    by_time.append(entry(request_id="t"))
    _wait_for(lambda: len(files(tmp_path / "time")) == 1)
    by_time.close()
    assert len(files(tmp_path / "time")) == 1  # closing with nothing buffered writes nothing
    assert not list(tmp_path.rglob(".*"))  # no temporary file is left behind


def test_concurrent_appends_lose_nothing(tmp_path):
    writer = InferenceLogWriter(
        tmp_path, "dev", flush_seconds=0.1, flush_rows=50, convert_seconds=0.02
    ).start()

    def produce(k: int) -> None:
        for i in range(200):
            writer.append(entry(request_id=f"{k}-{i}"))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    writer.close()
    df = read_inference_log(tmp_path, "2026-11-02", "2026-11-02")
    assert len(df) == 800 and df["request_id"].is_unique
    assert len(files(tmp_path)) > 1  # flushed several times on the way


def test_reader_merges_files_with_different_features(tmp_path):
    first = InferenceLogWriter(tmp_path, "dev").start()
    first.append(entry(request_id="old", features={"orders_30d": 1}))
    first.close()
    second = InferenceLogWriter(tmp_path, "dev").start()
    later = entry(request_id="new", features={"orders_30d": 2, "plan_tier": "pro"})
    second.append(replace(later, received=later.received + 1))
    second.close()
    df = read_inference_log(tmp_path, "2026-11-02", "2026-11-02")
    assert df["request_id"].tolist() == ["old", "new"]
    assert df["orders_30d"].tolist() == [1, 2]
    assert pd.isna(df["plan_tier"].iloc[0]) and df["plan_tier"].iloc[1] == "pro"
    # the same pid writing again never overwrites: sequence numbers skip existing files
    assert len(files(tmp_path)) == 2


def test_reader_on_missing_or_empty_folder(tmp_path):
    df = read_inference_log(tmp_path / "nothing", date(2026, 1, 1), date(2026, 12, 31))
    assert df.empty and tuple(df.columns) == BASE_COLUMNS
    (tmp_path / "date=2026-11-02").mkdir()
    (tmp_path / "date=2026-11-02" / ".123-000000.parquet.tmp").write_bytes(b"partial")
    (tmp_path / "date=not-a-date").mkdir()
    assert read_inference_log(tmp_path, "2026-11-01", "2026-11-03").empty


def test_full_buffer_drops_and_counts(tmp_path):
    counted: dict[str, int] = {}
    writer = InferenceLogWriter(
        tmp_path,
        "dev",
        flush_seconds=3600,
        max_buffered_rows=3,
        on_rows=lambda result, n: counted.update({result: counted.get(result, 0) + n}),
    ).start()
    writer.append(entry(texts=("a", "b")))
    writer.append(entry(texts=("c", "d")))  # would exceed 3 buffered rows
    writer.close()
    assert counted == {"dropped": 2, "written": 2}
    assert len(read_inference_log(tmp_path, "2026-11-02", "2026-11-02")) == 2


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        deadline.wait(0.02)
    pytest.fail("condition not met in time")
