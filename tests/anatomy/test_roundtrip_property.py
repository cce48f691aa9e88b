"""Property: any grid, any blob -> .npz -> planning grid -> back to the input grid.

Random small grids (up to 24 voxels a side) with random rotations, axis flips, anisotropic
spacings of 0.3-3.5 mm and random blobs; each goes through save_anatomy_npz / read_npz (the
affine must survive bit for bit), then onto planning grids of several spacings and back.

Claims checked, for a planning spacing h and an input voxel diagonal d:
* no planning voxel outside the input holds the mask;
* the planning mask's volume equals the input's to within half a planning voxel (h^3 / 2):
  the covered fractions are exact and the threshold keeps round(sum of fractions) voxels. A
  mask reaching the input's edge may lose the part in planning voxels straddling that edge
  when too few partial voxels inside can take it up, so this is checked for masks further
  than a planning half-diagonal plus an input half-diagonal from the edge;
* an input voxel maps back unchanged when every input voxel centre within h*sqrt(3) + d/2 of
  its own has its label: the planning voxel holding its centre lies within that planning
  voxel's diagonal, and each point of it within d/2 of some input centre, so that planning
  voxel is wholly covered (or wholly uncovered) and the threshold keeps (or drops) it.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.planning import make_planning_grid
from optimizer.anatomy.readers import read_npz, save_anatomy_npz
from optimizer.anatomy.structures import Anatomy, Structure

PLANNING_SPACINGS_MM = (0.8, 1.3, 2.5)


def rotation_from(q: tuple[float, float, float, float]) -> np.ndarray:
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@st.composite
def anatomies(draw: st.DrawFn) -> Anatomy:
    shape = tuple(draw(st.integers(6, 24)) for _ in range(3))
    spacing = np.array([draw(st.floats(0.3, 3.5)) for _ in range(3)])
    quaternion = draw(
        st.tuples(*[st.floats(-1, 1) for _ in range(4)]).filter(lambda q: np.linalg.norm(q) > 0.1)
    )
    flips = np.array([draw(st.sampled_from((-1.0, 1.0))) for _ in range(3)])
    affine = np.eye(4)
    affine[:3, :3] = rotation_from(quaternion) @ np.diag(spacing * flips)
    affine[:3, 3] = [draw(st.floats(-100, 100)) for _ in range(3)]
    grid = VoxelGrid(shape, affine)  # type: ignore[arg-type]

    centres = grid.voxel_centres()
    extent = np.asarray(shape) * spacing
    mask = np.zeros(shape, dtype=bool)
    for _ in range(draw(st.integers(1, 3))):
        at = [draw(st.floats(0.25, 0.75)) * (n - 1) for n in shape]
        semi = np.array(
            [draw(st.floats(0.5, max(1.0, 0.45 * float(extent.min())))) for _ in range(3)]
        )
        local = (centres - grid.index_to_world(at)) @ rotation_from(
            draw(st.tuples(*[st.floats(0.1, 1) for _ in range(4)]))
        )
        mask |= np.linalg.norm(local / semi, axis=-1) <= 1.0
    mask[tuple(round(a) for a in np.asarray(shape) // 2)] = True  # never empty
    return Anatomy(grid, [Structure.from_name("lesion", mask)[0]], case_id="blob")


def far_from_other_label(mask: np.ndarray, spacing: np.ndarray, distance: float) -> np.ndarray:
    """Voxels whose nearest centre of the other label (outside the grid counts as outside)
    is further than ``distance`` mm away."""
    padded = np.pad(mask, 1)
    inside = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    outside = ndimage.distance_transform_edt(~padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    return np.where(mask, inside, outside) > distance


def near_the_edge(mask: np.ndarray, spacing: np.ndarray, distance: float) -> bool:
    """Whether a mask voxel centre lies within ``distance`` mm of the grid's outer faces."""
    for axis, n in enumerate(mask.shape):
        reach = math.floor(distance / spacing[axis] - 0.5) + 1  # voxels whose centre is near
        if reach <= 0:
            continue
        edges = np.take(mask, list(range(min(reach, n))) + list(range(max(n - reach, 0), n)), axis)
        if edges.any():
            return True
    return False


@settings(max_examples=50, deadline=None)
@given(anatomies())
def test_masks_survive_npz_and_planning_grid_round_trips(anatomy: Anatomy) -> None:
    with tempfile.TemporaryDirectory() as folder:
        read = read_npz(save_anatomy_npz(anatomy, Path(folder) / "case.npz"))
    assert np.array_equal(read.grid.affine, anatomy.grid.affine)
    assert read.grid.shape == anatomy.grid.shape
    assert np.array_equal(read["lesion"].mask, anatomy["lesion"].mask)

    mask = read["lesion"].mask
    grid = read.grid
    v_in = mask.sum() * grid.voxel_volume_ml
    half_diagonal = 0.5 * float(np.linalg.norm(grid.spacing_mm))
    for h in PLANNING_SPACINGS_MM:
        plan = make_planning_grid(read, spacing_mm=h, margin_mm=2.0)
        planned = plan["lesion"].mask
        assert not (planned & ~plan.inside_input).any()
        if not near_the_edge(mask, grid.spacing_mm, h * math.sqrt(3) / 2 + half_diagonal):
            event(f"volume checked at {h} mm")
            assert abs(planned.sum() * plan.grid.voxel_volume_ml - v_in) <= 0.5 * h**3 / 1e3 + 1e-12

        back = plan.map_to_input(planned)
        depth = h * math.sqrt(3) + half_diagonal
        deep = far_from_other_label(mask, grid.spacing_mm, depth)
        assert np.array_equal(back[deep], mask[deep])
