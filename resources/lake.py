"""The data lake: Parquet files under one root, with a gate between written and readable.

Every write lands as ``<table>/<partition>/<run_id>.parquet``. A partition's readable version is the
one named by its ``_CURRENT`` pointer, which moves only when the version is committed (for the
dataset: when its gates pass). A rejected version stays beside it, with the reasons, for a person
to inspect; readers never see it, and the last good version stays current.

Small results (an evaluation's verdict, a registered version) are *records*: JSON in the same
layout, ``<table>/<partition>/<run_id>.json``, committed as they are written. They are how assets
hand their results to the assets downstream (``resources/io_manager.py``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    import pandas as pd

UNPARTITIONED = "_all"


class PartitionNotReadyError(LookupError):
    """A partition has no committed (validated) version."""


def _atomic_write_text(path: Path, text: str) -> None:
    # One temporary name per writer (process and thread): two runs in one process may write the
    # same pointer at once.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plain(value):
    """JSON for what ``json`` does not know: numpy scalars as numbers, anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


class LakeResource(dg.ConfigurableResource):
    """Parquet tables under ``root``; see the module docstring for the layout."""

    root: str

    def _dir(self, table: str, partition: str) -> Path:
        return Path(self.root) / table / partition

    def stage(self, table: str, partition: str, df: pd.DataFrame, run_id: str,
              meta: dict | None = None) -> Path:
        """Write a version of a partition without making it readable.

        ``meta`` (what the writer expects of the data, e.g. its known labels) is kept beside it
        for the gates that judge it.
        """
        folder = self._dir(table, partition)
        folder.mkdir(parents=True, exist_ok=True)
        if meta is not None:
            _atomic_write_text(folder / f"{run_id}.meta.json", json.dumps(meta, default=str))
        path = folder / f"{run_id}.parquet"
        tmp = folder / f".{run_id}.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def commit(self, table: str, partition: str, run_id: str) -> Path:
        """Make a staged version the partition's readable one."""
        folder = self._dir(table, partition)
        path = folder / f"{run_id}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"no staged version {run_id} of {table}/{partition}")
        self._point(folder, run_id)
        return path

    @staticmethod
    def _point(folder: Path, run_id: str) -> None:
        pointer = {"run_id": run_id, "committed_at": datetime.now(UTC).isoformat()}
        _atomic_write_text(folder / "_CURRENT", json.dumps(pointer))

    def reject(self, table: str, partition: str, run_id: str, reasons: dict) -> Path:
        """Record why a staged version was refused; the current version is left alone."""
        folder = self._dir(table, partition)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{run_id}.rejected.json"
        _atomic_write_text(path, json.dumps(reasons, indent=2, default=str))
        return path

    def write(self, table: str, df: pd.DataFrame, run_id: str, partition: str = UNPARTITIONED) -> Path:
        """Stage and commit in one step, for tables with no gate of their own."""
        self.stage(table, partition, df, run_id)
        return self.commit(table, partition, run_id)

    def write_record(self, table: str, record: Mapping, run_id: str, partition: str = UNPARTITIONED) -> Path:
        """Write ``run_id``'s record of ``table`` (JSON) and make it the current one."""
        folder = self._dir(table, partition)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{run_id}.json"
        _atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False, default=_plain))
        self._point(folder, run_id)
        return path

    def read_record(self, table: str, partition: str = UNPARTITIONED, run_id: str | None = None) -> dict | None:
        """``run_id``'s record of ``table`` (default: the current one); None when there is none."""
        run_id = run_id or self.current_run_id(table, partition)
        path = self._dir(table, partition) / f"{run_id}.json"
        return json.loads(path.read_text()) if run_id and path.exists() else None

    def current_run_id(self, table: str, partition: str = UNPARTITIONED) -> str | None:
        pointer = self._dir(table, partition) / "_CURRENT"
        if not pointer.exists():
            return None
        return json.loads(pointer.read_text())["run_id"]

    def path(self, table: str, partition: str = UNPARTITIONED, run_id: str | None = None) -> Path:
        run_id = run_id or self.current_run_id(table, partition)
        if run_id is None:
            raise PartitionNotReadyError(
                f"{table}/{partition} has no validated version: materialize it and let its "
                "checks pass first"
            )
        return self._dir(table, partition) / f"{run_id}.parquet"

    def read(self, table: str, partition: str = UNPARTITIONED, run_id: str | None = None) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(self.path(table, partition, run_id))

    def meta(self, table: str, partition: str, run_id: str) -> dict:
        path = self._dir(table, partition) / f"{run_id}.meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def staged_run_ids(self, table: str, partition: str) -> list[str]:
        folder = self._dir(table, partition)
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def partitions(self, table: str) -> list[str]:
        """Partitions with a committed version, sorted."""
        base = Path(self.root) / table
        if not base.exists():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "_CURRENT").exists())
