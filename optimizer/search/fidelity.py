"""Two fidelity levels: explore cheaply, confirm the best few at clinical quality.

Exploration evaluates every proposal on the coarse grid (2 mm, constant conductivity, unit pair
solutions cached and scaled to any voltage). The best ``top_k`` distinct plans are then
re-evaluated on the fine grid (1 mm) with field-dependent conductivity, and the plan a search
returns is always one of those fine evaluations, ranked by the fine result: coarse figures only
decide which plans are worth the fine solve. With ``top_k`` >= 2 the last of them is the
passing plan with the most room on its tightest required criterion (``Candidate.slack``), when
it is not among the best already: the best-scoring coarse plans often pass an organ-at-risk
limit by a voxel, which the fine grid and sigma(E) can tip over.

When no plan of a round passes every required criterion on the fine level, ``top_k`` more
distinct plans get their fine evaluation, up to ``max_rounds`` rounds and only while there is
time. The coarse grid misjudges exactly the criteria decided within a voxel or two (the
temperature limit 2 mm from a needle, a sliver of organ above threshold), and it misjudges
them the same way for similar plans. So the next round corrects every candidate's coarse
constraint values by the mean shift from coarse to fine seen so far, criterion by criterion,
and takes the plans predicted best: those predicted to pass first (by score), then those
predicted to fail by least, and among those the plan whose organs at risk see the least field
relative to their threshold (``objective.field_headroom``): a volume criterion with no voxel
over threshold on the coarse grid cannot say which plan will still have none on the fine one.
Two picai-10043 searches of 300 trials (2 workers, seeds 1 and 3) show why:
- ECT: the coarse grid underrated coverage and the heat limit (fine values better by ~0.26
  of a scale) and overrated the sphincter's irreversible volume (worse by ~0.01). All nine
  plans of three rounds in coarse order failed on the sphincter; the four plans first
  predicted to pass all passed.
- IRECT: all nine failed, on lesion coverage and the sphincter. 54 plans were then predicted
  to fail by the same sphincter sliver; the three with the most headroom all passed.

When the rounds end with no passing plan, a last round (``backoff``, with a voltage step
given) evaluates the refined plan that fails only organ-at-risk or heat limits, by least, at a
few lower fractions of its voltages (optimizer.search.backoff), as a planner would turn the
voltage down by hand.

The two levels are plain callables ``Plan -> PlanEvaluation`` (e.g. ``PlanEvaluator.evaluate``
of two evaluators), so a Ray actor, a cache or a test can stand behind either.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.plan import Plan, PlanError
from optimizer.search.backoff import DEFAULT_FACTORS, ladder, lowerable, lowered
from optimizer.search.objective import ScoreBreakdown, constraints, ranking_key, score
from optimizer.search.settings import ScoreWeights, load_score_weights

Evaluate = Callable[[Plan], PlanEvaluation]
DEFAULT_TOP_K = 3
# Rounds of top_k fine evaluations at most, while none passes (bench/search.py, picai-10043).
DEFAULT_MAX_ROUNDS = 3
# Under a time limit, what exploration leaves to the fine re-evaluation: 40 % of the limit, at
# most 30 s. On the 2-core machine a 1 mm nonlinear evaluation took 0.5-7 s (prostatex-0000 to
# picai-10043), two at a time with two workers; the refinement of the product path's passing
# runs took 2-17 s (ectplan plan --trials 300, 29 of 30 passing) and its failing one 35 s.
# bench/product.py --time-limit 45: 30 of 30 runs passing with 40 %; with 20 %, 25 of 30, five
# of the ten picai-10043 runs ending after one round without a passing plan. Beyond 30 s more
# refinement rarely helps: exploration gets the rest of a long limit.
REFINE_SHARE = 0.4
REFINE_RESERVE_MAX_S = 30.0
# A predicted constraint value this close above 0 counts as met: a volume at its limit after a
# shift of whole voxels lands on 0 up to rounding.
PREDICTION_TOLERANCE = 1e-9
# Predicted excesses equal to this many digits tie (and are told apart by field headroom).
PREDICTION_DIGITS = 9


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
    # The coarse constraint values (objective.constraints; empty when not known).
    constraints: tuple[float, ...] = ()
    # Organs' threshold / peak field on the coarse level (objective.field_headroom).
    headroom: float | None = None
    # Below 1: the trial's plan with every voltage lowered to this fraction (search.backoff).
    voltage_factor: float = 1.0

    @property
    def key(self) -> tuple[int, float]:
        return ranking_key(self.coarse_passed, self.coarse_score)

    def predicted_key(self, shift: Sequence[float]) -> tuple[int, float, float]:
        """Where this plan would rank on the fine level if its constraint values moved by
        ``shift``: predicted to pass, by score (the coarse score with the excess it loses or
        gains); else by how far it is predicted to fail, then by the most field headroom in
        the organs at risk. A refinement round looks for a plan that passes, so a failing plan
        close to its limits beats a cheaper one far off them; and plans with no voxel over an
        organ's limit on the coarse grid all shift alike, so the one whose organs see the
        least field is the likeliest to stay clear on the fine grid. The coarse ``key`` when
        no shift is known."""
        if not shift or len(shift) != len(self.constraints):
            return (*self.key, 0.0)
        moved = [value + d for value, d in zip(self.constraints, shift, strict=True)]
        excess = sum(max(v, 0.0) for v in moved)
        if excess <= PREDICTION_TOLERANCE:
            return 0, self.coarse_score - sum(max(v, 0.0) for v in self.constraints), 0.0
        headroom = self.headroom if self.headroom is not None else 0.0
        return 1, round(excess, PREDICTION_DIGITS), -headroom


def refine_reserve_s(time_limit_s: float) -> float:
    """Seconds of ``time_limit_s`` kept for the fine re-evaluation."""
    return min(REFINE_SHARE * time_limit_s, REFINE_RESERVE_MAX_S)


def exploration_deadline(started: float, time_limit_s: float | None) -> float | None:
    """When exploration stops under ``time_limit_s`` (``time.monotonic()`` clock); the rest
    of the limit is the fine re-evaluation's."""
    if time_limit_s is None:
        return None
    return started + time_limit_s - refine_reserve_s(time_limit_s)


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


