"""The multigrid pieces: fused smoother = plain red-black Gauss-Seidel, symmetric V-cycle."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.field import FieldSolver
from optimizer.field import cpu_kernels as ck
from optimizer.field import multigrid as mg
from tests.field.builders import column


def _random_level(shape: tuple[int, int, int], seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    padded = tuple(n + 2 for n in shape)
    inner = (slice(1, -1),) * 3

    def field(lo: float, hi: float) -> np.ndarray:
        a = np.zeros(padded, dtype=np.float32)
        a[inner] = rng.uniform(lo, hi, shape)
        return a

    gx, gy, gz = field(0.5, 1.5), field(0.5, 1.5), field(0.5, 1.5)
    gx[shape[0]], gy[:, shape[1]], gz[:, :, shape[2]] = 0, 0, 0  # insulating boundary
    g0 = field(0.0, 0.1)
    diag = np.ones(padded, dtype=np.float32)
    ck.diagonal(gx, gy, gz, g0, diag)
    return gx, gy, gz, diag, field(-1, 1), field(-1, 1)


def _reference_sweep(e, r, gx, gy, gz, diag, first):  # type: ignore[no-untyped-def]
    e = e.astype(np.float64)
    n0, n1, n2 = (s - 2 for s in e.shape)
    for colour in (first, 1 - first):
        for a in range(1, n0 + 1):
            for b in range(1, n1 + 1):
                for c in range(1, n2 + 1):
                    if (a + b + c) % 2 != colour:
                        continue
                    s = (
                        r[a, b, c]
                        + gx[a - 1, b, c] * e[a - 1, b, c]
                        + gx[a, b, c] * e[a + 1, b, c]
                        + gy[a, b - 1, c] * e[a, b - 1, c]
                        + gy[a, b, c] * e[a, b + 1, c]
                        + gz[a, b, c - 1] * e[a, b, c - 1]
                        + gz[a, b, c] * e[a, b, c + 1]
                    )
                    e[a, b, c] = s / diag[a, b, c]
    return e


# Lines of 37 and 38 cells run the vectorised body of the one-colour (stride-2) loop of the
# serial sweep, and its remainder, for both parities.
@pytest.mark.parametrize("n0, n2", [(7, 5), (8, 5), (12, 5), (7, 37), (8, 38)])
@pytest.mark.parametrize("nblocks", [1, 2, 3])
def test_fused_smoother_is_red_black_gauss_seidel(n0: int, n2: int, nblocks: int) -> None:
    gx, gy, gz, diag, r, e = _random_level((n0, 6, n2), n0)
    for first in (0, 1):
        got = e.copy()
        ck.smooth(got, r, gx, gy, gz, diag, first, nblocks)
        want = _reference_sweep(e, r, gx, gy, gz, diag, first)
        assert np.abs(got - want).max() < 1e-5
        zero = e.copy()
        ck.smooth_from_zero(zero, r, gx, gy, gz, diag, first, nblocks)
        want = _reference_sweep(np.zeros_like(e), r, gx, gy, gz, diag, first)
        assert np.abs(zero - want).max() < 1e-5


def test_vcycle_is_symmetric_positive_definite() -> None:
    shape = (8, 7, 6)
    solver = FieldSolver(np.random.default_rng(3).uniform(0.05, 1.0, shape), 1.0, backend="cpu")
    op = solver.operator(column((2, 3), (1, 5), 0.5, 1.0), column((6, 3), (1, 5), 0.5, 1.0))
    hierarchy = mg.build_hierarchy(op)
    assert len(hierarchy.levels) >= 2
    fixed = np.zeros(op.gx.size, dtype=bool)
    fixed[op.anode_flat] = fixed[op.cathode_flat] = True
    free = np.flatnonzero(~fixed.reshape(op.gx.shape)[1:-1, 1:-1, 1:-1].reshape(-1))
    matrix = np.zeros((free.size, free.size))
    for col, i in enumerate(free):
        r = np.zeros(op.gx.shape)
        r[1:-1, 1:-1, 1:-1].reshape(-1)[i] = 1.0
        unit = np.zeros(shape)
        unit.reshape(-1)[i] = 1.0
        r[1:-1, 1:-1, 1:-1] = unit
        matrix[:, col] = mg.cpu_vcycle(hierarchy, r)[1:-1, 1:-1, 1:-1].reshape(-1)[free]
    scale = np.abs(matrix).max()
    assert np.abs(matrix - matrix.T).max() < 1e-5 * scale
    assert np.linalg.eigvalsh(0.5 * (matrix + matrix.T)).min() > 0


def test_coarse_level_keeps_needle_cells_as_tied_unknowns() -> None:
    shape = (16, 16, 16)
    solver = FieldSolver(np.full(shape, 0.3), 1.0, backend="cpu")
    op = solver.operator(column((5, 8), (0, 16), 0.5, 1.0), column((11, 8), (0, 16), 0.5, 1.0))
    coarse = mg.build_hierarchy(op).levels[1]
    # Coarse cell (3, 4, *) holds needle column (5, 8): a ground tie, and it still has faces.
    assert coarse.g0[3, 5, 5] > 0
    assert coarse.gx[3, 5, 5] > 0
    assert coarse.g0[3, 5, 5] == pytest.approx(0.5 * op.g0[5:7, 9:11, 9:11].sum(), rel=1e-5)
