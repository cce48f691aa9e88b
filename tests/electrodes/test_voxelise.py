from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.anatomy.grid import VoxelGrid
from optimizer.electrodes.needle import Needle
from optimizer.electrodes.voxelise import NeedleOutsideGridError, voxelise
from tests.electrodes.builders import centred_grid, rotation


def slab_chords(grid: VoxelGrid, needle: Needle) -> dict[tuple[int, int, int], float]:
    """Reference: intersect the exposed axis with every nearby voxel cube, one by one."""
    a, b = grid.world_to_index(np.stack(needle.exposed_segment()))
    lo = np.floor(np.minimum(a, b)).astype(int) - 1
    hi = np.ceil(np.maximum(a, b)).astype(int) + 1
    out: dict[tuple[int, int, int], float] = {}
    delta = b - a
    for voxel in np.ndindex(*(hi - lo + 1)):
        v = np.asarray(voxel) + lo
        if np.any(v < 0) or np.any(v >= grid.shape):
            continue
        t0, t1 = 0.0, 1.0
        for ax in range(3):
            low, high = v[ax] - 0.5, v[ax] + 0.5
            if delta[ax] == 0:
                # A line lying in a voxel face belongs to the voxel above it, as an index
                # x belongs to voxel floor(x + 0.5): counted once, not in both.
                if not low <= a[ax] < high:
                    t0, t1 = 1.0, 0.0
                continue
            u0, u1 = sorted(((low - a[ax]) / delta[ax], (high - a[ax]) / delta[ax]))
            t0, t1 = max(t0, u0), min(t1, u1)
        if t1 > t0 + 1e-12:
            out[(int(v[0]), int(v[1]), int(v[2]))] = (t1 - t0) * needle.exposure_mm
    return out


def assert_26_connected(indices: npt.NDArray[np.int64]) -> None:
    steps = np.abs(np.diff(indices, axis=0))
    assert np.all(steps <= 1), "consecutive axis voxels must touch"
    assert np.all(steps.sum(axis=1) >= 1), "a voxel must not repeat"


def test_axis_aligned_needle_chords_by_hand() -> None:
    grid = VoxelGrid((10, 10, 10), np.eye(4))
    needle = Needle(np.array([4.0, 5.0, 7.8]), np.array([0.0, 0.0, 1.0]), 5.5)
    vox = voxelise(needle, grid)
    axis = vox.indices[vox.on_axis]
    np.testing.assert_array_equal(axis, [[4, 5, k] for k in range(2, 9)])
    np.testing.assert_allclose(vox.axis_length_mm[vox.on_axis], [0.2, 1, 1, 1, 1, 1, 0.3])
    assert vox.fully_inside and vox.exposed_length_inside_mm == pytest.approx(5.5, abs=1e-12)


def test_needle_along_k_on_oblique_grid_is_a_straight_column() -> None:
    grid = centred_grid((20, 24, 16), spacing=(0.6, 0.8, 2.5), rot=rotation((1, -2, 0.7), 23))
    k_axis = grid.directions[:, 2]
    # Start off-centre inside voxel (7, 11, 2) and run 9.5 voxels along k, into voxel 12.
    start = grid.index_to_world([7.2, 10.9, 2.1])
    needle = Needle(start + 9.5 * 2.5 * k_axis, k_axis, 9.5 * 2.5, diameter_mm=0.5)
    vox = voxelise(needle, grid)
    axis = vox.indices[vox.on_axis]
    np.testing.assert_array_equal(axis[:, :2], np.tile([7, 11], (len(axis), 1)))
    np.testing.assert_array_equal(axis[:, 2], np.arange(2, 13))  # k 2.1 .. 11.6
    lengths = vox.axis_length_mm[vox.on_axis]
    np.testing.assert_allclose(lengths[1:-1], 2.5, atol=1e-9)
    np.testing.assert_allclose(lengths[[0, -1]], [0.4 * 2.5, 0.1 * 2.5], atol=1e-9)
    # Radius 0.25 mm: no other voxel centre (0.6 mm away or more) is that close.
    assert vox.on_axis.all()


