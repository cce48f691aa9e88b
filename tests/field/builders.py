"""Needles and conductivity maps for the field-solver tests, built directly on index grids."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from optimizer.field import Electrode

FloatArray = npt.NDArray[np.float64]

# 19 G needle radius as in DESIGN.md section 5's worked example (mm).
NEEDLE_RADIUS_MM = 0.533


def column(
    centre: tuple[float, float],
    k_range: tuple[int, int],
    radius_mm: float,
    spacing_mm: float,
    *,
    well_correction: bool = True,
) -> Electrode:
    """A needle along axis 2 through index point ``centre`` (axes 0, 1), planes k0..k1-1.

    Voxels: those whose centre lies within the radius of the axis, and at least the nearest.
    """
    r = radius_mm / spacing_mm
    reach = math.ceil(r) + 1
    ci, cj = centre
    cells = []
    for i in range(math.floor(ci) - reach, math.ceil(ci) + reach + 1):
        for j in range(math.floor(cj) - reach, math.ceil(cj) + reach + 1):
            if (i - ci) ** 2 + (j - cj) ** 2 <= r * r:
                cells.append((i, j))
    if not cells:
        cells.append((round(ci), round(cj)))
    idx = np.array([(i, j, k) for i, j in cells for k in range(*k_range)], dtype=np.int64)
    return Electrode(idx, radius_mm, np.array([0.0, 0.0, 1.0]), well_correction=well_correction)


def two_needle_current(d_mm: float, a_mm: float, sigma: float, length_mm: float, v: float) -> float:
    """DESIGN.md section 5: I = V / R, R = arccosh(d/2a) / (pi sigma L)."""
    resistance = math.acosh(d_mm / (2 * a_mm)) / (math.pi * sigma * length_mm * 1e-3)
    return v / resistance


def two_needle_midfield(d_mm: float, a_mm: float, v: float) -> float:
    """DESIGN.md section 5: E_mid = V / (b arccosh(d/2a)), b = sqrt((d/2)^2 - a^2), in V/cm."""
    b_m = math.sqrt((d_mm / 2) ** 2 - a_mm**2) * 1e-3
    return v / (b_m * math.acosh(d_mm / (2 * a_mm))) / 100.0


def slab_pair(
    spacing_mm: float, d_mm: float, width_mm: float, planes: int = 4
) -> tuple[tuple[int, int, int], Electrode, Electrode, float]:
    """Two needles spanning a thin slab (the 2-D check); returns shape, needles and the
    index-space x of the midpoint."""
    n = round(width_mm / spacing_mm) | 1
    c = n // 2
    steps = d_mm / spacing_mm
    if abs(steps - round(steps)) > 1e-9:
        raise ValueError("d must be a multiple of the spacing")
    ia = c - round(steps) // 2
    ic = ia + round(steps)
    shape = (n, n, planes)
    anode = column((ia, c), (0, planes), NEEDLE_RADIUS_MM, spacing_mm)
    cathode = column((ic, c), (0, planes), NEEDLE_RADIUS_MM, spacing_mm)
    return shape, anode, cathode, 0.5 * (ia + ic)


def value_at_x(field: npt.NDArray[np.floating], x: float, j: int, k: int) -> float:
    """Linear interpolation along axis 0 at fractional index x."""
    lo = math.floor(x)
    t = x - lo
    return (
        float((1 - t) * field[lo, j, k] + t * field[lo + 1, j, k]) if t else float(field[lo, j, k])
    )
