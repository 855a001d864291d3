"""Reading a day of requests: the built-in generator or files (CSV, Parquet, JSONL).

Whatever the source, a partition comes out with the same columns: request_id, customer_id,
timestamp (UTC), text, tool, channel. Problems a reader can see (no file, an empty file, bytes that
are not UTF-8, missing columns, no rows for the day) raise :class:`DataSourceError` naming the file
and the problem; problems in the values (nulls, unknown labels, out-of-day timestamps, lengths,
duplicates) are left for the gates, which report them row by row.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from agentops_pipelines.data import generator

COLUMNS = ["request_id", "customer_id", "timestamp", "text", "tool", "channel"]


class DataSourceError(ValueError):
    """The source cannot produce a partition; the message says which file and why."""


def resolve_path(path: str) -> Path:
    from agentops_pipelines.resources.settings import PROJECT_ROOT

    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p)


def load_labels(labels_file: str) -> list[str]:
    """A JSON list or one label per line."""
    path = resolve_path(labels_file)
    if not path.exists():
        raise DataSourceError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8").strip()
    labels = json.loads(text) if text.startswith("[") else [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise DataSourceError(f"labels file {path} lists no labels")
    return [str(x) for x in labels]


def read_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataSourceError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise DataSourceError(f"{path} is empty")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix in (".csv", ".csv.gz"):
            df = pd.read_csv(path, encoding="utf-8", encoding_errors="strict", dtype=str, keep_default_na=True)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
            df = pd.read_json(path, lines=True, encoding="utf-8", encoding_errors="strict", dtype=False)
        else:
            raise DataSourceError(f"{path}: unsupported format {suffix!r} (use .csv, .parquet or .jsonl)")
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{path} is not valid UTF-8: byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataSourceError(f"{path} has no header and no rows") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        if isinstance(exc, DataSourceError):
            raise
        raise DataSourceError(f"{path} could not be parsed: {exc}") from exc
    if df.empty:
        raise DataSourceError(f"{path} has a header but no rows")
    return df


def _stable_customer(key: str) -> str:
    n = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") % generator.N_CUSTOMERS
    return f"C{n + 1:05d}"


def from_file(path_template: str, day: date, text_column: str, label_column: str) -> pd.DataFrame:
    """One day from a file.

    ``path_template`` may contain ``{date}`` (one file per day). Without it, a file with a
    ``timestamp`` column gives the rows of that day; a file without one is taken whole as the
    day's snapshot. Missing ``customer_id`` values are drawn (stably, by text) from the
    simulated customer base so features can be joined; missing timestamps are spread over the day.
    """
    per_day = "{date}" in path_template
    path = resolve_path(path_template.format(date=day.isoformat()) if per_day else path_template)
    raw = read_file(path)
    missing = [c for c in (text_column, label_column) if c not in raw.columns]
    if missing:
        raise DataSourceError(f"{path} is missing column(s) {missing}; it has {list(raw.columns)}")
    start = pd.Timestamp(datetime(day.year, day.month, day.day), tz="UTC")
    if "timestamp" in raw.columns:
        ts = pd.to_datetime(raw["timestamp"], utc=True, errors="coerce")
        if not per_day:
            keep = (ts >= start) & (ts < start + pd.Timedelta(days=1))
            raw, ts = raw[keep], ts[keep]
            if raw.empty:
                raise DataSourceError(f"{path} has no rows with a timestamp on {day}")
    else:
        step = 86400 / max(len(raw), 1)
        ts = start + pd.to_timedelta(np.arange(len(raw)) * step, unit="s")
    raw = raw.reset_index(drop=True)
    out = pd.DataFrame({
        "request_id": raw["request_id"].astype(str) if "request_id" in raw else [f"{day:%Y%m%d}-{i:06d}" for i in range(len(raw))],
        "customer_id": raw["customer_id"] if "customer_id" in raw else [_stable_customer(f"{i}|{t}") for i, t in enumerate(raw[text_column].astype(str))],
        "timestamp": pd.Series(ts).reset_index(drop=True),
        "text": raw[text_column],
        "tool": raw[label_column],
        "channel": raw["channel"] if "channel" in raw else "file",
    })
    return out


def load_partition(source: str, day: date, *, rows_per_day: int = 800, seed: int = 7,
                   drift: float = 0.0, path: str = "", text_column: str = "text",
                   label_column: str = "tool") -> pd.DataFrame:
    if source == "generator":
        return generator.generate_requests(day, n=rows_per_day, seed=seed, drift=drift)[COLUMNS]
    if source == "file":
        if not path:
            raise DataSourceError("the file source needs 'path' (CSV, Parquet or JSONL; may contain {date})")
        return from_file(path, day, text_column, label_column)[COLUMNS]
    raise DataSourceError(f"unknown source {source!r}: use 'generator' or 'file'")


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(datetime(day.year, day.month, day.day), tz="UTC")
    return start, start + pd.Timedelta(timedelta(days=1))