def test_a_needle_lying_in_a_voxel_face_is_counted_once() -> None:
    # Found by the property test below: a needle along k at j = 2.5, on the face between
    # voxel columns j = 2 and j = 3, once counted in both by the reference.
    grid = VoxelGrid((24, 24, 24), np.eye(4))
    needle = Needle(np.array([2.0, 2.5, 3.0]), np.array([0.0, 0.0, 1.0]), 1.0, diameter_mm=0.8)
    vox = voxelise(needle, grid)
    axis = vox.indices[vox.on_axis]
    np.testing.assert_array_equal(axis, [[2, 3, 2], [2, 3, 3]])
    np.testing.assert_allclose(vox.axis_length_mm[vox.on_axis], [0.5, 0.5])
    assert slab_chords(grid, needle) == pytest.approx({(2, 3, 2): 0.5, (2, 3, 3): 0.5})
    assert vox.exposed_length_inside_mm == pytest.approx(1.0)


@st.composite
def grid_and_needle(draw: st.DrawFn) -> tuple[VoxelGrid, Needle]:
    spacing = [draw(st.floats(0.3, 3.0)) for _ in range(3)]
    axis = [draw(st.floats(-1, 1)) for _ in range(3)]
    if np.linalg.norm(axis) < 1e-3:
        axis = [0.0, 0.0, 1.0]
    rot = rotation(axis, draw(st.floats(0, 180)))
    grid = centred_grid((24, 24, 24), spacing=spacing, rot=rot)
    direction = np.array([draw(st.floats(-1, 1)) for _ in range(3)])
    if np.linalg.norm(direction) < 1e-3:
        direction = np.array([0.3, -0.2, 1.0])
    tip_index = np.array([draw(st.floats(2.0, 21.0)) for _ in range(3)])
    exposure = draw(st.floats(0.05, 40.0))
    needle = Needle(grid.index_to_world(tip_index), direction, exposure, diameter_mm=0.8)
    return grid, needle


@settings(max_examples=60, deadline=None)
@given(grid_and_needle())
def test_chords_match_per_voxel_slab_intersection(case: tuple[VoxelGrid, Needle]) -> None:
    grid, needle = case
    vox = voxelise(needle, grid)
    axis = vox.indices[vox.on_axis]
    lengths = vox.axis_length_mm[vox.on_axis]
    assert len({tuple(v) for v in axis.tolist()}) == len(axis)
    assert_26_connected(axis)
    reference = slab_chords(grid, needle)
    got = {tuple(v): length for v, length in zip(axis.tolist(), lengths, strict=True)}
    # Pieces below 1e-12 mm may land on either neighbour; everything else must agree.
    big = {v for v, length in reference.items() if length > 1e-9}
    assert big <= set(got)
    for v in big:
        assert got[v] == pytest.approx(reference[v], abs=1e-9)
    assert vox.exposed_length_inside_mm == pytest.approx(sum(reference.values()), abs=1e-9)
    if vox.fully_inside:
        assert abs(lengths.sum() - needle.exposure_mm) <= 1e-9
    else:
        assert vox.exposed_length_outside_mm > 0


@settings(max_examples=25, deadline=None)
@given(grid_and_needle())
def test_radius_voxels_are_centres_within_the_radius(case: tuple[VoxelGrid, Needle]) -> None:
    grid, needle = case
    vox = voxelise(needle, grid)
    centres = grid.voxel_centres().reshape(-1, 3)
    rel = centres - needle.exposed_start_mm
    along = rel @ needle.direction
    perp = np.linalg.norm(rel - along[:, None] * needle.direction, axis=1)
    near = (along >= 0) & (along <= needle.exposure_mm) & (perp <= needle.radius_mm)
    expected = {tuple(v) for v in np.argwhere(near.reshape(grid.shape)).tolist()}
    axis = {tuple(v) for v in vox.indices[vox.on_axis].tolist()}
    radius_only = {tuple(v) for v in vox.indices[~vox.on_axis].tolist()}
    assert radius_only == expected - axis
    assert np.all(vox.axis_length_mm[~vox.on_axis] == 0)


