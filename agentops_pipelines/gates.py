"""Data gates: a Great Expectations suite over one day of requests, grouped into named gates.

``run_gates`` is a plain function (no Dagster) so it can be tested on its own; the blocking asset
checks in ``assets/checks.py`` call it and report one result per gate.

A problem is reported the way the user sees their data: the file's path, their column's name
(``category``, not our ``tool``) and the first failing rows by their line number in the file
(given a :class:`~agentops_pipelines.data.sources.SourceInfo`). Duplicates are repeated
(customer, text) pairs; in data without customers, repeated texts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from agentops_pipelines.data.sources import SourceInfo

REQUIRED = ("request_id", "customer_id", "timestamp", "text", "tool")
FIRST_ROWS = 5  # failing rows named in a problem's message (all of them, up to 50, in failing_rows)
_ROW = "_row"  # the row's position in the partition, to find its line in the file
GATES = ("schema", "no_nulls", "known_labels", "timestamps_in_partition", "text_length", "duplicates")


@dataclass
class GateOutcome:
    passed: bool
    problems: list[str] = field(default_factory=list)
    failing_rows: list[dict] = field(default_factory=list)  # request_id and the offending value


@dataclass(frozen=True)
class GateLimits:
    min_text_length: int = 3
    max_text_length: int | None = 2000  # None: no upper bound
    max_duplicate_share: float = 0.05  # same customer (or no customers), same text, same day


def has_customers(df: pd.DataFrame) -> bool:
    """Whether any request names a customer (a file without a customer column names none)."""
    return "customer_id" in df and bool(df["customer_id"].fillna("").astype(str).ne("").any())


def _expectations(known_labels, day: date, limits: GateLimits, columns, customers: bool) -> list:
    import great_expectations.expectations as gxe

    start = pd.Timestamp(day, tz="UTC").value // 10**9
    by_gate: dict[str, list] = {g: [] for g in GATES}
    by_gate["schema"] += [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED), exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    present = [c for c in REQUIRED if c in columns]
    if "text" in columns:
        by_gate["schema"].append(gxe.ExpectColumnValuesToBeOfType(column="text", type_="str"))
        by_gate["text_length"].append(gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=limits.min_text_length, max_value=limits.max_text_length))
    if "timestamp" in columns:
        by_gate["timestamps_in_partition"].append(gxe.ExpectColumnValuesToBeBetween(
            column="_epoch_seconds", min_value=start, max_value=start + 86399))
    by_gate["no_nulls"] += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in present]
    if "tool" in columns:
        by_gate["known_labels"].append(gxe.ExpectColumnValuesToBeInSet(column="tool", value_set=sorted(known_labels)))
    if customers and {"customer_id", "text"} <= set(columns):
        by_gate["duplicates"].append(gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["customer_id", "text"], mostly=1 - limits.max_duplicate_share))
    elif "text" in columns:  # no customers: the same text twice is a duplicate
        by_gate["duplicates"].append(gxe.ExpectColumnValuesToBeUnique(
            column="text", mostly=1 - limits.max_duplicate_share))
    if "request_id" in columns:
        by_gate["duplicates"].append(gxe.ExpectColumnValuesToBeUnique(column="request_id"))
    for gate_name, expectations in by_gate.items():
        for exp in expectations:
            exp.meta = {"gate": gate_name}
    return [exp for expectations in by_gate.values() for exp in expectations]


def run_gates(df: pd.DataFrame, known_labels, day: date, limits: GateLimits = GateLimits(),
              source: SourceInfo | None = None) -> dict[str, GateOutcome]:
    """Validate one day of requests; every gate gets an outcome, failing rows named.

    With ``source`` (where the rows came from), problems name the file, the user's columns and
    the failing rows' line numbers; each failing row also carries its ``line``.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    from agentops_pipelines.data.sources import SourceInfo

    source = source or SourceInfo()
    customers = source.has_customers and has_customers(df)
    data = df.copy().reset_index(drop=True)
    data[_ROW] = range(len(data))
    if "timestamp" in data:
        ts = pd.to_datetime(data["timestamp"], utc=True, errors="coerce")
        data["_epoch_seconds"] = ts.astype("int64") // 10**9
        data.loc[ts.isna(), "_epoch_seconds"] = None
    if "request_id" not in data:
        data["request_id"] = [f"row-{i}" for i in range(len(data))]
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    suite = context.suites.add(gx.ExpectationSuite(name="requests"))
    for exp in _expectations(known_labels, day, limits, set(df.columns), customers):
        suite.add_expectation(exp)
    batch_def = (context.data_sources.add_pandas("requests").add_dataframe_asset("requests")
                 .add_batch_definition_whole_dataframe("day"))
    batch = batch_def.get_batch(batch_parameters={"dataframe": data})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE",
                                                  "unexpected_index_column_names": [_ROW, "request_id"]})

    outcomes = {g: GateOutcome(passed=True) for g in GATES}
    for res in result.results:
        cfg = res.expectation_config
        gate = (cfg.meta or {}).get("gate", "schema")
        if res.success:
            continue
        out = outcomes[gate]
        out.passed = False
        detail = res.result or {}
        column = cfg.kwargs.get("column") or cfg.kwargs.get("column_list") or ""
        columns = [column] if isinstance(column, str) and column else list(column or [])
        named = ", ".join(repr(source.column("timestamp" if c == "_epoch_seconds" else c)) for c in columns)
        where = f"{source.path}: " if source.path else ""
        if res.exception_info and res.exception_info.get("raised_exception"):
            out.problems.append(f"{where}{cfg.type} on {named}: {res.exception_info.get('exception_message')}")
            continue
        items = [i for i in (detail.get("unexpected_index_list") or []) if isinstance(i, dict)]
        count = detail.get("unexpected_count")
        if count is not None:
            pct = detail.get("unexpected_percent") or 0.0
            first = source.where([int(i[_ROW]) for i in items[:FIRST_ROWS] if _ROW in i])
            first = first if source.lines else ", ".join(str(i.get("request_id")) for i in items[:FIRST_ROWS])
            out.problems.append(f"{where}column {named}: {count} row(s) ({pct:.2f}%) fail "
                                f"{_WHY.get(cfg.type, cfg.type)}; first: {first}")
        elif cfg.type == "expect_table_columns_to_match_set":
            missing = sorted(set(REQUIRED) - set(df.columns))
            out.problems.append(f"{where}missing column(s) {[source.column(c) for c in missing]}; found {list(df.columns)}")
        else:
            out.problems.append(f"{where}{cfg.type}: observed {detail.get('observed_value')}")
        for item in items[:50]:
            row = {"request_id": item.get("request_id")}
            if source.lines and _ROW in item and 0 <= int(item[_ROW]) < len(source.lines):
                row[source.unit] = source.lines[int(item[_ROW])]
            for col in columns:
                if col == "_epoch_seconds":
                    row[source.column("timestamp")] = (str(pd.Timestamp(item[col], unit="s", tz="UTC"))
                                                       if pd.notna(item[col]) else None)
                elif col in item:
                    row[source.column(col)] = item[col]
            out.failing_rows.append(row)
    return outcomes


# What a failing expectation means, in the words of a problem message.
_WHY = {
    "expect_column_values_to_not_be_null": "(empty)",
    "expect_column_values_to_be_in_set": "(not a known label)",
    "expect_column_values_to_be_between": "(outside the partition's day)",
    "expect_column_value_lengths_to_be_between": "(text length outside the limits)",
    "expect_compound_columns_to_be_unique": "(repeated for the same customer)",
    "expect_column_values_to_be_unique": "(repeated)",
    "expect_column_values_to_be_of_type": "(wrong type)",
}


def failure_summary(outcomes: dict[str, GateOutcome]) -> str:
    """One line per failing gate, e.g. ``known_labels: ... 1 row(s) (33.33%) fail``; '' if none."""
    return "\n".join(f"{name}: {'; '.join(o.problems) or 'failed'}"
                     for name, o in outcomes.items() if not o.passed)
