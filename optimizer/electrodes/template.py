"""A transperineal template: a plane of parallel guide holes on a square grid.

Hole labels follow clinical brachytherapy templates: a column letter and a row number ("C4").
Orientation (both for the default, straight-up template and for a tilted one):

- columns run across the patient, from the patient's **right** (column A) to the patient's
  **left** (B, C, ...): the way a transverse ultrasound or CT image is read from the feet,
  where the patient's right is on the viewer's left;
- rows run from **posterior** (row 1, next to the rectum and the ultrasound probe) to
  **anterior** (2, 3, ...).

The column axis is RAS -x (towards patient left) and the row axis RAS +y (anterior), both
projected into the template plane, so they stay in the plane when the template is tilted.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy
from optimizer.electrodes.needle import NEEDLE_19G_DIAMETER_MM, Needle

FloatArray = npt.NDArray[np.float64]

# Transperineal prostate templates have guide holes 5 mm apart (DESIGN.md section 1; the
# usual pitch of commercial brachytherapy templates, which matRad's example reproduces).
TEMPLATE_HOLE_SPACING_MM = 5.0

# Where for_anatomy puts the plane below the target's caudal end. The plane is the depth
# reference of the search (tip depth = distance from it), not the skin: the real perineum
# lies several centimetres below the apex, where the planner has no anatomy. 15 mm keeps the
# plane clear of the apex by a few hole pitches and inside the usual planning margin (30 mm),
# so depths stay short, positive numbers. The path check (paths.py) still covers the part of
# the grid caudal to the plane, which a real needle crosses on its way in.
DEFAULT_STANDOFF_MM = 15.0

SUPERIOR = (0.0, 0.0, 1.0)
_TOWARDS_PATIENT_LEFT = np.array([-1.0, 0.0, 0.0])
_ANTERIOR = np.array([0.0, 1.0, 0.0])
_COLUMN_LETTERS = string.ascii_uppercase


class TemplateError(ValueError):
    """A template or a template needle is impossible (unknown hole, bad depth or size)."""


@dataclass(frozen=True, eq=False)
class Hole:
    """One guide hole: its label and its centre in RAS mm (on the template plane)."""

    label: str
    position_mm: FloatArray = field(repr=False)
    column: int
    row: int


def _in_plane_axes(direction: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Column axis (towards patient left) and row axis (anterior), both normal to direction."""
    column = _TOWARDS_PATIENT_LEFT - (_TOWARDS_PATIENT_LEFT @ direction) * direction
    norm = float(np.linalg.norm(column))
    if norm < 1e-3:
        raise TemplateError(
            f"template direction {direction.tolist()} points left-right, so the template's "
            "columns (patient right to left) cannot lie in its plane; tilt it less than "
            "about 89.9 degrees from superior"
        )
    column = column / norm
    row = np.cross(direction, column)
    if row @ _ANTERIOR < 0:
        row = -row
    return column, row


