"""How a job's search runs: the ``JobRunner`` interface and its local and Ray implementations.

A runner takes a ``SearchJob`` (the anatomy, protocol, budget and options of one job), reports
``SearchProgress`` and ``Improvement`` events through ``on_event`` while it searches, stops at
its next trial once ``cancel_event`` is set, and returns a ``RunOutcome`` with the best plan
evaluated at clinical quality (the Ray driver returns its best coarse evaluation when cancelled
before the fine one). The queue (services/front/runner.py) does not care which search
runs behind it:

- ``RaySearchRunner``: services/planner/driver.py ``DistributedSearch`` (the Ray study driver
  that ``plan_distributed`` wraps);
- ``LocalSearchRunner``: optimizer/search/local.py ``run_search`` in this process (no Ray).

Both keep completed trials in an Optuna study named after the job (the queue gives each job
its own journal file, ``jobs/<id>/study.journal.log``), so a job interrupted by a restart
resumes its study instead of starting over.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages import RDBStorage

from optimizer.anatomy.structures import Anatomy
from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.evaluator import EvaluatedPlan, PlanEvaluator
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol as TreatmentProtocol
from optimizer.search.fidelity import DEFAULT_TOP_K
from optimizer.search.local import SearchProgress, SearchResult, run_search
from optimizer.search.space import SearchSpace
from services.front.explorations import DEFAULT_EXPLORATION
from services.front.logging import log_event
from services.planner.storage import StorageError, open_storage

# The exploration grid: 2 mm with constant conductivity (DESIGN.md section 3); the fine grid is
# the job's grid_spacing_mm (1 mm by default). A job asking for >= 2 mm explores on its own grid.
COARSE_SPACING_MM = 2.0
DEFAULT_FINE_SPACING_MM = 1.0
# Planning grid margin around the target (mm): optimizer.case's default.
PLANNING_MARGIN_MM = 30.0



@dataclass(frozen=True)
class SearchJob:
    """One job's search, as a runner needs it."""

    job_id: str
    anatomy: Anatomy
    protocol: TreatmentProtocol
    trials: int | None
    time_limit_s: float | None
    seed: int
    workers: int
    multi_objective: bool
    sampler: str | None
    grid_spacing_mm: float
    seed_plans: tuple[Plan, ...]
    storage_url: str
    study_name: str
    work_dir: Path
    # How many of the best explored plans are confirmed at clinical quality (fine, sigma(E)).
    refine_top_k: int = DEFAULT_TOP_K
    target_scope: str = "auto"
    warm_start_library: Path | None = None
    # How the Ray driver's workers explore (EXPLORATIONS); the local runner has one loop.
    exploration: str = DEFAULT_EXPLORATION


@dataclass(frozen=True)
class Improvement:
    """A better plan than any before (by the search's ranking), on the coarse level."""

    trial_number: int
    score: float
    passed: bool
    criteria_met: int
    criteria_applicable: int
    plan: Plan | None = None
    evaluation: PlanEvaluation | None = None


RunnerEvent = SearchProgress | Improvement


@dataclass
class RunOutcome:
    """The search's answer, with what the artifacts need (the fine case, maybe its fields)."""

    result: SearchResult
    case_fine: PreparedCase
    evaluated: EvaluatedPlan | None = None
    notes: list[str] = field(default_factory=list)


class JobRunner(Protocol):
    name: str

    def run(
        self,
        job: SearchJob,
        on_event: Callable[[RunnerEvent], None],
        cancel_event: threading.Event,
    ) -> RunOutcome: ...


def prepare_cases(
    anatomy: Anatomy, fine_spacing_mm: float, target_scope: str = "auto"
) -> tuple[PreparedCase, PreparedCase]:
    """(coarse, fine) planning cases; one case serves both when the fine grid is >= 2 mm."""
    fine = prepare_case(
        anatomy, spacing_mm=fine_spacing_mm, margin_mm=PLANNING_MARGIN_MM,
        target_scope=target_scope,
    )  # fmt: skip
    if fine_spacing_mm >= COARSE_SPACING_MM:
        return fine, fine
    coarse = prepare_case(
        anatomy, spacing_mm=COARSE_SPACING_MM, margin_mm=PLANNING_MARGIN_MM,
        target_scope=target_scope,
    )  # fmt: skip
    return coarse, fine


