import numpy as np
import pytest

from optimizer.anatomy.errors import GridError
from optimizer.anatomy.grid import VoxelGrid


def oblique_affine(spacing=(0.5, 0.5, 3.0), deg=18.0, origin=(10.0, -20.0, 5.0)):
    a = np.deg2rad(deg)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def test_round_trip_index_world_on_oblique_grid():
    grid = VoxelGrid((40, 30, 12), oblique_affine())
    ijk = np.array([[0, 0, 0], [39, 29, 11], [3.25, 7.5, 2.1]])
    assert np.allclose(grid.world_to_index(grid.index_to_world(ijk)), ijk, atol=1e-12)
    assert np.allclose(grid.spacing_mm, [0.5, 0.5, 3.0])
    assert grid.voxel_volume_ml == pytest.approx(0.75e-3)
    assert not grid.is_isotropic


def test_directions_are_unit_columns():
    grid = VoxelGrid((4, 4, 4), oblique_affine(deg=30))
    assert np.allclose(np.linalg.norm(grid.directions, axis=0), 1.0)


@pytest.mark.parametrize(
    ("affine", "message"),
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "zero axis"),
        (np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), "invertible"),
        (np.eye(3), "4x4"),
    ],
)
def test_bad_affines_are_refused_with_a_reason(affine, message):
    with pytest.raises(GridError, match=message):
        VoxelGrid((2, 2, 2), affine)


def test_bad_shape_is_refused():
    with pytest.raises(GridError, match="positive"):
        VoxelGrid((0, 2, 2), np.eye(4))


def test_contains_index_uses_half_voxel_borders():
    grid = VoxelGrid((3, 3, 3), np.eye(4))
    inside = grid.contains_index([[-0.49, 0, 0], [2.49, 2, 2], [-0.51, 0, 0], [2.5, 0, 0]])
    assert inside.tolist() == [True, True, False, False]
