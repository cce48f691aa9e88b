"""Which backend runs the solve: the Numba CPU kernels or the numba.cuda GPU kernels.

``"auto"`` takes the GPU when ``numba.cuda.is_available()`` on real hardware (not the CUDA
simulator, which is for tests only and far slower than the CPU backend). ``"gpu"`` asks for
the GPU explicitly and also accepts the simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how
the tests run the CUDA kernels on machines without a GPU.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from optimizer.field.errors import SolverError
from optimizer.field.multigrid import Hierarchy
from optimizer.field.pcg import CpuEngine, Engine

BackendName = Literal["cpu", "gpu", "auto"]


def cuda_simulated() -> bool:
    from numba import config

    return bool(getattr(config, "ENABLE_CUDASIM", 0))


def gpu_available(allow_simulator: bool = False) -> bool:
    """A usable CUDA device (or, when allowed, the CUDA simulator)."""
    try:
        from numba import cuda
    except ImportError:  # pragma: no cover - numba without its CUDA target
        return False
    if cuda_simulated():
        return allow_simulator
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - broken driver installs raise various errors
        return False


def resolve_backend(name: str) -> Literal["cpu", "gpu"]:
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return "gpu" if gpu_available() else "cpu"
    if name == "gpu":
        if not gpu_available(allow_simulator=True):
            raise SolverError(
                "backend 'gpu' requested but numba.cuda finds no CUDA device; use "
                "backend='cpu' or 'auto' (or set NUMBA_ENABLE_CUDASIM=1 to simulate)"
            )
        return "gpu"
    raise SolverError(f"unknown backend {name!r}; choose 'cpu', 'gpu' or 'auto'")


def make_engine(
    backend: Literal["cpu", "gpu"],
    hierarchy: Hierarchy,
    b: npt.NDArray[np.float64],
    x0: npt.NDArray[np.float64] | None,
) -> Engine:
    if backend == "gpu":
        from optimizer.field.gpu_kernels import GpuEngine

        return GpuEngine(hierarchy, b, x0)
    return CpuEngine(hierarchy, b, x0)
