"""The planning grid: geometry, volume-preserving resampling, maps back and forth."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from optimizer.anatomy.errors import AnatomyError, GridTooLargeError, MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.phantom import make_phantom
from optimizer.anatomy.planning import (
    PlanningAnatomy,
    frame_rotation,
    make_planning_grid,
    resample_mask,
)
from optimizer.anatomy.readers import load_anatomy
from optimizer.anatomy.structures import Anatomy, Structure
from tests.conftest import REAL_CASES, anatomy_root


def rotation(ax: float, az: float) -> np.ndarray:
    a, b = np.deg2rad(ax), np.deg2rad(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def grid_of(shape, spacing, rot=None, origin=(0.0, 0.0, 0.0)) -> VoxelGrid:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rot is None else rot) @ np.diag(spacing)
    affine[:3, 3] = origin
    return VoxelGrid(shape, affine)


def ball_anatomy(grid: VoxelGrid, centre, radius: float, name: str = "lesion") -> Anatomy:
    mask = np.linalg.norm(grid.voxel_centres() - np.asarray(centre), axis=-1) <= radius
    return Anatomy(grid, [Structure.from_name(name, mask)[0]])


@cache
def oblique_phantom() -> Anatomy:
    """A phantom on an axial-like stack: 0.5 x 0.5 x 3 mm, tilted 12 degrees."""
    return make_phantom(seed=2, spacing_mm=(0.5, 0.5, 3.0), oblique_deg=12.0, organs=False)


def test_planning_grid_is_isotropic_along_the_image_axes():
    anatomy = oblique_phantom()
    plan = make_planning_grid(anatomy, spacing_mm=1.5, margin_mm=10.0)
    assert isinstance(plan, PlanningAnatomy) and isinstance(plan, Anatomy)
    assert np.allclose(plan.grid.spacing_mm, 1.5)
    assert np.allclose(plan.grid.directions, anatomy.grid.directions, atol=1e-12)
    assert plan.parent_grid is anatomy.grid
    assert (plan.spacing_mm, plan.margin_mm) == (1.5, 10.0)


def test_planning_grid_covers_target_plus_margin_in_the_rotated_frame():
    anatomy = oblique_phantom()
    margin = 10.0
    plan = make_planning_grid(anatomy, spacing_mm=1.5, margin_mm=margin)
    target = anatomy.grid.index_to_world(np.argwhere(anatomy.target_mask()))
    idx = plan.grid.world_to_index(target)
    # Every target voxel centre sits at least margin (+ half an input voxel) from the faces...
    room_lo = (idx.min(axis=0) + 0.5) * 1.5
    room_hi = (np.asarray(plan.grid.shape) - 0.5 - idx.max(axis=0)) * 1.5
    half_input = np.asarray([0.25, 0.25, 1.5])
    assert np.all(room_lo >= margin + half_input - 1e-6)
    assert np.all(room_hi >= margin + half_input - 1e-6)
    # ...and the crop is no bigger than that plus one planning voxel per side.
    assert np.all(room_lo <= margin + half_input + 1.5 + 1e-6)
    assert np.all(room_hi <= margin + half_input + 1.5 + 1e-6)


def test_crop_reaches_beyond_a_thin_input_and_marks_what_is_outside():
    # A 24 mm thick stack: the 30 mm margin reaches well beyond it above and below.
    anatomy = make_phantom(seed=1, spacing_mm=(1.0, 1.0, 3.0), size_mm=(96, 96, 24), organs=False)
    image = np.ones(anatomy.grid.shape, dtype=np.float32)
    anatomy.image = image
    plan = make_planning_grid(anatomy)
    assert not plan.inside_input.all() and plan.inside_input.any()
    for s in plan:
        assert not (s.mask & ~plan.inside_input).any()
    assert plan.image is not None
    assert np.all(plan.image[~plan.inside_input] == 0)
    assert np.allclose(plan.image[plan.inside_input], 1.0)
    # inside_input is exactly "voxel centre inside the input grid".
    centres = plan.grid.voxel_centres()
    assert np.array_equal(
        plan.inside_input, anatomy.grid.contains_index(anatomy.grid.world_to_index(centres))
    )
    assert any("outside the input image" in n for n in plan.notes)


@pytest.mark.parametrize("spacing", [0.7, 1.0, 2.0])
def test_structure_volumes_kept_to_half_a_planning_voxel(spacing):
    anatomy = oblique_phantom()
    plan = make_planning_grid(anatomy, spacing_mm=spacing, margin_mm=5.0)
    for before, after in zip(anatomy, plan, strict=True):
        v_in = before.voxel_count() * anatomy.grid.voxel_volume_ml
        v_plan = after.voxel_count() * plan.grid.voxel_volume_ml
        assert abs(v_plan - v_in) <= 0.5 * plan.grid.voxel_volume_ml + 1e-9, before.name


@pytest.mark.parametrize("shift", [0.0, 0.25, 0.5, 0.75])
def test_a_two_slice_lesion_on_3p3_mm_slices_keeps_its_volume(shift):
    # All columns of a slab-shaped lesion share its edges; per-voxel nearest or 0.5-threshold
    # rules move those edges together by up to half a planning voxel (about 8 percent here).
    grid = grid_of((60, 60, 8), (0.5, 0.5, 3.3), rotation(15, 5), origin=(0, 0, shift))
    ijk = np.indices(grid.shape).transpose(1, 2, 3, 0)
    mask = (np.linalg.norm((ijk[..., :2] - 30) * 0.5, axis=-1) <= 5.0) & np.isin(
        ijk[..., 2], (3, 4)
    )
    anatomy = Anatomy(grid, [Structure.from_name("lesion", mask)[0]])
    v_in = mask.sum() * grid.voxel_volume_ml
    planned = make_planning_grid(anatomy, spacing_mm=1.0, margin_mm=3.0)["lesion"]
    assert planned.voxel_count() * 1e-3 == pytest.approx(v_in, abs=0.5e-3)


def test_a_mask_cut_by_the_input_edge_stays_inside_and_keeps_its_volume():
    # The lesion fills the last two slices: planning voxels straddling the top face (centre
    # outside the input) may not hold it, so their share goes to partial voxels inside.
    grid = grid_of((60, 60, 8), (0.5, 0.5, 3.3), rotation(15, 5))
    ijk = np.indices(grid.shape).transpose(1, 2, 3, 0)
    mask = (np.linalg.norm((ijk[..., :2] - 30) * 0.5, axis=-1) <= 6.0) & (ijk[..., 2] >= 6)
    anatomy = Anatomy(grid, [Structure.from_name("lesion", mask)[0]])
    plan = make_planning_grid(anatomy, spacing_mm=1.0, margin_mm=3.0)
    planned = plan["lesion"].mask
    assert not (planned & ~plan.inside_input).any()
    assert (~plan.inside_input).any()
    assert planned.sum() * 1e-3 == pytest.approx(mask.sum() * grid.voxel_volume_ml, abs=0.5e-3)


def test_sheared_input_falls_back_to_supersampling_and_keeps_volume():
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0.6, 0.0, 0.3], [0.0, 0.6, 0.0], [0.0, 0.0, 2.5]])  # shear
    grid = VoxelGrid((50, 50, 14), affine)
    anatomy = ball_anatomy(grid, grid.index_to_world([25, 25, 7]), 9.0)
    plan = make_planning_grid(anatomy, spacing_mm=1.0, margin_mm=3.0)
    v_in = anatomy["lesion"].voxel_count() * grid.voxel_volume_ml
    assert plan["lesion"].voxel_count() * 1e-3 == pytest.approx(v_in, rel=0.02)
    # The planning frame is the orthonormal matrix nearest the sheared directions.
    rot = frame_rotation(grid)
    assert np.allclose(rot.T @ rot, np.eye(3), atol=1e-12)


def test_voxels_a_planning_voxel_deep_map_back_unchanged():
    src = grid_of((60, 60, 12), (0.4, 0.4, 3.0), rotation(10, 0))
    centre = src.index_to_world([30, 30, 6])
    anatomy = ball_anatomy(src, centre, 9.0)
    h = 1.0
    plan = make_planning_grid(anatomy, spacing_mm=h, margin_mm=2.0)
    back = plan.map_to_input(plan["lesion"].mask)
    # The planning voxel holding an input centre lies within its diagonal (h sqrt 3) of it, and
    # every point of that voxel within half an input diagonal of an input centre: input voxels
    # whose neighbours that far away share their label keep it.
    depth = h * math.sqrt(3) + 0.5 * float(np.linalg.norm(src.spacing_mm))
    r = np.linalg.norm(src.voxel_centres() - centre, axis=-1)
    deep_in, deep_out = r < 9.0 - depth, r > 9.0 + depth
    assert deep_in.sum() > 100 and deep_out.sum() > 100
    assert back[deep_in].all()
    assert not back[deep_out].any()


def test_grid_too_large_names_the_size_and_the_fix():
    anatomy = oblique_phantom()
    with pytest.raises(GridTooLargeError, match=r"voxels at 0.5 mm.*coarser spacing") as info:
        make_planning_grid(anatomy, spacing_mm=0.5, margin_mm=30.0, max_voxels=100_000)
    assert "smaller margin" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing_mm": 0.0}, "spacing"),
        ({"spacing_mm": math.nan}, "spacing"),
        ({"margin_mm": -1.0}, "margin"),
    ],
)
def test_bad_spacing_or_margin_is_refused(kwargs, message):
    with pytest.raises(AnatomyError, match=message):
        make_planning_grid(oblique_phantom(), **kwargs)


def test_anatomy_without_target_is_refused():
    grid = grid_of((10, 10, 10), (1, 1, 1))
    anatomy = Anatomy(grid, [Structure.from_name("rectum", np.ones(grid.shape, bool))[0]])
    with pytest.raises(MissingTargetError):
        make_planning_grid(anatomy)


def test_linear_fields_map_both_ways_exactly():
    anatomy = oblique_phantom()
    plan = make_planning_grid(anatomy, spacing_mm=2.0, margin_mm=5.0)
    coeff, const = np.array([0.3, -1.2, 2.5]), 7.0

    def field(grid: VoxelGrid) -> np.ndarray:
        return grid.voxel_centres() @ coeff + const

    back = plan.map_to_input(field(plan.grid), order="linear", fill=np.nan)
    # Away from the planning grid's border trilinear interpolation of a linear field is exact.
    idx = plan.grid.world_to_index(anatomy.grid.voxel_centres())
    interior = np.all((idx >= 1) & (idx <= np.asarray(plan.grid.shape) - 2), axis=-1)
    assert interior.sum() > 1000
    assert np.allclose(back[interior], field(anatomy.grid)[interior], atol=1e-9)
    outside = ~plan.grid.contains_index(idx)
    assert outside.any() and np.isnan(back[outside]).all()

    forward = plan.map_from_input(field(anatomy.grid))
    idx = anatomy.grid.world_to_index(plan.grid.voxel_centres())
    interior = np.all((idx >= 0) & (idx <= np.asarray(anatomy.grid.shape) - 1), axis=-1)
    assert np.allclose(forward[interior], field(plan.grid)[interior], atol=1e-9)


def test_nearest_map_picks_the_planning_voxel_holding_each_input_centre():
    anatomy = oblique_phantom()
    plan = make_planning_grid(anatomy, spacing_mm=2.0, margin_mm=5.0)
    labels = np.arange(plan.grid.size, dtype=np.int64).reshape(plan.grid.shape)
    back = plan.map_to_input(labels, fill=-1)
    assert back.dtype == np.int64
    idx = plan.grid.world_to_index(anatomy.grid.voxel_centres())
    hit = back >= 0
    assert np.array_equal(hit, plan.grid.contains_index(idx))
    chosen = np.stack(np.unravel_index(back[hit], plan.grid.shape), axis=-1)
    assert np.all(np.abs(chosen - idx[hit]) <= 0.5 + 1e-9)


def test_masks_and_trailing_dimensions_map_back():
    anatomy = oblique_phantom()
    plan = make_planning_grid(anatomy, spacing_mm=1.0, margin_mm=5.0)
    gland = plan.map_to_input(plan["prostate"].mask)
    assert gland.dtype == np.bool_ and gland.shape == anatomy.grid.shape
    v_in = anatomy["prostate"].voxel_count() * anatomy.grid.voxel_volume_ml
    assert gland.sum() * anatomy.grid.voxel_volume_ml == pytest.approx(v_in, rel=0.02)
    vectors = np.stack([plan["prostate"].mask * 1.0, plan["lesion"].mask * 2.0], axis=-1)
    both = plan.map_to_input(vectors)
    assert both.shape == (*anatomy.grid.shape, 2)
    assert np.array_equal(both[..., 0] > 0, gland)
    assert np.array_equal(plan.map_from_input(anatomy["lesion"].mask), plan["lesion"].mask)
    with pytest.raises(AnatomyError, match="shape"):
        plan.map_to_input(np.zeros((3, 3, 3)))
    with pytest.raises(AnatomyError, match="order"):
        plan.map_to_input(np.zeros(plan.grid.shape), order="cubic")


def test_resample_mask_of_an_identical_grid_is_the_identity():
    anatomy = oblique_phantom()
    mask = anatomy["lesion"].mask
    assert np.array_equal(resample_mask(mask, anatomy.grid, anatomy.grid), mask)


# ---------------------------------------------------------------- real cases -------------


@cache
def real_case(name: str) -> Anatomy:
    return load_anatomy(anatomy_root() / name)


@pytest.mark.realdata
@pytest.mark.parametrize("case", REAL_CASES)
def test_real_case_volumes_survive_the_planning_grid(case, real_case_dir):
    real_case_dir(case)
    anatomy = real_case(case)
    plan = make_planning_grid(anatomy)
    assert plan.grid.is_isotropic and np.allclose(plan.grid.spacing_mm, 1.0)
    assert np.allclose(plan.grid.directions, frame_rotation(anatomy.grid), atol=1e-9)
    assert np.allclose(plan.grid.directions, anatomy.grid.directions, atol=1e-3)
    for before, after in zip(anatomy, plan, strict=True):
        v_in = before.voxel_count() * anatomy.grid.voxel_volume_ml
        v_plan = after.voxel_count() * plan.grid.voxel_volume_ml
        if before.role == Role.TARGET:
            # Targets lie inside the crop: exact to half a planning voxel, well inside 2 percent.
            assert abs(v_plan - v_in) <= 0.5e-3 + 1e-9, before.name
        assert v_plan == pytest.approx(v_in, rel=0.02), before.name
    if anatomy.image is not None:
        assert plan.image is not None and plan.image.dtype == np.float32
        assert plan.image[plan.inside_input].max() > 0
