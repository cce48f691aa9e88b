"""A whole plan search in one process: seeds, ask/tell batches, fine confirmation, result.

``run_search`` explores on the coarse case (each proposal evaluated by ``evaluate_coarse``)
until the trial budget is used, the time limit passes or ``should_stop`` returns True (checked
before every evaluation), then re-evaluates the best few plans with ``evaluate_fine``
(fidelity.TwoFidelity) and returns the best fine evaluation. Every stop is clean: the result
holds the best plan found so far, evaluated at fine quality.

The time limit bounds exploration and the optional fine re-evaluations; the fine evaluation of
the best candidate always runs (seconds to a minute on a 1 mm grid).

Same seed, same inputs, one worker, no time limit hit: same trials, same plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from optimizer.case import PreparedCase
from optimizer.evaluate.criteria import CriterionResult
from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.plan import Plan, PlanError
from optimizer.evaluate.protocol import Protocol
from optimizer.search.backoff import backoff_notes
from optimizer.search.fidelity import (
    DEFAULT_TOP_K,
    Evaluate,
    Refined,
    TwoFidelity,
    exploration_deadline,
)
from optimizer.search.objective import ScoreBreakdown, ranking_key
from optimizer.search.samplers import DEFAULT_MULTI_OBJECTIVE_SAMPLER, DEFAULT_SAMPLER, make_sampler
from optimizer.search.seeding import geometric_seed_params, seed_params_from_plans
from optimizer.search.settings import ScoreWeights, load_score_weights
from optimizer.search.space import HoleEncoding, SearchSpace, VoltageMode
from optimizer.search.study import (
    TrialRecord,
    ask,
    completed,
    enqueue,
    open_study,
    pareto_front,
    tell,
    tell_error,
)
from optimizer.search.study import candidates as trial_candidates


class SearchError(ValueError):
    """A search cannot start (bad budget) or ended without any evaluated plan."""


@dataclass(frozen=True)
class SearchProgress:
    """Reported after every trial and at each phase change."""

    phase: str  # "explore", "refine" or "done"
    trials_done: int
    trials_budget: int | None
    elapsed_s: float
    trials_per_s: float
    best_score: float | None
    best_passed: bool
    criteria_met: int
    criteria_applicable: int
    best_trial: int | None


@dataclass(frozen=True)
class UnmetCriterion:
    """A criterion the returned plan misses, and by how much (margin < 0, in ``unit``)."""

    id: str
    severity: str
    value: float | None
    limit: float
    margin: float | None
    unit: str
    description: str

    @classmethod
    def of(cls, r: CriterionResult) -> UnmetCriterion:
        return cls(r.id, r.severity, r.value, r.limit, r.margin, r.unit, r.description)


@dataclass(frozen=True)
class ParetoPoint:
    """A non-dominated explored plan (multi-objective search), with its coarse objectives."""

    trial_number: int
    params: dict[str, Any]
    plan: Plan
    objectives: tuple[float, ...]
    passed: bool
    score: float


@dataclass
class SearchResult:
    plan: Plan
    evaluation: PlanEvaluation  # fine (the returned plan's clinical-quality evaluation)
    score: ScoreBreakdown  # of the fine evaluation
    trial_number: int
    params: dict[str, Any]
    coarse_score: float
    refined: list[Refined]
    history: list[TrialRecord]
    trials_run: int
    trials_in_study: int  # finished trials of the study, earlier runs included
    elapsed_s: float
    stopped_by: str  # "trials", "time", "cancelled"; distributed also "workers" (none answered)
    study_name: str
    sampler: str
    seed: int | None
    pareto: list[ParetoPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Below 1: trial ``trial_number``'s plan with every voltage lowered (search.backoff).
    voltage_factor: float = 1.0

    @property
    def passed(self) -> bool:
        return self.evaluation.passed

    @property
    def unmet(self) -> list[UnmetCriterion]:
        """Criteria the returned plan misses (required first), with their margins."""
        failing = [r for r in self.evaluation.results if r.status == "fail"]
        failing.sort(key=lambda r: (r.severity != "required", r.id))
        return [UnmetCriterion.of(r) for r in failing]

    def summary(self) -> str:
        lowered = (
            f" at {100 * self.voltage_factor:g} % voltage" if self.voltage_factor < 1 else ""
        )
        head = (
            f"{'PASS' if self.passed else 'FAIL'}: trial {self.trial_number}{lowered} of "
            f"{self.trials_in_study}, {len(self.plan.needles)} needles, "
            f"{len(self.plan.pairs)} pairs, score {self.score.total:.4g} "
            f"({'fine' if self.refined else 'coarse'}); "
            f"{self.trials_run} trials in {self.elapsed_s:.1f} s, stopped by {self.stopped_by}"
        )
        lines = [head]
        for u in self.unmet:
            margin = "unknown" if u.margin is None else f"{u.margin:+.3g} {u.unit}"
            lines.append(f"  unmet ({u.severity}) {u.id}: margin {margin}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "plan": self.plan.model_dump(mode="json"),
            "evaluation": self.evaluation.to_dict(),
            "score": self.score.to_dict(),
            "unmet": [u.__dict__ for u in self.unmet],
            "trial_number": self.trial_number,
            "params": self.params,
            "voltage_factor": self.voltage_factor,
            "coarse_score": self.coarse_score,
            "trials_run": self.trials_run,
            "trials_in_study": self.trials_in_study,
            "elapsed_s": self.elapsed_s,
            "stopped_by": self.stopped_by,
            "study_name": self.study_name,
            "sampler": self.sampler,
            "seed": self.seed,
            "pareto": [
                {"trial": p.trial_number, "objectives": list(p.objectives), "passed": p.passed}
                for p in self.pareto
            ],
            "notes": self.notes,
        }


def check_budget(trials: int | None, time_limit_s: float | None, batch_size: int) -> None:
    if trials is None and time_limit_s is None:
        raise SearchError("give a trial budget (trials=...) or a time limit (time_limit_s=...)")
    if trials is not None and trials < 1:
        raise SearchError(f"trials must be >= 1 (got {trials}): a search needs a budget")
    if time_limit_s is not None and not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise SearchError(f"time_limit_s must be > 0 seconds (got {time_limit_s})")
    if batch_size < 1:
        raise SearchError(f"batch_size must be >= 1 (got {batch_size})")


def search_levels(
    space: SearchSpace,
    evaluate_coarse: Evaluate,
    evaluate_fine: Evaluate,
    *,
    top_k: int = DEFAULT_TOP_K,
    weights: ScoreWeights | None = None,
) -> TwoFidelity:
    """The exploration and refinement levels of ``run_search`` in ``space``: lower-voltage
    variants (search.backoff) in the space's voltage steps when no refined plan passes."""
    return TwoFidelity(
        evaluate_coarse, evaluate_fine, top_k=top_k,
        weights=weights if weights is not None else load_score_weights(),
        voltage_step_V=space.settings.voltage_step_V,
    )  # fmt: skip


