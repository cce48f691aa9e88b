"""Two fidelity levels: explore cheaply, confirm the best few at clinical quality.

Exploration evaluates every proposal on the coarse grid (2 mm, constant conductivity, unit pair
solutions cached and scaled to any voltage). The best ``top_k`` distinct plans are then
re-evaluated on the fine grid (1 mm) with field-dependent conductivity, and the plan a search
returns is always one of those fine evaluations, ranked by the fine result: coarse figures only
decide which plans are worth the fine solve. With ``top_k`` >= 2 the last of them is the
passing plan with the most room on its tightest required criterion (``Candidate.slack``), when
it is not among the best already: the best-scoring coarse plans often pass an organ-at-risk
limit by a voxel, which the fine grid and sigma(E) can tip over.

When no plan of a round passes every required criterion on the fine level, the next ``top_k``
distinct plans in coarse order get their fine evaluation, up to ``max_rounds`` rounds and only
while there is time: the coarse grid misjudges exactly the criteria decided within a voxel or
two (the temperature limit 2 mm from a needle, a sliver of organ above threshold), so a plan a
little further down the coarse order can be the one that passes at clinical quality.

The two levels are plain callables ``Plan -> PlanEvaluation`` (e.g. ``PlanEvaluator.evaluate``
of two evaluators), so a Ray actor, a cache or a test can stand behind either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.plan import Plan, PlanError
from optimizer.search.objective import ScoreBreakdown, ranking_key, score
from optimizer.search.settings import ScoreWeights, load_score_weights

Evaluate = Callable[[Plan], PlanEvaluation]
DEFAULT_TOP_K = 3
# Rounds of top_k fine evaluations at most, while none passes (bench/search.py, picai-10043).
DEFAULT_MAX_ROUNDS = 3


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


def fine_passed(refined: Sequence[Refined]) -> dict[str, bool]:
    """Each refined plan's identity and whether it passes on the fine level."""
    return {
        plan_identity(r.candidate.plan): r.evaluation is not None and r.evaluation.passed
        for r in refined
    }


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
    max_rounds: int = DEFAULT_MAX_ROUNDS

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")

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

    def next_round(
        self, candidates: Sequence[Candidate], passed: Mapping[str, bool], rounds_done: int
    ) -> list[Candidate]:
        """The plans of the next fine round. ``passed``: each plan refined so far (by
        ``plan_identity``) and whether its fine evaluation passes every required criterion.
        None when one passes or ``max_rounds`` rounds ran, else the next ``top_k`` distinct
        plans in coarse order without a fine evaluation."""
        if rounds_done >= self.max_rounds or any(passed.values()):
            return []
        ranked = _distinct(sorted(candidates, key=lambda c: (c.key, c.trial_number)))
        return [c for c in ranked if plan_identity(c.plan) not in passed][: self.top_k]

    def refine(
        self,
        candidates: Sequence[Candidate],
        *,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Refined]:
        """Fine evaluations of ``pick(candidates)``, then of further rounds (``next_round``)
        while none passes; best first.

        Candidates are evaluated in coarse order until one evaluates; further ones only while
        ``time.monotonic()`` is before ``deadline`` and ``should_stop`` says go on, so a stopped
        search still returns a fine evaluation. A plan the fine level cannot evaluate
        (``PlanError``, e.g. a needle outside the fine grid) is kept with its error.
        """
        out: list[Refined] = []

        def go_on() -> bool:
            if not any(r.evaluation is not None for r in out):
                return True
            late = deadline is not None and time.monotonic() >= deadline
            return not (late or (should_stop is not None and should_stop()))

        batch, rounds = self.pick(candidates), 0
        while batch and go_on():
            for c in batch:
                if not go_on():
                    break
                out.append(self._refine_one(c))
            rounds += 1
            batch = self.next_round(candidates, fine_passed(out), rounds)
        return sorted(out, key=lambda r: (r.key, r.candidate.key, r.candidate.trial_number))

    def _refine_one(self, c: Candidate) -> Refined:
        started = time.perf_counter()
        try:
            evaluation = self.fine(c.plan)
        except PlanError as exc:
            return Refined(c, None, None, time.perf_counter() - started, str(exc))
        seconds = time.perf_counter() - started
        return Refined(c, evaluation, score(evaluation, self.weights), seconds)
