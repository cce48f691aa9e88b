"""Geometric multigrid hierarchy and the V-cycle used as the CG preconditioner.

Cell-centred coarsening by two along every axis longer than one (odd sizes round up: the last
coarse cell has one child, its missing neighbours are the zero ghost faces), down to at most
``MAX_COARSE_CELLS`` cells, which are solved exactly by a dense inverse computed at setup.

What made it converge in few iterations (DESIGN.md section 6), in order:
1. needle voxels do not make coarse cells Dirichlet: a coarse cell holding some stays an
   unknown, tied to ground through half the conductance of the faces its children have to
   needle voxels (``GROUND_WEIGHT``);
2. a coarse face is half the sum of the four fine faces it covers (rediscretisation);
3. two red-black Gauss-Seidel sweeps before and two after, the post-smoother in the reverse
   colour order so the V-cycle is a symmetric operator (CG needs that);
with piecewise-constant prolongation and its transpose (sum of children) as restriction.

Memory (bytes per fine voxel): level 0 holds gx, gy, gz, diag, g0 and the correction e in
float32 (24 B); coarse levels add about 1/7 of that (r too): about 28 B in all. The CG
vectors (``pcg``: x, r, p, A p, b in float64) add 40 B, so a solve needs about 70 B per
voxel; a ``FieldSolver`` also keeps the float64 conductivity and its face conductances (20 B)
and a result holds the potential and |E| (12 B): about 100 B per voxel, 210 MB at 128^3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from optimizer.field import cpu_kernels as ck
from optimizer.field.operator import PairOperator, padded

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

GROUND_WEIGHT = 0.5
MAX_COARSE_CELLS = 216
RED = 0


@dataclass
class Level:
    shape: tuple[int, int, int]
    gx: F32
    gy: F32
    gz: F32
    diag: F32
    g0: F32
    e: F32  # correction (padded; ghosts stay zero)
    r: F32  # restricted residual (level 0 reads the CG residual instead)
    nblocks: int

    @property
    def cells(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


@dataclass
class Hierarchy:
    levels: list[Level]
    coarse_inverse: F64  # dense inverse of the coarsest operator (interior cells, C order)

    @property
    def nbytes(self) -> int:
        total = self.coarse_inverse.nbytes
        for lv in self.levels:
            total += sum(a.nbytes for a in (lv.gx, lv.gy, lv.gz, lv.diag, lv.g0, lv.e, lv.r))
        return total


# Below this many cells a level is smoothed on one thread: starting a parallel region costs
# more than the sweep.
SERIAL_CELLS = 40_000


def _blocks(shape: tuple[int, int, int]) -> int:
    """Plane blocks for the fused smoother: one per thread, at least 4 planes each."""
    if shape[0] * shape[1] * shape[2] < SERIAL_CELLS:
        return 1
    return max(1, min(numba.get_num_threads(), shape[0] // 4))


def coarse_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return ((shape[0] + 1) // 2, (shape[1] + 1) // 2, (shape[2] + 1) // 2)


def build_hierarchy(op: PairOperator) -> Hierarchy:
    """All levels from the pair operator; the fine arrays are shared, not copied."""
    empty = np.zeros((1, 1, 1), dtype=np.float32)
    levels = [
        Level(
            op.shape,
            op.gx,
            op.gy,
            op.gz,
            op.diag,
            op.g0,
            padded(op.shape),
            empty,
            _blocks(op.shape),
        )
    ]
    while levels[-1].cells > MAX_COARSE_CELLS and max(levels[-1].shape) > 1:
        fine = levels[-1]
        shape = coarse_shape(fine.shape)
        cgx, cgy, cgz, cg0 = (padded(shape) for _ in range(4))
        ck.coarsen(fine.gx, fine.gy, fine.gz, fine.g0, cgx, cgy, cgz, cg0, GROUND_WEIGHT)
        diag = np.ones_like(cgx)
        ck.diagonal(cgx, cgy, cgz, cg0, diag)
        levels.append(
            Level(
                shape,
                cgx,
                cgy,
                cgz,
                diag,
                cg0,
                padded(shape),
                padded(shape),
                _blocks(shape),
            )
        )
    return Hierarchy(levels, dense_inverse(levels[-1]))


def dense_matrix(level: Level) -> F64:
    """The level's operator as a dense matrix over its interior cells (C order)."""
    n0, n1, n2 = level.shape
    n = n0 * n1 * n2
    index = np.arange(n).reshape(level.shape)
    inner = (slice(1, n0 + 1), slice(1, n1 + 1), slice(1, n2 + 1))
    matrix = np.diag(level.diag[inner].astype(np.float64).reshape(-1))
    for g, ax in ((level.gx, 0), (level.gy, 1), (level.gz, 2)):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, level.shape[ax] - 1)
        hi[ax] = slice(1, level.shape[ax])
        vals = g[inner][tuple(lo)].astype(np.float64).reshape(-1)
        i = index[tuple(lo)].reshape(-1)
        j = index[tuple(hi)].reshape(-1)
        matrix[i, j] -= vals
        matrix[j, i] -= vals
    return matrix


def dense_inverse(level: Level) -> F64:
    return np.ascontiguousarray(np.linalg.inv(dense_matrix(level)))


def cpu_vcycle(h: Hierarchy, r0: F64) -> F32:
    """One V-cycle on the residual r0 (padded float64); returns the level-0 correction."""
    levels = h.levels
    residual: npt.NDArray[np.floating] = r0
    for k, lv in enumerate(levels[:-1]):
        ck.smooth_from_zero(lv.e, residual, lv.gx, lv.gy, lv.gz, lv.diag, RED, lv.nblocks)
        ck.smooth(lv.e, residual, lv.gx, lv.gy, lv.gz, lv.diag, RED, lv.nblocks)
        ck.residual_restrict(lv.e, residual, lv.gx, lv.gy, lv.gz, lv.diag, levels[k + 1].r)
        residual = levels[k + 1].r
    coarse = levels[-1]
    n0, n1, n2 = coarse.shape
    inner = (slice(1, n0 + 1), slice(1, n1 + 1), slice(1, n2 + 1))
    rhs = residual[inner].astype(np.float64).reshape(-1)
    coarse.e[inner] = (h.coarse_inverse @ rhs).reshape(coarse.shape)
    for k in range(len(levels) - 2, -1, -1):
        lv = levels[k]
        residual = r0 if k == 0 else lv.r
        ck.prolong_add(lv.e, levels[k + 1].e)
        ck.smooth(lv.e, residual, lv.gx, lv.gy, lv.gz, lv.diag, 1 - RED, lv.nblocks)
        ck.smooth(lv.e, residual, lv.gx, lv.gy, lv.gz, lv.diag, 1 - RED, lv.nblocks)
    return levels[0].e
