"""Bad input gets a clear error naming the cause; nothing returns a silently wrong field."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.field import ConvergenceError, Electrode, FieldSolver, SolverError, solve_pairs
from optimizer.field.backend import cuda_simulated
from tests.field.builders import column

SHAPE = (16, 15, 14)


def _needles() -> tuple[Electrode, Electrode]:
    return column((5, 7), (3, 11), 0.5, 1.0), column((11, 7), (3, 11), 0.5, 1.0)


@pytest.mark.parametrize(
    ("value", "word"), [(0.0, "> 0"), (-0.2, "> 0"), (np.nan, "finite"), (np.inf, "finite")]
)
def test_bad_conductivity(value: float, word: str) -> None:
    sigma = np.full(SHAPE, 0.3)
    sigma[3, 4, 5] = value
    with pytest.raises(SolverError, match="conductivity") as info:
        FieldSolver(sigma, 1.0, backend="cpu")
    assert word in str(info.value)
    assert "(3, 4, 5)" in str(info.value)


def test_conductivity_must_be_3d() -> None:
    with pytest.raises(SolverError, match="3-D"):
        FieldSolver(np.full((4, 4), 0.3), 1.0, backend="cpu")


def test_needle_outside_the_grid() -> None:
    solver = FieldSolver(np.full(SHAPE, 0.3), 1.0, backend="cpu")
    _, cathode = _needles()
    outside = Electrode(np.array([[40, 2, 2], [41, 2, 2]]), 0.5)
    with pytest.raises(SolverError, match="anode has no voxel inside"):
        solver.solve(outside, cathode, 100.0)


def test_anode_and_cathode_sharing_a_voxel() -> None:
    solver = FieldSolver(np.full(SHAPE, 0.3), 1.0, backend="cpu")
    anode, _ = _needles()
    overlapping = Electrode(np.vstack([anode.indices[:2], [[12, 7, 5]]]), 0.5)
    with pytest.raises(SolverError, match="share"):
        solver.solve(anode, overlapping, 100.0)


def test_malformed_indices_and_radius() -> None:
    solver = FieldSolver(np.full(SHAPE, 0.3), 1.0, backend="cpu")
    anode, cathode = _needles()
    with pytest.raises(SolverError, match=r"\(N, 3\)"):
        solver.solve(Electrode(np.array([1, 2, 3]), 0.5), cathode, 100.0)
    with pytest.raises(SolverError, match="radius"):
        solver.solve(Electrode(anode.indices, 0.0), cathode, 100.0)


def test_mismatched_warm_start_shape_and_bad_voltage() -> None:
    solver = FieldSolver(np.full(SHAPE, 0.3), 1.0, backend="cpu")
    anode, cathode = _needles()
    with pytest.raises(SolverError, match="x0 has shape"):
        solver.solve(anode, cathode, 100.0, x0=np.zeros((3, 3, 3)))
    with pytest.raises(SolverError, match="voltage"):
        solver.solve(anode, cathode, float("nan"))


def test_non_converging_solve_raises_with_iterations_and_residual() -> None:
    solver = FieldSolver(np.full(SHAPE, 0.3), 1.0, backend="cpu", max_iter=1, tol=1e-12)
    anode, cathode = _needles()
    with pytest.raises(ConvergenceError) as info:
        solver.solve(anode, cathode, 100.0)
    assert info.value.iterations == 1
    assert info.value.residual > 1e-12


def test_bad_settings() -> None:
    with pytest.raises(SolverError, match="spacing"):
        FieldSolver(np.full(SHAPE, 0.3), 0.0, backend="cpu")
    with pytest.raises(SolverError, match="unknown backend"):
        FieldSolver(np.full(SHAPE, 0.3), 1.0, backend="tpu")
    if not cuda_simulated():
        from optimizer.field.backend import gpu_available

        if not gpu_available():
            with pytest.raises(SolverError, match="no CUDA device"):
                FieldSolver(np.full(SHAPE, 0.3), 1.0, backend="gpu")


def test_bad_pair_indices() -> None:
    anode, cathode = _needles()
    with pytest.raises(SolverError, match="not one of the 2 needles"):
        solve_pairs(np.full(SHAPE, 0.3), 1.0, [anode, cathode], [(0, 5, 100.0)], backend="cpu")
    with pytest.raises(SolverError, match="same needle"):
        solve_pairs(np.full(SHAPE, 0.3), 1.0, [anode, cathode], [(1, 1, 100.0)], backend="cpu")
