"""Request parsing: a ``POST /invocations`` body -> a DataFrame the model may take, or a 4xx.

HTTP framing (lengths, headers, chunking, timeouts) is the server's (uvicorn, ``server.py``); this
module sees a complete body and its content type, and decides what is in it. Everything a client
can get wrong is a ``RequestError`` (4xx, counted as a client error), never coerced silently:

- JSON that is not strict JSON (``NaN``, ``Infinity``), nested deeper than the decoder's
  recursion limit, or with an object repeating a key;
- a table with duplicate column names (``dataframe_split``, CSV headers);
- a value in a string column that is not a string (numbers, booleans, objects) or holds a NUL
  character (no database text can store it), a value in a numeric column that is not a number;
- more than ``max_rows`` rows, a text longer than ``max_text_chars`` characters, or more than
  ``max_request_chars`` characters in one request (the compute budget: the model's cost grows
  with the characters it reads, and one request must not hold the predictor for everyone).

Imports nothing from the rest of the serving package but ``LoadedModel``'s shape (duck-typed).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

# The largest body a request within the compute budget needs: 64 Ki characters of text, each up to
# 6 bytes as a JSON escape (384 KiB), plus the rows' keys and ids. A larger body is refused while
# it is read (413), before any of it is parsed.
DEFAULT_MAX_BODY_BYTES = 512 * 1024
DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_TEXT_CHARS = 4096  # when the model does not say how long its training texts were
DEFAULT_MAX_REQUEST_CHARS = 65_536
REQUIRED_COLUMNS: tuple[str, ...] = ("text",)
STRING_COLUMNS: tuple[str, ...] = ("text", "customer_id")
NUMERIC_TYPES = frozenset({"long", "integer", "double", "float"})
JSON_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON_CT = "application/json"


class RequestError(Exception):
    """A request the server refuses: becomes ``{"error_code", "message"}`` with ``status``."""

    def __init__(self, status: int, error_code: str, message: str, headers: tuple = ()):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_CT
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(payload).encode(), JSON_CT, headers)


def error_body(e: RequestError) -> bytes:
    return json.dumps({"error_code": e.error_code, "message": e.message}).encode()


def error_response(status: int, error_code: str, message: str, headers: tuple = ()) -> Response:
    return json_response(status, {"error_code": error_code, "message": message}, headers)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the model."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS


# --------------------------------------------------------------------------------------------
# Body -> DataFrame


def split_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    mime, *parts = (p.strip() for p in content_type.split(";"))
    params = {}
    for part in parts:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return mime.lower(), params


def _no_constant(name: str) -> Any:
    raise RequestError(
        400, "MALFORMED_REQUEST", f"{name} is not valid JSON (send null for a missing value)"
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise RequestError(400, "BAD_REQUEST", f"duplicate key {dup!r} in a JSON object")
    return out


def decode_json(body: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no repeated keys; too deep a nesting is a 400."""
    try:
        return json.loads(body, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(400, "MALFORMED_REQUEST", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, "MALFORMED_REQUEST", f"body is not valid JSON: {e}") from None


def _frame(build, what: str) -> pd.DataFrame:
    try:
        return build()
    except RequestError:
        raise
    except Exception as e:  # pandas raises ValueError, TypeError, ... on shapes it cannot use
        raise RequestError(400, "BAD_REQUEST", f"{what} is not a valid table: {e}") from None


def _records_frame(rows: list[dict], what: str) -> pd.DataFrame:
    if rows:
        keys = tuple(rows[0])
        if all(tuple(row) == keys for row in rows):
            fast = _string_frame(keys, [[row[k] for k in keys] for row in rows])
            if fast is not None:
                return fast
    return _frame(lambda: pd.DataFrame.from_records(rows), what)


_INDEXES: dict[tuple[str, ...], pd.Index] = {}  # column labels -> Index (built once; bounded)


def with_column(frame: pd.DataFrame, name: str, values: Any) -> pd.DataFrame:
    """``frame.assign(**{name: values})``, as one object block when every column of ``frame``
    holds objects (a request's strings, :func:`_string_frame`): about half of ``assign``'s
    CPU, which inserts a block and rebuilds the column index (~6% of a served acting request)."""
    import numpy as np

    if name in frame.columns or not all(isinstance(d, np.dtype) and d.kind == "O" for d in frame.dtypes):
        return frame.assign(**{name: values})
    block = np.empty((len(frame), frame.shape[1] + 1), dtype=object)
    block[:, :-1] = frame.to_numpy(dtype=object)
    block[:, -1] = values
    return pd.DataFrame(block, index=frame.index, columns=_labels((*frame.columns, name)), dtype=object,
                        copy=False)  # fmt: skip


def _labels(columns: tuple[str, ...]) -> pd.Index:
    """The column index of ``columns``, built once per set of labels."""
    index = _INDEXES.get(columns)
    if index is None:
        index = pd.Index(columns, dtype=object)
        if len(_INDEXES) < 256:  # clients choose the labels: never an unbounded cache
            _INDEXES[columns] = index
    return index


def _string_frame(columns: tuple[str, ...], rows: list[list]) -> pd.DataFrame | None:
    """The frame ``pd.DataFrame.from_records`` would build when every value is a string or None
    (the common request: ``text``, ``customer_id``): one object block from a NumPy array, about a
    tenth of ``from_records``' CPU on one row. None when another type is present (then pandas
    infers the column types as before)."""
    import numpy as np

    if not columns or not all(type(v) is str or v is None for row in rows for v in row):
        return None
    values = np.empty((len(rows), len(columns)), dtype=object)
    values[:] = rows
    # dtype=object: the values are known to be strings, so pandas skips inferring types (a
    # third of the cost); from_records would give object columns too.
    return pd.DataFrame(values, index=pd.RangeIndex(len(rows)), columns=_labels(columns), dtype=object,
                        copy=False)  # fmt: skip


def _columns_frame(columns: dict[str, list], what: str) -> pd.DataFrame:
    return _frame(lambda: pd.DataFrame(columns), what)


def _frame_from_rows_or_columns(data: Any, key: str) -> pd.DataFrame:
    """``instances`` / ``inputs``: a list of records, a dict of columns, or one record."""
    if isinstance(data, list):
        if all(isinstance(row, dict) for row in data):
            return _records_frame(data, f"'{key}'")
    elif isinstance(data, dict):
        if data and all(isinstance(v, list) for v in data.values()):
            return _columns_frame(data, f"'{key}'")
        if not any(isinstance(v, list | dict) for v in data.values()):
            return _records_frame([data], f"'{key}'")  # a single record
    raise RequestError(
        400, "BAD_REQUEST", f"'{key}' must be a list of objects (records) or an object of columns"
    )


def parse_json_payload(payload: Any) -> pd.DataFrame:
    """A decoded MLflow scoring JSON payload -> DataFrame."""
    if not isinstance(payload, dict):
        raise RequestError(
            400, "BAD_REQUEST", f"expected a JSON object with one of the keys {list(JSON_FORMATS)}"
        )
    keys = [k for k in JSON_FORMATS if k in payload]
    if len(keys) != 1:
        raise RequestError(
            400, "BAD_REQUEST",
            f"expected exactly one of the keys {list(JSON_FORMATS)}, got {sorted(payload)}",
        )  # fmt: skip
    key = keys[0]
    if extra := sorted(set(payload) - {key}):
        raise RequestError(
            400, "BAD_REQUEST", f"unsupported keys {extra} (params are not supported)"
        )
    data = payload[key]
    if key == "dataframe_split":
        if (
            not isinstance(data, dict)
            or "data" not in data
            or set(data) - {"columns", "data", "index"}
        ):
            raise RequestError(
                400, "BAD_REQUEST",
                "'dataframe_split' must be an object with 'data' and optionally 'columns', 'index'",
            )  # fmt: skip
        columns = data.get("columns")
        if columns is not None:
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise RequestError(
                    400, "BAD_REQUEST", "'dataframe_split.columns' must be a list of strings"
                )
            if len(set(columns)) != len(columns):
                dup = sorted({c for c in columns if columns.count(c) > 1})
                raise RequestError(400, "BAD_REQUEST", f"duplicate column names {dup}")
        if not isinstance(data["data"], list) or not all(isinstance(r, list) for r in data["data"]):
            raise RequestError(400, "BAD_REQUEST", "'dataframe_split.data' must be a list of rows")
        rows = data["data"]
        if (
            columns and rows and "index" not in data
            and all(len(r) == len(columns) for r in rows)
            and (fast := _string_frame(tuple(columns), rows)) is not None
        ):  # fmt: skip
            return fast
        return _frame(
            lambda: pd.DataFrame(data["data"], columns=columns, index=data.get("index")),
            "'dataframe_split'",
        )
    if key == "dataframe_records":
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise RequestError(400, "BAD_REQUEST", "'dataframe_records' must be a list of objects")
        return _records_frame(data, "'dataframe_records'")
    return _frame_from_rows_or_columns(data, key)


def parse_csv(body: bytes, string_columns: tuple[str, ...] = STRING_COLUMNS) -> pd.DataFrame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, "BAD_REQUEST", f"CSV body is not valid UTF-8: {e}") from None
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error as e:
        raise RequestError(400, "BAD_REQUEST", f"body is not valid CSV: {e}") from None
    if len(set(header)) != len(header):
        dup = sorted({c for c in header if header.count(c) > 1})
        raise RequestError(400, "BAD_REQUEST", f"duplicate column names {dup}")
    try:
        return pd.read_csv(
            io.StringIO(text), dtype=dict.fromkeys(string_columns, str), keep_default_na=False,
            na_values=[""],
        )  # fmt: skip
    except Exception as e:
        raise RequestError(400, "BAD_REQUEST", f"body is not valid CSV: {e}") from None


