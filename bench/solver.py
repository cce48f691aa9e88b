"""Field solver speed: ours (matrix-free MG-PCG, Numba) beside the peer (scipy sparse matrix
+ pyamg smoothed-aggregation AMG preconditioned CG), same problem, same accuracy, one run.

    python bench/solver.py [--sizes 64 128 192] [--quick]

The problem: a heterogeneous n^3 box at 1 mm (fat, a prostate ellipsoid, a urine sphere, a
muscle slab; conductivities from the tissue table) with two 19 G needles 15 mm apart, 20 mm
exposure, 1000 V. Both solvers get the identical linear system (the peer's matrix is
assembled from our well-corrected face conductances) and stop at relative residual 1e-6;
the table reports the *true* relative residual ||b - A x|| / ||b|| of both, computed with the
same sparse matrix. Peak memory is the peak resident-set growth during each phase (sampled).
The bandwidth floor is the modelled memory traffic of our solve (bytes per voxel per CG
iteration and for setup, counted from the kernels) over a STREAM-like copy bandwidth measured
in the same run with a parallel Numba copy. Absolute times mean little off a GPU; the ratios
are the point (DESIGN.md section 6).
"""

from __future__ import annotations

import argparse
import gc
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from optimizer.field import Electrode, FieldSolver
from optimizer.field import cpu_kernels as ck
from optimizer.tissue.conductivity import ConductivityModel

# Modelled memory traffic of our solver (bytes per fine voxel), from the kernels:
# per CG iteration, level 0: smoother from zero 32 + three sweeps 3 x 32 + residual/restrict
# 28 + prolongation 8 + r.z 12 + p update 20 + A p with p.Ap 32 + x, r update 48 = 276, plus
# coarse levels (about 1/7 of the smoother work) ~ 24.
BYTES_PER_VOXEL_ITERATION = 300.0
# Setup and output: faces from sigma 20, copy 24, diagonal 20, rhs and CG vectors zeroed 40,
# coarsening 18, final true residual 40, field magnitude 28 (~190).
BYTES_PER_VOXEL_SETUP = 190.0


class PeakRss:
    """Peak resident memory growth (bytes) while the context is open, sampled every 2 ms."""

    def __enter__(self) -> PeakRss:
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def grown(self) -> int:
        return max(self.peak - self.base, 0)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * 4096


def stream_copy_bandwidth(n: int = 1 << 25, repeats: int = 5) -> float:
    """Best parallel copy bandwidth (bytes/s, read + write counted) over a few repeats."""
    src = np.ones(n)
    dst = np.empty(n)
    ck.copy_into(dst, src)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        ck.copy_into(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def problem(n: int) -> tuple[np.ndarray, Electrode, Electrode]:
    names = ("fat", "prostate", "urine", "muscle")
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64),) * 3, indexing="ij")
    c = (n - 1) / 2
    labels = np.zeros((n, n, n), dtype=np.int64)
    labels[j < 0.15 * n] = 3
    labels[(i - c) ** 2 + (j - 0.7 * n) ** 2 + (k - 0.8 * n) ** 2 < (0.15 * n) ** 2] = 2
    labels[
        ((i - c) / (0.3 * n)) ** 2 + ((j - c) / (0.22 * n)) ** 2 + ((k - c) / (0.28 * n)) ** 2 < 1
    ] = 1
    sigma = ConductivityModel.from_table(names).baseline(labels)
    ci = int(c)
    z0, z1 = int(c) - 10, int(c) + 10

    def needle(x: int) -> Electrode:
        idx = np.array([(x, ci, z) for z in range(z0, z1)], dtype=np.int64)
        return Electrode(idx, 0.5335, np.array([0.0, 0.0, 1.0]))

    return sigma, needle(ci - 7), needle(ci + 8)


def sparse_system(
    solver: FieldSolver, anode: Electrode, cathode: Electrode, voltage: float
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The identical system as a CSR matrix over the free cells (the peer's assembly)."""
    op = solver.operator(anode, cathode)
    n0, n1, n2 = op.shape
    inner = (slice(1, n0 + 1), slice(1, n1 + 1), slice(1, n2 + 1))
    fixed = np.zeros(op.gx.size, dtype=bool)
    fixed[op.anode_flat] = True
    fixed[op.cathode_flat] = True
    free = ~fixed.reshape(op.gx.shape)[inner].reshape(-1)
    number = np.full(free.size, -1)
    number[free] = np.arange(int(free.sum()))
    index = np.arange(free.size).reshape(op.shape)
    rows, cols, vals = [], [], []
    diag = op.g0[inner].astype(np.float64).reshape(-1).copy()
    for g, ax in ((op.gx, 0), (op.gy, 1), (op.gz, 2)):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, op.shape[ax] - 1)
        hi[ax] = slice(1, op.shape[ax])
        w = g[inner][tuple(lo)].astype(np.float64).reshape(-1)
        a = index[tuple(lo)].reshape(-1)
        b = index[tuple(hi)].reshape(-1)
        keep = w > 0
        a, b, w = a[keep], b[keep], w[keep]
        np.add.at(diag, a, w)
        np.add.at(diag, b, w)
        rows += [number[a], number[b]]
        cols += [number[b], number[a]]
        vals += [-w, -w]
    m = int(free.sum())
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    vals.append(diag[free])
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m)
    )
    rhs = op.rhs(voltage)[inner].reshape(-1)[free]
    return matrix, rhs, free


