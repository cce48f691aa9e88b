"""A folder of NIfTI/NRRD masks, one structure a file (or a label table a file), plus anatomy.json.

Without anatomy.json the file stems decide (see docs/anatomy_input.md): image-like stems give
the image, names map to kinds, 'zonal_PZ1_TZ2_...' splits into PZ and TZ, and a second file of a
one-per-case kind (another AI gland) is kept as a helper beside the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optimizer.anatomy.errors import LabelError, MissingTargetError, UnreadableFileError
from optimizer.anatomy.readers._assemble import assemble
from optimizer.anatomy.readers._image_io import ImageHeader, is_image_file, read_header, read_image
from optimizer.anatomy.readers._labels import (
    check_integer_labels,
    check_known_values,
    distinct_nonzero,
    mask_of,
)
from optimizer.anatomy.readers._mask_plan import (
    FilePlan,
    Part,
    check_unique_names,
    choose_image,
    choose_reference,
    convention_plan,
    explicit_plan,
    grid_mismatch,
    name_alternatives,
    off_grid_is_helper,
)
from optimizer.anatomy.readers.schema import ANATOMY_JSON, AnatomySpec, read_anatomy_spec
from optimizer.anatomy.structures import Anatomy, Structure

# Helper data files of detached NRRD headers are expected beside .nhdr files, not reported.
_QUIET_SUFFIXES = (".raw", ".raw.gz", ".json")
# A mask with more distinct values than this is summarised, not listed value by value.
_MAX_LISTED_VALUES = 8


def _value_note(plan: FilePlan, part: Part, values: list[int | float], volumes: list[float]) -> str:
    listed = ", ".join(f"{v} ({ml:.3g} ml)" for v, ml in zip(values, volumes, strict=True))
    if part.kind.name == "lesion":
        return f"{part.name} ({plan.path.name}): label values (ISUP grades) {listed}; all taken"
    return f"{part.name} ({plan.path.name}): label values {listed}; all non-zero taken as inside"


def _structures(plan: FilePlan, data: Any, voxel_ml: float, notes: list[str]) -> list[Structure]:
    where = str(plan.path)
    present = distinct_nonzero(data, where)
    if plan.table is not None:
        check_known_values(
            check_integer_labels(present, where),
            plan.table,
            where,
            "name every value in anatomy.json 'labels' or fix the label image",
        )
    out = []
    for part in plan.parts:
        if part.values is None and len(present) > _MAX_LISTED_VALUES:
            notes.append(
                f"{part.name} ({plan.path.name}): {len(present)} distinct values from "
                f"{present[0]} to {present[-1]}; all non-zero taken as inside (is it a mask?)"
            )
        elif part.values is None and (len(present) > 1 or part.kind.name == "lesion"):
            volumes = [float(np.count_nonzero(data == v)) * voxel_ml for v in present]
            notes.append(_value_note(plan, part, present, volumes))
        elif part.values is not None and plan.table is None:
            outside = [v for v in present if v not in part.values]
            if outside:
                notes.append(
                    f"{part.name} ({plan.path.name}): values {outside} not counted as inside "
                    "(anatomy.json 'inside')"
                )
        source = plan.path.name
        if part.values is not None and plan.table is not None:
            source += f" (value {part.values[0]})"
        structure, _ = Structure.from_name(
            part.name,
            mask_of(data, part.values),
            role=part.role,
            tissue=part.tissue,
            kind=part.kind.name,
            source=source,
        )
        out.append(structure)
    return out


def _load_image(path: Path, reference: ImageHeader, notes: list[str]) -> Any:
    data, header = read_image(path)
    if not header.grid.same_as(reference.grid):
        notes.append(
            f"image {path.name} not used: its grid {header.grid.describe()} differs from "
            f"{reference.path.name} ({reference.grid.describe()})"
        )
        return None
    notes.append(f"image: {path.name}")
    return np.asarray(data, dtype=np.float32)


def read_mask_folder(folder: str | Path, *, case_id: str | None = None) -> Anatomy:
    """Read a folder of masks (and optional image and anatomy.json) into an Anatomy.

    The reference grid is that of the target files (the first, by name, on the grid most
    files share); every mask must lie on it, except would-be helpers, which are skipped with
    a note. Conventions and the anatomy.json format: docs/anatomy_input.md.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UnreadableFileError(f"{folder}: not a folder (or does not exist)")
    spec_path = folder / ANATOMY_JSON
    spec = read_anatomy_spec(spec_path) if spec_path.is_file() else AnatomySpec()
    paths = sorted(p for p in folder.iterdir() if is_image_file(p) and not p.name.startswith("."))
    if not paths:
        raise UnreadableFileError(
            f"{folder}: no mask files (.nii, .nii.gz, .nrrd, .nhdr) found; put one mask per "
            "structure in this folder"
        )
    names = {p.name for p in paths}
    listed = set(spec.files) | ({spec.image} if spec.image else set())
    missing = sorted(listed - names)
    if missing:
        raise LabelError(
            f"{spec_path}: names files that are not in the folder: {', '.join(missing)}; "
            f"files present: {', '.join(sorted(names))}"
        )
    notes: list[str] = []
    others = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in names
        and not p.name.startswith(".")
        and p.name != ANATOMY_JSON
        and not p.name.lower().endswith(_QUIET_SUFFIXES)
    )
    if others:
        notes.append(f"not images, ignored: {', '.join(others)}")

    image_path, mask_paths = choose_image(paths, spec, notes)
    plans: list[FilePlan] = []
    for path in mask_paths:
        file_spec = spec.files.get(path.name)
        if file_spec is not None and file_spec.ignore:
            notes.append(f"ignored as anatomy.json asks: {path.name}")
            continue
        header = read_header(path)
        notes.extend(header.warnings)
        plan = (
            explicit_plan(path, header, file_spec)
            if file_spec is not None
            else convention_plan(path, header)
        )
        plans.append(plan)

    reference_plan = choose_reference(plans)
    where = str(folder)
    if reference_plan is None:
        found = "; ".join(
            f"{plan.path.name}: " + ", ".join(f"{p.name} ({p.role.value})" for p in plan.parts)
            for plan in plans
        )
        raise MissingTargetError(
            f"{where}: no target structure among the masks ({found or 'none'}"
            f"{'; image ' + image_path.name if image_path else ''}); name a file after the "
            "target (prostate, gland, lesion, GTV, ...) or give it role 'target' in anatomy.json"
        )
    reference = reference_plan.header
    kept: list[FilePlan] = []
    for plan in plans:
        if plan.header.grid.same_as(reference.grid):
            kept.append(plan)
        elif off_grid_is_helper(plan, plans, reference):
            notes.append(
                f"skipped {plan.path.name}: grid {plan.header.grid.describe()} differs from "
                f"the reference {reference.path.name} ({reference.grid.describe()}); it holds "
                f"only helpers ({', '.join(p.name for p in plan.parts)})"
            )
        else:
            raise grid_mismatch(plan, reference)

    name_alternatives(kept, notes)
    check_unique_names(kept)
    unknown = [
        f"{p.name} ({plan.path.name})" for plan in kept for p in plan.parts if not p.recognised
    ]
    if unknown:
        notes.append(
            "unrecognised names kept as soft tissue (helper): "
            + ", ".join(unknown)
            + "; set 'kind' or 'role' in anatomy.json if they matter"
        )

    structures: list[Structure] = []
    for plan in kept:
        data, _ = read_image(plan.path)
        structures.extend(_structures(plan, data, reference.grid.voxel_volume_ml, notes))
        del data
    image = _load_image(image_path, reference, notes) if image_path is not None else None
    return assemble(
        reference.grid,
        structures,
        where=where,
        case_id=case_id or spec.case_id or folder.name,
        source=where,
        image=image,
        notes=[f"reference grid: {reference.path.name} ({reference.grid.describe()})", *notes],
    )
