"""Preconditioned conjugate gradients, written once for every backend.

A backend supplies an ``Engine`` that owns the vectors (x, r, p, A p and the preconditioned
residual z, on its own device) and the fused kernels below; ``pcg`` only does the scalar
recurrences. Convergence is judged on the recursively updated residual and then confirmed on
the true residual b - A x (a restart if they drifted apart), which is what is reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from optimizer.field import cpu_kernels as ck
from optimizer.field.errors import ConvergenceError, SolverError
from optimizer.field.multigrid import Hierarchy, cpu_vcycle

F64 = npt.NDArray[np.float64]


class Engine(Protocol):
    name: str

    def rhs_norm2(self) -> float: ...
    def true_residual(self) -> float:
        """r = b - A x; returns r . r."""
        ...

    def precondition(self) -> float:
        """z = M r (one V-cycle); returns r . z."""
        ...

    def set_direction(self, beta: float) -> None:
        """p = z + beta p."""
        ...

    def matvec_dot(self) -> float:
        """A p; returns p . A p."""
        ...

    def update(self, alpha: float) -> float:
        """x += alpha p, r -= alpha A p; returns r . r."""
        ...

    def solution(self) -> F64:
        """x as a padded float64 host array."""
        ...

    def gather(self, flat: npt.NDArray[np.int64]) -> F64:
        """x at a few padded flat indices, on the host."""
        ...


@dataclass(frozen=True)
class PcgResult:
    iterations: int
    relative_residual: float


def pcg(
    engine: Engine, tol: float, max_iter: int, accept: Callable[[], bool] | None = None
) -> PcgResult:
    """Solve to ||b - A x|| <= tol ||b||; raises ConvergenceError after max_iter iterations.

    ``accept``, when given, must also hold at the end (the solver checks that anode and cathode
    currents agree: a small residual spread smoothly over a large grid can still sum to a
    visible current mismatch); while it fails, the tolerance tightens a hundredfold.
    """
    bb = engine.rhs_norm2()
    if not math.isfinite(bb):
        raise SolverError("the right-hand side is not finite (check voltage and conductivity)")
    if bb == 0.0:
        engine.true_residual()
        return PcgResult(0, 0.0)
    target = tol * tol * bb
    iterations = 0
    while True:
        rr = engine.true_residual()
        if rr <= target:
            if accept is None or accept():
                return PcgResult(iterations, math.sqrt(rr / bb))
            target = rr * 1e-4
            if target <= bb * 1e-26:
                raise ConvergenceError(
                    "CG reached round-off but the electrode currents still disagree",
                    iterations,
                    math.sqrt(rr / bb),
                )
        rz = engine.precondition()
        engine.set_direction(0.0)
        while True:
            if iterations >= max_iter:
                raise ConvergenceError(
                    f"CG did not reach relative residual {tol:g} on the {engine.name} backend",
                    iterations,
                    math.sqrt(rr / bb),
                )
            pap = engine.matvec_dot()
            if not (pap > 0.0 and math.isfinite(pap)):
                raise SolverError(
                    f"CG broke down (p.Ap = {pap:g}): the operator is not positive definite; "
                    "check the conductivity for zeros or NaNs"
                )
            rr = engine.update(rz / pap)
            iterations += 1
            if not math.isfinite(rr):
                raise ConvergenceError("CG residual became non-finite", iterations, rr)
            if rr <= target:
                break
            rz_new = engine.precondition()
            engine.set_direction(rz_new / rz)
            rz = rz_new


class CpuEngine:
    """Numba CPU vectors and kernels."""

    name = "cpu"

    def __init__(self, hierarchy: Hierarchy, b: F64, x0: F64 | None) -> None:
        self.h = hierarchy
        lv = hierarchy.levels[0]
        self.ops = (lv.gx, lv.gy, lv.gz, lv.g0)
        self.b = b
        self.x = np.zeros_like(b) if x0 is None else x0
        self.r = np.zeros_like(b)
        self.p = np.zeros_like(b)
        self.ap = np.zeros_like(b)
        self.z = lv.e

    def rhs_norm2(self) -> float:
        return float(ck.dot(self.b, self.b))

    def true_residual(self) -> float:
        return float(ck.residual64(self.b, self.x, *self.ops, self.r))

    def precondition(self) -> float:
        self.z = cpu_vcycle(self.h, self.r)
        return float(ck.dot(self.r, self.z))

    def set_direction(self, beta: float) -> None:
        ck.direction_update(self.p, self.z, beta)

    def matvec_dot(self) -> float:
        return float(ck.matvec_dot(self.p, *self.ops, self.ap))

    def update(self, alpha: float) -> float:
        return float(ck.cg_update(self.x, self.r, self.p, self.ap, alpha))

    def solution(self) -> F64:
        return self.x

    def gather(self, flat: npt.NDArray[np.int64]) -> F64:
        return np.asarray(self.x.reshape(-1)[flat])
