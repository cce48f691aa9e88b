"""One prepared check for a real CUDA GPU (H100/H200): correctness, then timings.

    python bench/gpu_check.py [--sizes 128 256] [--check-size 64]

1. Correctness at 64^3: the heterogeneous two-needle problem of bench/solver.py solved by the
   CPU and GPU backends; max relative potential difference, current difference, iterations.
2. Timings at 128^3 and 256^3 on the GPU (cold: includes host setup of the hierarchy and the
   transfers; warm: the same solve again) beside the CPU backend on the same machine.
Prints one table. Needs only numpy, numba (with numba-cuda) and this repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.solver import problem
from optimizer.field import FieldSolver
from optimizer.field.backend import cuda_simulated, gpu_available


def timed(backend: str, n: int, voltage: float) -> tuple[float, float, object]:
    sigma, anode, cathode = problem(n)
    t = time.perf_counter()
    solver = FieldSolver(sigma, 1.0, backend=backend)
    sol = solver.solve(anode, cathode, voltage)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    sol = solver.solve(anode, cathode, voltage)
    warm = time.perf_counter() - t
    return cold, warm, sol


def phases(backend: str, n: int, voltage: float) -> dict[str, float]:
    """Seconds per step of one warm solve, to show what the GPU accelerates and what it waits on.

    Mirrors FieldSolver._solve step by step (operator, multigrid hierarchy on the host, engine
    set-up with transfers, PCG iterations, copy back + field magnitude).
    """
    from optimizer.field.backend import make_engine
    from optimizer.field.multigrid import build_hierarchy
    from optimizer.field.pcg import pcg
    from optimizer.field.solve import field_magnitude

    sigma, anode, cathode = problem(n)
    solver = FieldSolver(sigma, 1.0, backend=backend)
    solver.solve(anode, cathode, voltage)  # warm JIT and caches
    out: dict[str, float] = {}
    t = time.perf_counter()
    op = solver.operator(anode, cathode)
    out["operator"] = time.perf_counter() - t
    t = time.perf_counter()
    b = op.rhs(voltage)
    hierarchy = build_hierarchy(op)
    out["hierarchy"] = time.perf_counter() - t
    t = time.perf_counter()
    engine = make_engine(solver.backend, hierarchy, b, None)
    out["engine"] = time.perf_counter() - t
    t = time.perf_counter()
    result = pcg(engine, solver.tol, solver.max_iter, lambda: True)
    out["pcg"] = time.perf_counter() - t
    out["per_iteration"] = out["pcg"] / max(result.iterations, 1)
    t = time.perf_counter()
    x = engine.solution()
    out["copy_back"] = time.perf_counter() - t
    t = time.perf_counter()
    field_magnitude(op, x)
    out["field"] = time.perf_counter() - t
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--check-size", type=int, default=64)
    parser.add_argument("--voltage", type=float, default=1000.0)
    parser.add_argument("--skip-cpu", action="store_true", help="no CPU timings")
    parser.add_argument(
        "--allow-simulator",
        action="store_true",
        help="dry run under NUMBA_ENABLE_CUDASIM=1 (tiny sizes only: the simulator is slow)",
    )
    args = parser.parse_args()
    if not gpu_available(allow_simulator=args.allow_simulator):
        print("no CUDA GPU visible to numba.cuda (is numba-cuda installed?)")
        return 2
    from numba import cuda

    if cuda_simulated():
        name: object = "CUDA simulator"
    else:
        name = cuda.get_current_device().name
    print(f"device: {name.decode() if isinstance(name, bytes) else name}")
    # Warm up both backends (JIT) on a small grid.
    for backend in ("cpu", "gpu"):
        timed(backend, 24, args.voltage)

    n = args.check_size
    _, _, cpu = timed("cpu", n, args.voltage)
    _, _, gpu = timed("gpu", n, args.voltage)
    pot = float(np.abs(gpu.potential_V - cpu.potential_V).max() / np.abs(cpu.potential_V).max())
    cur = abs(gpu.current_A - cpu.current_A) / cpu.current_A
    ok = pot < 1e-5 and cur < 1e-5
    print(
        f"correctness {n}^3: potential rel diff {pot:.2e}, current rel diff {cur:.2e}, "
        f"iterations cpu {cpu.iterations} gpu {gpu.iterations}, gpu residual "
        f"{gpu.relative_residual:.1e}, anode/cathode mismatch {gpu.current_mismatch:.1e}: "
        f"{'OK' if ok else 'MISMATCH'}"
    )

    print(
        f"{'n':>5} {'backend':>7} {'cold s':>8} {'warm s':>8} {'iters':>5} {'Mvox/s':>8} "
        f"{'current A':>10}"
    )
    for size in args.sizes:
        for backend in ("gpu",) if args.skip_cpu else ("gpu", "cpu"):
            cold, warm, sol = timed(backend, size, args.voltage)
            print(
                f"{size:>5} {backend:>7} {cold:8.3f} {warm:8.3f} {sol.iterations:5d} "
                f"{size**3 / warm / 1e6:8.1f} {sol.current_A:10.4f}"
            )
    keys = ("operator", "hierarchy", "engine", "pcg", "per_iteration", "copy_back", "field")
    print("phase breakdown of one warm solve, seconds: " + ", ".join(keys))
    for size in args.sizes:
        for backend in ("gpu",) if args.skip_cpu else ("gpu", "cpu"):
            ph = phases(backend, size, args.voltage)
            print(f"{size:>5} {backend:>7} " + " ".join(f"{ph[k]:8.4f}" for k in keys))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
