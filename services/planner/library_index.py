"""A plan library's index: one flat row per case, stored as Parquet.

A row holds the case's identifiers, what ran (protocol, tissue table, software, node, time),
the target volumes, the warm-start descriptor (``desc_*``), the plan summary, every criterion
(``crit_<id>_status``, ``_margin``, ``_value``) and every scalar metric (``m_<path>``). Device
and pulse limits that the evaluation checks pair by pair (``device.voltage_max_pair3``) are
folded into one criterion each: the worst status and the smallest margin over the pairs, so
that plans with different pair counts share their columns.

Column types are inferred over all rows (bool, int64, float64 or string; all-null columns are
strings), so rows of different cases, runs and libraries always make one table. The file is
written whole to a temporary name and renamed over the old one: a reader (or a crash) never
sees half an index.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# The identifying and summary columns, in this order; the rest follow sorted by name.
LEADING_COLUMNS = (
    "case_id", "status", "reason", "protocol", "passed", "failed_required", "score", "needles",
    "pairs", "target_scope", "target_volume_ml", "input_gland_volume_ml", "input_lesion_volume_ml",
    "finished_at", "seconds",
)  # fmt: skip
PLANNED = "planned"
FAILED = "failed"
CRITERION_PREFIX = "crit_"
METRIC_PREFIX = "m_"
# Worst first: one failing pair fails the folded criterion.
_STATUS_ORDER = {"fail": 0, "not_applicable": 1, "pass": 2}
_PAIR_SUFFIX = re.compile(r"_pair\d+$")


def column_key(text: str) -> str:
    """A column-name part: letters, digits and underscores only."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def criterion_column(criterion_id: str, part: str) -> str:
    return f"{CRITERION_PREFIX}{column_key(criterion_id)}_{part}"


def fold_pair_criteria(criteria: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Criteria by id, with per-pair ids (``..._pairN``) folded into their worst case."""
    folded: dict[str, dict[str, Any]] = {}
    for c in criteria:
        cid = _PAIR_SUFFIX.sub("", str(c["id"]))
        entry = {k: c.get(k) for k in ("status", "margin", "value", "limit", "unit", "kind",
                                       "severity", "description")}  # fmt: skip
        have = folded.get(cid)
        if have is None:
            folded[cid] = entry
            continue
        worse = _STATUS_ORDER.get(str(entry["status"]), 1) < _STATUS_ORDER.get(
            str(have["status"]), 1
        )
        smaller = entry["margin"] is not None and (
            have["margin"] is None or entry["margin"] < have["margin"]
        )
        if worse or (entry["status"] == have["status"] and smaller):
            folded[cid] = entry
    return folded


def criterion_columns(criteria: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cid, c in fold_pair_criteria(criteria).items():
        out[criterion_column(cid, "status")] = str(c["status"])
        out[criterion_column(cid, "margin")] = _number(c["margin"])
        out[criterion_column(cid, "value")] = _number(c["value"])
    return out


def metric_columns(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Every scalar number of an evaluation's metrics (structures and totals), flattened;
    lists (histograms, pairs) and text are left to metrics.json."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}_{column_key(str(k))}", v)
        elif isinstance(value, bool):
            out[prefix] = value
        elif isinstance(value, int | float):
            out[prefix] = _number(value)

    for section in ("structures", "totals"):
        walk(METRIC_PREFIX + section, metrics.get(section, {}))
    return out


def criteria_catalogue(criteria: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What each (pair-folded) criterion is, for library.json and the library report."""
    return {
        cid: {k: c.get(k) for k in ("kind", "unit", "limit", "severity")}
        for cid, c in fold_pair_criteria(criteria).items()
    }


def evaluation_columns(document: dict[str, Any]) -> dict[str, Any]:
    """The index columns of an evaluation (metrics.json's document)."""
    return {
        "passed": bool(document["passed"]),
        "failed_required": ", ".join(document["failed_required"]),
        "n_failed_required": len(document["failed_required"]),
        **criterion_columns(document["criteria"]),
        **metric_columns(document["metrics"]),
    }


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _column_type(values: Sequence[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if not present:
        return pa.string()
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _cast(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if kind == pa.string() and not isinstance(value, str):
        return str(value)
    if kind == pa.float64():
        return float(value)
    return value


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """One table from rows with possibly different keys (missing values are null)."""
    names: set[str] = set()
    for row in rows:
        names.update(row)
    ordered = [c for c in LEADING_COLUMNS if c in names]
    ordered += sorted(names - set(ordered))
    arrays = []
    fields = []
    for name in ordered:
        values = [row.get(name) for row in rows]
        kind = _column_type(values)
        arrays.append(pa.array([_cast(v, kind) for v in values], type=kind))
        fields.append(pa.field(name, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def table_to_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows without their null entries (as they were recorded)."""
    return [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]


def write_index(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write the index atomically: a temporary file in the same folder, then a rename."""
    table = rows_to_table(sorted(rows, key=lambda r: str(r["case_id"])))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_index(path: Path) -> pa.Table:
    return pq.read_table(path)
