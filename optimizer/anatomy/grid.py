"""A voxel grid: shape plus the affine from voxel indices to RAS+ millimetres."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.errors import GridError

FloatArray = npt.NDArray[np.float64]

# The largest grid anything in ectplan will allocate (planning grids, phantoms, uploads).
MAX_VOXELS = 512**3


@dataclass(frozen=True, eq=False)
class VoxelGrid:
    """Voxel centre (i, j, k) sits at ``affine @ (i, j, k, 1)`` in RAS+ mm (the NIfTI rule).

    The affine may be oblique and anisotropic; nothing here assumes otherwise.
    """

    shape: tuple[int, int, int]
    affine: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or any(n < 1 for n in shape):
            raise GridError(f"grid shape must be three positive sizes, got {self.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise GridError(f"affine must be 4x4, got shape {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise GridError("affine holds NaN or infinite values; check the image header")
        if not np.allclose(affine[3], [0.0, 0.0, 0.0, 1.0]):
            raise GridError(f"affine's last row must be [0, 0, 0, 1], got {affine[3].tolist()}")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing <= 1e-6):
            raise GridError(
                f"voxel spacing {spacing.tolist()} mm has a zero axis; fix the image header "
                "(pixdim / space directions)"
            )
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9 * float(np.prod(spacing)):
            raise GridError("affine is not invertible (its direction vectors are parallel)")
        object.__setattr__(self, "shape", shape)
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)

    @property
    def spacing_mm(self) -> FloatArray:
        """Length of each voxel edge along i, j, k in mm."""
        return np.asarray(np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def directions(self) -> FloatArray:
        """Unit RAS direction of the i, j, k axes, as columns."""
        return np.asarray(self.affine[:3, :3] / self.spacing_mm)

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def is_isotropic(self) -> bool:
        s = self.spacing_mm
        return bool(np.allclose(s, s[0], rtol=1e-6))

    def index_to_world(self, ijk: npt.ArrayLike) -> FloatArray:
        """Voxel indices (..., 3), possibly fractional, to RAS mm (..., 3)."""
        p = np.asarray(ijk, dtype=np.float64)
        return np.asarray(p @ self.affine[:3, :3].T + self.affine[:3, 3])

    def world_to_index(self, xyz: npt.ArrayLike) -> FloatArray:
        """RAS mm (..., 3) to fractional voxel indices (..., 3)."""
        p = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return np.asarray(p @ inv[:3, :3].T + inv[:3, 3])

    def contains_index(self, ijk: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether fractional indices fall inside the grid's voxels (centre +- half a voxel)."""
        p = np.asarray(ijk, dtype=np.float64)
        upper = np.asarray(self.shape, dtype=np.float64) - 0.5
        return np.asarray(np.all((p >= -0.5) & (p < upper), axis=-1))

    def voxel_centres(self) -> FloatArray:
        """RAS mm of every voxel centre, shape (*shape, 3). Allocates 24 bytes a voxel."""
        ii, jj, kk = np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij")
        return self.index_to_world(np.stack([ii, jj, kk], axis=-1))

    def same_as(self, other: VoxelGrid, atol_mm: float = 1e-3) -> bool:
        """Same shape and the same voxel positions to within ``atol_mm``."""
        if self.shape != other.shape:
            return False
        return bool(np.allclose(self.affine, other.affine, atol=atol_mm, rtol=0.0))

    def describe(self) -> str:
        s = ", ".join(f"{v:.3g}" for v in self.spacing_mm)
        return f"{self.shape[0]}x{self.shape[1]}x{self.shape[2]} voxels of ({s}) mm"
