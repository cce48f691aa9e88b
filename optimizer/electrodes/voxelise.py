"""Which voxels a needle's exposed part occupies, on any (oblique, anisotropic) grid.

In voxel index space every voxel is the unit cube around its integer centre, whatever the
affine, and straight lines stay straight. So the exposed axis segment is cut exactly where it
crosses the planes ``index = m + 1/2``; each piece lies in one voxel, and its share of the
parameter range times the exposed length is the chord in mm (the slab method, done for all
voxels at once). Voxels whose centre lies within the needle radius of the exposed axis are
added as well, for grids finer than the needle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.grid import VoxelGrid
from optimizer.electrodes.needle import Needle

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class NeedleOutsideGridError(ValueError):
    """A needle's exposed part does not enter the grid, so it cannot act as an electrode."""


@dataclass(frozen=True, eq=False)
class NeedleVoxels:
    """The voxels of one needle's exposed part.

    ``indices`` (N, 3): voxels the exposed axis passes through (``on_axis`` True, in order from
    the insulated end to the tip, with their chord ``axis_length_mm`` > 0), then voxels whose
    centre lies within ``radius_mm`` of the exposed axis but which the axis misses
    (``on_axis`` False, ``axis_length_mm`` 0).
    """

    needle_label: str
    grid_shape: tuple[int, int, int]
    indices: IntArray = field(repr=False)
    axis_length_mm: FloatArray = field(repr=False)
    on_axis: BoolArray = field(repr=False)
    radius_mm: float
    exposed_length_mm: float
    exposed_length_inside_mm: float

    @property
    def exposed_length_outside_mm(self) -> float:
        """How much of the exposed axis lies outside the grid."""
        return max(self.exposed_length_mm - self.exposed_length_inside_mm, 0.0)

    @property
    def fraction_inside(self) -> float:
        return self.exposed_length_inside_mm / self.exposed_length_mm

    @property
    def fully_inside(self) -> bool:
        return self.exposed_length_outside_mm <= 1e-9 * self.exposed_length_mm

    @property
    def entirely_outside(self) -> bool:
        return self.exposed_length_inside_mm <= 0.0

    def require_inside(self) -> None:
        """Raise unless some of the exposed axis lies in the grid (a solver needs it)."""
        if self.entirely_outside:
            shape = "x".join(map(str, self.grid_shape))
            raise NeedleOutsideGridError(
                f"needle {self.needle_label}: its exposed part "
                f"({self.exposed_length_mm:g} mm) lies entirely outside the {shape} grid; "
                "move the tip into the planning grid or enlarge the grid's margin"
            )

    def mask(self, shape: tuple[int, ...] | None = None, include_radius: bool = True) -> BoolArray:
        """Boolean array on the grid, True on the needle's voxels."""
        want = self.grid_shape if shape is None else tuple(int(n) for n in shape)
        if want != self.grid_shape:
            raise ValueError(
                f"needle {self.needle_label}: voxels were computed on a grid of shape "
                f"{self.grid_shape}, not {want}; voxelise again on that grid"
            )
        out = np.zeros(self.grid_shape, dtype=bool)
        idx = self.indices if include_radius else self.indices[self.on_axis]
        out[idx[:, 0], idx[:, 1], idx[:, 2]] = True
        return out


def axis_chords(start_index: FloatArray, end_index: FloatArray) -> tuple[IntArray, FloatArray]:
    """Voxels a segment (fractional index coordinates) passes through, ordered start to end.

    Returns (voxels (M, 3), fraction of the segment in each (M,)); the fractions sum to 1.
    Voxels outside the grid are included; the caller filters them. Consecutive voxels are
    26-connected (they differ by at most 1 along each axis).
    """
    a = np.asarray(start_index, dtype=np.float64)
    delta = np.asarray(end_index, dtype=np.float64) - a
    cuts = [np.array([0.0, 1.0])]
    for axis in range(3):
        if delta[axis] == 0.0:
            continue
        lo, hi = sorted((a[axis], a[axis] + delta[axis]))
        planes = np.arange(np.ceil(lo - 0.5), np.floor(hi - 0.5) + 1.0) + 0.5
        planes = planes[(planes > lo) & (planes < hi)]
        cuts.append((planes - a[axis]) / delta[axis])
    t = np.unique(np.clip(np.concatenate(cuts), 0.0, 1.0))
    mids = 0.5 * (t[:-1] + t[1:])
    voxels = np.floor(a + mids[:, None] * delta + 0.5).astype(np.int64)
    fractions = np.diff(t)
    # A cut exactly through an edge or corner can leave the same voxel on both sides of a
    # vanishing piece; merge runs so each voxel appears once.
    if len(voxels) > 1:
        new = np.ones(len(voxels), dtype=bool)
        new[1:] = np.any(voxels[1:] != voxels[:-1], axis=1)
        run = np.cumsum(new) - 1
        fractions = np.bincount(run, weights=fractions)
        voxels = voxels[new]
    return voxels, fractions