@dataclass(frozen=True, eq=False)
class Template:
    """A grid of ``columns`` x ``rows`` holes ``spacing_mm`` apart, centred on ``centre_mm``.

    ``direction`` is the insertion direction, the plane's unit normal (default superior, +S).
    Needle depth is measured from the plane along ``direction`` to the tip.
    """

    centre_mm: FloatArray
    direction: FloatArray = field(default_factory=lambda: np.array(SUPERIOR))
    spacing_mm: float = TEMPLATE_HOLE_SPACING_MM
    columns: int = 13
    rows: int = 13
    column_axis: FloatArray = field(init=False, repr=False)
    row_axis: FloatArray = field(init=False, repr=False)
    _holes: dict[str, Hole] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        centre = np.asarray(self.centre_mm, dtype=np.float64).reshape(3)
        d = np.asarray(self.direction, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(d))):
            raise TemplateError("template centre_mm and direction must be finite")
        norm = float(np.linalg.norm(d))
        if norm < 1e-9:
            raise TemplateError("template direction has zero length")
        d = d / norm
        if not (np.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise TemplateError(f"template spacing_mm must be > 0, got {self.spacing_mm}")
        if not (1 <= self.columns <= len(_COLUMN_LETTERS)):
            raise TemplateError(
                f"template columns must be 1..{len(_COLUMN_LETTERS)} (one letter each), "
                f"got {self.columns}"
            )
        if self.rows < 1:
            raise TemplateError(f"template rows must be >= 1, got {self.rows}")
        column_axis, row_axis = _in_plane_axes(d)
        object.__setattr__(self, "centre_mm", centre)
        object.__setattr__(self, "direction", d)
        object.__setattr__(self, "column_axis", column_axis)
        object.__setattr__(self, "row_axis", row_axis)
        holes: dict[str, Hole] = {}
        for c in range(self.columns):
            for r in range(self.rows):
                label = f"{_COLUMN_LETTERS[c]}{r + 1}"
                u = (c - (self.columns - 1) / 2.0) * self.spacing_mm
                v = (r - (self.rows - 1) / 2.0) * self.spacing_mm
                holes[label] = Hole(label, centre + u * column_axis + v * row_axis, c, r)
        object.__setattr__(self, "_holes", holes)

    @classmethod
    def for_anatomy(
        cls,
        anatomy: Anatomy,
        spacing_mm: float = TEMPLATE_HOLE_SPACING_MM,
        standoff_mm: float = DEFAULT_STANDOFF_MM,
        columns: int = 13,
        rows: int = 13,
        direction: npt.ArrayLike = SUPERIOR,
        placement_mask: npt.NDArray[np.bool_] | None = None,
    ) -> Template:
        """Centre the holes on the target's centroid and put the plane ``standoff_mm`` below it.

        "Below" is measured along ``direction`` from the caudal end of the target's voxels
        (their full extent, not just their centres). ``placement_mask`` (on the anatomy's grid)
        replaces the target for this: a focal plan's template still sits against the perineum
        below the whole gland, not inside the gland below the lesion.
        """
        if not (np.isfinite(standoff_mm) and standoff_mm >= 0):
            raise TemplateError(f"standoff_mm must be >= 0, got {standoff_mm}")
        d = np.asarray(direction, dtype=np.float64).reshape(3)
        norm = float(np.linalg.norm(d))
        if norm < 1e-9:
            raise TemplateError("template direction has zero length")
        d = d / norm
        grid = anatomy.grid
        where = anatomy.target_mask() if placement_mask is None else placement_mask
        if where.shape != grid.shape or not where.any():
            raise TemplateError(
                f"template placement mask must be a non-empty {grid.shape} mask "
                f"(got shape {where.shape}, {int(where.sum())} voxels)"
            )
        centres = grid.index_to_world(np.argwhere(where).astype(np.float64))
        centroid = centres.mean(axis=0)
        caudal = float(np.min((centres - centroid) @ d)) - _half_extent_along(grid, d)
        plane_centre = centroid + (caudal - standoff_mm) * d
        return cls(plane_centre, d, spacing_mm, columns, rows)

    def holes(self) -> list[Hole]:
        """All holes, column by column (A1, A2, ..., B1, ...)."""
        return list(self._holes.values())

    def labels(self) -> list[str]:
        return list(self._holes)

    def positions_mm(self) -> FloatArray:
        """Hole centres, shape (n_holes, 3), in the order of ``holes()``."""
        return np.array([h.position_mm for h in self._holes.values()])

    def hole(self, label: str) -> Hole:
        key = label.strip().upper()
        try:
            return self._holes[key]
        except KeyError:
            last = f"{_COLUMN_LETTERS[self.columns - 1]}{self.rows}"
            raise TemplateError(
                f"template has no hole {label!r}; holes run A1..{last} (column letter A.. from "
                "patient right to left, row number 1.. from posterior to anterior)"
            ) from None

    def needle(
        self,
        hole_label: str,
        depth_mm: float,
        exposure_mm: float,
        diameter_mm: float = NEEDLE_19G_DIAMETER_MM,
    ) -> Needle:
        """A needle through ``hole_label`` whose tip is ``depth_mm`` beyond the plane."""
        hole = self.hole(hole_label)
        if not (np.isfinite(depth_mm) and depth_mm > 0):
            raise TemplateError(f"needle {hole.label}: depth_mm must be > 0, got {depth_mm}")
        if not np.isfinite(exposure_mm) or exposure_mm > depth_mm:
            raise TemplateError(
                f"needle {hole.label}: exposure_mm {exposure_mm} exceeds depth_mm {depth_mm}; "
                "the exposed tip would stick out behind the template"
            )
        tip = hole.position_mm + depth_mm * self.direction
        return Needle(
            tip_mm=tip,
            direction=self.direction,
            exposure_mm=exposure_mm,
            diameter_mm=diameter_mm,
            hole=hole.label,
            entry_mm=hole.position_mm.copy(),
        )

    def depth_of(self, point_mm: npt.ArrayLike) -> FloatArray:
        """Signed distance of RAS points (..., 3) beyond the plane, along ``direction``."""
        p = np.asarray(point_mm, dtype=np.float64)
        return np.asarray((p - self.centre_mm) @ self.direction)


def _half_extent_along(grid: VoxelGrid, direction: FloatArray) -> float:
    """Half a voxel's extent along ``direction`` (voxels are parallelepipeds in world space)."""
    return 0.5 * float(np.sum(np.abs(grid.affine[:3, :3].T @ direction)))
