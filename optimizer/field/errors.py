"""Errors of the field solver: bad input and solves that did not converge."""

from __future__ import annotations


class SolverError(ValueError):
    """The field problem is ill-posed or the solver broke down; the message names the cause."""


class ConvergenceError(SolverError):
    """An iteration (CG or Picard) stopped before meeting its tolerance.

    Carries how far it got so a caller can decide to retry with other settings.
    """

    def __init__(self, message: str, iterations: int, residual: float) -> None:
        super().__init__(f"{message} (after {iterations} iterations, residual {residual:.3g})")
        self.iterations = iterations
        self.residual = residual