def _inside(voxels: IntArray, shape: tuple[int, int, int]) -> BoolArray:
    return np.asarray(np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1))


def voxelise(needle: Needle, grid: VoxelGrid) -> NeedleVoxels:
    """Exact voxel footprint of the needle's exposed part on ``grid``.

    Radius voxels: centre within ``needle.radius_mm`` of the exposed axis, measured
    perpendicular to it and between its two ends (the conductor is a finite cylinder; the
    insulated shaft behind it does not conduct).
    """
    start_w, tip_w = needle.exposed_segment()
    start_i, tip_i = grid.world_to_index(np.stack([start_w, tip_w]))
    voxels, fractions = axis_chords(start_i, tip_i)
    lengths = fractions * needle.exposure_mm
    inside = _inside(voxels, grid.shape)
    axis_voxels, axis_lengths = voxels[inside], lengths[inside]

    radius_voxels = _radius_voxels(needle, grid, voxels)
    if len(radius_voxels) and len(axis_voxels):
        dims = np.asarray(grid.shape, dtype=np.int64)
        flat_axis = np.ravel_multi_index(axis_voxels.T, dims)
        flat_radius = np.ravel_multi_index(radius_voxels.T, dims)
        radius_voxels = radius_voxels[~np.isin(flat_radius, flat_axis)]
    indices = np.concatenate([axis_voxels, radius_voxels]).reshape(-1, 3)
    return NeedleVoxels(
        needle_label=needle.label,
        grid_shape=grid.shape,
        indices=indices,
        axis_length_mm=np.concatenate([axis_lengths, np.zeros(len(radius_voxels))]),
        on_axis=np.concatenate(
            [np.ones(len(axis_voxels), dtype=bool), np.zeros(len(radius_voxels), dtype=bool)]
        ),
        radius_mm=needle.radius_mm,
        exposed_length_mm=float(needle.exposure_mm),
        exposed_length_inside_mm=float(axis_lengths.sum()),
    )


def _radius_voxels(needle: Needle, grid: VoxelGrid, axis_voxels: IntArray) -> IntArray:
    """In-grid voxels whose centre lies within the radius of the exposed axis.

    Such a centre is within ``radius * |row of inverse affine| + 1/2`` index units of the
    voxel holding its nearest axis point, so the search is a neighbourhood of the axis voxels
    (those outside the grid included: a needle just outside still touches border voxels).
    """
    inverse = np.linalg.inv(grid.affine[:3, :3])
    reach = np.ceil(needle.radius_mm * np.linalg.norm(inverse, axis=1) + 0.5).astype(np.int64)
    ranges = [np.arange(-n, n + 1) for n in reach]
    offsets = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    candidates = (axis_voxels[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
    candidates = candidates[_inside(candidates, grid.shape)]
    dims = np.asarray(grid.shape, dtype=np.int64)
    flat = np.unique(np.ravel_multi_index(candidates.T, dims))
    candidates = np.stack(np.unravel_index(flat, grid.shape), axis=1).astype(np.int64)
    start = needle.exposed_start_mm
    rel = grid.index_to_world(candidates.astype(np.float64)) - start
    along = rel @ needle.direction
    perpendicular = rel - along[:, None] * needle.direction
    near = (
        (along >= 0.0)
        & (along <= needle.exposure_mm)
        & (np.einsum("ij,ij->i", perpendicular, perpendicular) <= needle.radius_mm**2)
    )
    return np.asarray(candidates[near])
