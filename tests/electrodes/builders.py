"""Small anatomies for the electrode tests, on any (oblique, anisotropic) grid."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy, Structure

FloatArray = npt.NDArray[np.float64]
Region = Callable[[FloatArray], npt.NDArray[np.bool_]]


def rotation(axis: npt.ArrayLike, degrees: float) -> FloatArray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    a = np.radians(degrees)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross


def centred_grid(
    shape: tuple[int, int, int],
    spacing: npt.ArrayLike = (1.0, 1.0, 1.0),
    rot: FloatArray | None = None,
    centre: npt.ArrayLike = (0.0, 0.0, 0.0),
) -> VoxelGrid:
    """A grid whose middle voxel position lies at ``centre`` (RAS mm)."""
    linear = (np.eye(3) if rot is None else rot) @ np.diag(np.asarray(spacing, dtype=float))
    affine = np.eye(4)
    affine[:3, :3] = linear
    middle = (np.asarray(shape, dtype=float) - 1) / 2
    affine[:3, 3] = np.asarray(centre, dtype=float) - linear @ middle
    return VoxelGrid(shape, affine)


def sphere(centre: npt.ArrayLike, radius: float) -> Region:
    c = np.asarray(centre, dtype=float)
    return lambda p: np.sum((p - c) ** 2, axis=-1) <= radius**2


def box(lower: npt.ArrayLike, upper: npt.ArrayLike) -> Region:
    lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    return lambda p: np.all((p >= lo) & (p <= hi), axis=-1)


def cylinder_z(x: float, y: float, radius: float) -> Region:
    return lambda p: (p[..., 0] - x) ** 2 + (p[..., 1] - y) ** 2 <= radius**2


def build(grid: VoxelGrid, regions: dict[str, Region]) -> Anatomy:
    """Anatomy whose structures are the voxels whose centres fall in each region."""
    centres = grid.voxel_centres()
    structures = [Structure.from_name(name, region(centres))[0] for name, region in regions.items()]
    return Anatomy(grid, structures, case_id="test")


def pelvis(grid: VoxelGrid) -> Anatomy:
    """A crude pelvis around the origin: gland, urethra through it, rectum behind, bladder above,
    pubic bone in front and above."""
    return build(
        grid,
        {
            "prostate": sphere((0, 0, 0), 18),
            "urethra": cylinder_z(0, 4, 3),
            "rectum": box((-18, -40, -60), (18, -22, 60)),
            "bladder": sphere((0, 8, 42), 20),
            "pubic bone": box((-25, 26, 5), (25, 40, 30)),
        },
    )
