"""Field solver: div(sigma grad phi) = 0 for pulsed needle pairs (matrix-free MG-PCG).

CPU (Numba) and GPU (numba.cuda) backends; see ``solve`` for the public API and its outputs.
"""

from optimizer.field.errors import ConvergenceError, SolverError
from optimizer.field.nonlinear import solve_pair_nonlinear
from optimizer.field.solve import (
    Electrode,
    FieldSolver,
    PairSolution,
    UnitSolution,
    WellFaceCache,
    conductivity_fingerprint,
    pair_key,
    solve_pair,
    solve_pairs,
)

__all__ = [
    "ConvergenceError",
    "Electrode",
    "FieldSolver",
    "PairSolution",
    "SolverError",
    "UnitSolution",
    "WellFaceCache",
    "conductivity_fingerprint",
    "pair_key",
    "solve_pair",
    "solve_pair_nonlinear",
    "solve_pairs",
]
