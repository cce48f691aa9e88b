"""What is treated: the lesion(s) alone (focal) or the whole gland.

Electroporation of the prostate is most often focal: the segmented lesion or recurrence plus
a margin, with the rest of the gland left alone (focal IRE and ECT series); whole-gland
treatment is the other choice. A case that segments both a gland and a lesion is ambiguous,
so the scope is a planning option:

* ``"lesion"``: lesion kinds stay targets; the gland becomes a helper structure (kept for its
  conductivity, drawn in pictures, no coverage asked of it);
* ``"gland"``: every target structure stays one (the lesion inside the gland is covered anyway);
* ``"auto"`` (default): ``"lesion"`` when a lesion is segmented, else ``"gland"``.

The choice is written into the anatomy's notes, so every report and metrics file says it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, get_args

from optimizer.anatomy.errors import AnatomyError, MissingTargetError
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.structures import Anatomy

TargetScope = Literal["auto", "lesion", "gland"]
TARGET_SCOPES: tuple[str, ...] = get_args(TargetScope)
LESION_KIND = "lesion"
GLAND_KIND = "gland"


def check_target_scope(scope: str) -> TargetScope:
    if scope not in TARGET_SCOPES:
        raise AnatomyError(
            f"unknown target scope {scope!r}; use 'lesion' (focal: the segmented lesions), "
            f"'gland' (the whole gland) or 'auto' (lesions when segmented, else the gland)"
        )
    return scope  # type: ignore[return-value]


def resolve_target_scope(anatomy: Anatomy, scope: str) -> Literal["lesion", "gland"]:
    """The scope ``"auto"`` stands for on this anatomy, or the scope given after checking it
    can be met."""
    s = check_target_scope(scope)
    lesions = [x for x in anatomy.with_role(Role.TARGET) if x.kind.name == LESION_KIND]
    if s == "auto":
        return "lesion" if any(x.mask.any() for x in lesions) else "gland"
    if s == "lesion" and not any(x.mask.any() for x in lesions):
        targets = ", ".join(x.name for x in anatomy.with_role(Role.TARGET)) or "none"
        raise MissingTargetError(
            f"case {anatomy.case_id!r}: target scope 'lesion' asks for a segmented lesion, but "
            f"there is none (targets: {targets}); plan the whole gland with target scope "
            "'gland' or add a lesion mask"
        )
    return s


def apply_target_scope(anatomy: Anatomy, scope: str = "auto") -> tuple[Anatomy, str]:
    """A copy of ``anatomy`` whose targets follow ``scope``, and the scope resolved."""
    resolved = resolve_target_scope(anatomy, scope)
    notes = list(anatomy.notes)
    if resolved == "gland":
        targets = ", ".join(s.name for s in anatomy.with_role(Role.TARGET))
        notes.append(f"target scope: whole gland (targets: {targets})")
        return replace(anatomy, structures=list(anatomy.structures), notes=notes), resolved
    structures = []
    demoted = []
    for s in anatomy.structures:
        if s.role == Role.TARGET and s.kind.name != LESION_KIND:
            structures.append(replace(s, role=Role.HELPER))
            demoted.append(s.name)
        else:
            structures.append(s)
    kept = ", ".join(s.name for s in structures if s.role == Role.TARGET)
    note = f"target scope: focal, the lesion(s) {kept}"
    if demoted:
        note += (
            f"; {', '.join(demoted)} kept for conductivity and display only (no coverage "
            "asked; target scope 'gland' plans the whole gland)"
        )
    notes.append(note)
    return replace(anatomy, structures=structures, notes=notes), resolved
