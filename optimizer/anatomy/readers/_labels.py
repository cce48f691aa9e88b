"""Label values in a voxel array: which values occur, which a table defines, and their masks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from optimizer.anatomy.errors import LabelError, UnreadableFileError
from optimizer.anatomy.readers.schema import (
    LabelSpec,
    describe_validation_error,
    parse_label_table_json,
    read_json,
)

_CSV_COLUMNS = ("value", "name", "role", "tissue", "kind")


def distinct_nonzero(array: npt.NDArray[Any], where: str) -> list[int | float]:
    """Sorted distinct non-zero values; NaN or infinite voxels are an error, not background."""
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise LabelError(f"{where}: holds NaN or infinite voxels; a mask needs finite labels")
    values = np.unique(array[array != 0])
    return [v.item() for v in values]


def check_integer_labels(values: list[int | float], where: str) -> list[int]:
    bad = [v for v in values if float(v) != int(v)]
    if bad:
        raise LabelError(
            f"{where}: label values must be whole numbers, found {bad[:5]}; save the label "
            "image with an integer data type"
        )
    return [int(v) for v in values]


def check_known_values(values: list[int], table: dict[int, Any], where: str, fix: str) -> None:
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise LabelError(
            f"{where}: label value(s) {', '.join(map(str, unknown))} occur in the image but "
            f"not in its label table (defined: {', '.join(map(str, sorted(table)))}); {fix}"
        )


def mask_of(array: npt.NDArray[Any], values: tuple[int, ...] | None) -> npt.NDArray[np.bool_]:
    """Voxels whose value is one of ``values``; any non-zero value when ``values`` is None."""
    if values is None:
        return np.asarray(array != 0)
    if len(values) == 1:
        return np.asarray(array == values[0])
    return np.isin(array, values)


def _csv_table(path: Path) -> dict[int, LabelSpec]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UnreadableFileError(f"{path}: cannot read as CSV ({exc})") from None
    if not rows:
        raise LabelError(f"{path}: label table has no rows; expected a header 'value,name'")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("value", "name") if c not in header]
    extra = [c for c in header if c not in _CSV_COLUMNS]
    if missing or extra:
        raise LabelError(
            f"{path}: CSV columns {header}: need 'value' and 'name', optional "
            f"'role', 'tissue', 'kind'"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
        )
    table: dict[int, LabelSpec] = {}
    for line, row in enumerate(rows, start=2):
        cells = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        try:
            value = int(cells["value"])
        except ValueError:
            raise LabelError(
                f"{path}, line {line}: value {cells['value']!r} is not an integer"
            ) from None
        if value == 0 or value in table:
            why = "0 is background" if value == 0 else "it is defined twice"
            raise LabelError(f"{path}, line {line}: value {value} cannot be used ({why})")
        fields = {k: v for k, v in cells.items() if k != "value" and v}
        try:
            table[value] = LabelSpec.model_validate(fields)
        except ValidationError as exc:
            raise LabelError(describe_validation_error(exc, Path(f"{path}, line {line}"))) from None
    names = [s.name for s in table.values()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise LabelError(f"{path}: label names must be unique; repeated: {', '.join(repeated)}")
    return table


def read_label_table(path: Path) -> dict[int, LabelSpec]:
    """A label table from JSON ({"1": "gland", ...}) or CSV (value,name[,role,tissue,kind])."""
    if not path.is_file():
        raise UnreadableFileError(f"{path}: label table not found")
    if path.suffix.lower() == ".csv":
        return _csv_table(path)
    if path.suffix.lower() == ".json":
        return parse_label_table_json(read_json(path), path)
    raise UnreadableFileError(f"{path}: a label table must be .json or .csv")
