"""numba.cuda kernels of the same MG-PCG solver, and the GPU engine that drives them.

Same layout and same algorithm as ``cpu_kernels`` (padded arrays, float32 conductances and
smoother, float64 CG vectors and flux-form operator, red-black Gauss-Seidel with the same
colour order, piecewise-constant transfers, dense coarsest solve), so both backends give the
same potential to float32 round-off. The GPU mapping: a 2-D grid of threads over the two
fast axes (b, c), each thread walking the planes a (coalesced loads along c, no plane
pipelining needed because one colour's cells are independent); one launch per colour
half-sweep; reductions by a shared-memory tree per block and one atomic add per block.

The hierarchy is built on the host (``multigrid.build_hierarchy``) and copied once per solve
(work vectors are zeroed on the device, not copied);
the CG loop then stays on the device except for the scalars of each reduction.
Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in numba's CUDA simulator (tests only).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import cuda, float64

from optimizer.field.backend import cuda_simulated
from optimizer.field.multigrid import Hierarchy

F64 = npt.NDArray[np.float64]

_MAX_THREADS = 256
# Block shape of the plane kernels (b, c); smaller under the simulator, which runs one
# Python thread per CUDA thread.
_BLOCK_2D = (4, 8) if cuda_simulated() else (8, 32)
_THREADS_1D = 32 if cuda_simulated() else 256
_BLOCKS_1D = 2 if cuda_simulated() else 1024


@cuda.jit(device=True, inline=True)
def _block_sum_add(value, result):  # type: ignore[no-untyped-def]
    """Sum ``value`` over the block and atomically add it to result[0]."""
    shared = cuda.shared.array(_MAX_THREADS, dtype=float64)
    tid = cuda.threadIdx.x + cuda.threadIdx.y * cuda.blockDim.x
    size = cuda.blockDim.x * cuda.blockDim.y
    shared[tid] = value
    cuda.syncthreads()
    step = 1
    while step < size:
        step *= 2
    step //= 2
    while step > 0:
        if tid < step and tid + step < size:
            shared[tid] += shared[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        cuda.atomic.add(result, 0, shared[0])


@cuda.jit
def _sweep(e, r, gx, gy, gz, diag, colour):  # type: ignore[no-untyped-def]
    c, b = cuda.grid(2)
    c += 1
    b += 1
    if b <= e.shape[1] - 2 and c <= e.shape[2] - 2:
        for a in range(1, e.shape[0] - 1):
            if (a + b + c) % 2 == colour:
                s = (
                    np.float32(r[a, b, c])
                    + gx[a - 1, b, c] * e[a - 1, b, c]
                    + gx[a, b, c] * e[a + 1, b, c]
                    + gy[a, b - 1, c] * e[a, b - 1, c]
                    + gy[a, b, c] * e[a, b + 1, c]
                    + gz[a, b, c - 1] * e[a, b, c - 1]
                    + gz[a, b, c] * e[a, b, c + 1]
                )
                e[a, b, c] = s / diag[a, b, c]


@cuda.jit
def _sweep_from_zero(e, r, diag, colour):  # type: ignore[no-untyped-def]
    c, b = cuda.grid(2)
    c += 1
    b += 1
    if b <= e.shape[1] - 2 and c <= e.shape[2] - 2:
        for a in range(1, e.shape[0] - 1):
            if (a + b + c) % 2 == colour:
                e[a, b, c] = np.float32(r[a, b, c]) / diag[a, b, c]
            else:
                e[a, b, c] = np.float32(0.0)


@cuda.jit
def _residual_restrict(e, r, gx, gy, gz, diag, rc):  # type: ignore[no-untyped-def]
    C, B = cuda.grid(2)
    C += 1
    B += 1
    n0 = e.shape[0] - 2
    n1 = e.shape[1] - 2
    n2 = e.shape[2] - 2
    if rc.shape[1] - 2 >= B and rc.shape[2] - 2 >= C:
        for A in range(1, rc.shape[0] - 1):
            total = np.float32(0.0)
            for a in range(2 * A - 1, min(2 * A, n0) + 1):
                for b in range(2 * B - 1, min(2 * B, n1) + 1):
                    for c in range(2 * C - 1, min(2 * C, n2) + 1):
                        total += (
                            np.float32(r[a, b, c])
                            - diag[a, b, c] * e[a, b, c]
                            + gx[a - 1, b, c] * e[a - 1, b, c]
                            + gx[a, b, c] * e[a + 1, b, c]
                            + gy[a, b - 1, c] * e[a, b - 1, c]
                            + gy[a, b, c] * e[a, b + 1, c]
                            + gz[a, b, c - 1] * e[a, b, c - 1]
                            + gz[a, b, c] * e[a, b, c + 1]
                        )
            rc[A, B, C] = total


@cuda.jit
def _prolong_add(e, ec):  # type: ignore[no-untyped-def]
    c, b = cuda.grid(2)
    c += 1
    b += 1
    if b <= e.shape[1] - 2 and c <= e.shape[2] - 2:
        for a in range(1, e.shape[0] - 1):
            e[a, b, c] += ec[(a + 1) // 2, (b + 1) // 2, (c + 1) // 2]


@cuda.jit
def _dense_solve(inverse, positions, rc_flat, ec_flat):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i < positions.size:
        total = 0.0
        for j in range(positions.size):
            total += inverse[i, j] * rc_flat[positions[j]]
        ec_flat[positions[i]] = total


@cuda.jit
def _matvec_dot(p, gx, gy, gz, g0, out, result):  # type: ignore[no-untyped-def]
    c, b = cuda.grid(2)
    c += 1
    b += 1
    acc = 0.0
    if b <= p.shape[1] - 2 and c <= p.shape[2] - 2:
        for a in range(1, p.shape[0] - 1):
            q = p[a, b, c]
            v = (
                g0[a, b, c] * q
                + gx[a - 1, b, c] * (q - p[a - 1, b, c])
                + gx[a, b, c] * (q - p[a + 1, b, c])
                + gy[a, b - 1, c] * (q - p[a, b - 1, c])
                + gy[a, b, c] * (q - p[a, b + 1, c])
                + gz[a, b, c - 1] * (q - p[a, b, c - 1])
                + gz[a, b, c] * (q - p[a, b, c + 1])
            )
            out[a, b, c] = v
            acc += v * q
    _block_sum_add(acc, result)


@cuda.jit
def _residual64(rhs, x, gx, gy, gz, g0, r, result):  # type: ignore[no-untyped-def]
    c, b = cuda.grid(2)
    c += 1
    b += 1
    acc = 0.0
    if b <= x.shape[1] - 2 and c <= x.shape[2] - 2:
        for a in range(1, x.shape[0] - 1):
            q = x[a, b, c]
            v = rhs[a, b, c] - (
                g0[a, b, c] * q
                + gx[a - 1, b, c] * (q - x[a - 1, b, c])
                + gx[a, b, c] * (q - x[a + 1, b, c])
                + gy[a, b - 1, c] * (q - x[a, b - 1, c])
                + gy[a, b, c] * (q - x[a, b + 1, c])
                + gz[a, b, c - 1] * (q - x[a, b, c - 1])
                + gz[a, b, c] * (q - x[a, b, c + 1])
            )
            r[a, b, c] = v
            acc += v * v
    _block_sum_add(acc, result)


@cuda.jit
def _cg_update(x, r, p, ap, alpha, result):  # type: ignore[no-untyped-def]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    for i in range(start, x.size, stride):
        x[i] += alpha * p[i]
        v = r[i] - alpha * ap[i]
        r[i] = v
        acc += v * v
    _block_sum_add(acc, result)


@cuda.jit
def _dot(u, v, result):  # type: ignore[no-untyped-def]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    for i in range(start, u.size, stride):
        acc += u[i] * v[i]
    _block_sum_add(acc, result)


@cuda.jit
def _direction(p, z, beta):  # type: ignore[no-untyped-def]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.size, stride):
        p[i] = z[i] + beta * p[i]


@cuda.jit
def _gather(x, index, out):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i < index.size:
        out[i] = x[index[i]]


@cuda.jit
def _fill_zero(u):  # type: ignore[no-untyped-def]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, u.size, stride):
        u[i] = 0.0


def _device_zeros(shape: tuple[int, ...], dtype: npt.DTypeLike) -> Any:
    """Zeros made on the device: no host array, no host-to-device copy (measured on an H200:
    allocating and copying host zeros was most of a 256^3 solve's set-up)."""
    arr = cuda.device_array(shape, dtype=dtype)
    _fill_zero[_BLOCKS_1D, _THREADS_1D](arr.reshape(arr.size))
    return arr


class _DeviceLevel:
    def __init__(self, level, with_g0: bool) -> None:  # type: ignore[no-untyped-def]
        self.shape = level.shape
        self.gx = cuda.to_device(level.gx)
        self.gy = cuda.to_device(level.gy)
        self.gz = cuda.to_device(level.gz)
        self.diag = cuda.to_device(level.diag)
        self.g0 = cuda.to_device(level.g0) if with_g0 else None
        self.e = _device_zeros(level.gx.shape, level.gx.dtype)
        self.r = _device_zeros(level.gx.shape, level.gx.dtype)
        blocks_c = math.ceil(level.shape[2] / _BLOCK_2D[1])
        blocks_b = math.ceil(level.shape[1] / _BLOCK_2D[0])
        self.launch = ((blocks_c, blocks_b), (_BLOCK_2D[1], _BLOCK_2D[0]))


class GpuEngine:
    """The PCG engine (see ``pcg.Engine``) on a CUDA device."""

    name = "gpu"

    def __init__(self, hierarchy: Hierarchy, b: F64, x0: F64 | None) -> None:
        self.levels = [_DeviceLevel(lv, k == 0) for k, lv in enumerate(hierarchy.levels)]
        coarse = hierarchy.levels[-1]
        n0, n1, n2 = coarse.shape
        dims = (n0 + 2, n1 + 2, n2 + 2)
        inner = np.stack(
            np.meshgrid(
                np.arange(1, n0 + 1), np.arange(1, n1 + 1), np.arange(1, n2 + 1), indexing="ij"
            ),
            axis=-1,
        ).reshape(-1, 3)
        self.positions = cuda.to_device(np.ravel_multi_index(inner.T, dims).astype(np.int64))
        self.inverse = cuda.to_device(hierarchy.coarse_inverse)
        self.b = cuda.to_device(b)
        self.x = _device_zeros(b.shape, b.dtype) if x0 is None else cuda.to_device(x0)
        self.r = _device_zeros(b.shape, b.dtype)
        self.p = _device_zeros(b.shape, b.dtype)
        self.ap = _device_zeros(b.shape, b.dtype)
        self.result = cuda.to_device(np.zeros(1))
        self.flat_launch = (_BLOCKS_1D, _THREADS_1D)

    # -- reductions -------------------------------------------------------------------------
    def _reset(self) -> None:
        self.result.copy_to_device(np.zeros(1))

    def _value(self) -> float:
        return float(self.result.copy_to_host()[0])

    def _flat(self, arr):  # type: ignore[no-untyped-def]
        return arr.reshape(arr.size)

    # -- Engine protocol --------------------------------------------------------------------
    def rhs_norm2(self) -> float:
        self._reset()
        _dot[self.flat_launch](self._flat(self.b), self._flat(self.b), self.result)
        return self._value()

    def true_residual(self) -> float:
        lv = self.levels[0]
        self._reset()
        _residual64[lv.launch](self.b, self.x, lv.gx, lv.gy, lv.gz, lv.g0, self.r, self.result)
        return self._value()

    def _vcycle(self) -> None:
        levels = self.levels
        residual = self.r
        for k, lv in enumerate(levels[:-1]):
            grid, block = lv.launch
            ops = (lv.gx, lv.gy, lv.gz, lv.diag)
            _sweep_from_zero[grid, block](lv.e, residual, lv.diag, 0)
            _sweep[grid, block](lv.e, residual, *ops, 1)
            _sweep[grid, block](lv.e, residual, *ops, 0)
            _sweep[grid, block](lv.e, residual, *ops, 1)
            nxt = levels[k + 1]
            _residual_restrict[nxt.launch](lv.e, residual, *ops, nxt.r)
            residual = nxt.r
        coarse = levels[-1]
        threads = min(_THREADS_1D, self.positions.size)
        _dense_solve[math.ceil(self.positions.size / threads), threads](
            self.inverse, self.positions, self._flat(residual), self._flat(coarse.e)
        )
        for k in range(len(levels) - 2, -1, -1):
            lv = levels[k]
            residual = self.r if k == 0 else lv.r
            grid, block = lv.launch
            ops = (lv.gx, lv.gy, lv.gz, lv.diag)
            _prolong_add[grid, block](lv.e, levels[k + 1].e)
            for colour in (1, 0, 1, 0):
                _sweep[grid, block](lv.e, residual, *ops, colour)

    def precondition(self) -> float:
        self._vcycle()
        self._reset()
        _dot[self.flat_launch](self._flat(self.r), self._flat(self.levels[0].e), self.result)
        return self._value()

    def set_direction(self, beta: float) -> None:
        _direction[self.flat_launch](self._flat(self.p), self._flat(self.levels[0].e), beta)

    def matvec_dot(self) -> float:
        lv = self.levels[0]
        self._reset()
        _matvec_dot[lv.launch](self.p, lv.gx, lv.gy, lv.gz, lv.g0, self.ap, self.result)
        return self._value()

    def update(self, alpha: float) -> float:
        self._reset()
        _cg_update[self.flat_launch](
            self._flat(self.x),
            self._flat(self.r),
            self._flat(self.p),
            self._flat(self.ap),
            alpha,
            self.result,
        )
        return self._value()

    def solution(self) -> F64:
        return np.asarray(self.x.copy_to_host())

    def gather(self, flat: npt.NDArray[np.int64]) -> F64:
        if flat.size == 0:
            return np.zeros(0)
        index = cuda.to_device(np.ascontiguousarray(flat, dtype=np.int64))
        out = cuda.device_array(flat.size, dtype=np.float64)
        threads = min(_THREADS_1D, flat.size)
        _gather[math.ceil(flat.size / threads), threads](self._flat(self.x), index, out)
        return np.asarray(out.copy_to_host())
