"""Reading a day of requests: the built-in generator or files (CSV, Parquet, JSONL).

Whatever the source, a partition comes out with the same columns: request_id, customer_id,
timestamp (UTC), text, tool, channel. Problems a reader can see (no file, an empty file, bytes that
are not UTF-8, missing columns, no rows for the day) raise :class:`DataSourceError` naming the file
and the problem; problems in the values (nulls, unknown labels, out-of-day timestamps, lengths,
duplicates) are left for the gates, which report them row by row -- by the file's name, the
user's column names and each row's line number in the file (:class:`SourceInfo`).

A file without a customer-id column has no customers: ``customer_id`` is empty (""), no customer
features are joined or simulated for it, and duplicates are judged on the text alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from agentops_pipelines.data import generator

COLUMNS = ["request_id", "customer_id", "timestamp", "text", "tool", "channel"]
NO_CUSTOMER = ""  # customer_id of a request from a file that names no customers


@dataclass(frozen=True)
class SourceInfo:
    """Where a partition's rows came from, so a gate can point at them the way the user sees them.

    ``columns`` maps our column names to the file's (``tool`` -> ``category``); ``lines`` holds,
    per row of the partition, its line number in the file (CSV: the header is line 1; JSONL: one
    record per line) or its row number (Parquet, ``unit="row"``).
    """

    path: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    lines: tuple[int, ...] = ()
    unit: str = "line"
    has_customers: bool = True

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    def where(self, positions) -> str:
        """``line 5, 9 and 12 of /data/train.csv`` for partition rows at ``positions``."""
        numbers = [self.lines[p] for p in positions if 0 <= p < len(self.lines)] if self.lines else []
        place = f" of {self.path}" if self.path else ""
        if not numbers:
            return place.removeprefix(" of ") or "the generated data"
        label = self.unit + ("s" if len(numbers) > 1 else "")
        return f"{label} {', '.join(map(str, numbers))}{place}"


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


def read_file(path: Path, data: bytes | None = None) -> pd.DataFrame:
    """The table in ``path``; parsed from ``data`` instead when given (the file's bytes as the
    caller read them, e.g. to record their digest: what is hashed is then what is parsed)."""
    import io

    if data is None:
        if not path.exists():
            raise DataSourceError(f"{path} does not exist")
        if path.stat().st_size == 0:
            raise DataSourceError(f"{path} is empty")
    elif not data:
        raise DataSourceError(f"{path} is empty")
    source = path if data is None else io.BytesIO(data)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    gz = "gzip" if suffix.endswith(".gz") else None
    try:
        if suffix in (".csv", ".csv.gz"):
            df = pd.read_csv(source, encoding="utf-8", encoding_errors="strict", dtype=str, keep_default_na=True,
                             compression=gz)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(source)
        elif suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
            df = pd.read_json(source, lines=True, encoding="utf-8", encoding_errors="strict", dtype=False,
                              compression=gz)
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


def line_numbers(path: Path, rows: int) -> tuple[tuple[int, ...], str]:
    """Each record's line number in ``path`` (CSV, JSONL) or its row number (Parquet)."""
    import csv
    import gzip

    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return tuple(range(1, rows + 1)), "row"
    opener = gzip.open if name.endswith(".gz") else open
    lines: list[int] = []
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        if ".csv" in name:
            reader = csv.reader(f)
            previous = 0
            for i, record in enumerate(reader):
                start, previous = previous + 1, reader.line_num
                if i and record:  # the header is no row; pandas skips blank lines
                    lines.append(start)
        else:
            lines = [n for n, line in enumerate(f, start=1) if line.strip()]
    if len(lines) != rows:  # a layout we do not follow: point at records, not lines
        return tuple(range(1, rows + 1)), "record"
    return tuple(lines), "line"


def _optional_column(raw: pd.DataFrame, name: str, default: str, path: Path, field_name: str) -> str:
    """``name`` if the file has it; "" if it is absent and was not asked for explicitly."""
    if not name:
        return ""
    if name in raw.columns:
        return name
    if name == default:
        return ""
    raise DataSourceError(f"{path} has no column {name!r} ({field_name}); it has {list(raw.columns)}")


