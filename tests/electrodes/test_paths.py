from __future__ import annotations

import numpy as np
import pytest

from optimizer.anatomy.errors import MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.electrodes.needle import Needle, NeedleError
from optimizer.electrodes.paths import (
    DEFAULT_STEP_FRACTION,
    HoleReach,
    NeedlePathError,
    Obstacles,
    admissible_holes,
    check_path,
    hole_reach,
    require_clear_path,
)
from optimizer.electrodes.template import Template
from optimizer.electrodes.voxelise import voxelise
from tests.electrodes.builders import box, build, centred_grid, pelvis, rotation, sphere

OBLIQUE = rotation((1, 0.4, 0.2), 16)


@pytest.fixture(scope="module")
def oblique_pelvis() -> Anatomy:
    return pelvis(centred_grid((64, 60, 36), spacing=(1.6, 1.7, 3.0), rot=OBLIQUE))


def test_needle_into_the_bladder_is_rejected_with_structure_and_place() -> None:
    anatomy = pelvis(centred_grid((60, 60, 60), spacing=(2.0, 2.0, 2.0)))
    template = Template.for_anatomy(anatomy)
    clear = template.needle("G7", depth_mm=40.0, exposure_mm=15.0)
    assert check_path(clear, anatomy).ok
    require_clear_path(clear, anatomy)
    deep = template.needle("G7", depth_mm=70.0, exposure_mm=15.0)
    result = check_path(deep, anatomy)
    assert not result.ok and result.structure == "bladder" and result.part == "exposed tip"
    assert result.point_mm is not None and result.depth_mm is not None
    # Brute force: the lowest tip height at which the tip comes within the radius of a bladder
    # voxel (2 mm cubes, axis-aligned). The first blocked sample lies within a sampling step
    # of it (earlier by at most the step plus the tolerance of half a step).
    r = deep.radius_mm
    centres = anatomy.grid.index_to_world(np.argwhere(anatomy["bladder"].mask).astype(float))
    gap_xy = np.maximum(np.abs(centres[:, :2] - deep.tip_mm[:2]) - 1.0, 0.0)
    d_xy = np.linalg.norm(gap_xy, axis=1)
    close = d_xy < r
    first_z = float(np.min(centres[close, 2] - 1.0 - np.sqrt(r**2 - d_xy[close] ** 2)))
    step = DEFAULT_STEP_FRACTION * 2.0
    assert first_z - 1.5 * step - 1e-9 <= result.point_mm[2] <= first_z + step + 1e-9
    assert deep.entry_mm is not None
    np.testing.assert_allclose(result.point_mm, deep.entry_mm + result.depth_mm * deep.direction)
    with pytest.raises(NeedlePathError, match=r"needle G7: its exposed tip crosses 'bladder'"):
        require_clear_path(deep, anatomy)
    with pytest.raises(ValueError, match=r"depth .* mm from the entry"):
        require_clear_path(deep, anatomy)


def test_shaft_through_the_rectum_is_rejected(oblique_pelvis: Anatomy) -> None:
    template = Template.for_anatomy(oblique_pelvis)
    # Row 1 lies 30 mm posterior of the gland centre, inside the modelled rectum.
    result = check_path(template.needle("G1", 50.0, 10.0), oblique_pelvis)
    assert not result.ok and result.structure == "rectum" and result.part == "insulated shaft"


def half_space_anatomy(grid: VoxelGrid, first_blocked_i: int) -> Anatomy:
    mask = np.zeros(grid.shape, dtype=bool)
    mask[first_blocked_i:] = True
    target = np.zeros(grid.shape, dtype=bool)
    target[: first_blocked_i - 2] = True
    structures = [
        Structure.from_name("pubic bone", mask)[0],
        Structure.from_name("prostate", target)[0],
    ]
    return Anatomy(grid, structures)


@pytest.mark.parametrize("along", [(0, 0, 1), (0, 1, 0), (0, 0.6, -0.8)])
def test_grazing_within_the_radius_hits_on_an_oblique_anisotropic_grid(
    along: tuple[float, float, float],
) -> None:
    grid = centred_grid((30, 30, 20), spacing=(0.6, 0.8, 1.5), rot=OBLIQUE)
    anatomy = half_space_anatomy(grid, 15)
    obstacles = Obstacles.from_anatomy(anatomy)
    # The blocked voxels' face is the plane i = 14.5; move along it, off it along -i.
    in_face = grid.affine[:3, :3] @ np.asarray(along, dtype=float)
    in_face /= np.linalg.norm(in_face)
    outward = -grid.directions[:, 0]
    face_point = grid.index_to_world([14.5, 14.0, 9.0])
    radius = 1.07 / 2
    tolerance = DEFAULT_STEP_FRACTION * 0.6 / 2
    for gap, blocked in [(radius - 0.02, True), (radius + tolerance + 0.02, False)]:
        tip = face_point + gap * outward + 8.0 * in_face
        needle = Needle(tip, in_face, 10.0, 1.07, hole="X1", entry_mm=tip - 16.0 * in_face)
        result = check_path(needle, obstacles)
        assert result.ok is not blocked, f"gap {gap} mm"
        if blocked:
            assert result.structure == "pubic bone" and result.point_mm is not None
            # The line runs parallel to the face; it is hit where it enters the grid.
            assert (result.point_mm - face_point) @ outward == pytest.approx(gap, abs=1e-9)