def test_19_gauge_needle_on_half_millimetre_grid_marks_a_cross() -> None:
    # Centres at multiples of 0.5 mm; the axis runs through a row of centres along z.
    grid = VoxelGrid((20, 20, 40), np.diag([0.5, 0.5, 0.5, 1.0]))
    needle = Needle(np.array([5.0, 5.0, 15.0]), np.array([0.0, 0.0, 1.0]), 10.0, 1.07)
    vox = voxelise(needle, grid)
    assert vox.radius_mm == pytest.approx(0.535)
    columns = {(int(i), int(j)) for i, j, _ in vox.indices[~vox.on_axis]}
    # 0.5 mm away is within 0.535 mm; the diagonal neighbours (0.71 mm) are not.
    assert columns == {(9, 10), (11, 10), (10, 9), (10, 11)}
    radius_k = vox.indices[~vox.on_axis][:, 2]
    assert radius_k.min() == 10 and radius_k.max() == 30  # centres 5.0 .. 15.0 mm along z
    assert {(int(i), int(j)) for i, j, _ in vox.indices[vox.on_axis]} == {(10, 10)}


def test_partly_outside_reports_the_inside_part() -> None:
    grid = VoxelGrid((10, 10, 10), np.diag([2.0, 2.0, 2.0, 1.0]))
    # The grid ends at z = 19 mm; the tip sticks out 4 mm.
    needle = Needle(np.array([9.0, 9.0, 23.0]), np.array([0.0, 0.0, 1.0]), 10.0)
    vox = voxelise(needle, grid)
    assert vox.exposed_length_inside_mm == pytest.approx(6.0, abs=1e-12)
    assert vox.exposed_length_outside_mm == pytest.approx(4.0, abs=1e-12)
    assert vox.fraction_inside == pytest.approx(0.6)
    assert not vox.fully_inside and not vox.entirely_outside
    vox.require_inside()
    assert vox.indices[vox.on_axis][:, 2].max() == 9


def test_entirely_outside_is_an_error_for_the_solver() -> None:
    grid = VoxelGrid((10, 10, 10), np.eye(4))
    needle = Needle(np.array([30.0, 5.0, 5.0]), np.array([1.0, 0.0, 0.0]), 5.0, hole="C4")
    vox = voxelise(needle, grid)
    assert vox.entirely_outside and len(vox.indices) == 0
    with pytest.raises(NeedleOutsideGridError, match=r"needle C4.*entirely outside the 10x10x10"):
        vox.require_inside()


def test_needle_just_outside_still_marks_border_voxels_within_radius() -> None:
    grid = VoxelGrid((10, 10, 10), np.diag([0.5, 0.5, 0.5, 1.0]))
    # Axis 0.3 mm beyond the last centre plane x = 4.5 mm (and outside the grid's x edge).
    needle = Needle(np.array([4.8, 2.0, 4.0]), np.array([0.0, 0.0, 1.0]), 3.0, 1.07)
    vox = voxelise(needle, grid)
    assert vox.entirely_outside
    assert len(vox.indices) > 0 and np.all(vox.indices[:, 0] == 9)


def test_mask_helper() -> None:
    grid = VoxelGrid((20, 20, 40), np.diag([0.5, 0.5, 0.5, 1.0]))
    needle = Needle(np.array([5.0, 5.0, 15.0]), np.array([0.1, 0.0, 1.0]), 10.0, 1.07)
    vox = voxelise(needle, grid)
    mask = vox.mask(grid.shape)
    assert mask.sum() == len(vox.indices)
    assert vox.mask(include_radius=False).sum() == vox.on_axis.sum()
    with pytest.raises(ValueError, match="shape"):
        vox.mask((20, 20, 41))
