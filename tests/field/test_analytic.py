"""Physics checks against closed forms (DESIGN.md section 5).

The analytic formulas are for an infinite medium; the grid has an insulating boundary, which
raises the resistance by a term of order (d/W)^2. With W = 160 mm and d <= 20 mm that is
below 1 percent (doubling W to 320 mm changes the current by 0.5 percent at d = 20 mm), well
inside the 5 percent tolerance, so the comparison is honest without an image correction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.field import Electrode, FieldSolver
from tests.field.builders import (
    NEEDLE_RADIUS_MM,
    column,
    slab_pair,
    two_needle_current,
    two_needle_midfield,
    value_at_x,
)

SIGMA = 0.28
VOLTAGE = 2250.0
WIDTH_MM = 160.0
PLANES = 4


def test_design_worked_example_numbers() -> None:
    # DESIGN.md section 5: a = 0.533 mm, d = 15 mm, L = 15 mm -> R = 252.8 ohm, E_mid = 902.
    assert VOLTAGE / two_needle_current(15, 0.533, 0.28, 15, VOLTAGE) == pytest.approx(
        252.8, abs=0.1
    )
    assert two_needle_midfield(15, 0.533, VOLTAGE) == pytest.approx(902, abs=1)


@pytest.mark.parametrize("spacing_mm", [1.0, 0.5])
@pytest.mark.parametrize("d_mm", [10.0, 15.0, 20.0])
def test_two_parallel_needles(spacing_mm: float, d_mm: float) -> None:
    shape, anode, cathode, mid = slab_pair(spacing_mm, d_mm, WIDTH_MM, PLANES)
    solver = FieldSolver(np.full(shape, SIGMA), spacing_mm, backend="cpu")
    sol = solver.solve(anode, cathode, VOLTAGE)
    length = PLANES * spacing_mm
    expected_i = two_needle_current(d_mm, NEEDLE_RADIUS_MM, SIGMA, length, VOLTAGE)
    assert sol.current_A == pytest.approx(expected_i, rel=0.05)
    assert sol.current_mismatch < 1e-3
    c = shape[1] // 2
    e_mid = value_at_x(sol.field_V_per_cm, mid, c, PLANES // 2)
    assert e_mid == pytest.approx(two_needle_midfield(d_mm, NEEDLE_RADIUS_MM, VOLTAGE), rel=0.05)
    assert sol.relative_residual <= 1e-6


def test_without_well_correction_the_current_is_far_off() -> None:
    """Why the correction exists: a bare voxel column carries tens of percent too little."""
    shape, anode, cathode, _ = slab_pair(1.0, 15.0, WIDTH_MM, PLANES)
    bare = [
        Electrode(n.indices, n.radius_mm, n.direction, well_correction=False)
        for n in (anode, cathode)
    ]
    solver = FieldSolver(np.full(shape, SIGMA), 1.0, backend="cpu")
    corrected = solver.solve(anode, cathode, VOLTAGE).current_A
    uncorrected = solver.solve(bare[0], bare[1], VOLTAGE).current_A
    expected = two_needle_current(15.0, NEEDLE_RADIUS_MM, SIGMA, PLANES, VOLTAGE)
    assert abs(uncorrected / expected - 1) > 0.2
    assert abs(corrected / expected - 1) < 0.05


@pytest.mark.parametrize("spacing_mm", [1.0, 0.5])
def test_concentric_cylinders(spacing_mm: float) -> None:
    """Inner needle, outer cylindrical electrode: R = ln(b/a) / (2 pi sigma L)."""
    outer_mm = 12.0
    n = round((2 * outer_mm + 6) / spacing_mm) | 1
    c = n // 2
    shape = (n, n, PLANES)
    inner = column((c, c), (0, PLANES), NEEDLE_RADIUS_MM, spacing_mm)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ring = np.argwhere(np.hypot(i - c, j - c) * spacing_mm >= outer_mm)
    outer_idx = np.array([(p, q, k) for p, q in ring for k in range(PLANES)], dtype=np.int64)
    outer = Electrode(outer_idx, outer_mm, well_correction=False)
    sol = FieldSolver(np.full(shape, SIGMA), spacing_mm, backend="cpu").solve(inner, outer, 100.0)
    length_m = PLANES * spacing_mm * 1e-3
    resistance = math.log(outer_mm / NEEDLE_RADIUS_MM) / (2 * math.pi * SIGMA * length_m)
    assert sol.resistance_ohm == pytest.approx(resistance, rel=0.05)
    # Field at r = 6 mm: V / (r ln(b/a)).
    r_mm = 6.0
    expected = 100.0 / (r_mm * 1e-3 * math.log(outer_mm / NEEDLE_RADIUS_MM)) / 100.0
    got = value_at_x(sol.field_V_per_cm, c + r_mm / spacing_mm, c, PLANES // 2)
    assert got == pytest.approx(expected, rel=0.05)