def test_distance_to_a_voxel_edge_is_euclidean() -> None:
    grid = centred_grid((21, 21, 21), spacing=(1.0, 1.2, 1.0), rot=OBLIQUE)
    mask = np.zeros(grid.shape, dtype=bool)
    mask[10, 10, 5:15] = True
    anatomy = Anatomy(grid, [Structure.from_name("urethra", mask)[0]])
    edge = grid.index_to_world([10.5, 10.5, 2.0])
    k_axis = grid.directions[:, 2]
    diagonal = grid.directions[:, 0] + grid.directions[:, 1]
    diagonal /= np.linalg.norm(diagonal)
    radius = 1.07 / 2
    for gap, blocked in [(radius - 0.02, True), (radius + 0.15, False)]:
        start = edge + gap * diagonal
        needle = Needle(start + 16 * k_axis, k_axis, 5.0, 1.07, entry_mm=start)
        assert check_path(needle, anatomy).ok is not blocked, f"gap {gap} mm"


def test_hole_reach_agrees_with_check_path_needle_by_needle(oblique_pelvis: Anatomy) -> None:
    template = Template.for_anatomy(oblique_pelvis, direction=(0.0, -0.15, 1.0))
    obstacles = Obstacles.from_anatomy(oblique_pelvis)
    reach = hole_reach(template, obstacles, exposure_mm=8.0)
    assert [r.label for r in reach] == template.labels()
    blocked = [r for r in reach if r.blocked_by is not None]
    assert {r.blocked_by for r in blocked} >= {"rectum", "bladder", "urethra"}
    for r in reach:
        if r.max_tip_depth_mm > 8.0:
            deepest = template.needle(r.label, r.max_tip_depth_mm, 8.0)
            assert check_path(deepest, obstacles).ok, r
        if r.block_depth_mm is not None and r.block_depth_mm > 8.0:
            too_deep = check_path(template.needle(r.label, r.block_depth_mm, 8.0), obstacles)
            assert not too_deep.ok and too_deep.structure == r.blocked_by, r


def test_admissible_needles_put_their_exposed_part_in_the_target(oblique_pelvis: Anatomy) -> None:
    template = Template.for_anatomy(oblique_pelvis)
    exposure = 10.0
    admissible = admissible_holes(template, oblique_pelvis, exposure_mm=exposure)
    labels = {r.label for r in admissible}
    assert "G5" in labels  # lateral to the urethra, in front of the rectum
    assert labels.isdisjoint({"G1", "G8", "A1", "M13"})  # rectum, urethra, outside the gland
    target = oblique_pelvis.target_mask()
    for r in admissible:
        assert r.tip_depth_range_mm is not None and r.target_depth_mm is not None
        for depth in r.tip_depth_range_mm:
            needle = template.needle(r.label, depth, exposure)
            assert check_path(needle, oblique_pelvis).ok
            vox = voxelise(needle, oblique_pelvis.grid)
            on_axis = vox.indices[vox.on_axis]
            assert target[on_axis[:, 0], on_axis[:, 1], on_axis[:, 2]].any(), r


def test_bone_in_front_of_the_target_makes_holes_inadmissible() -> None:
    grid = centred_grid((50, 50, 50), spacing=(1.2, 1.2, 1.2), rot=rotation((0, 1, 0), 10))
    anatomy = build(
        grid,
        {"lesion": sphere((0, 0, 0), 12), "pubic bone": box((4, -30, -22), (30, 30, -16))},
    )
    template = Template.for_anatomy(anatomy, columns=9, rows=9, standoff_mm=5.0)
    reach = {r.label: r for r in hole_reach(template, anatomy, exposure_mm=5.0)}
    # Column E sits under the lesion's centre (x = 0); F, G, ... lie towards patient left
    # (x < 0) and B, C, D to the right, under the bone.
    for label in ("B5", "C5"):
        assert reach[label].blocked_by == "pubic bone"
        assert not reach[label].reaches_target and not reach[label].admissible
        assert reach[label].max_tip_depth_mm < 5.0
    for label in ("E5", "G5"):
        assert reach[label].admissible and reach[label].blocked_by is None
        entry, leave = reach[label].target_depth_mm or (0.0, 0.0)
        assert leave - entry > 10.0


