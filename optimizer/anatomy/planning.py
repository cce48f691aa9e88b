"""The planning grid: an isotropic grid along the image's axes, cropped to target + margin.

Real input is oblique and anisotropic (0.3-0.6 mm in-plane, 3 mm slices). The field solver
wants isotropic voxels, so every case is resampled onto a planning grid:

* its axes are the input's direction cosines (orthonormalised), so an oblique image gives an
  equally oblique planning grid and planning voxels stay parallel to the input's slices;
* it covers the bounding box of the target (union of all targets) plus ``margin_mm`` on every
  side, measured in that rotated frame, and may reach beyond the input image: voxels there
  hold no structure and ``inside_input`` is False;
* its voxel faces are put on the input's voxel faces where the spacings allow it (3 mm slices
  become exactly three 1 mm planning slices), which keeps partial voxels few.

Masks resample by *volume-preserving partial volume*, not plain nearest label. Plain nearest
quantises every slab edge of a 3 mm slice stack to the planning spacing, and all columns of a
lesion share those edges, so the errors add up instead of averaging out: a lesion on two 3.3 mm
slices becomes 6 or 7 planning slices, +-8 percent. Instead each planning voxel gets the exact
fraction ``f`` of it covered by the input mask's voxels (separable overlap weights, since both
grids share their axes), voxels with ``f = 1`` are in, ``f = 0`` out, and of the partial ones
the ``round(sum f)`` most covered are taken (ties go to the voxels whose neighbourhood is most
covered, which tapers slab edges like the organ does). The planning mask therefore has the
input's volume to within half a planning voxel, and every voxel a planning voxel deep inside or
outside keeps its label. Where the input's axes are sheared (non-orthogonal affine) the
fractions come from 3x3x3 supersampling instead; the volume still matches that estimate.

``PlanningAnatomy`` is a subclass of ``Anatomy`` (everything that takes an Anatomy takes it),
adding the parent grid and the maps between the two grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from optimizer.anatomy.errors import AnatomyError, GridMismatchError, GridTooLargeError
from optimizer.anatomy.grid import MAX_VOXELS, VoxelGrid
from optimizer.anatomy.structures import Anatomy, BoolArray

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
Order = Literal["nearest", "linear"]

DEFAULT_SPACING_MM = 1.0
DEFAULT_MARGIN_MM = 30.0

# Fractions within this of 0 or 1 count as exactly 0 or 1 (float32 overlap sums carry ~1e-7).
_FRACTION_TOLERANCE = 1e-4
# Off-axis index drift (in input voxels, over the whole planning grid) below which two grids
# count as sharing their axes; real sform matrices stored as float32 drift ~1e-5.
_AXIS_DRIFT_TOLERANCE = 1e-3
# Supersamples per axis for sheared inputs (27 per planning voxel).
_SUPERSAMPLES = 3


@dataclass(eq=False)
class PlanningAnatomy(Anatomy):
    """An Anatomy on a planning grid, remembering the grid it came from.

    ``parent_grid`` is the grid of the anatomy ``make_planning_grid`` was given (the input
    image's grid for a case read from disk). ``inside_input`` marks planning voxels whose centre
    lies inside the parent grid; outside it no structure exists and the image is 0 (the volume a
    mask has in planning voxels straddling the input's edge goes to its partial voxels inside).
    """

    parent_grid: VoxelGrid = field(kw_only=True)
    spacing_mm: float = field(kw_only=True)
    margin_mm: float = field(kw_only=True)
    inside_input: BoolArray = field(kw_only=True, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inside_input.shape != self.grid.shape:
            raise GridMismatchError(
                f"inside_input has shape {self.inside_input.shape} but the planning grid is "
                f"{self.grid.shape}"
            )

    def map_to_input(
        self, values: npt.ArrayLike, *, order: Order = "nearest", fill: float = 0.0
    ) -> npt.NDArray[np.generic]:
        """Values on the planning grid (shape, or shape + trailing dims) onto the parent grid.

        ``nearest`` keeps the dtype (bool masks stay bool); ``linear`` interpolates trilinearly
        and returns float64. Parent voxels outside the planning grid get ``fill``.
        """
        return resample(values, self.grid, self.parent_grid, order=order, fill=fill)

    def map_from_input(
        self, values_on_input: npt.ArrayLike, *, order: Order = "linear"
    ) -> npt.NDArray[np.generic]:
        """Values on the parent grid onto the planning grid.

        Boolean arrays are masks and resample the way structures do (volume-preserving partial
        volume); other arrays interpolate with ``order`` and read 0 outside the parent grid.
        """
        arr = np.asarray(values_on_input)
        if arr.dtype == np.bool_:
            _check_shape(arr, self.parent_grid, "values_on_input")
            return resample_mask(arr, self.parent_grid, self.grid, self.inside_input)
        return resample(arr, self.parent_grid, self.grid, order=order, fill=0.0)


def make_planning_grid(
    anatomy: Anatomy,
    spacing_mm: float = DEFAULT_SPACING_MM,
    margin_mm: float = DEFAULT_MARGIN_MM,
    max_voxels: int = MAX_VOXELS,
) -> PlanningAnatomy:
    """Resample ``anatomy`` onto an isotropic grid around its target (see module docstring).

    Raises MissingTargetError when the anatomy has no (non-empty) target and GridTooLargeError
    when the grid would exceed ``max_voxels``.
    """
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise AnatomyError(f"planning spacing must be a positive number of mm, got {spacing_mm}")
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise AnatomyError(f"planning margin must be zero or more mm, got {margin_mm}")
    parent = anatomy.grid
    grid = _planning_grid(parent, anatomy.target_mask(), spacing_mm, margin_mm, max_voxels)

    matrix, offset = _index_map(parent, grid)
    inside = _inside(matrix, offset, grid.shape, parent.shape)
    structures = [replace(s, mask=resample_mask(s.mask, parent, grid, inside)) for s in anatomy]
    image = None
    if anatomy.image is not None:
        image = resample(anatomy.image, parent, grid, order="linear").astype(np.float32)

    notes = list(anatomy.notes)
    outside = 1.0 - float(inside.mean())
    notes.append(
        f"planning grid: {grid.describe()}, {margin_mm:g} mm margin around the target, axes "
        f"along the input image's; {100 * outside:.0f} percent of it lies outside the input "
        "image (no structure there)"
    )
    for before, after in zip(anatomy, structures, strict=True):
        if before.mask.any() and not after.mask.any():
            notes.append(f"structure {after.name!r} lies outside the planning grid (empty there)")
    return PlanningAnatomy(
        grid=grid,
        structures=structures,
        case_id=anatomy.case_id,
        source=anatomy.source,
        image=image,
        notes=notes,
        parent_grid=parent,
        spacing_mm=float(spacing_mm),
        margin_mm=float(margin_mm),
        inside_input=inside,
    )


def frame_rotation(grid: VoxelGrid) -> FloatArray:
    """The orthonormal matrix nearest to the grid's direction cosines (polar decomposition).

    Equal to ``grid.directions`` for an orthogonal affine; keeps its handedness (axis flips).
    """
    u, _, vt = np.linalg.svd(grid.directions)
    return np.asarray(u @ vt)


def _planning_grid(
    parent: VoxelGrid, target: BoolArray, spacing: float, margin: float, max_voxels: int
) -> VoxelGrid:
    rotation = frame_rotation(parent)
    origin = parent.affine[:3, 3]
    # Corners of the target's index bounding box, pushed out by half a voxel to the voxel faces.
    lo_idx, hi_idx = _index_bbox(target)
    corners = np.array(
        [
            [(lo_idx, hi_idx)[b][a] + (-0.5, 0.5)[b] for a, b in enumerate(bits)]
            for bits in np.ndindex(2, 2, 2)
        ],
        dtype=np.float64,
    )
    frame = (parent.index_to_world(corners) - origin) @ rotation
    lo = frame.min(axis=0) - margin
    hi = frame.max(axis=0) + margin
    # Planning voxel faces on the input's voxel faces: the first input face sits at -s/2.
    phase = -parent.spacing_mm / 2 + spacing / 2
    first = np.floor((lo - phase) / spacing + 0.5)
    last = np.ceil((hi - phase) / spacing - 0.5)
    counts = (last - first + 1).astype(int)
    shape = (int(counts[0]), int(counts[1]), int(counts[2]))
    total = math.prod(shape)
    if total > max_voxels:
        coarser = math.ceil(spacing * (total / max_voxels) ** (1 / 3) * 10) / 10
        raise GridTooLargeError(
            f"planning grid would be {shape[0]}x{shape[1]}x{shape[2]} = {total:,} voxels at "
            f"{spacing:g} mm with a {margin:g} mm margin, over the budget of {max_voxels:,}; "
            f"use a coarser spacing (about {coarser:g} mm) or a smaller margin"
        )
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    affine[:3, 3] = origin + rotation @ (phase + first * spacing)
    return VoxelGrid(shape, affine)


def _index_bbox(mask: BoolArray) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Inclusive index bounds of a non-empty mask (two passes over it, no index lists)."""
    plane = np.any(mask, axis=2)
    lo, hi = [], []
    for profile in (np.any(plane, axis=1), np.any(plane, axis=0), np.any(mask, axis=(0, 1))):
        hits = np.flatnonzero(profile)
        lo.append(hits[0])
        hi.append(hits[-1])
    return np.asarray(lo), np.asarray(hi)


# ----------------------------------------------------------------------------------------
# Resampling between two grids. ``matrix @ dst_index + offset`` is the source index.


def _index_map(src: VoxelGrid, dst: VoxelGrid) -> tuple[FloatArray, FloatArray]:
    m = np.linalg.inv(src.affine) @ dst.affine
    return np.asarray(m[:3, :3]), np.asarray(m[:3, 3])


def _check_shape(arr: npt.NDArray[np.generic], grid: VoxelGrid, what: str) -> None:
    if arr.shape[:3] != grid.shape:
        raise GridMismatchError(
            f"{what} has shape {arr.shape} but the grid is {grid.shape}; pass an array on "
            "that grid (optionally with trailing dimensions)"
        )


def _inside(
    matrix: FloatArray,
    offset: FloatArray,
    shape: tuple[int, int, int],
    src_shape: tuple[int, int, int],
) -> BoolArray:
    """Which dst voxel centres fall inside the src voxels, without a coordinate array."""
    axes = [
        np.arange(n, dtype=np.float64).reshape([-1 if a == b else 1 for b in range(3)])
        for a, n in enumerate(shape)
    ]
    inside = np.ones(shape, dtype=bool)
    for a in range(3):
        c = offset[a] + matrix[a, 0] * axes[0] + matrix[a, 1] * axes[1] + matrix[a, 2] * axes[2]
        inside &= (c >= -0.5) & (c < src_shape[a] - 0.5)
    return inside


def _dst_box(
    src: VoxelGrid, dst: VoxelGrid
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Index box of dst voxels whose centres can fall inside src, or None."""
    corners = np.array(
        [
            [(-0.5, n - 0.5)[b] for n, b in zip(src.shape, bits, strict=True)]
            for bits in np.ndindex(2, 2, 2)
        ],
        dtype=np.float64,
    )
    idx = dst.world_to_index(src.index_to_world(corners))
    lo = np.maximum(np.floor(idx.min(axis=0)), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(axis=0)) + 1, dst.shape).astype(int)
    if np.any(hi <= lo):
        return None
    return (int(lo[0]), int(lo[1]), int(lo[2])), (int(hi[0]), int(hi[1]), int(hi[2]))


def resample(
    values: npt.ArrayLike,
    src: VoxelGrid,
    dst: VoxelGrid,
    *,
    order: Order = "nearest",
    fill: float = 0.0,
) -> npt.NDArray[np.generic]:
    """Sample ``values`` (on src, optional trailing dims) at dst voxel centres.

    ``nearest`` takes the src voxel containing the centre and keeps the dtype; ``linear`` is
    trilinear (clamped at the border voxels) and returns float64. Centres outside src get fill.
    """
    arr = np.asarray(values)
    _check_shape(arr, src, "values")
    if order not in ("nearest", "linear"):
        raise AnatomyError(f"order must be 'nearest' or 'linear', got {order!r}")
    trailing = arr.shape[3:]
    out_dtype = arr.dtype if order == "nearest" else np.dtype(np.float64)
    out = np.full(dst.shape + trailing, fill, dtype=out_dtype)
    box = _dst_box(src, dst)
    if box is None:
        return out
    lo, hi = box
    box_shape = (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])
    matrix, offset = _index_map(src, dst)
    offset = offset + matrix @ np.asarray(lo, dtype=np.float64)
    inside = _inside(matrix, offset, box_shape, src.shape)
    flat_src = arr.reshape((*src.shape, -1))
    flat_out = out.reshape((*dst.shape, -1))  # a view: out is freshly allocated, contiguous
    for t in range(flat_src.shape[3]):
        channel = flat_src[..., t]
        if channel.dtype == np.bool_:
            channel = channel.view(np.uint8)
        sampled = ndimage.affine_transform(
            channel,
            matrix,
            offset,
            output_shape=box_shape,
            order=0 if order == "nearest" else 1,
            mode="nearest",
            prefilter=False,
        )
        flat_out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2], t] = np.where(
            inside, sampled.astype(out_dtype), out_dtype.type(fill)
        )
    return out


def resample_mask(
    mask: BoolArray, src: VoxelGrid, dst: VoxelGrid, inside: BoolArray | None = None
) -> BoolArray:
    """A mask on src onto dst, preserving its volume (see the module docstring).

    Only dst voxels whose centre lies inside src (``inside``, computed when not given) may
    hold the mask; the part of the volume in voxels straddling src's edge goes to the most
    covered partial voxels inside.
    """
    arr = np.asarray(mask, dtype=bool)
    _check_shape(arr, src, "mask")
    if inside is None:
        matrix, offset = _index_map(src, dst)
        inside = _inside(matrix, offset, dst.shape, src.shape)
    return volume_preserving_threshold(covered_fraction(arr, src, dst), inside)


def covered_fraction(mask: BoolArray, src: VoxelGrid, dst: VoxelGrid) -> Float32Array:
    """Per dst voxel, the fraction of its volume covered by the src mask's voxels."""
    out = np.zeros(dst.shape, dtype=np.float32)
    if not mask.any():
        return out
    matrix, offset = _index_map(src, dst)
    off_diagonal = np.abs(matrix - np.diag(np.diag(matrix)))
    drift = off_diagonal @ np.asarray(dst.shape, dtype=np.float64)
    if np.all(drift < _AXIS_DRIFT_TOLERANCE):
        _separable_fraction(mask, np.diag(matrix).copy(), offset, out)
    else:
        _supersampled_fraction(mask, matrix, offset, src, dst, out)
    return out


def _axis_weights(scale: float, offset: float, n_dst: int, lo: int, hi: int) -> Float32Array:
    """Overlap of dst voxel p (src-index interval centre scale*p+offset, width |scale|) with
    src voxels lo..hi-1, as a fraction of the dst voxel: shape (n_dst, hi - lo)."""
    centre = scale * np.arange(n_dst, dtype=np.float64)[:, None] + offset
    half = abs(scale) / 2
    src_idx = np.arange(lo, hi, dtype=np.float64)[None, :]
    overlap = np.minimum(centre + half, src_idx + 0.5) - np.maximum(centre - half, src_idx - 0.5)
    return np.asarray(np.clip(overlap, 0.0, None) / (2 * half), dtype=np.float32)


def _separable_fraction(
    mask: BoolArray, scale: FloatArray, offset: FloatArray, out: Float32Array
) -> None:
    lo, hi = _index_bbox(mask)
    weights, rows = [], []
    for a in range(3):
        w = _axis_weights(
            float(scale[a]), float(offset[a]), out.shape[a], int(lo[a]), int(hi[a]) + 1
        )
        used = np.flatnonzero(w.any(axis=1))
        if used.size == 0:
            return
        r0, r1 = int(used[0]), int(used[-1]) + 1
        weights.append(w[r0:r1])
        rows.append((r0, r1))
    block: npt.NDArray[np.float32] = mask[
        lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1
    ].astype(np.float32)
    # Contract the most-shrinking axis first: the cost is dominated by the first product.
    for a in sorted(range(3), key=lambda a: weights[a].shape[0] / weights[a].shape[1]):
        block = np.moveaxis(np.tensordot(weights[a], block, axes=([1], [a])), 0, a)
    (r0, r1), (s0, s1), (t0, t1) = rows
    out[r0:r1, s0:s1, t0:t1] = block


def _supersampled_fraction(
    mask: BoolArray,
    matrix: FloatArray,
    offset: FloatArray,
    src: VoxelGrid,
    dst: VoxelGrid,
    out: Float32Array,
) -> None:
    # Only the dst box around the mask's bounding box needs sampling.
    lo, hi = _index_bbox(mask)
    corners = np.array(
        [[(lo[a] - 1, hi[a] + 1)[b] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)],
        dtype=np.float64,
    )
    idx = dst.world_to_index(src.index_to_world(corners))
    d_lo = np.maximum(np.floor(idx.min(axis=0)) - 1, 0).astype(int)
    d_hi = np.minimum(np.ceil(idx.max(axis=0)) + 2, dst.shape).astype(int)
    if np.any(d_hi <= d_lo):
        return
    box_shape = tuple(int(n) for n in d_hi - d_lo)
    base = offset + matrix @ d_lo.astype(np.float64)
    src_u8 = mask.view(np.uint8)
    steps = (np.arange(_SUPERSAMPLES) + 0.5) / _SUPERSAMPLES - 0.5
    total = np.zeros(box_shape, dtype=np.float32)
    for shift in np.array(np.meshgrid(steps, steps, steps, indexing="ij")).reshape(3, -1).T:
        total += ndimage.affine_transform(
            src_u8,
            matrix,
            base + matrix @ shift,
            output_shape=box_shape,
            order=0,
            mode="constant",
            cval=0,
            prefilter=False,
        )
    out[d_lo[0] : d_hi[0], d_lo[1] : d_hi[1], d_lo[2] : d_hi[2]] = total / _SUPERSAMPLES**3


def volume_preserving_threshold(
    fraction: Float32Array, allowed: BoolArray | None = None
) -> BoolArray:
    """Binarise covered fractions keeping ``round(sum f)`` voxels: all full ones, none empty
    ones, and of the partial ones the most covered (ties: most covered neighbourhood), taken
    only where ``allowed`` (the sum still counts every fraction)."""
    full = fraction > 1.0 - _FRACTION_TOLERANCE
    partial = (fraction > _FRACTION_TOLERANCE) & ~full
    if allowed is not None:
        full &= allowed
        partial &= allowed
    result = full.copy()
    n_partial = int(np.count_nonzero(partial))
    if n_partial == 0:
        return result
    wanted = round(float(fraction.sum(dtype=np.float64))) - int(np.count_nonzero(full))
    wanted = min(max(wanted, 0), n_partial)
    if wanted == 0:
        return result
    if wanted == n_partial:
        return result | partial
    lo, hi = _index_bbox(partial)
    window = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
    local = fraction[window]
    where = np.nonzero(partial[window])
    neighbourhood = ndimage.uniform_filter(local, size=3, mode="constant")[where]
    # Quantise f so float noise in the overlap sums cannot outrank a real difference.
    rank = np.lexsort((-neighbourhood, -np.round(local[where] / _FRACTION_TOLERANCE)))
    take = rank[:wanted]
    chosen = tuple(w[take] + s.start for w, s in zip(where, window, strict=True))
    result[chosen] = True
    return result
