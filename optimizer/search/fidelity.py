"""Two fidelity levels: explore cheaply, confirm the best few at clinical quality.

Exploration evaluates every proposal on the coarse grid (2 mm, constant conductivity, unit pair
solutions cached and scaled to any voltage). The best ``top_k`` distinct plans are then
re-evaluated on the fine grid (1 mm) with field-dependent conductivity, and the plan a search
returns is always one of those fine evaluations, ranked by the fine result: coarse figures only
decide which plans are worth the fine solve. With ``top_k`` >= 2 the last of them is the
passing plan with the most room on its tightest required criterion (``Candidate.slack``), when
it is not among the best already: the best-scoring coarse plans often pass an organ-at-risk
limit by a voxel, which the fine grid and sigma(E) can tip over.

The two levels are plain callables ``Plan -> PlanEvaluation`` (e.g. ``PlanEvaluator.evaluate``
of two evaluators), so a Ray actor, a cache or a test can stand behind either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.plan import Plan, PlanError
from optimizer.search.objective import ScoreBreakdown, ranking_key, score
from optimizer.search.settings import ScoreWeights, load_score_weights

Evaluate = Callable[[Plan], PlanEvaluation]
DEFAULT_TOP_K = 3


def plan_identity(plan: Plan) -> str:
    """What makes two plans the same treatment (geometry, pairs, pulses; not name or notes)."""
    return plan.model_dump_json(exclude={"name", "notes"})


@dataclass(frozen=True)
class Candidate:
    """An explored plan and its coarse result."""

    trial_number: int
    params: dict[str, Any]
    plan: Plan
    coarse_score: float
    coarse_passed: bool
    # The tightest required criterion's room on the coarse level (objective.slack).
    slack: float = float("-inf")

    @property
    def key(self) -> tuple[int, float]:
        return ranking_key(self.coarse_passed, self.coarse_score)


@dataclass(frozen=True)
class Refined:
    """A candidate's fine evaluation (or why it could not be evaluated)."""

    candidate: Candidate
    evaluation: PlanEvaluation | None
    score: ScoreBreakdown | None
    seconds: float
    error: str | None = None

    @property
    def key(self) -> tuple[int, float]:
        if self.evaluation is None or self.score is None:
            return (2, float("inf"))
        return ranking_key(self.evaluation.passed, self.score.total)


def _distinct(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The first candidate of each distinct plan, in the given order."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for c in candidates:
        identity = plan_identity(c.plan)
        if identity not in seen:
            seen.add(identity)
            out.append(c)
    return out


@dataclass
class TwoFidelity:
    """Coarse exploration and fine confirmation of the best ``top_k`` candidates."""

    coarse: Evaluate
    fine: Evaluate
    top_k: int = DEFAULT_TOP_K
    weights: ScoreWeights = field(default_factory=load_score_weights)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")

    def explore(self, plan: Plan) -> PlanEvaluation:
        return self.coarse(plan)

    def pick(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The best ``top_k`` distinct plans by their coarse result; with ``top_k`` >= 2 the
        last slot goes to the passing plan with the most slack if it is not among them."""
        ranked = _distinct(sorted(candidates, key=lambda c: (c.key, c.trial_number)))
        chosen = ranked[: self.top_k]
        passing = [c for c in ranked if c.coarse_passed]
        if self.top_k >= 2 and passing:
            safest = max(passing, key=lambda c: (c.slack, -c.trial_number))
            if safest not in chosen:
                chosen = [*ranked[: self.top_k - 1], safest]
        return chosen

    def refine(
        self,
        candidates: Sequence[Candidate],
        *,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Refined]:
        """Fine evaluations of ``pick(candidates)``, best first.

        Candidates are evaluated in coarse order until one evaluates; further ones only while
        ``time.monotonic()`` is before ``deadline`` and ``should_stop`` says go on, so a stopped
        search still returns a fine evaluation. A plan the fine level cannot evaluate
        (``PlanError``, e.g. a needle outside the fine grid) is kept with its error.
        """
        out: list[Refined] = []
        for c in self.pick(candidates):
            have_one = any(r.evaluation is not None for r in out)
            late = deadline is not None and time.monotonic() >= deadline
            if have_one and (late or (should_stop is not None and should_stop())):
                break
            started = time.perf_counter()
            try:
                evaluation = self.fine(c.plan)
            except PlanError as exc:
                out.append(Refined(c, None, None, time.perf_counter() - started, str(exc)))
                continue
            out.append(
                Refined(
                    c, evaluation, score(evaluation, self.weights), time.perf_counter() - started
                )
            )
        return sorted(out, key=lambda r: (r.key, r.candidate.key, r.candidate.trial_number))