def completed_trials(storage_url: str, study_name: str) -> int:
    """Trials a stored study already completed (0 when it does not exist yet); ``storage_url``
    as ``services.planner.storage.open_storage`` takes it (journal file, sqlite:///, ...)."""
    try:
        storage = open_storage(storage_url)
    except StorageError:  # the search itself reports what is wrong with it
        return 0
    assert storage is not None  # only None opens in memory
    try:
        study_id = storage.get_study_id_from_name(study_name)
        states = (optuna.trial.TrialState.COMPLETE,)
        return len(storage.get_all_trials(study_id, deepcopy=False, states=states))
    except KeyError:  # no such study yet
        return 0
    finally:
        if isinstance(storage, RDBStorage):
            storage.engine.dispose()


class _ImprovementTracker:
    """Turns progress reports into improvement events, with the plan when it is known.

    The coarse evaluator is wrapped so the plan and evaluation of the latest trial are at hand:
    a progress report whose best trial changed names the trial just evaluated.
    """

    def __init__(self, on_event: Callable[[RunnerEvent], None]) -> None:
        self._on_event = on_event
        self._best_trial: int | None = None
        self._last: tuple[Plan, PlanEvaluation] | None = None

    def wrap(self, evaluate: Callable[[Plan], PlanEvaluation]) -> Callable[[Plan], PlanEvaluation]:
        def evaluate_and_remember(plan: Plan) -> PlanEvaluation:
            self._last = None
            evaluation = evaluate(plan)
            self._last = (plan, evaluation)
            return evaluation

        return evaluate_and_remember

    def progress(self, p: SearchProgress) -> None:
        if p.phase == "explore" and p.best_trial is not None and p.best_trial != self._best_trial:
            self._best_trial = p.best_trial
            plan, evaluation = self._last if self._last is not None else (None, None)
            self._on_event(
                Improvement(
                    trial_number=p.best_trial,
                    score=float(p.best_score if p.best_score is not None else float("nan")),
                    passed=p.best_passed,
                    criteria_met=p.criteria_met,
                    criteria_applicable=p.criteria_applicable,
                    plan=plan,
                    evaluation=evaluation,
                )
            )
        self._on_event(p)


class LocalSearchRunner:
    """optimizer.search.local.run_search in the calling thread (one process, no Ray)."""

    name = "local"

    def run(
        self,
        job: SearchJob,
        on_event: Callable[[RunnerEvent], None],
        cancel_event: threading.Event,
    ) -> RunOutcome:
        coarse, fine = prepare_cases(job.anatomy, job.grid_spacing_mm, job.target_scope)
        coarse_eval = PlanEvaluator(coarse, job.protocol, nonlinear=False, metrics_detail="search")
        fine_eval = PlanEvaluator(fine, job.protocol, nonlinear=True)
        tracker = _ImprovementTracker(on_event)
        seed_plans = list(job.seed_plans)
        if job.warm_start_library is not None:
            from services.planner.warm_library import library_seed_plans

            others = [] if coarse is fine else [coarse.obstacles]
            space = SearchSpace(fine, job.protocol, also_clear_on=others)
            warm, _ = library_seed_plans(job.warm_start_library, space)
            # Only a count: the notes name library cases, and the log keeps to fixed fields.
            log_event("warm start from plan library", job_id=job.job_id, count=len(warm))
            seed_plans = warm + seed_plans
        result = run_search(
            coarse,
            fine,
            job.protocol,
            trials=job.trials,
            time_limit_s=job.time_limit_s,
            seed=job.seed,
            multi_objective=job.multi_objective,
            sampler=job.sampler,
            storage=job.storage_url,
            study_name=job.study_name,
            evaluate_coarse=tracker.wrap(coarse_eval.evaluate),
            evaluate_fine=fine_eval.evaluate,
            on_progress=tracker.progress,
            should_stop=cancel_event.is_set,
            seed_plans=seed_plans,
            refine_top_k=job.refine_top_k,
        )
        # The fine evaluator still holds the chosen plan's pair solutions: fields for free.
        evaluated = fine_eval.evaluate_with_fields(result.plan)
        return RunOutcome(result, fine, evaluated)


