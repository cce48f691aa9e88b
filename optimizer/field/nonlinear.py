"""Field-dependent conductivity: warm-started Picard iterations.

Start from the intact conductivity sigma0, solve, set sigma = sigma(|E|) per tissue
(``optimizer.tissue.conductivity``), solve again warm-started from the previous potential, and
stop when the pair current changes by less than ``current_rtol`` (0.5 percent) between two
iterations. Plain Picard (sigma = sigma(|E|) outright) falls into a two-cycle when sigma1/sigma0
is large (2.5 for prostate): the high-field shell around the needles flips between intact
and permeabilised. So the update is relaxed, sigma <- sigma + w (sigma(|E|) - sigma), with
w = 1 until the current change first reverses sign and halved at each reversal (not below
1/8): fast while the current still climbs, contracting once it oscillates. Electroporation
only raises conductivity, so the current rises from the sigma0 value. Needle voxels get the
largest field on their faces (``solve.field_magnitude``), so the tissue they stand in counts
as electroporated, as the tissue touching a needle is.
"""

from __future__ import annotations

import dataclasses

import numpy.typing as npt

from optimizer.field.errors import ConvergenceError, SolverError
from optimizer.field.solve import (
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_TOLERANCE,
    Electrode,
    FieldSolver,
    NeedleLike,
    PairSolution,
    WellFaceCache,
)
from optimizer.tissue.conductivity import ConductivityModel

PICARD_CURRENT_RTOL = 0.005
MAX_PICARD_ITERATIONS = 30
MIN_RELAXATION = 0.125


def solve_pair_nonlinear(
    labels: npt.ArrayLike,
    model: ConductivityModel,
    spacing_mm: float,
    anode: Electrode | NeedleLike,
    cathode: Electrode | NeedleLike,
    voltage_V: float,
    *,
    backend: str = "auto",
    tol: float = DEFAULT_TOLERANCE,
    max_iter: int = DEFAULT_MAX_ITERATIONS,
    current_rtol: float = PICARD_CURRENT_RTOL,
    max_picard: int = MAX_PICARD_ITERATIONS,
    x0: npt.ArrayLike | None = None,
    well_cache: WellFaceCache | None = None,
) -> PairSolution:
    """The pair with sigma(E); ``picard_iterations`` counts conductivity updates and
    ``iterations`` all CG iterations. Raises ``ConvergenceError`` after ``max_picard``.

    Every conductivity update is a new ``FieldSolver`` on the same grid; they share one
    ``well_cache`` (pass a longer-lived one, e.g. ``FieldSolver.well_cache`` of a solver of
    this grid, to share the needles' well faces across pairs too)."""
    if not 0.0 < current_rtol < 1.0:
        raise SolverError(f"current_rtol must be in (0, 1), got {current_rtol!r}")
    solver = FieldSolver(
        model.baseline(labels),
        spacing_mm,
        backend=backend,
        tol=tol,
        max_iter=max_iter,
        well_cache=well_cache,
    )
    a, c = Electrode.of(anode), Electrode.of(cathode)
    solution = solver.solve(a, c, voltage_V, x0=x0)
    total = solution.iterations
    change = float("inf")
    sigma = solver.sigma
    weight = 1.0
    last_step = 0.0
    for picard in range(1, max_picard + 1):
        sigma = sigma + weight * (model.sigma(labels, solution.field_V_per_cm) - sigma)
        solver = FieldSolver(
            sigma,
            spacing_mm,
            backend=backend,
            tol=tol,
            max_iter=max_iter,
            well_cache=solver.well_cache,
        )
        previous = solution
        solution = solver.solve(a, c, voltage_V, x0=previous.potential_V)
        total += solution.iterations
        step = solution.current_A - previous.current_A
        change = abs(step) / max(abs(solution.current_A), 1e-300)
        if step * last_step < 0.0:
            weight = max(weight * 0.5, MIN_RELAXATION)
        last_step = step
        if change < current_rtol:
            return dataclasses.replace(solution, iterations=total, picard_iterations=picard)
    raise ConvergenceError(
        f"Picard iterations for sigma(E) did not settle to a current change below "
        f"{current_rtol:.2%} (last change {change:.2%}); raise max_picard or check the tissue "
        "table's thresholds",
        max_picard,
        change,
    )