def test_obstacles_can_be_reused_and_match_a_fresh_scan(oblique_pelvis: Anatomy) -> None:
    template = Template.for_anatomy(oblique_pelvis)
    obstacles = Obstacles.from_anatomy(oblique_pelvis)
    once = hole_reach(template, oblique_pelvis, exposure_mm=12.0)
    again = hole_reach(template, obstacles, exposure_mm=12.0)
    again2 = hole_reach(template, obstacles, exposure_mm=12.0)

    def summary(reach: list[HoleReach]) -> list[tuple[object, ...]]:
        return [
            (r.label, r.max_tip_depth_mm, r.blocked_by, r.block_depth_mm, r.tip_depth_range_mm)
            for r in reach
        ]

    assert summary(once) == summary(again) == summary(again2)
    assert len(obstacles._near) == 1  # the neighbourhood map was built once and reused


def test_template_plane_outside_the_grid() -> None:
    anatomy = pelvis(centred_grid((40, 40, 40), spacing=(1.5, 1.5, 1.5)))
    template = Template.for_anatomy(anatomy, standoff_mm=60.0)
    reach = {r.label: r for r in hole_reach(template, anatomy, exposure_mm=10.0)}
    assert reach["G5"].admissible
    assert reach["G5"].target_depth_mm is not None
    assert reach["G5"].target_depth_mm[0] > 60.0


def test_free_needle_is_checked_through_the_whole_grid_behind_its_tip() -> None:
    anatomy = pelvis(centred_grid((60, 60, 60), spacing=(2.0, 2.0, 2.0)))
    # Tip in the gland, coming from below through the rectum at a slant.
    direction = np.array([0.0, 0.6, 0.8])
    needle = Needle(np.array([5.0, -5.0, 0.0]), direction, 10.0)
    result = check_path(needle, anatomy)
    assert not result.ok and result.structure == "rectum" and not result.from_entry
    assert result.behind_tip_mm is not None and result.behind_tip_mm > 20.0
    assert "behind the tip" in result.message and "from the entry" not in result.message
    assert check_path(
        Needle(np.array([5.0, -5.0, 0.0]), np.array([0.0, 0.0, 1.0]), 10.0), anatomy
    ).ok


def test_bad_requests_are_refused() -> None:
    grid = centred_grid((20, 20, 20))
    anatomy = build(grid, {"rectum": box((-10, -10, -10), (10, -5, 10))})
    template = Template(np.array([0.0, 0.0, -12.0]))
    with pytest.raises(MissingTargetError, match="no target"):
        hole_reach(template, anatomy, exposure_mm=10.0)
    with pytest.raises(ValueError, match="exposure_mm must be > 0"):
        hole_reach(template, anatomy, exposure_mm=0.0)
    skewed = Needle(
        np.zeros(3), np.array([0.0, 0.0, 1.0]), 5.0, entry_mm=np.array([3.0, 0.0, -20.0])
    )
    with pytest.raises(NeedleError, match="entry_mm is not behind the tip"):
        check_path(skewed, anatomy)
    with pytest.raises(ValueError, match="step_fraction"):
        check_path(Needle(np.zeros(3), np.array([0.0, 0.0, 1.0]), 5.0), anatomy, step_fraction=0.0)


def test_blocking_structure_behind_the_template_plane_blocks_the_hole() -> None:
    grid = centred_grid((40, 40, 50), spacing=(1.0, 1.0, 1.0), rot=OBLIQUE)
    anatomy = build(
        grid,
        {"prostate": sphere((0, 0, 0), 10), "urethra": box((-3, -3, -25), (3, 3, -14))},
    )
    # The plane lies 2 mm below the gland, inside the grid and inside the modelled urethra's
    # caudal (membranous) part, which extends 10 mm further down.
    template = Template.for_anatomy(anatomy, standoff_mm=2.0, columns=5, rows=5)
    reach = {r.label: r for r in hole_reach(template, anatomy, exposure_mm=5.0)}
    centre = reach["C3"]
    assert centre.blocked_by == "urethra" and centre.block_depth_mm is not None
    assert centre.block_depth_mm < 0 and centre.max_tip_depth_mm == 0.0
    assert not centre.admissible
    assert reach["A3"].admissible  # 10 mm to the side
    result = check_path(template.needle("C3", 8.0, 5.0), anatomy)
    assert not result.ok and result.depth_mm is not None and result.depth_mm < 0
    assert "caudal to the template plane" in result.message