def ray_driver_available() -> bool:
    return importlib.util.find_spec("services.planner.driver") is not None


class RaySearchRunner:
    """services.planner.driver (``DistributedSearch``, what ``plan_distributed`` wraps): the
    study in this thread, evaluations on Ray actors. Used directly rather than through
    ``plan_distributed`` for two things the front needs: the best trial's plan for each
    improvement event, and the chosen plan's fields from the worker that holds them."""

    name = "ray"

    def __init__(self, ray_address: str | None = None, default_workers: int = 2) -> None:
        self.ray_address = ray_address
        self.default_workers = default_workers

    def run(
        self,
        job: SearchJob,
        on_event: Callable[[RunnerEvent], None],
        cancel_event: threading.Event,
    ) -> RunOutcome:
        from services.planner.driver import DistributedSearch

        fine_mm = job.grid_spacing_mm
        coarse_mm = max(COARSE_SPACING_MM, fine_mm)
        with DistributedSearch(
            job.anatomy,
            job.protocol,
            trials=job.trials,
            time_limit_s=job.time_limit_s,
            workers=job.workers or self.default_workers,
            seed=job.seed,
            multi_objective=job.multi_objective,
            sampler=job.sampler,
            storage_url=job.storage_url,
            study_name=job.study_name,
            ray_address=self.ray_address,
            seed_plans=job.seed_plans,
            coarse_mm=coarse_mm,
            fine_mm=fine_mm,
            margin_mm=PLANNING_MARGIN_MM,
            refine_top_k=job.refine_top_k,
            target_scope=job.target_scope,
            library=job.warm_start_library,
            reproducible=job.exploration == DEFAULT_EXPLORATION,
            islands=job.exploration == "islands",
        ) as search:
            best_seen: list[int] = []

            def progress(p: SearchProgress) -> None:
                best = getattr(search, "best", None)
                if best is not None and (not best_seen or best_seen[-1] != best.number):
                    best_seen.append(best.number)
                    on_event(_improvement_from_study(search, best))
                on_event(p)

            result = search.run(on_progress=progress, cancel_event=cancel_event)
            # Outputs need the fields: the worker that evaluated the plan fine still has them
            # (a plan never re-evaluated there has its fields solved with the artifacts).
            evaluated = search.evaluate_with_fields(result.plan) if result.refined else None
            return RunOutcome(result, search.case_fine, evaluated)


def _improvement_from_study(search: Any, best: Any) -> Improvement:
    plan: Plan | None = None
    try:
        trial = next(t for t in search.study.get_trials(deepcopy=False) if t.number == best.number)
        plan = search.space.decode(trial.params, name=f"trial {best.number}")
    except (StopIteration, ValueError):
        plan = None  # the improvement is still reported, with its score and criteria
    return Improvement(
        trial_number=best.number,
        score=best.score,
        passed=best.passed,
        criteria_met=best.criteria_met,
        criteria_applicable=best.criteria_applicable,
        plan=plan,
        evaluation=getattr(search, "best_evaluation", None),
    )


def default_runner(kind: str = "auto", ray_address: str | None = None) -> JobRunner:
    """ "ray" (the planner driver), "local" (in-process) or "auto" (ray when it is installed)."""
    if kind == "local" or (kind == "auto" and not ray_driver_available()):
        return LocalSearchRunner()
    if kind in ("ray", "auto"):
        return RaySearchRunner(ray_address)
    raise ValueError(f"unknown runner {kind!r}; use auto, ray or local")
