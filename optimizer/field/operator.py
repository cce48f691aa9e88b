"""The finite-volume operator of div(sigma grad phi) = 0 for one pulsed needle pair.

Cell-centred, uniform isotropic spacing h: the conductance of the face between two voxels is
h * harmonic_mean(sigma_1, sigma_2) (in S), the outer boundary is insulating (no faces), and
the needle voxels of the pair are Dirichlet (anode at V, cathode at 0). Faces from a needle
voxel to tissue are first scaled by the well correction (``wells``).

Dirichlet voxels are taken out of the system without flags: the face from a free voxel to a
needle voxel is removed from the face arrays and kept as a *tie* (free cell, conductance) to
that electrode. A free cell's diagonal still counts the tie (its ground tie ``g0``), the
right-hand side is V times its anode ties, and a needle voxel keeps no faces and diag 1, so
the unknown vector is zero on it. Needle currents are sums over the ties: conservation
(anode current = cathode current) is exact up to the solver's residual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from optimizer.field import cpu_kernels as ck
from optimizer.field.errors import SolverError
from optimizer.field.wells import WellFaces

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_STEPS = ((0, -1), (0, 1), (1, -1), (1, 1), (2, -1), (2, 1))


def padded(shape: tuple[int, int, int], dtype: type = np.float32) -> npt.NDArray[Any]:
    return np.zeros((shape[0] + 2, shape[1] + 2, shape[2] + 2), dtype=dtype)


def check_conductivity(sigma: npt.ArrayLike) -> F64:
    """A 3-D array of finite, positive conductivities (S/m), as float64."""
    arr = np.asarray(sigma)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise SolverError(f"conductivity must be a 3-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise SolverError(f"conductivity must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr <= 0.0)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SolverError(
            f"conductivity must be finite and > 0 S/m everywhere; {int(bad.sum())} voxels are "
            f"not (first at index {where}: {arr[where]!r}); check the tissue map and table"
        )
    return arr


@dataclass
class Faces:
    """Padded float32 face conductances (S) of a conductivity map; reused across pairs."""

    shape: tuple[int, int, int]
    spacing_m: float
    gx: F32
    gy: F32
    gz: F32

    @classmethod
    def from_sigma(cls, sigma: F64, spacing_m: float) -> Faces:
        shape = (int(sigma.shape[0]), int(sigma.shape[1]), int(sigma.shape[2]))
        gx, gy, gz = (padded(shape) for _ in range(3))
        ck.faces_from_sigma(sigma, float(spacing_m), gx, gy, gz)
        return cls(shape, float(spacing_m), gx, gy, gz)

    def arrays(self) -> tuple[F32, F32, F32]:
        return self.gx, self.gy, self.gz


@dataclass
class Ties:
    """Faces from free cells to one electrode's voxels (the Dirichlet couplings)."""

    free: IntArray  # padded flat index of the free cell
    fixed: IntArray  # padded flat index of the needle voxel
    step: IntArray  # which of the six directions, from the needle voxel to the free cell
    conductance: F64  # face conductance used by the solver (well-scaled), S
    factor: F64  # well factor of the face (1 where none)


@dataclass
class PairOperator:
    """Level-0 operator of one pair plus what turns its solution into potential and current."""

    shape: tuple[int, int, int]
    spacing_m: float
    gx: F32
    gy: F32
    gz: F32
    diag: F32
    g0: F32
    anode: Ties
    cathode: Ties
    direct_conductance: float  # faces straight from anode to cathode voxels, S
    anode_flat: IntArray
    cathode_flat: IntArray

    def rhs(self, voltage: float) -> F64:
        """b = V * (anode ties), padded float64."""
        b = np.zeros(self.gx.shape, dtype=np.float64)
        np.add.at(b.reshape(-1), self.anode.free, voltage * self.anode.conductance)
        return b


def _flat_padded(indices: IntArray, shape: tuple[int, int, int]) -> IntArray:
    dims = (shape[0] + 2, shape[1] + 2, shape[2] + 2)
    return np.asarray(np.ravel_multi_index((indices + 1).T, dims), dtype=np.int64)