def fine_results(refined: Sequence[Refined]) -> dict[str, PlanEvaluation | None]:
    """Each refined plan's identity and its fine evaluation (None when it had none)."""
    return {plan_identity(r.candidate.plan): r.evaluation for r in refined}


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
    # The generator's voltage step: when given, a last round tries the best plan that fails
    # only organ or heat limits at lower voltage (search.backoff); None: no such round.
    voltage_step_V: float | None = None
    backoff_factors: tuple[float, ...] = DEFAULT_FACTORS

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
        self,
        candidates: Sequence[Candidate],
        fine: Mapping[str, PlanEvaluation | None],
        rounds_done: int,
    ) -> list[Candidate]:
        """The plans of the next fine round. ``fine``: each plan refined so far (by
        ``plan_identity``) and its fine evaluation (None when it could not be evaluated).
        Empty when one passes or ``max_rounds`` rounds ran, else the ``top_k`` best distinct
        plans without a fine evaluation by ``Candidate.predicted_key`` under
        ``coarse_to_fine_shift``."""
        if rounds_done >= self.max_rounds or any(e is not None and e.passed for e in fine.values()):
            return []
        shift = self.coarse_to_fine_shift(candidates, fine)
        ranked = _distinct(
            sorted(candidates, key=lambda c: (c.predicted_key(shift), c.key, c.trial_number))
        )
        return [c for c in ranked if plan_identity(c.plan) not in fine][: self.top_k]

    def coarse_to_fine_shift(
        self, candidates: Sequence[Candidate], fine: Mapping[str, PlanEvaluation | None]
    ) -> tuple[float, ...]:
        """Per constraint, the mean of (fine value - coarse value) over the refined plans
        whose both values are known; empty when there are none. The mean, not the worst
        shift: a volume counted in whole voxels moves in steps, and the most pessimistic step
        would push every plan that passes by one voxel over its limit."""
        coarse = {plan_identity(c.plan): c.constraints for c in reversed(candidates)}
        shifts: list[list[float]] = []
        for identity, evaluation in fine.items():
            before = coarse.get(identity)
            if evaluation is None or not before:
                continue
            after = constraints(evaluation, self.weights)
            if len(after) == len(before):
                shifts.append([a - b for a, b in zip(after, before, strict=True)])
        if not shifts:
            return ()
        return tuple(sum(column) / len(shifts) for column in zip(*shifts, strict=True))

    def backoff(
        self, candidates: Sequence[Candidate], fine: Mapping[str, PlanEvaluation | None]
    ) -> list[Candidate]:
        """The last round when no refined plan passes: the refined plan that fails only organ
        or heat limits, and by least (then the best scoring), at the fractions of its voltages
        ``backoff.ladder`` picks from ``backoff_factors`` (distinct plans only). Empty when
        back-off is off, a plan passes or none qualifies. Least excess, not best score: a
        cheaper plan further over an organ's limit needs its voltage lowered further, and its
        coverage may not last that long."""
        if self.voltage_step_V is None or any(e is not None and e.passed for e in fine.values()):
            return []
        by_identity = {plan_identity(c.plan): c for c in reversed(candidates)}
        sources = [
            (
                sum(max(v, 0.0) for v in constraints(e, self.weights)),
                score(e, self.weights).total, c.trial_number, key,
            )
            for key, e in fine.items()
            if e is not None and lowerable(e)
            and (c := by_identity.get(key)) is not None and c.voltage_factor == 1.0
        ]  # fmt: skip
        if not sources:
            return []
        source_key = min(sources)[-1]
        source = by_identity[source_key]
        source_evaluation = fine[source_key]
        assert source_evaluation is not None
        seen = {plan_identity(source.plan)}
        out: list[Candidate] = []
        for factor in ladder(source_evaluation, self.backoff_factors):
            plan = lowered(
                source.plan, factor, self.voltage_step_V, f"trial {source.trial_number}'s plan"
            )
            identity = plan_identity(plan)
            if identity not in seen:
                seen.add(identity)
                out.append(dataclasses.replace(source, plan=plan, voltage_factor=factor))
        return out

    def refine(
        self,
        candidates: Sequence[Candidate],
        *,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Refined]:
        """Fine evaluations of ``pick(candidates)``, then of further rounds (``next_round``)
        while none passes, then of ``backoff`` variants if still none passes; best first.

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
            batch = self.next_round(candidates, fine_results(out), rounds)
        for c in self.backoff(candidates, fine_results(out)) if go_on() else []:
            if not go_on():
                break
            out.append(self._refine_one(c))
        return sorted(
            out,
            key=lambda r: (
                r.key, r.candidate.key, r.candidate.trial_number, -r.candidate.voltage_factor
            ),
        )  # fmt: skip

    def _refine_one(self, c: Candidate) -> Refined:
        started = time.perf_counter()
        try:
            evaluation = self.fine(c.plan)
        except PlanError as exc:
            return Refined(c, None, None, time.perf_counter() - started, str(exc))
        seconds = time.perf_counter() - started
        return Refined(c, evaluation, score(evaluation, self.weights), seconds)
