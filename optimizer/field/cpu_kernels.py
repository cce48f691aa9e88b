"""Numba CPU kernels of the matrix-free MG-PCG solver.

Layout (shared with ``gpu_kernels``): every grid array is *padded* with one ghost layer on
each side, shape ``(n0 + 2, n1 + 2, n2 + 2)``, C order, so stencils need no boundary branches.
Face conductances are stored at their lower cell: ``gx[a, b, c]`` couples cells ``(a, b, c)``
and ``(a + 1, b, c)``; faces touching a ghost cell are zero (the insulating boundary). A cell
whose equation is decoupled (a needle voxel, a coarse cell made only of needle voxels) has all
faces zero, no ground tie and ``diag = 1``, so it keeps a zero correction without any flag.

Why the kernels look the way they do (DESIGN.md section 6): the smoother and stencils work on
whole lines (1-D views, contiguous in the last axis) so LLVM vectorises them; red-black Gauss-
Seidel computes the update for the whole line and blends back the cells of one colour in the
parallel sweep, and updates one colour with a stride-2 loop in the serial one (each measured
faster there; see ``_gs_plane_strided``); both colours run in one pass over memory, each
thread owning a block of planes with the second colour one plane behind the first (the two
block-edge planes of the second colour wait for a second, tiny parallel loop, so the result
is exactly the sequential red-black sweep, deterministic for any thread count). Conductances,
the smoother and the multigrid vectors are float32; CG vectors and the solution are float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", fastmath=True, cache=True)
def _gs_line(e, r, gx, gy, gz, diag, a, b, out, first, step):  # type: ignore[no-untyped-def]
    """Jacobi-style update of cells first, first + step, ... of line (a, b) into out[c]."""
    n2 = e.shape[2] - 2
    em = e[a - 1, b]
    ep = e[a + 1, b]
    ebm = e[a, b - 1]
    ebp = e[a, b + 1]
    e0 = e[a, b]
    gxm = gx[a - 1, b]
    gx0 = gx[a, b]
    gym = gy[a, b - 1]
    gy0 = gy[a, b]
    gz0 = gz[a, b]
    r0 = r[a, b]
    d0 = diag[a, b]
    for c in range(first, n2 + 1, step):
        s = (
            np.float32(r0[c])
            + gxm[c] * em[c]
            + gx0[c] * ep[c]
            + gym[c] * ebm[c]
            + gy0[c] * ebp[c]
            + gz0[c - 1] * e0[c - 1]
            + gz0[c] * e0[c + 1]
        )
        out[c] = s / d0[c]


@njit(inline="always", fastmath=True, cache=True)
def _gs_plane(e, r, gx, gy, gz, diag, a, colour, tmp):  # type: ignore[no-untyped-def]
    """Gauss-Seidel update of the cells of one colour ((a+b+c) % 2 == colour) in plane a."""
    n1 = e.shape[1] - 2
    n2 = e.shape[2] - 2
    for b in range(1, n1 + 1):
        _gs_line(e, r, gx, gy, gz, diag, a, b, tmp, 1, 1)
        e0 = e[a, b]
        parity = (a + b + colour) & 1
        for c in range(1, n2 + 1):
            e0[c] = tmp[c] if (c & 1) == parity else e0[c]


@njit(inline="always", fastmath=True, cache=True)
def _gs_plane_strided(e, r, gx, gy, gz, diag, a, colour):  # type: ignore[no-untyped-def]
    """Gauss-Seidel update of the cells of one colour ((a+b+c) % 2 == colour) in plane a.

    Every neighbour of a cell has the other colour, so the cells of one colour are updated in
    any order; the stride-2 loop still vectorises (LLVM's interleaved loads) and does half the
    arithmetic of ``_gs_plane``. On one thread it sweeps 1.4-1.5x faster (Numba 0.68, 2-core
    machine, bitwise the same result); in the parallel sweep it was slower (2 threads there,
    16 on a GPU machine's CPU), so that one keeps ``_gs_plane``.
    """
    n1 = e.shape[1] - 2
    for b in range(1, n1 + 1):
        # Writing into the line itself is safe: the cells read there have the other colour.
        _gs_line(e, r, gx, gy, gz, diag, a, b, e[a, b], 2 - ((a + b + colour) & 1), 2)


@njit(inline="always", fastmath=True, cache=True)
def _gs_plane_from_zero(e, r, diag, a, colour):  # type: ignore[no-untyped-def]
    """First half-sweep from a zero guess: colour cells get r/diag, the others 0."""
    n1 = e.shape[1] - 2
    n2 = e.shape[2] - 2
    zero = np.float32(0.0)
    for b in range(1, n1 + 1):
        e0 = e[a, b]
        r0 = r[a, b]
        d0 = diag[a, b]
        parity = (a + b + colour) & 1
        for c in range(1, n2 + 1):
            e0[c] = np.float32(r0[c]) / d0[c] if (c & 1) == parity else zero


@njit(inline="always", cache=True)
def _block(k, nblocks, n0):  # type: ignore[no-untyped-def]
    return 1 + (k * n0) // nblocks, 1 + ((k + 1) * n0) // nblocks


@njit(parallel=True, fastmath=True, cache=True)
def _sweep_blocks(e, r, gx, gy, gz, diag, first, nblocks, from_zero):  # type: ignore[no-untyped-def]
    """Both colours over each block of planes, the second colour one plane behind."""
    second = 1 - first
    n0 = e.shape[0] - 2
    for k in prange(nblocks):
        a0, a1 = _block(k, nblocks, n0)
        tmp = np.empty(e.shape[2], dtype=np.float32)
        if from_zero:
            for a in range(a0, a1):
                _gs_plane_from_zero(e, r, diag, a, first)
                if a - 1 > a0:
                    _gs_plane(e, r, gx, gy, gz, diag, a - 1, second, tmp)
        else:
            for a in range(a0, a1):
                _gs_plane(e, r, gx, gy, gz, diag, a, first, tmp)
                if a - 1 > a0:
                    _gs_plane(e, r, gx, gy, gz, diag, a - 1, second, tmp)


@njit(parallel=True, fastmath=True, cache=True)
def _sweep_block_edges(e, r, gx, gy, gz, diag, first, nblocks):  # type: ignore[no-untyped-def]
    """The second colour on each block's first and last plane, once every block is done."""
    second = 1 - first
    n0 = e.shape[0] - 2
    for k in prange(nblocks):
        a0, a1 = _block(k, nblocks, n0)
        tmp = np.empty(e.shape[2], dtype=np.float32)
        if a1 > a0:
            _gs_plane(e, r, gx, gy, gz, diag, a0, second, tmp)
        if a1 - 1 > a0:
            _gs_plane(e, r, gx, gy, gz, diag, a1 - 1, second, tmp)


@njit(fastmath=True, cache=True)
def _sweep_serial(e, r, gx, gy, gz, diag, first, from_zero):  # type: ignore[no-untyped-def]
    """The same sweep on one thread, for small coarse levels (no parallel start-up cost)."""
    second = 1 - first
    n0 = e.shape[0] - 2
    for a in range(1, n0 + 1):
        if from_zero:
            _gs_plane_from_zero(e, r, diag, a, first)
        else:
            _gs_plane_strided(e, r, gx, gy, gz, diag, a, first)
        if a > 1:
            _gs_plane_strided(e, r, gx, gy, gz, diag, a - 1, second)
    _gs_plane_strided(e, r, gx, gy, gz, diag, n0, second)


# The two parallel parts are separate compiled functions on purpose: the edge planes read
# what other blocks wrote, and Numba fuses consecutive prange loops of equal range.
def smooth(e, r, gx, gy, gz, diag, first, nblocks):  # type: ignore[no-untyped-def]
    """One red-black sweep: colour ``first`` then the other, both in one pass over memory.

    ``nblocks`` plane blocks run in parallel; 1 runs the serial kernel.
    """
    if nblocks == 1:
        _sweep_serial(e, r, gx, gy, gz, diag, first, False)
        return
    _sweep_blocks(e, r, gx, gy, gz, diag, first, nblocks, False)
    _sweep_block_edges(e, r, gx, gy, gz, diag, first, nblocks)


def smooth_from_zero(e, r, gx, gy, gz, diag, first, nblocks):  # type: ignore[no-untyped-def]
    """``smooth`` for a zero initial guess: never reads ``e``, so it needs no zero fill."""
    if nblocks == 1:
        _sweep_serial(e, r, gx, gy, gz, diag, first, True)
        return
    _sweep_blocks(e, r, gx, gy, gz, diag, first, nblocks, True)
    _sweep_block_edges(e, r, gx, gy, gz, diag, first, nblocks)


@njit(inline="always", fastmath=True, cache=True)
def _residual_line(e, r, gx, gy, gz, diag, a, b, tmp):  # type: ignore[no-untyped-def]
    """tmp[1..n2] = r - A e on line (a, b), in float32."""
    n2 = e.shape[2] - 2
    em = e[a - 1, b]
    ep = e[a + 1, b]
    ebm = e[a, b - 1]
    ebp = e[a, b + 1]
    e0 = e[a, b]
    gxm = gx[a - 1, b]
    gx0 = gx[a, b]
    gym = gy[a, b - 1]
    gy0 = gy[a, b]
    gz0 = gz[a, b]
    r0 = r[a, b]
    d0 = diag[a, b]
    for c in range(1, n2 + 1):
        tmp[c] = (
            np.float32(r0[c])
            - d0[c] * e0[c]
            + gxm[c] * em[c]
            + gx0[c] * ep[c]
            + gym[c] * ebm[c]
            + gy0[c] * ebp[c]
            + gz0[c - 1] * e0[c - 1]
            + gz0[c] * e0[c + 1]
        )


@njit(parallel=True, fastmath=True, cache=True)
def residual_restrict(e, r, gx, gy, gz, diag, rc):  # type: ignore[no-untyped-def]
    """rc = sum over the (up to 8) children of the fine residual r - A e.

    Each thread owns whole coarse planes, so the sums need no atomics. A coarse cell's
    children are fine cells 2A-1 and 2A per axis (padded indices); an axis of size 1 maps 1->1.
    """
    n0 = e.shape[0] - 2
    n1 = e.shape[1] - 2
    n2 = e.shape[2] - 2
    m0 = rc.shape[0] - 2
    for A in prange(1, m0 + 1):
        tmp = np.zeros(n2 + 2, dtype=np.float32)
        rcA = rc[A]
        rcA[:, :] = 0.0
        for a in range(2 * A - 1, min(2 * A, n0) + 1):
            for b in range(1, n1 + 1):
                _residual_line(e, r, gx, gy, gz, diag, a, b, tmp)
                row = rcA[(b + 1) // 2]
                for c in range(1, n2 + 1):
                    row[(c + 1) // 2] += tmp[c]


@njit(parallel=True, fastmath=True, cache=True)
def prolong_add(e, ec):  # type: ignore[no-untyped-def]
    """e += piecewise-constant interpolation of the coarse correction ec."""
    n0 = e.shape[0] - 2
    n1 = e.shape[1] - 2
    n2 = e.shape[2] - 2
    for a in prange(1, n0 + 1):
        A = (a + 1) // 2
        for b in range(1, n1 + 1):
            row = e[a, b]
            crow = ec[A, (b + 1) // 2]
            for c in range(1, n2 + 1):
                row[c] += crow[(c + 1) // 2]


@njit(parallel=True, fastmath=True, cache=True)
def matvec_dot(p, gx, gy, gz, g0, out):  # type: ignore[no-untyped-def]
    """out = A p in flux form (float64); returns p . A p.

    Flux form, sum of G (p_i - p_j) + g0 p_i, not diag p_i - sum of G p_j: a float32 diagonal
    would not cancel its faces exactly and every cell would leak a little current, which over
    millions of cells shows up as a visible anode/cathode current mismatch.
    """
    n0 = p.shape[0] - 2
    n1 = p.shape[1] - 2
    n2 = p.shape[2] - 2
    total = 0.0
    for a in prange(1, n0 + 1):
        acc = 0.0
        for b in range(1, n1 + 1):
            pm = p[a - 1, b]
            pp = p[a + 1, b]
            pbm = p[a, b - 1]
            pbp = p[a, b + 1]
            p0 = p[a, b]
            gxm = gx[a - 1, b]
            gx0 = gx[a, b]
            gym = gy[a, b - 1]
            gy0 = gy[a, b]
            gz0 = gz[a, b]
            t0 = g0[a, b]
            o0 = out[a, b]
            for c in range(1, n2 + 1):
                q = p0[c]
                v = (
                    t0[c] * q
                    + gxm[c] * (q - pm[c])
                    + gx0[c] * (q - pp[c])
                    + gym[c] * (q - pbm[c])
                    + gy0[c] * (q - pbp[c])
                    + gz0[c - 1] * (q - p0[c - 1])
                    + gz0[c] * (q - p0[c + 1])
                )
                o0[c] = v
                acc += v * q
        total += acc
    return total


@njit(parallel=True, fastmath=True, cache=True)
def cg_update(x, r, p, ap, alpha):  # type: ignore[no-untyped-def]
    """x += alpha p; r -= alpha A p; returns r . r (flat views of the padded arrays)."""
    xf = x.reshape(-1)
    rf = r.reshape(-1)
    pf = p.reshape(-1)
    af = ap.reshape(-1)
    total = 0.0
    for i in prange(xf.size):
        xf[i] += alpha * pf[i]
        v = rf[i] - alpha * af[i]
        rf[i] = v
        total += v * v
    return total


@njit(parallel=True, fastmath=True, cache=True)
def dot(u, v):  # type: ignore[no-untyped-def]
    uf = u.reshape(-1)
    vf = v.reshape(-1)
    total = 0.0
    for i in prange(uf.size):
        total += uf[i] * vf[i]
    return total


@njit(parallel=True, fastmath=True, cache=True)
def direction_update(p, z, beta):  # type: ignore[no-untyped-def]
    """p = z + beta p, with z the float32 preconditioned residual."""
    pf = p.reshape(-1)
    zf = z.reshape(-1)
    for i in prange(pf.size):
        pf[i] = zf[i] + beta * pf[i]


@njit(parallel=True, fastmath=True, cache=True)
def copy_into(dst, src):  # type: ignore[no-untyped-def]
    df = dst.reshape(-1)
    sf = src.reshape(-1)
    for i in prange(df.size):
        df[i] = sf[i]


@njit(parallel=True, fastmath=True, cache=True)
def residual64(b, x, gx, gy, gz, g0, r):  # type: ignore[no-untyped-def]
    """r = b - A x in float64 flux form (see ``matvec_dot``); returns r . r."""
    n0 = x.shape[0] - 2
    n1 = x.shape[1] - 2
    n2 = x.shape[2] - 2
    total = 0.0
    for a in prange(1, n0 + 1):
        acc = 0.0
        for j in range(1, n1 + 1):
            xm = x[a - 1, j]
            xp = x[a + 1, j]
            xbm = x[a, j - 1]
            xbp = x[a, j + 1]
            x0 = x[a, j]
            gxm = gx[a - 1, j]
            gx0 = gx[a, j]
            gym = gy[a, j - 1]
            gy0 = gy[a, j]
            gz0 = gz[a, j]
            t0 = g0[a, j]
            bb = b[a, j]
            r0 = r[a, j]
            for c in range(1, n2 + 1):
                q = x0[c]
                v = bb[c] - (
                    t0[c] * q
                    + gxm[c] * (q - xm[c])
                    + gx0[c] * (q - xp[c])
                    + gym[c] * (q - xbm[c])
                    + gy0[c] * (q - xbp[c])
                    + gz0[c - 1] * (q - x0[c - 1])
                    + gz0[c] * (q - x0[c + 1])
                )
                r0[c] = v
                acc += v * v
        total += acc
    return total


# --------------------------------------------------------------------------- setup kernels


@njit(parallel=True, fastmath=True, cache=True)
def faces_from_sigma(sigma, h, gx, gy, gz):  # type: ignore[no-untyped-def]
    """Harmonic-mean face conductances (S) of a cell-centred grid with spacing h (m).

    sigma has the unpadded shape; the padded face arrays must be zero on entry (the faces
    to ghost cells stay zero: the insulating boundary).
    """
    n0, n1, n2 = sigma.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                s = sigma[i, j, k]
                if i + 1 < n0:
                    t = sigma[i + 1, j, k]
                    gx[i + 1, j + 1, k + 1] = 2.0 * h * s * t / (s + t)
                if j + 1 < n1:
                    t = sigma[i, j + 1, k]
                    gy[i + 1, j + 1, k + 1] = 2.0 * h * s * t / (s + t)
                if k + 1 < n2:
                    t = sigma[i, j, k + 1]
                    gz[i + 1, j + 1, k + 1] = 2.0 * h * s * t / (s + t)


@njit(parallel=True, fastmath=True, cache=True)
def diagonal(gx, gy, gz, g0, diag):  # type: ignore[no-untyped-def]
    """diag = sum of the six faces + ground tie; a decoupled cell (diag 0) gets 1."""
    n0 = gx.shape[0] - 2
    n1 = gx.shape[1] - 2
    n2 = gx.shape[2] - 2
    for a in prange(1, n0 + 1):
        for b in range(1, n1 + 1):
            for c in range(1, n2 + 1):
                d = (
                    gx[a - 1, b, c]
                    + gx[a, b, c]
                    + gy[a, b - 1, c]
                    + gy[a, b, c]
                    + gz[a, b, c - 1]
                    + gz[a, b, c]
                    + g0[a, b, c]
                )
                diag[a, b, c] = d if d > 0.0 else np.float32(1.0)


@njit(parallel=True, fastmath=True, cache=True)
def coarsen(gx, gy, gz, g0, cgx, cgy, cgz, cg0, ground_weight):  # type: ignore[no-untyped-def]
    """Coarse operator by rediscretisation (DESIGN.md section 6, items 1 and 2).

    A coarse face is half the sum of the fine faces it covers (twice the area over twice the
    distance); faces inside a coarse cell vanish. A fine ground tie (a face to a needle
    voxel) becomes a ground tie of the coarse cell with weight ``ground_weight`` (1/2), so a
    coarse cell that holds needle voxels stays an unknown. Ghost faces are zero, so children
    beyond an odd edge add nothing. Coarse arrays must be zero on entry.
    """
    m0 = cgx.shape[0] - 2
    m1 = cgx.shape[1] - 2
    m2 = cgx.shape[2] - 2
    n0 = gx.shape[0] - 2
    n1 = gx.shape[1] - 2
    n2 = gx.shape[2] - 2
    for A in prange(1, m0 + 1):
        for B in range(1, m1 + 1):
            for C in range(1, m2 + 1):
                a_lo = 2 * A - 1
                b_lo = 2 * B - 1
                c_lo = 2 * C - 1
                a_hi = min(2 * A, n0)
                b_hi = min(2 * B, n1)
                c_hi = min(2 * C, n2)
                sx = np.float32(0.0)
                sy = np.float32(0.0)
                sz = np.float32(0.0)
                s0 = np.float32(0.0)
                for a in range(a_lo, a_hi + 1):
                    for b in range(b_lo, b_hi + 1):
                        for c in range(c_lo, c_hi + 1):
                            s0 += g0[a, b, c]
                # The coarse face to the next coarse cell is made of the fine faces at plane
                # 2A (padded); at an odd edge that plane is the ghost, whose faces are zero.
                for b in range(b_lo, b_hi + 1):
                    for c in range(c_lo, c_hi + 1):
                        sx += gx[2 * A, b, c]
                for a in range(a_lo, a_hi + 1):
                    for c in range(c_lo, c_hi + 1):
                        sy += gy[a, 2 * B, c]
                for a in range(a_lo, a_hi + 1):
                    for b in range(b_lo, b_hi + 1):
                        sz += gz[a, b, 2 * C]
                half = np.float32(0.5)
                cgx[A, B, C] = half * sx
                cgy[A, B, C] = half * sy
                cgz[A, B, C] = half * sz
                cg0[A, B, C] = np.float32(ground_weight) * s0


@njit(parallel=True, fastmath=True, cache=True)
def field_magnitude(phi, h, out):  # type: ignore[no-untyped-def]
    """|E| (V/m) by central differences of phi (padded, ghosts = edge values: zero normal field
    on the insulating boundary, so a boundary cell's component is half its one-sided one)."""
    n0 = phi.shape[0] - 2
    n1 = phi.shape[1] - 2
    n2 = phi.shape[2] - 2
    inv = 0.5 / h
    for a in prange(1, n0 + 1):
        for b in range(1, n1 + 1):
            pm = phi[a - 1, b]
            pp = phi[a + 1, b]
            pbm = phi[a, b - 1]
            pbp = phi[a, b + 1]
            p0 = phi[a, b]
            o = out[a - 1, b - 1]
            for c in range(1, n2 + 1):
                ex = (pm[c] - pp[c]) * inv
                ey = (pbm[c] - pbp[c]) * inv
                ez = (p0[c - 1] - p0[c + 1]) * inv
                o[c - 1] = np.sqrt(ex * ex + ey * ey + ez * ez)
