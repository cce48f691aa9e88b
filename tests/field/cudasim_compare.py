"""Run with NUMBA_ENABLE_CUDASIM=1: solve tiny pairs on the CPU and on the simulated GPU
kernels and print the comparison as JSON (driven by test_gpu_simulator.py)."""

from __future__ import annotations

import json
import sys

import numpy as np

from optimizer.field import FieldSolver
from optimizer.field.backend import cuda_simulated
from tests.field.builders import column


def compare(shape: tuple[int, int, int]) -> dict[str, float | int | str]:
    rng = np.random.default_rng(7)
    sigma = rng.uniform(0.05, 0.7, shape)
    anode = column((3, shape[1] // 2), (2, shape[2] - 2), 0.5335, 1.0)
    cathode = column((shape[0] - 4, shape[1] // 2), (2, shape[2] - 2), 0.5335, 1.0)
    cpu = FieldSolver(sigma, 1.0, backend="cpu").solve(anode, cathode, 1000.0)
    gpu = FieldSolver(sigma, 1.0, backend="gpu").solve(anode, cathode, 1000.0)
    scale = float(np.abs(cpu.potential_V).max())
    return {
        "backend": gpu.backend,
        "potential_rel": float(np.abs(gpu.potential_V - cpu.potential_V).max() / scale),
        "current_rel": abs(gpu.current_A - cpu.current_A) / cpu.current_A,
        "field_rel": float(
            np.abs(gpu.field_V_per_cm - cpu.field_V_per_cm).max() / cpu.field_V_per_cm.max()
        ),
        "gpu_iterations": gpu.iterations,
        "cpu_iterations": cpu.iterations,
        "gpu_mismatch": gpu.current_mismatch,
        "gpu_residual": gpu.relative_residual,
    }


def main() -> int:
    if not cuda_simulated():
        print("set NUMBA_ENABLE_CUDASIM=1", file=sys.stderr)
        return 2
    shapes = [(12, 10, 9)]
    print(json.dumps({"x".join(map(str, s)): compare(s) for s in shapes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
