"""The sub-voxel needle correction: calibration, oblique needles, impossible voxel sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.anatomy.grid import VoxelGrid
from optimizer.electrodes.needle import Needle
from optimizer.electrodes.voxelise import voxelise
from optimizer.field import FieldSolver, SolverError
from optimizer.field.wells import (
    PEACEMAN_R_EQ_OVER_H,
    pattern_factor,
    single_voxel_factor,
    well_faces,
)


def test_equivalent_radius_is_peacemans() -> None:
    assert pytest.approx(0.198, abs=0.001) == PEACEMAN_R_EQ_OVER_H


@pytest.mark.parametrize("radius_over_h", [0.2675, 0.535, 0.8])
def test_calibration_reproduces_the_closed_form(radius_over_h: float) -> None:
    assert pattern_factor(((0, 0),), radius_over_h) == pytest.approx(
        single_voxel_factor(radius_over_h), rel=1e-4
    )


def test_a_needle_as_thin_as_r_eq_needs_no_correction() -> None:
    assert pattern_factor(((0, 0),), PEACEMAN_R_EQ_OVER_H) == pytest.approx(1.0, rel=1e-4)


def test_thicker_patterns_need_less_boost() -> None:
    plus = ((0, 1), (1, 0), (1, 1), (1, 2), (2, 1))
    assert pattern_factor(plus, 1.07) < pattern_factor(((0, 0),), 0.535 * 1.5)


def test_too_thick_needle_for_one_voxel_is_refused() -> None:
    with pytest.raises(SolverError, match="voxelise"):
        pattern_factor(((0, 0),), 3.0)
    with pytest.raises(SolverError, match="voxelise"):
        single_voxel_factor(3.0)


def test_faces_are_in_plane_and_outward() -> None:
    idx = np.array([(5, 5, k) for k in range(3, 8)])
    faces = well_faces(idx, 0.535, None, (11, 11, 11))
    assert len(faces.axis) == 4 * 5
    assert set(faces.axis.tolist()) == {0, 1}
    assert np.allclose(faces.factor, single_voxel_factor(0.535), rtol=1e-4)


def _tilted_pair_current(degrees: float, offset: float) -> float:
    n = 61
    grid = VoxelGrid((n, n, n), np.eye(4))
    t = math.radians(degrees)
    direction = np.array([0.0, math.sin(t), math.cos(t)])
    centre = np.array([30.0, 30.0, 30.0]) + offset
    needles = [
        voxelise(Needle(centre + [dx, 0.0, 0.0] + 15.0 * direction, direction, 30.0), grid)
        for dx in (-6.0, 6.0)
    ]
    solver = FieldSolver(np.full((n, n, n), 0.3), 1.0, backend="cpu")
    return solver.solve(needles[0], needles[1], 1000.0).current_A


def test_oblique_needles_carry_the_current_of_aligned_ones() -> None:
    """Rotating or shifting a pair in a homogeneous medium must not change its current.

    Within 5 %: the residual spread (about +-3 % for a 30 mm exposure on a 1 mm grid) is
    mostly the tips, where the voxel column's length is quantised to whole voxels.
    """
    aligned = _tilted_pair_current(0.0, 0.0)
    for degrees, offset in ((0.0, 0.5), (20.0, 0.0), (35.0, 0.25), (45.0, 0.0)):
        assert _tilted_pair_current(degrees, offset) == pytest.approx(aligned, rel=0.05)


@pytest.fixture
def well_face_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ``well_faces`` computation by the solver."""
    import optimizer.field.solve as solve_module

    calls: list[int] = []
    real = solve_module.well_faces

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(solve_module, "well_faces", counting)
    return calls


def _three_needles(n: int):  # type: ignore[no-untyped-def]
    grid = VoxelGrid((n, n, n), np.eye(4))
    direction = np.array([0.0, 0.0, 1.0])
    return tuple(
        voxelise(Needle(np.array([x, 10.0, 18.0]), direction, 10.0), grid) for x in (4, 10, 16)
    )


def test_a_solver_computes_each_needles_well_faces_once(well_face_calls: list[int]) -> None:
    n = 21
    a, b, c = _three_needles(n)
    solver = FieldSolver(np.full((n, n, n), 0.3), 1.0, backend="cpu")
    first = solver.operator(a, b)
    solver.operator(b, c)
    again = solver.operator(a, b)
    assert len(well_face_calls) == 3  # three needles in three pairs
    # A fresh solver (nothing remembered) builds the same operator.
    fresh = FieldSolver(np.full((n, n, n), 0.3), 1.0, backend="cpu").operator(a, b)
    for op in (again, fresh):
        for name in ("gx", "gy", "gz", "diag", "g0"):
            np.testing.assert_array_equal(getattr(op, name), getattr(first, name))


def test_solvers_of_one_grid_share_well_faces_across_conductivity_maps(
    well_face_calls: list[int],
) -> None:
    from optimizer.field import solve_pair_nonlinear
    from optimizer.tissue.conductivity import ConductivityModel

    n = 21
    a, b, _ = _three_needles(n)
    labels = np.zeros((n, n, n), dtype=np.int64)
    model = ConductivityModel.from_table(("prostate",))
    baseline = FieldSolver(model.baseline(labels), 1.0, backend="cpu")
    shared = solve_pair_nonlinear(labels, model, 1.0, a, b, 1500.0, backend="cpu",
                                  well_cache=baseline.well_cache)  # fmt: skip
    assert shared.picard_iterations >= 2  # several conductivity maps, one grid
    assert len(well_face_calls) == 2  # once per needle, for every map
    baseline.operator(b, a)
    assert len(well_face_calls) == 2
    # Sharing changes nothing in the result.
    alone = solve_pair_nonlinear(labels, model, 1.0, a, b, 1500.0, backend="cpu")
    np.testing.assert_array_equal(alone.potential_V, shared.potential_V)
    assert alone.current_A == shared.current_A


def test_a_well_face_cache_belongs_to_one_grid() -> None:
    n = 21
    solver = FieldSolver(np.full((n, n, n), 0.3), 1.0, backend="cpu")
    with pytest.raises(SolverError, match=r"share a cache only between solvers of one grid"):
        FieldSolver(np.full((n, n, n + 1), 0.3), 1.0, backend="cpu",
                    well_cache=solver.well_cache)  # fmt: skip
