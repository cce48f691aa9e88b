"""One label image (NIfTI/NRRD) plus a table value -> name[, role, tissue, kind]."""

from __future__ import annotations

from pathlib import Path

from optimizer.anatomy.errors import LabelError, UnreadableFileError
from optimizer.anatomy.readers._assemble import assemble
from optimizer.anatomy.readers._image_io import image_stem, read_image
from optimizer.anatomy.readers._labels import (
    check_integer_labels,
    check_known_values,
    distinct_nonzero,
    mask_of,
    read_label_table,
)
from optimizer.anatomy.structures import Anatomy, Structure


def find_label_table(label_map: Path) -> Path | None:
    """The table beside a label map: <stem>.json, then <stem>.csv."""
    stem = image_stem(label_map)
    for suffix in (".json", ".csv"):
        candidate = label_map.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_label_map(
    path: str | Path, table: str | Path | None = None, *, case_id: str | None = None
) -> Anatomy:
    """Split a label image into one structure per table entry.

    ``table`` defaults to <stem>.json or <stem>.csv beside the image. Every non-zero value in
    the image must be in the table; entries absent from the image are dropped with a note.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: label map not found")
    table_path = Path(table) if table is not None else find_label_table(path)
    if table_path is None:
        stem = image_stem(path)
        raise LabelError(
            f'{path}: no label table; put {stem}.json ({{"1": "prostate", ...}}) or '
            f"{stem}.csv (value,name[,role,tissue,kind]) beside it"
        )
    labels = read_label_table(table_path)
    data, header = read_image(path)
    where = str(path)
    present = check_integer_labels(distinct_nonzero(data, where), where)
    check_known_values(present, labels, where, f"add them to {table_path.name}")
    structures: list[Structure] = []
    unknown: list[str] = []
    for value, spec in sorted(labels.items()):
        structure, recognised = Structure.from_name(
            spec.name,
            mask_of(data, (value,)),
            role=spec.role,
            tissue=spec.tissue,
            kind=spec.kind,
            source=f"{path.name} (value {value})",
        )
        if not recognised:
            unknown.append(spec.name)
        structures.append(structure)
    notes = [f"label map {path.name} with table {table_path.name}", *header.warnings]
    if unknown:
        notes.append(
            "unrecognised names kept as soft tissue (helper): "
            + ", ".join(unknown)
            + f"; give them a 'kind' or 'role' in {table_path.name} if they matter"
        )
    return assemble(
        header.grid,
        structures,
        where=where,
        case_id=case_id or image_stem(path),
        source=where,
        notes=notes,
    )
