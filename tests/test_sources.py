"""Reading a day of requests: the generator and files, and the errors bad files get."""

from datetime import date

import pandas as pd
import pytest

from agentops_pipelines.agent.tools import TOOL_NAMES
from agentops_pipelines.data.generator import generate_requests
from agentops_pipelines.data.sources import COLUMNS, DataSourceError, load_labels, load_partition

DAY = date(2026, 11, 1)


def test_generator_is_deterministic_per_date_and_covers_every_tool():
    a = generate_requests(DAY, n=500)
    b = generate_requests(DAY, n=500)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_requests(date(2026, 11, 2), n=500))
    assert set(a["tool"]) == set(TOOL_NAMES)
    assert a["timestamp"].dt.date.eq(DAY).all()
    assert a["request_id"].is_unique


def test_drift_moves_the_data():
    usual = generate_requests(DAY, n=2000)
    drifted = generate_requests(DAY, n=2000, drift=0.8)
    assert drifted["text"].str.len().mean() > usual["text"].str.len().mean() + 20
    share = lambda df: (df["tool"] == "report_damaged_item").mean()  # noqa: E731
    assert share(drifted) > share(usual)
    with pytest.raises(ValueError, match="drift"):
        generate_requests(DAY, drift=1.5)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_file_formats(tmp_path, fmt):
    df = pd.DataFrame({"message": ["where is my parcel", "reset my password"], "intent": ["track_order", "reset_password"]})
    path = tmp_path / f"requests.{fmt}"
    {"csv": lambda: df.to_csv(path, index=False), "parquet": lambda: df.to_parquet(path),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True)}[fmt]()
    out = load_partition("file", DAY, path=str(path), text_column="message", label_column="intent")
    assert list(out.columns) == COLUMNS
    assert out["text"].tolist() == df["message"].tolist()
    assert out["tool"].tolist() == df["intent"].tolist()
    assert out["timestamp"].dt.date.eq(DAY).all()
    assert (out["customer_id"] == "").all()  # no customer column: no customers, none simulated (issue 11)


def test_per_day_files_and_timestamp_filtering(tmp_path):
    rows = pd.DataFrame({"text": ["a request", "another one", "late one"], "tool": ["track_order"] * 3,
                         "timestamp": ["2026-11-01T08:00:00Z", "2026-11-01T23:59:59Z", "2026-11-02T00:00:01Z"]})
    rows.to_csv(tmp_path / "all.csv", index=False)
    assert len(load_partition("file", DAY, path=str(tmp_path / "all.csv"))) == 2
    rows.to_csv(tmp_path / "day-2026-11-01.csv", index=False)
    assert len(load_partition("file", DAY, path=str(tmp_path / "day-{date}.csv"))) == 3  # the gates judge it
    with pytest.raises(DataSourceError, match="no rows with a timestamp on 2026-11-03"):
        load_partition("file", date(2026, 11, 3), path=str(tmp_path / "all.csv"))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"text,tool\n", "no rows"),
    (b"body,label\nhello,track_order\n", r"missing column\(s\) \['text', 'tool'\]"),
    (b"text,tool\n\xff\xfe bad bytes,track_order\n", "not valid UTF-8"),
])
def test_bad_files_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match=message):
        load_partition("file", DAY, path=str(path))


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        load_partition("file", DAY, path=str(tmp_path / "nope.csv"))
    with pytest.raises(DataSourceError, match="needs 'path'"):
        load_partition("file", DAY)
    with pytest.raises(DataSourceError, match="unknown source"):
        load_partition("kafka", DAY)


def test_labels_file_json_and_lines(tmp_path):
    (tmp_path / "a.json").write_text('["x", "y"]')
    (tmp_path / "b.txt").write_text("x\ny\n\n")
    assert load_labels(str(tmp_path / "a.json")) == load_labels(str(tmp_path / "b.txt")) == ["x", "y"]