def run_search(
    case_coarse: PreparedCase,
    case_fine: PreparedCase,
    protocol: Protocol,
    *,
    trials: int | None = 200,
    time_limit_s: float | None = None,
    seed: int | None = 0,
    multi_objective: bool = False,
    sampler: str | BaseSampler | None = None,
    storage: str | Path | BaseStorage | None = None,
    study_name: str | None = None,
    evaluate_coarse: Evaluate | None = None,
    evaluate_fine: Evaluate | None = None,
    on_progress: Callable[[SearchProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed_plans: Sequence[Plan] = (),
    geometric_seeds: bool = True,
    refine_top_k: int = DEFAULT_TOP_K,
    batch_size: int = 1,
    hole_encoding: HoleEncoding = "grid",
    voltage_mode: VoltageMode = "ratio",
    weights: ScoreWeights | None = None,
) -> SearchResult:
    """Search plans for ``protocol`` on a case (see the module docstring).

    ``case_fine`` defines the search space (its template and admissible holes; holes must also
    be clear on ``case_coarse``). Evaluators default to ``PlanEvaluator`` on the coarse case
    (linear) and the fine case (nonlinear). ``trials`` counts trials run by this call (a stored
    study resumes with its earlier trials as history); seeds are enqueued only into a new study.
    """
    check_budget(trials, time_limit_s, batch_size)
    started = time.monotonic()
    deadline = started + time_limit_s if time_limit_s is not None else None
    explore_until = exploration_deadline(started, time_limit_s)
    w = weights if weights is not None else load_score_weights()
    space = SearchSpace.for_levels(
        case_coarse, case_fine, protocol, hole_encoding=hole_encoding, voltage_mode=voltage_mode
    )
    if evaluate_coarse is None:
        evaluate_coarse = PlanEvaluator(
            case_coarse, protocol, nonlinear=False, metrics_detail="search"
        ).evaluate
    if evaluate_fine is None:
        evaluate_fine = PlanEvaluator(case_fine, protocol, nonlinear=True).evaluate
    levels = search_levels(space, evaluate_coarse, evaluate_fine, top_k=refine_top_k, weights=w)
    if isinstance(sampler, BaseSampler):
        chosen, sampler_name = sampler, type(sampler).__name__
    else:
        sampler_name = sampler or (
            DEFAULT_MULTI_OBJECTIVE_SAMPLER if multi_objective else DEFAULT_SAMPLER
        )
        chosen = make_sampler(sampler_name, seed=seed, multi_objective=multi_objective, space=space)
    study = open_study(
        space, chosen, multi_objective=multi_objective, storage=storage, study_name=study_name
    )
    notes: list[str] = []
    if not study.get_trials(deepcopy=False):
        starts = geometric_seed_params(space) if geometric_seeds else []
        extra, skipped = seed_params_from_plans(space, seed_plans)
        notes += skipped
        enqueue(study, [*extra, *starts])

    history: list[TrialRecord] = []
    best: TrialRecord | None = None
    run = 0
    stopped_by = "trials"

    def report(phase: str) -> None:
        if on_progress is None:
            return
        elapsed = time.monotonic() - started
        on_progress(
            SearchProgress(
                phase=phase,
                trials_done=run,
                trials_budget=trials,
                elapsed_s=elapsed,
                trials_per_s=run / elapsed if elapsed > 0 else 0.0,
                best_score=None if best is None else best.score,
                best_passed=best is not None and best.passed,
                criteria_met=0 if best is None else best.criteria_met,
                criteria_applicable=0 if best is None else best.criteria_applicable,
                best_trial=None if best is None else best.number,
            )
        )

    def stop_reason() -> str | None:
        if trials is not None and run >= trials:
            return "trials"
        # The first trial runs whatever the time: a stopped search still returns a plan.
        if explore_until is not None and run > 0 and time.monotonic() >= explore_until:
            return "time"
        if should_stop is not None and should_stop():
            return "cancelled"
        return None

    while (reason := stop_reason()) is None:
        n = batch_size if trials is None else min(batch_size, trials - run)
        for i, proposal in enumerate(ask(study, space, n)):
            reason = stop_reason() if i > 0 else None
            if reason is not None:
                tell_error(
                    study,
                    proposal,
                    f"not evaluated: search stopped ({reason})",
                    seconds=time.monotonic() - started,
                )
                continue
            try:
                evaluation = levels.explore(proposal.plan)
            except PlanError as exc:
                record = tell_error(study, proposal, str(exc), seconds=time.monotonic() - started)
            else:
                record = tell(
                    study,
                    proposal,
                    evaluation,
                    seconds=time.monotonic() - started,
                    multi_objective=multi_objective,
                    weights=w,
                )
            run += 1
            history.append(record)
            if record.error is None and (
                best is None
                or ranking_key(record.passed, record.score) < ranking_key(best.passed, best.score)
            ):
                best = record
            report("explore")
    stopped_by = reason

    done = completed(study)
    if not done:
        raise SearchError(
            f"the search stopped ({stopped_by}) before any plan was evaluated on case "
            f"{space.case.case_id!r}"
            + (f"; last error: {history[-1].error}" if history and history[-1].error else "")
        )
    pool = pareto_front(done) if multi_objective else done
    report("refine")
    refined = levels.refine(
        trial_candidates(space, pool), deadline=deadline, should_stop=should_stop
    )
    chosen_refined = refined[0] if refined else None
    if chosen_refined is None or chosen_refined.evaluation is None:
        errors = "; ".join(r.error or "" for r in refined)
        raise SearchError(f"no candidate could be evaluated on the fine level: {errors}")
    assert chosen_refined.score is not None
    c = chosen_refined.candidate
    pareto = (
        [
            ParetoPoint(
                t.number,
                dict(t.params),
                space.decode(t.params),
                tuple(t.values),
                bool(t.user_attrs.get("passed", False)),
                float(t.user_attrs["score"]),
            )
            for t in sorted(pool, key=lambda t: t.values)
        ]
        if multi_objective
        else []
    )
    result = SearchResult(
        plan=c.plan,
        evaluation=chosen_refined.evaluation,
        score=chosen_refined.score,
        trial_number=c.trial_number,
        params=c.params,
        coarse_score=c.coarse_score,
        refined=refined,
        history=history,
        trials_run=run,
        trials_in_study=sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)),
        elapsed_s=time.monotonic() - started,
        stopped_by=stopped_by,
        study_name=study.study_name,
        sampler=sampler_name,
        seed=seed,
        pareto=pareto,
        notes=notes + backoff_notes(c.trial_number, c.voltage_factor),
        voltage_factor=c.voltage_factor,
    )
    report("done")
    return result
