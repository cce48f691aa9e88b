"""Planning a mask folder before reading voxels: what each file holds, which grid rules.

Decisions made here from names and headers only: the image, each file's structures (from
anatomy.json or the file stem), the reference grid, which off-grid files may be skipped, and
which of several files of a one-per-case kind is primary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimizer.anatomy.errors import GridMismatchError, LabelError
from optimizer.anatomy.kinds import Kind, Role, kind_for, structure_kinds
from optimizer.anatomy.readers._conventions import (
    SINGLE_INSTANCE_KINDS,
    looks_like_image,
    stem_label_table,
)
from optimizer.anatomy.readers._image_io import ImageHeader, image_stem
from optimizer.anatomy.readers.schema import AnatomySpec, FileSpec


@dataclass
class Part:
    """One structure a file will give."""

    name: str
    kind: Kind
    role: Role
    tissue: str | None
    values: tuple[int, ...] | None  # label values inside; None: any non-zero value
    recognised: bool
    label: str | None = None  # the label's own name in a label-table file ("PZ")


@dataclass
class FilePlan:
    path: Path
    stem: str
    header: ImageHeader
    parts: list[Part]
    group: str | None  # kind shared by alternative delineations; None: never an alternative
    table: dict[int, str] | None  # label table the file's values must fit
    explicit: bool = False

    @property
    def all_helper(self) -> bool:
        return all(p.role == Role.HELPER for p in self.parts)

    @property
    def has_target(self) -> bool:
        return any(p.role == Role.TARGET for p in self.parts)


def explicit_plan(path: Path, header: ImageHeader, spec: FileSpec) -> FilePlan:
    stem = image_stem(path)
    if spec.labels is not None:
        parts = []
        for value, label in sorted(spec.labels.items()):
            kind, recognised = (
                (structure_kinds()[label.kind], True) if label.kind else kind_for(label.name)
            )
            parts.append(
                Part(
                    name=label.name,
                    kind=kind,
                    role=label.role or kind.role,
                    tissue=label.tissue,
                    values=(value,),
                    recognised=recognised or label.role is not None,
                    label=label.name,
                )
            )
        table = {v: s.name for v, s in spec.labels.items()}
        return FilePlan(path, stem, header, parts, None, table, explicit=True)
    name = spec.name or stem
    kind, recognised = (structure_kinds()[spec.kind], True) if spec.kind else kind_for(name)
    part = Part(
        name=name,
        kind=kind,
        role=spec.role or kind.role,
        tissue=spec.tissue,
        values=tuple(spec.inside) if spec.inside else None,
        recognised=recognised or spec.role is not None,
    )
    # Only a file whose name the JSON leaves to us may be renamed or demoted.
    group = kind.name if spec.name is None and spec.role is None and recognised else None
    return FilePlan(path, stem, header, [part], group, None, explicit=spec.name is not None)


def convention_plan(path: Path, header: ImageHeader) -> FilePlan:
    stem = image_stem(path)
    file_kind, recognised = kind_for(stem)
    labels = stem_label_table(stem)
    if labels is not None:
        parts = []
        for value, label in sorted(labels.items()):
            kind, _ = kind_for(label)
            parts.append(Part(label, kind, kind.role, None, (value,), True, label=label))
        same_kind = len({p.kind.name for p in parts}) == 1
        group = parts[0].kind.name if same_kind else None
        return FilePlan(path, stem, header, parts, group, labels)
    part = Part(stem, file_kind, file_kind.role, None, None, recognised)
    return FilePlan(path, stem, header, [part], file_kind.name if recognised else None, None)


def choose_image(
    paths: list[Path], spec: AnatomySpec, notes: list[str]
) -> tuple[Path | None, list[Path]]:
    """(image, mask files): anatomy.json's 'image', else the first image-like stem.

    Image-like files that are not the image are not masks either (unless anatomy.json lists
    them under 'files'): they are left out with a note.
    """
    candidates = [p for p in paths if p.name not in spec.files and looks_like_image(image_stem(p))]
    if spec.image_given:
        image = next((p for p in paths if p.name == spec.image), None)
    else:
        image = candidates[0] if candidates else None
    unused = [p for p in candidates if p != image]
    if unused:
        notes.append(
            f"image-like files not used: {', '.join(p.name for p in unused)} (the image is "
            f"{image.name if image else 'none'}; choose it with anatomy.json 'image')"
        )
    return image, [p for p in paths if p != image and p not in candidates]


def choose_reference(plans: list[FilePlan]) -> FilePlan | None:
    """The first target file on the grid most files share (targets all lie on it, or fail).

    Majority rather than plain first, so that one off-grid alternative gland sorting first
    does not make every correctly gridded file look wrong.
    """
    targets = [p for p in plans if p.has_target]
    if not targets:
        return None

    def support(candidate: FilePlan) -> int:
        return sum(p.header.grid.same_as(candidate.header.grid) for p in plans)

    best = max(support(t) for t in targets)
    return next(t for t in targets if support(t) == best)


def off_grid_is_helper(plan: FilePlan, plans: list[FilePlan], reference: ImageHeader) -> bool:
    """A file off the reference grid may be skipped only if it would be a helper anyway."""
    if plan.all_helper:
        return True
    if plan.group in SINGLE_INSTANCE_KINDS:
        return any(
            p.group == plan.group and p.header.grid.same_as(reference.grid)
            for p in plans
            if p is not plan
        )
    return False


def grid_mismatch(plan: FilePlan, reference: ImageHeader) -> GridMismatchError:
    ref, other = reference.grid, plan.header.grid
    return GridMismatchError(
        f"{plan.path}: its grid {other.describe()} differs from the reference "
        f"{reference.path.name} ({ref.describe()}; max affine difference "
        f"{float(np.abs(ref.affine - other.affine).max()):.3g} mm) and it holds "
        f"{', '.join(f'{p.name} ({p.role.value})' for p in plan.parts)}; resample it onto "
        "the image grid (nearest neighbour) before loading"
    )


def name_alternatives(plans: list[FilePlan], notes: list[str]) -> None:
    """Primary file of each kind named by kind ('gland', 'PZ'); alternatives become helpers."""
    groups: dict[str, list[FilePlan]] = {}
    for plan in plans:
        if plan.group is not None:
            groups.setdefault(plan.group, []).append(plan)
    for kind, members in groups.items():
        if kind not in SINGLE_INSTANCE_KINDS and len(members) > 1:
            continue  # several lesions (or bundles, bones): each keeps its own name and role
        primary, *others = members
        if primary.table is None and not primary.explicit:
            primary.parts[0].name = kind
        for plan in others:
            for part in plan.parts:
                part.name = f"{plan.stem}_{part.label}" if part.label else plan.stem
                part.role = Role.HELPER
        if others:
            notes.append(
                f"{kind}: used {primary.path.name}; kept as helper (alternative delineation): "
                + ", ".join(
                    f"{plan.path.name} as {', '.join(p.name for p in plan.parts)}"
                    for plan in others
                )
            )


def check_unique_names(plans: list[FilePlan]) -> None:
    owners: dict[str, list[str]] = {}
    for plan in plans:
        for part in plan.parts:
            owners.setdefault(part.name, []).append(plan.path.name)
    clashes = {n: files for n, files in owners.items() if len(files) > 1}
    if clashes:
        text = "; ".join(f"{n!r} from {', '.join(f)}" for n, f in clashes.items())
        raise LabelError(
            f"structure names must be unique: {text}; give one of them another 'name' in "
            "anatomy.json"
        )
