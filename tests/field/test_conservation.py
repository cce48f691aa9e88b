"""Symmetry, conservation, linearity, warm starts and odd grid sizes."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.field import FieldSolver, solve_pairs
from tests.field.builders import column


def _layered(shape: tuple[int, int, int]) -> np.ndarray:
    """Heterogeneous conductivity: fat, muscle, prostate-like and urine-like bands."""
    sigma = np.full(shape, 0.04)
    sigma[:, : shape[1] // 3] = 0.2
    sigma[shape[0] // 3 : 2 * shape[0] // 3, shape[1] // 3 :] = 0.28
    sigma[:, -3:] = 1.75
    return sigma


@pytest.fixture(scope="module")
def setup() -> tuple[FieldSolver, object, object]:
    shape = (37, 33, 29)
    solver = FieldSolver(_layered(shape), 1.0, backend="cpu")
    anode = column((13, 16), (6, 22), 0.535, 1.0)
    cathode = column((24, 17), (8, 20), 0.535, 1.0)
    return solver, anode, cathode


def test_swapping_anode_and_cathode_flips_the_potential(setup) -> None:  # type: ignore[no-untyped-def]
    solver, anode, cathode = setup
    v = 1000.0
    forward = solver.solve(anode, cathode, v)
    backward = solver.solve(cathode, anode, v)
    assert np.allclose(backward.potential_V, v - forward.potential_V, atol=1e-4 * v)
    assert backward.current_A == pytest.approx(forward.current_A, rel=1e-4)
    assert np.allclose(backward.field_V_per_cm, forward.field_V_per_cm, rtol=1e-3, atol=1e-2)


def test_anode_and_cathode_currents_agree(setup) -> None:  # type: ignore[no-untyped-def]
    solver, anode, cathode = setup
    sol = solver.solve(anode, cathode, 1500.0)
    assert sol.current_mismatch < 1e-3
    assert sol.anode_current_A > 0
    assert sol.relative_residual <= 1e-6
    assert sol.iterations <= 15


def test_potential_is_bounded_by_the_electrodes(setup) -> None:  # type: ignore[no-untyped-def]
    solver, anode, cathode = setup
    sol = solver.solve(anode, cathode, 800.0)
    assert sol.potential_V.min() >= -1e-6 * 800
    assert sol.potential_V.max() <= 800 * (1 + 1e-6)
    a = anode.indices
    assert np.all(sol.potential_V[a[:, 0], a[:, 1], a[:, 2]] == 800.0)


def test_unit_solution_scales_without_resolving(setup) -> None:  # type: ignore[no-untyped-def]
    solver, anode, cathode = setup
    unit = solver.solve_unit(anode, cathode)
    direct = solver.solve(anode, cathode, 1234.0)
    scaled = unit.at(1234.0)
    assert np.allclose(scaled.potential_V, direct.potential_V, atol=1e-5 * 1234)
    assert scaled.current_A == pytest.approx(direct.current_A, rel=1e-5)
    assert np.allclose(scaled.field_V_per_cm, direct.field_V_per_cm, rtol=1e-4, atol=1e-3)
    assert unit.key == solver.key(anode, cathode)
    assert unit.key != solver.key(cathode, anode)


def test_warm_start_from_the_solution_needs_almost_no_iterations(setup) -> None:  # type: ignore[no-untyped-def]
    solver, anode, cathode = setup
    cold = solver.solve(anode, cathode, 1000.0)
    warm = solver.solve(anode, cathode, 1000.0, x0=cold.potential_V)
    assert warm.iterations < cold.iterations
    assert warm.current_A == pytest.approx(cold.current_A, rel=1e-4)


@pytest.mark.parametrize("shape", [(23, 17, 31), (40, 9, 13), (5, 64, 7)])
def test_odd_and_flat_grids_converge(shape: tuple[int, int, int]) -> None:
    solver = FieldSolver(_layered(shape), 1.0, backend="cpu")
    cx, cy = shape[0] // 2, shape[1] // 2
    anode = column((cx - 1, cy - 2), (1, shape[2] - 1), 0.535, 1.0)
    cathode = column((cx + 1, cy + 2), (1, shape[2] - 1), 0.535, 1.0)
    sol = solver.solve(anode, cathode, 500.0)
    assert sol.iterations <= 20
    assert sol.current_mismatch < 1e-3


def test_solve_pairs_solves_each_pair(setup) -> None:  # type: ignore[no-untyped-def]
    solver, anode, cathode = setup
    third = column((18, 26), (5, 20), 0.535, 1.0)
    needles = [anode, cathode, third]
    results = solve_pairs(
        solver.sigma, 1.0, needles, [(0, 1, 1000.0), (2, 0, 500.0)], backend="cpu"
    )
    assert len(results) == 2
    assert results[0].current_A == pytest.approx(solver.solve(anode, cathode, 1000.0).current_A)
    assert results[1].voltage_V == 500.0
