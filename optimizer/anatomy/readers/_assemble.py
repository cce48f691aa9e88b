"""The last step every reader shares: drop empty masks, check the target, build the Anatomy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.errors import MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.tissue.table import load_tissue_table


def _label(s: Structure) -> str:
    return f"{s.name!r} ({s.source})" if s.source else repr(s.name)


def assemble(
    grid: VoxelGrid,
    structures: list[Structure],
    *,
    where: str,
    case_id: str,
    source: str,
    image: npt.NDArray[np.floating] | None = None,
    notes: list[str] | None = None,
) -> Anatomy:
    """Build the Anatomy and fail now, naming ``where``, if it has no non-empty target.

    Empty masks carry nothing to plan on and trip later steps (bounding boxes), so they are
    dropped with a note; an empty *target* is reported by name when nothing else is left.
    """
    notes = list(notes or [])
    kept = [s for s in structures if s.mask.any()]
    empty = [s for s in structures if not s.mask.any()]
    if empty:
        notes.append("empty, dropped: " + ", ".join(_label(s) for s in empty))
    if not any(s.role == Role.TARGET for s in kept):
        empty_targets = [s for s in empty if s.role == Role.TARGET]
        if empty_targets:
            raise MissingTargetError(
                f"{where}: the target {', '.join(_label(s) for s in empty_targets)} has no "
                "voxels inside; check the file and which label values count as inside "
                "('inside' in anatomy.json)"
            )
        found = ", ".join(f"{_label(s)} as {s.role.value}" for s in kept) or "no structures"
        raise MissingTargetError(
            f"{where}: no target structure (found {found}); name a file after the target "
            "(prostate, gland, lesion, GTV, ...) or give it role 'target' in anatomy.json"
        )
    known_tissues = set(load_tissue_table().names())
    for s in kept:
        if s.tissue not in known_tissues:
            notes.append(
                f"structure {s.name!r}: tissue {s.tissue!r} is not in the default tissue table"
            )
    anatomy = Anatomy(
        grid=grid, structures=kept, case_id=case_id, source=source, image=image, notes=notes
    )
    anatomy.target_mask()
    return anatomy
