"""Data reporters for further analysis: ``csv`` (one file per table) and ``hdf5`` (arrays).

Both only read :class:`~featrob.results.Results`, so ``featrob report RUN_DIR --report csv``
produces them from any finished run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from featrob.reporters import Reporter, atomic_write, table_columns
from featrob.results import Results


def safe_name(text: str) -> str:
    """A file-name fragment: letters, digits, ``.``, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return value


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of row dicts; the header is the union of their keys in first-seen order."""
    cols = table_columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in cols])
    return buf.getvalue()


class CsvReporter(Reporter):
    """``tables/METRIC.TABLE.csv`` for every table, ``tables/METRIC.summary.csv`` and, when
    any metric has findings, ``tables/findings.csv`` (ranked)."""

    name: ClassVar[str] = "csv"
    description: ClassVar[str] = "tables/*.csv, one file per metric table (and summary)"

    def write(self, results: Results, out_dir: Path) -> list[Path]:
        """Write one CSV per table and one key/value CSV per metric summary."""
        folder = out_dir / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for metric, result in results.metrics.items():
            tables = {"summary": [{"key": k, "value": v} for k, v in result.summary.items()]}
            tables.update(result.tables)
            for table, rows in tables.items():
                if not rows:
                    continue
                path = folder / f"{safe_name(metric)}.{safe_name(table)}.csv"
                atomic_write(path, rows_to_csv(rows))
                written.append(path)
        if results.findings:
            path = folder / "findings.csv"
            atomic_write(path, rows_to_csv(results.to_json()["findings"]))
            written.append(path)
        return written


class Hdf5Reporter(Reporter):
    """``results.h5``: per metric its arrays, table columns and summary, for h5py/pandas.

    Layout: ``/METRIC/arrays/NAME``; ``/METRIC/tables/TABLE/COLUMN``, one dataset per column
    (numbers as float64 with NaN where a row has none, booleans as bool, anything else as
    UTF-8 text); ``/METRIC`` attributes ``summary`` (JSON) and ``error``; file attributes
    ``featrob``, ``config`` and ``findings`` (JSON, ranked).
    ``pandas.DataFrame({c: f[f"/m/tables/t/{c}"][()] for c in ...})`` rebuilds a table.
    """

    name: ClassVar[str] = "hdf5"
    description: ClassVar[str] = "results.h5 (arrays and table columns for h5py/pandas)"

    def write(self, results: Results, out_dir: Path) -> list[Path]:
        """Write results.h5 atomically."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "results.h5"
        tmp = out_dir / f".results.{os.getpid()}.tmp.h5"
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["featrob"] = results.featrob
                record = results.to_json()
                f.attrs["config"] = json.dumps(record["config"])
                f.attrs["findings"] = json.dumps(record["findings"])
                for metric, result in results.metrics.items():
                    group = f.create_group(safe_name(metric))
                    group.attrs["summary"] = json.dumps(result.to_json()["summary"])
                    group.attrs["error"] = result.error or ""
                    arrays = group.create_group("arrays")
                    for name, value in result.arrays.items():
                        arrays.create_dataset(safe_name(name), data=np.asarray(value))
                    tables = group.create_group("tables")
                    for table, rows in result.tables.items():
                        _write_table(tables.create_group(safe_name(table)), rows)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return [path]


def _write_table(group: h5py.Group, rows: list[dict[str, Any]]) -> None:
    cols = table_columns(rows)
    for col in cols:
        values = [row.get(col) for row in rows]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, (bool, np.bool_)) for v in present):
            data: Any = np.array([bool(v) if v is not None else False for v in values])
        elif present and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in present
        ):
            data = np.array([np.nan if v is None else float(v) for v in values])
        else:
            data = np.array([str(_cell(v)) for v in values], dtype=h5py.string_dtype())
        group.create_dataset(safe_name(col), data=data)