def from_file(path_template: str, day: date, text_column: str, label_column: str,
              customer_id_column: str = "customer_id", timestamp_column: str = "timestamp"
              ) -> tuple[pd.DataFrame, SourceInfo]:
    """One day from a file, and where each of its rows is in the file.

    ``path_template`` may contain ``{date}`` (one file per day). Without it, a file with a
    timestamp column gives the rows of that day; a file without one is taken whole as the
    day's snapshot (its timestamps spread over the day). A file without a customer-id column
    has no customers (``customer_id`` is ""): nothing is simulated for it.
    """
    per_day = "{date}" in path_template
    path = resolve_path(path_template.format(date=day.isoformat()) if per_day else path_template)
    raw = read_file(path)
    missing = [c for c in (text_column, label_column) if c not in raw.columns]
    if missing:
        raise DataSourceError(f"{path} is missing column(s) {missing}; it has {list(raw.columns)}")
    customer_col = _optional_column(raw, customer_id_column, "customer_id", path, "customer_id_column")
    ts_col = _optional_column(raw, timestamp_column, "timestamp", path, "timestamp_column")
    lines, unit = line_numbers(path, len(raw))
    positions = np.arange(len(raw))
    start = pd.Timestamp(datetime(day.year, day.month, day.day), tz="UTC")
    if ts_col:
        ts = pd.to_datetime(raw[ts_col], utc=True, errors="coerce")
        if not per_day:
            keep = ((ts >= start) & (ts < start + pd.Timedelta(days=1))).to_numpy()
            raw, ts, positions = raw[keep], ts[keep], positions[keep]
            if raw.empty:
                raise DataSourceError(f"{path} has no rows with a timestamp on {day}")
    else:
        step = 86400 / max(len(raw), 1)
        ts = start + pd.to_timedelta(np.arange(len(raw)) * step, unit="s")
    raw = raw.reset_index(drop=True)
    out = pd.DataFrame({
        "request_id": raw["request_id"].astype(str) if "request_id" in raw else [f"{day:%Y%m%d}-{i:06d}" for i in range(len(raw))],
        "customer_id": raw[customer_col] if customer_col else NO_CUSTOMER,
        "timestamp": pd.Series(ts).reset_index(drop=True),
        "text": raw[text_column],
        "tool": raw[label_column],
        "channel": raw["channel"] if "channel" in raw else "file",
    })
    columns = {"text": text_column, "tool": label_column}
    if customer_col:
        columns["customer_id"] = customer_col
    if ts_col:
        columns["timestamp"] = ts_col
    info = SourceInfo(path=str(path), columns=columns, lines=tuple(lines[p] for p in positions), unit=unit,
                      has_customers=bool(customer_col))
    return out, info


def read_partition(source: str, day: date, *, rows_per_day: int = 800, seed: int = 7,
                   drift: float = 0.0, path: str = "", text_column: str = "text",
                   label_column: str = "tool", customer_id_column: str = "customer_id",
                   timestamp_column: str = "timestamp") -> tuple[pd.DataFrame, SourceInfo]:
    """One day of requests (:data:`COLUMNS`) and where its rows came from."""
    if source == "generator":
        return generator.generate_requests(day, n=rows_per_day, seed=seed, drift=drift)[COLUMNS], SourceInfo()
    if source == "file":
        if not path:
            raise DataSourceError("the file source needs 'path' (CSV, Parquet or JSONL; may contain {date})")
        df, info = from_file(path, day, text_column, label_column, customer_id_column, timestamp_column)
        return df[COLUMNS], info
    raise DataSourceError(f"unknown source {source!r}: use 'generator' or 'file'")


def load_partition(source: str, day: date, **options) -> pd.DataFrame:
    """:func:`read_partition` without the source information."""
    return read_partition(source, day, **options)[0]


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(datetime(day.year, day.month, day.day), tz="UTC")
    return start, start + pd.Timedelta(timedelta(days=1))