def check_needle_indices(
    indices: npt.ArrayLike, shape: tuple[int, int, int], name: str
) -> IntArray:
    arr = np.asarray(indices)
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise SolverError(f"{name} voxel indices must be an (N, 3) integer array, got {arr.shape}")
    arr = arr.astype(np.int64)
    inside = np.all((arr >= 0) & (arr < np.asarray(shape)), axis=1)
    if not inside.any():
        raise SolverError(
            f"{name} has no voxel inside the {shape[0]}x{shape[1]}x{shape[2]} grid; move the "
            "needle into the planning grid or enlarge the grid"
        )
    return np.unique(arr[inside], axis=0)


def build_pair_operator(
    faces: Faces,
    anode: IntArray,
    cathode: IntArray,
    anode_wells: WellFaces,
    cathode_wells: WellFaces,
) -> PairOperator:
    """Scale the well faces, cut the Dirichlet voxels out, and build the diagonal."""
    shape = faces.shape
    dims = np.asarray([shape[0] + 2, shape[1] + 2, shape[2] + 2])
    gx, gy, gz = (g.copy() for g in faces.arrays())
    plain = (faces.gx, faces.gy, faces.gz)
    scaled = [gx, gy, gz]
    for wells in (anode_wells, cathode_wells):
        for ax in range(3):
            rows = wells.lower[wells.axis == ax]
            factor = wells.factor[wells.axis == ax].astype(np.float32)
            scaled[ax][rows[:, 0], rows[:, 1], rows[:, 2]] *= factor

    anode_flat = _flat_padded(anode, shape)
    cathode_flat = _flat_padded(cathode, shape)
    shared = np.intersect1d(anode_flat, cathode_flat)
    if shared.size:
        where = np.unravel_index(int(shared[0]), tuple(dims))
        raise SolverError(
            f"anode and cathode share {shared.size} voxel(s) (first at index "
            f"{tuple(int(i) - 1 for i in where)}); two needles of a pair must not touch"
        )
    label = np.zeros(int(np.prod(dims)), dtype=np.int8)
    label[anode_flat] = 1
    label[cathode_flat] = 2
    strides = np.asarray([dims[1] * dims[2], dims[2], 1])

    ties: dict[int, list[tuple[IntArray, IntArray, IntArray, F64, F64]]] = {1: [], 2: []}
    direct = 0.0
    flat_faces = [g.reshape(-1) for g in scaled]
    flat_plain = [g.reshape(-1) for g in plain]
    for electrode, cells in ((1, anode_flat), (2, cathode_flat)):
        for k, (ax, step) in enumerate(_STEPS):
            nb = cells + step * strides[ax]
            face = nb if step < 0 else cells
            # float32 values, exactly as the solver sees them, so currents balance exactly.
            g = flat_faces[ax][face].astype(np.float64)
            g_plain = flat_plain[ax][face].astype(np.float64)
            other = label[nb]
            free = (other == 0) & (g > 0)
            factor = np.divide(g, g_plain, out=np.ones_like(g), where=g_plain > 0)
            ties[electrode].append(
                (nb[free], cells[free], np.full(int(free.sum()), k), g[free], factor[free])
            )
            if electrode == 1:
                direct += float(g[other == 2].sum())
            flat_faces[ax][face] = 0.0

    def gather(parts: list[tuple[IntArray, IntArray, IntArray, F64, F64]]) -> Ties:
        return Ties(*(np.concatenate([p[i] for p in parts]) for i in range(5)))

    anode_ties, cathode_ties = gather(ties[1]), gather(ties[2])
    g0 = np.zeros(gx.shape, dtype=np.float32)
    for t in (anode_ties, cathode_ties):
        np.add.at(g0.reshape(-1), t.free, t.conductance.astype(np.float32))
    diag = np.ones_like(gx)
    ck.diagonal(gx, gy, gz, g0, diag)
    return PairOperator(
        shape=shape,
        spacing_m=faces.spacing_m,
        gx=gx,
        gy=gy,
        gz=gz,
        diag=diag,
        g0=g0,
        anode=anode_ties,
        cathode=cathode_ties,
        direct_conductance=direct,
        anode_flat=anode_flat,
        cathode_flat=cathode_flat,
    )