@dataclass
class Row:
    n: int
    ours_s: float
    ours_warm_s: float
    ours_iters: int
    ours_res: float
    ours_mem: int
    peer_assembly_s: float
    peer_setup_s: float
    peer_solve_s: float
    peer_iters: int
    peer_res: float
    peer_mem: int
    floor_s: float
    gbps: float


def run_size(n: int, voltage: float, stream: float, with_peer: bool) -> Row:
    import pyamg

    sigma, anode, cathode = problem(n)
    # Ours, cold (includes face conductances, hierarchy, solve, currents and |E|).
    gc.collect()
    with PeakRss() as mem:
        t = time.perf_counter()
        solver = FieldSolver(sigma, 1.0, backend="cpu")
        sol = solver.solve(anode, cathode, voltage)
        ours = time.perf_counter() - t
    t = time.perf_counter()
    warm = solver.solve(anode, cathode, voltage)
    ours_warm = time.perf_counter() - t
    del warm
    matrix, rhs, free = sparse_system(solver, anode, cathode, voltage)
    x_ours = sol.potential_V.reshape(-1)[free]
    ours_res = float(np.linalg.norm(rhs - matrix @ x_ours) / np.linalg.norm(rhs))
    cells = n**3
    traffic = cells * (BYTES_PER_VOXEL_SETUP + BYTES_PER_VOXEL_ITERATION * sol.iterations)
    row = Row(
        n,
        ours,
        ours_warm,
        sol.iterations,
        ours_res,
        mem.grown,
        math.nan,
        math.nan,
        math.nan,
        0,
        math.nan,
        0,
        traffic / stream,
        traffic / ours_warm / 1e9,
    )
    if not with_peer:
        return row
    del matrix
    gc.collect()
    with PeakRss() as mem:
        t = time.perf_counter()
        matrix, rhs, free = sparse_system(solver, anode, cathode, voltage)
        row.peer_assembly_s = time.perf_counter() - t
        t = time.perf_counter()
        ml = pyamg.smoothed_aggregation_solver(matrix, symmetry="symmetric")
        row.peer_setup_s = time.perf_counter() - t
        residuals: list[float] = []
        t = time.perf_counter()
        x = ml.solve(rhs, tol=1e-6, accel="cg", maxiter=500, residuals=residuals)
        row.peer_solve_s = time.perf_counter() - t
    row.peer_mem = mem.grown
    row.peer_iters = len(residuals) - 1
    row.peer_res = float(np.linalg.norm(rhs - matrix @ x) / np.linalg.norm(rhs))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192])
    parser.add_argument("--quick", action="store_true", help="64^3 only, no 192^3 peer")
    parser.add_argument("--no-peer", action="store_true", help="skip pyamg")
    parser.add_argument("--voltage", type=float, default=1000.0)
    args = parser.parse_args()
    sizes = [64] if args.quick else args.sizes
    # Compile (or load from the Numba cache) before timing anything.
    sigma, anode, cathode = problem(24)
    FieldSolver(sigma, 1.0, backend="cpu").solve(anode, cathode, args.voltage)
    stream = stream_copy_bandwidth()
    print(f"STREAM-like parallel copy: {stream / 1e9:.1f} GB/s (read + write)")
    head = (
        f"{'n':>5} {'ours s':>8} {'warm s':>7} {'it':>3} {'true res':>9} {'mem MB':>7} | "
        f"{'asm s':>6} {'setup s':>7} {'solve s':>7} {'it':>3} {'true res':>9} {'mem MB':>7}"
        f" | {'x setup':>7} {'x solve':>7} | {'floor s':>7} {'/floor':>6} {'GB/s':>5}"
    )
    print(head)
    print("-" * len(head))
    for n in sizes:
        r = run_size(n, args.voltage, stream, not args.no_peer)
        with_setup = (r.peer_assembly_s + r.peer_setup_s + r.peer_solve_s) / r.ours_s
        without = r.peer_solve_s / r.ours_warm_s
        print(
            f"{n:>5} {r.ours_s:8.3f} {r.ours_warm_s:7.3f} {r.ours_iters:3d} {r.ours_res:9.2e} "
            f"{r.ours_mem / 1e6:7.0f} | {r.peer_assembly_s:6.2f} {r.peer_setup_s:7.2f} "
            f"{r.peer_solve_s:7.2f} {r.peer_iters:3d} {r.peer_res:9.2e} "
            f"{r.peer_mem / 1e6:7.0f} | {with_setup:7.1f} {without:7.1f} | "
            f"{r.floor_s:7.3f} {r.ours_warm_s / r.floor_s:6.2f} {r.gbps:5.1f}"
        )
    print(
        "x setup: peer assembly + setup + solve over ours cold (faces, hierarchy, solve, "
        "currents, |E|); x solve: peer solve over ours warm; /floor: ours warm over the "
        "modelled-traffic bandwidth floor; GB/s: modelled traffic / ours warm."
    )


if __name__ == "__main__":
    main()