def parse_request(
    body: bytes, content_type: str | None, string_columns: tuple[str, ...] = STRING_COLUMNS
) -> pd.DataFrame:
    """The body of a ``POST /invocations`` -> DataFrame, or ``RequestError`` (4xx)."""
    mime, params = split_content_type(content_type)
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise RequestError(
            415, "UNSUPPORTED_MEDIA_TYPE", f"only UTF-8 is supported, got charset={charset}"
        )
    if not body and mime in (JSON_CT, "text/csv"):
        raise RequestError(400, "BAD_REQUEST", "the request body is empty")
    if mime == JSON_CT:
        return parse_json_payload(decode_json(body))
    if mime == "text/csv":
        return parse_csv(body, string_columns)
    raise RequestError(
        415, "UNSUPPORTED_MEDIA_TYPE",
        f"Content-Type must be application/json or text/csv, got {content_type or 'none'!r}",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# DataFrame -> what the model takes


def _check_columns(df: pd.DataFrame, required: tuple[str, ...]) -> None:
    """Unique column names and every required one present (no values read)."""
    if not df.columns.is_unique:
        dup = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise RequestError(400, "BAD_REQUEST", f"duplicate column names {dup}")
    present = set(df.columns)
    if missing := [c for c in required if c not in present]:
        raise RequestError(
            400, "BAD_REQUEST",
            f"missing required column(s) {missing}; got columns {[str(c) for c in df.columns]}",
        )  # fmt: skip


def _check_required(lists: dict[str, list], required: tuple[str, ...]) -> None:
    for c in required:
        if any(_missing(v) for v in lists[c]):
            raise RequestError(400, "BAD_REQUEST", f"required column {c!r} has null values")


def _lists(df: pd.DataFrame, columns: Any) -> dict[str, list]:
    """The values of ``columns`` (present in ``df``, whose labels are unique) as lists of Python
    objects, from one NumPy read of the frame: reading columns one by one costs ~10 us each on a
    one-row frame, more than the checks themselves."""
    where = {c: j for j, c in enumerate(df.columns)}  # dict lookups: Index.__contains__ is slower
    wanted = [c for c in columns if c in where]
    if not wanted:
        return {}
    values = df.to_numpy(dtype=object)
    return {c: values[:, where[c]].tolist() for c in wanted}


def validate_frame(df: pd.DataFrame, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Refuse a frame without the model's required columns, or with nulls in them."""
    _check_columns(df, required)
    _check_required(_lists(df, required), required)
    return df


def _sample(values: list) -> str:
    return ", ".join(f"{type(v).__name__} {v!r}"[:80] for v in values[:3]) or "nulls"


def _missing(v: Any) -> bool:
    """pandas' marks for a missing value (strict JSON cannot carry NaN: a NaN here is pandas')."""
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)


def _check_strings(values: list, column: str, limits: Limits) -> int:
    """Refuse non-strings and texts over the limit; returns the column's characters."""
    bad = [v for v in values if not isinstance(v, str) and not _missing(v)]
    if bad:
        raise RequestError(
            400, "BAD_REQUEST", f"column {column!r} must hold strings; got {_sample(bad)}"
        )
    if any("\x00" in v for v in values if isinstance(v, str)):
        raise RequestError(  # Postgres text cannot hold it: a tool's write would fail as a 5xx
            400, "BAD_REQUEST", f"column {column!r} holds a NUL character (U+0000), which is not text"
        )
    lengths = [len(v) for v in values if isinstance(v, str)]
    longest = max(lengths, default=0)
    if longest > limits.max_text_chars:
        raise RequestError(
            413, "TEXT_TOO_LONG",
            f"a value of column {column!r} has {longest} characters; the limit is "
            f"{limits.max_text_chars}",
        )  # fmt: skip
    return sum(lengths)


def _check_numbers(df: pd.DataFrame, column: str) -> None:
    series = df[column]
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return
    bad = [
        v for v in series.tolist()
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
    ]  # fmt: skip
    if bad:
        raise RequestError(
            400, "BAD_REQUEST", f"column {column!r} must be numeric; got {_sample(bad)}"
        )


def prepare_frame(df: pd.DataFrame, model: Any, limits: Limits | None = None) -> pd.DataFrame:
    """The frame the model gets: within the limits, required columns present and non-null,
    columns the signature does not name dropped, values of the signature's types (refused, not
    converted, when they are not)."""
    limits = limits or Limits()
    if len(df) > limits.max_rows:
        raise RequestError(
            413, "TOO_MANY_ROWS",
            f"{len(df)} rows exceed the limit of {limits.max_rows} rows per request",
        )  # fmt: skip
    _check_columns(df, model.required_columns)
    if model.input_columns:
        known = set(model.input_columns)
        if any(c not in known for c in df.columns):
            df = df[[c for c in df.columns if c in known]]
    lists = _lists(df, dict.fromkeys((*model.required_columns, *model.string_columns)))
    _check_required(lists, model.required_columns)
    chars = 0
    for c in model.string_columns:
        if c in lists:
            chars += _check_strings(lists[c], c, limits)
    if chars > limits.max_request_chars:
        raise RequestError(
            413, "REQUEST_TOO_EXPENSIVE",
            f"{chars} characters of text in one request exceed the limit of "
            f"{limits.max_request_chars}; split it into smaller requests",
        )  # fmt: skip
    if model.numeric_columns:
        present = set(df.columns)
        for c in model.numeric_columns:
            if c in present:
                _check_numbers(df, c)
    return df


def text_chars(frame: pd.DataFrame, columns: tuple[str, ...] = STRING_COLUMNS) -> int:
    """The characters of ``frame``'s string columns (its cost to the model, roughly)."""
    total = 0
    for values in _lists(frame, columns).values() if frame.columns.is_unique else ():
        total += sum(len(v) for v in values if isinstance(v, str))
    return total


# --------------------------------------------------------------------------------------------
# Predictions -> JSON


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


def predictions_json(predictions: Any) -> bytes:
    """``{"predictions": ...}`` as mlflow's scoring server writes it (DataFrames as records)."""
    if isinstance(predictions, pd.DataFrame | pd.Series):
        body = predictions.to_json(orient="records", date_format="iso", default_handler=str)
    else:
        if hasattr(predictions, "tolist"):
            predictions = predictions.tolist()
        body = json.dumps(predictions, default=_json_default)
    return b'{"predictions":' + body.encode() + b"}"
