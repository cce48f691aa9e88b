"""Sub-voxel needles: a Peaceman-type well-index correction of the faces around a needle.

The problem. A 19 G needle (radius r_w = 0.535 mm) on a 1 or 2 mm grid is thinner than a
voxel. Held at its potential, a column of voxels acts like a cylinder of some *equivalent*
radius r_eq fixed by the lattice, not by the needle, so the current (and the field near the
needle) comes out wrong by tens of percent (DESIGN.md section 4).

Where r_eq comes from. Take one column of Dirichlet voxels along a grid axis in a homogeneous
medium; in each cross-section the 7-point stencil is the 5-point 2-D Laplacian. Its lattice
Green's function (the potential kernel of the square lattice) is, for a line current q' per
unit length and unit face conductance per unit length sigma,

    phi(0) - phi(x) = q' / (2 pi sigma) * (ln|x|/h + gamma + 3/2 ln 2) + O(h^2/|x|^2),

while a continuous cylinder of radius r held at phi(0) gives q'/(2 pi sigma) ln(|x|/r). The
two agree far away when r = r_eq = h exp(-gamma) / 2^(3/2) = 0.1985 h (Peaceman 1978, SPE J
18:183, found 0.2 h numerically; this is the exact constant).

The correction. Scale the conductance of the four in-plane faces from the needle voxel to
its neighbours by a factor f. By symmetry each face carries q'/4, so the drop across them
becomes q'/(4 sigma f) instead of q'/(4 sigma), while everything beyond is unchanged. The far
field matches a cylinder of the true radius r_w when

    q'/(4 sigma) (1/f - 1) = q'/(2 pi sigma) ln(r_eq / r_w),  i.e.  1/f = 1 - (2/pi) ln(r_w/r_eq).

For r_w = 0.535 mm: f = 2.71 at h = 1 mm and 1.24 at h = 2 mm. Current and flux stay exactly
conservative because the solver and the current read use the same scaled faces.

Thick needles and any cross-section. On a 0.5 mm grid a 19 G needle covers several voxels per
cross-section (the voxeliser adds every voxel whose centre lies within r_w), and an oblique or
off-centre axis gives other shapes. The single-voxel formula then does not apply, so the factor
is *calibrated* per cross-section pattern: a small 2-D lattice problem (the pattern held at 1
inside a lattice circle of radius 32 h held at 0) is solved for the factor f on the pattern's
boundary faces that makes its resistance equal to that of a cylinder of radius r_w. The outer
circle's own discretisation cancels by referencing the same circle around one voxel, whose
r_eq is known exactly (above); an off-centre pattern changes the circle's resistance only at
second order in (offset / radius). Results are cached per (pattern, r_w/h). For the single
voxel the calibration reproduces the closed form (a test checks it). When even f -> infinity
cannot make the voxel set as large as the needle, the voxelisation is too thin and a
``SolverError`` says so.

Oblique needles (an approximation, documented). The cross-sections are taken perpendicular
to the grid axis closest to the needle axis (the dominant axis); each slice's pattern gets its
own factor on its in-plane boundary faces. A cylinder tilted by theta from that axis cuts the
slice in an ellipse of semi-axes r_w and r_w / cos(theta), whose 2-D equivalent radius (its
logarithmic capacity) is r_w (1 + 1/cos theta) / 2; that radius is the calibration target.
Faces along the dominant axis (at the staircase steps and at the tips) are left alone, so a
tilted needle's current is within a few percent of the same needle aligned with the grid
(a test checks a tilted pair against the aligned one). Tips get no correction either: their
end effects are three-dimensional and resolved only as well as the grid allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.optimize import brentq

from optimizer.field.errors import SolverError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Exact equivalent radius of one Dirichlet voxel column in the 5-point lattice, in units of h:
# exp(-Euler gamma) / 2**1.5 (lattice potential kernel; Peaceman 1978 measured 0.2).
PEACEMAN_R_EQ_OVER_H = math.exp(-0.5772156649015329) / 2.0**1.5
# Radius (in voxels) of the lattice circle of the 2-D calibration problem.
_CALIBRATION_RADIUS = 32
# Search range of the face factor; beyond it the voxel set is badly matched to the needle.
_FACTOR_RANGE = (1e-3, 1e4)


def single_voxel_factor(radius_over_h: float) -> float:
    """Closed-form factor for a one-voxel cross-section (grid-aligned thin needle)."""
    inverse = 1.0 - (2.0 / math.pi) * math.log(radius_over_h / PEACEMAN_R_EQ_OVER_H)
    if inverse <= 0.0:
        raise SolverError(
            f"needle radius {radius_over_h:.3g} h is too large for a one-voxel cross-section; "
            "voxelise the needle with every voxel whose centre lies within its radius"
        )
    return 1.0 / inverse


Pattern = tuple[tuple[int, int], ...]


def _conductance_2d(pattern: Pattern, factor: float) -> float:
    """Current per unit length (sigma = 1) from the pattern at 1 to a lattice circle at 0."""
    cells = np.asarray(pattern, dtype=np.int64)
    centre = np.rint(cells.mean(axis=0)).astype(np.int64)
    radius = _CALIBRATION_RADIUS
    span = int(np.abs(cells - centre).max()) + radius + 2
    size = 2 * span + 1
    u, v = np.meshgrid(np.arange(size) - span, np.arange(size) - span, indexing="ij")
    outside = u**2 + v**2 > radius**2
    inner = np.zeros((size, size), dtype=bool)
    inner[cells[:, 0] - centre[0] + span, cells[:, 1] - centre[1] + span] = True
    free = ~outside & ~inner
    number = -np.ones((size, size), dtype=np.int64)
    number[free] = np.arange(int(free.sum()))

    rows: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[FloatArray] = []
    diag = np.zeros(int(free.sum()))
    rhs = np.zeros(int(free.sum()))
    current = 0.0
    for du, dv in ((1, 0), (0, 1)):
        a = (slice(0, size - du), slice(0, size - dv))
        b = (slice(du, size), slice(dv, size))
        boundary = inner[a] != inner[b]
        g = np.where(boundary, factor, 1.0)
        for p, q in ((a, b), (b, a)):
            fp, fq = free[p], free[q]
            both = fp & fq
            rows.append(number[p][both])
            cols.append(number[q][both])
            vals.append(-g[both])
            np.add.at(diag, number[p][fp], g[fp])
            # A free cell next to the pattern: its face ties it to potential 1.
            tie = fp & inner[q]
            np.add.at(rhs, number[p][tie], g[tie])
    n = int(free.sum())
    matrix = sp.csr_matrix(
        (
            np.concatenate([*vals, diag]),
            (np.concatenate([*rows, np.arange(n)]), np.concatenate([*cols, np.arange(n)])),
        ),
        shape=(n, n),
    )
    phi = spla.spsolve(matrix.tocsc(), rhs)
    # Current leaving the pattern = sum over its boundary faces of g (1 - phi_neighbour).
    for du, dv in ((1, 0), (0, 1)):
        a = (slice(0, size - du), slice(0, size - dv))
        b = (slice(du, size), slice(dv, size))
        for p, q in ((a, b), (b, a)):
            tie = inner[p] & free[q]
            current += factor * float(np.sum(1.0 - phi[number[q][tie]]))
    return current


@lru_cache(maxsize=1)
def _reference_resistance() -> float:
    """Resistance per unit length of one voxel in the calibration circle (r_eq known)."""
    return 1.0 / _conductance_2d(((0, 0),), 1.0)


@lru_cache(maxsize=512)
def pattern_factor(pattern: Pattern, radius_over_h: float) -> float:
    """Face factor that makes a cross-section pattern carry the current of radius r_w.

    ``pattern``: the (u, v) in-plane voxel offsets of one cross-section, normalised so the
    smallest offsets are 0 (any order). ``radius_over_h``: the (equivalent) needle radius in
    voxels.
    """
    pattern = tuple(sorted(pattern))
    # Target: a cylinder of radius r_w in the same circle. ln(R/r_w) = ln(R/r_eq) - ln(r_w/r_eq).
    target = _reference_resistance() - math.log(radius_over_h / PEACEMAN_R_EQ_OVER_H) / (
        2.0 * math.pi
    )

    def mismatch(log_factor: float) -> float:
        return 1.0 / _conductance_2d(pattern, math.exp(log_factor)) - target

    lo, hi = (math.log(x) for x in _FACTOR_RANGE)
    if mismatch(hi) > 0.0:
        raise SolverError(
            f"needle of radius {radius_over_h:.3g} voxels is thicker than its voxel set "
            f"({len(pattern)} voxels per cross-section) can represent; voxelise it with every "
            "voxel whose centre lies within the radius"
        )
    if mismatch(lo) < 0.0:
        raise SolverError(
            f"needle of radius {radius_over_h:.3g} voxels is far thinner than its voxel set "
            f"({len(pattern)} voxels per cross-section); voxelise only the voxels on its axis "
            "and within its radius"
        )
    return math.exp(brentq(mismatch, lo, hi, xtol=1e-6))


@dataclass(frozen=True)
class WellFaces:
    """Faces to scale: lower cell (padded index), axis (0, 1, 2) and factor, one row each."""

    lower: IntArray  # (K, 3) padded indices of the face's lower cell
    axis: IntArray  # (K,)
    factor: FloatArray  # (K,)


def no_well_faces() -> WellFaces:
    """No face to scale (an electrode that is its voxels, not a sub-voxel needle)."""
    return WellFaces(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))


def needle_axis(indices: IntArray, direction: FloatArray | None) -> tuple[int, float]:
    """Dominant grid axis of a needle and the cosine of its tilt from that axis.

    With no direction given, the principal axis of the voxel coordinates is used.
    """
    if direction is None:
        if len(indices) < 2:
            return 2, 1.0
        coords = indices.astype(np.float64)
        coords -= coords.mean(axis=0)
        _, vectors = np.linalg.eigh(coords.T @ coords)
        d = vectors[:, -1]
    else:
        d = np.asarray(direction, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0.0:
            raise SolverError(f"needle direction {d} must be a finite non-zero vector")
    d = d / np.linalg.norm(d)
    axis = int(np.argmax(np.abs(d)))
    return axis, float(abs(d[axis]))


def well_faces(
    indices: IntArray,
    radius_over_h: float,
    direction: FloatArray | None,
    shape: tuple[int, int, int],
) -> WellFaces:
    """The in-plane faces from a needle's voxels to non-needle voxels, with their factors."""
    axis, cos_tilt = needle_axis(indices, direction)
    target = radius_over_h * 0.5 * (1.0 + 1.0 / cos_tilt)
    plane_axes = [ax for ax in range(3) if ax != axis]
    flat = np.ravel_multi_index(indices.T, shape)
    lower: list[IntArray] = []
    axes: list[IntArray] = []
    factors: list[FloatArray] = []
    slices = indices[:, axis]
    for s in np.unique(slices):
        cells = indices[slices == s]
        uv = cells[:, plane_axes]
        pattern = tuple(map(tuple, (uv - uv.min(axis=0)).tolist()))
        f = pattern_factor(pattern, round(target, 6))
        for ax in plane_axes:
            for step in (-1, 1):
                nb = cells.copy()
                nb[:, ax] += step
                inside = (nb[:, ax] >= 0) & (nb[:, ax] < shape[ax])
                nb_flat = np.ravel_multi_index(np.clip(nb, 0, np.asarray(shape) - 1).T, shape)
                outward = inside & ~np.isin(nb_flat, flat)
                low = (nb if step < 0 else cells)[outward]
                lower.append(low + 1)
                axes.append(np.full(len(low), ax, dtype=np.int64))
                factors.append(np.full(len(low), f))
    if not lower:
        return no_well_faces()
    return WellFaces(np.concatenate(lower), np.concatenate(axes), np.concatenate(factors))
