"""Ask/tell around an Optuna study: what a local loop and a Ray driver both need.

A driver opens a study (``open_study``), enqueues starting plans (``enqueue``), asks a batch of
proposals (``ask``: parameters and the decoded plan), has them evaluated anywhere, and tells
each result (``tell``, or ``tell_error`` for a plan the evaluator refused). ``tell`` stores the
score and a short criteria summary as trial user attributes and the constraint values with
``Trial.set_constraint`` (one per required criterion, named by its id, plus "limits"), where
TPE and NSGA-II read them.

Storage: None (in memory), or, kept in memory and written through one finished trial at a
time (optimizer.search.write_through), an RDB URL (``sqlite:///path.db``, postgresql://...),
a journal file (``journal:path`` or a path ending in .log/.jsonl), or an Optuna storage
object. A stored study
remembers the signature of its search space; reopening it with another case, protocol or space
is refused rather than mixing incomparable trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, get_storage
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState

from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.plan import Plan
from optimizer.search.fidelity import Candidate
from optimizer.search.journal_file import journal_backend
from optimizer.search.objective import OBJECTIVE_NAMES, constraint_names, outcome
from optimizer.search.settings import ScoreWeights
from optimizer.search.space import SearchSpace
from optimizer.search.write_through import WriteThroughStorage

SIGNATURE_ATTR = "ectplan.space_signature"
ERROR_ATTR = "error"
_RDB_PREFIXES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")
JOURNAL_PREFIX = "journal:"
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")


class SearchStudyError(ValueError):
    """A storage cannot be opened, or a stored study belongs to another search."""


def journal_path(storage: str | Path) -> Path | None:
    """The file of a journal storage (``journal:path``, or a path with a journal ending that
    is not a URL); None for anything else."""
    text = str(storage).strip()
    if text.startswith(JOURNAL_PREFIX):
        return Path(text.removeprefix(JOURNAL_PREFIX))
    if "://" not in text and text.endswith(JOURNAL_SUFFIXES):
        return Path(text)
    return None


def resolve_storage(storage: str | Path | BaseStorage | None) -> str | BaseStorage | None:
    if storage is None or isinstance(storage, BaseStorage):
        return storage
    text = str(storage)
    if text.startswith(_RDB_PREFIXES):
        return text
    path = journal_path(text)
    if path is not None and str(path):
        return JournalStorage(journal_backend(path))
    raise SearchStudyError(
        f"storage {text!r} is neither an RDB URL (sqlite:///path.db, postgresql://...) nor a "
        "journal file (journal:path, or a path ending in .log, .jsonl or .journal)"
    )


def open_study(
    space: SearchSpace,
    sampler: BaseSampler,
    *,
    multi_objective: bool = False,
    storage: str | Path | BaseStorage | None = None,
    study_name: str | None = None,
) -> optuna.Study:
    """Create, or reopen when stored under ``study_name``, the study of this search space."""
    n_objectives = len(OBJECTIVE_NAMES) if multi_objective else 1
    try:
        study = optuna.create_study(
            storage=_in_memory_front(resolve_storage(storage)),
            sampler=sampler,
            study_name=study_name,
            directions=["minimize"] * n_objectives,
            load_if_exists=True,
        )
    except ValueError as exc:  # e.g. directions differ from the stored study's
        raise SearchStudyError(f"cannot open study {study_name!r} in {storage}: {exc}") from exc
    if len(study.directions) != n_objectives:
        raise SearchStudyError(
            f"stored study {study.study_name!r} has {len(study.directions)} objective(s); this "
            f"search has {n_objectives} (multi_objective={multi_objective}); use another name"
        )
    stored = study.user_attrs.get(SIGNATURE_ATTR)
    if stored is not None and stored != space.signature():
        raise SearchStudyError(
            f"stored study {study.study_name!r} was made for another case, protocol or search "
            f"space (signature {stored}, this search {space.signature()}); use another study "
            "name or storage"
        )
    if stored is None:
        study.set_user_attr(SIGNATURE_ATTR, space.signature())
        study.set_user_attr("case", space.case.case_id)
        study.set_user_attr("protocol", space.protocol.name)
        study.set_user_attr("constraint_names", constraint_names(space.protocol))
        study.set_user_attr(
            "objective_names", list(OBJECTIVE_NAMES) if multi_objective else ["score"]
        )
    return study


def _in_memory_front(storage: str | BaseStorage | None) -> BaseStorage | None:
    """A durable storage behind an in-memory one (optimizer.search.write_through): the
    search reads and writes memory, each finished trial is written through in one go."""
    if storage is None or isinstance(storage, InMemoryStorage | WriteThroughStorage):
        return storage
    return WriteThroughStorage(get_storage(storage))


def flush(study: optuna.Study) -> int:
    """Write any finished trial still held back by an abandoned earlier one (call when a
    search stops); returns how many were written."""
    storage = study._storage
    return storage.flush() if isinstance(storage, WriteThroughStorage) else 0


def enqueue(study: optuna.Study, params: Iterable[dict[str, Any]]) -> int:
    """Enqueue starting parameters (unused slots are left to the sampler); returns the count."""
    count = 0
    for p in params:
        study.enqueue_trial(p, skip_if_exists=True)
        count += 1
    return count


@dataclass
class Proposal:
    """An asked trial, its parameters and the plan they decode to."""

    trial: optuna.Trial
    params: dict[str, Any]
    plan: Plan

    @property
    def number(self) -> int:
        return self.trial.number


def ask(study: optuna.Study, space: SearchSpace, n: int = 1) -> list[Proposal]:
    """``n`` proposals; all are RUNNING until told."""
    out = []
    for _ in range(n):
        trial = study.ask(space.distributions())
        params = dict(trial.params)
        out.append(Proposal(trial, params, space.decode(params, name=f"trial {trial.number}")))
    return out


@dataclass(frozen=True)
class TrialRecord:
    """What a driver keeps about one told trial (``seconds``: since the run started)."""

    number: int
    values: tuple[float, ...] | None
    score: float
    passed: bool
    criteria_met: int
    criteria_applicable: int
    failed_required: tuple[str, ...]
    seconds: float
    error: str | None = None


def tell(
    study: optuna.Study,
    proposal: Proposal,
    evaluation: PlanEvaluation,
    *,
    seconds: float,
    multi_objective: bool = False,
    weights: ScoreWeights | None = None,
) -> TrialRecord:
    result = outcome(evaluation, multi_objective=multi_objective, weights=weights)
    for key, value in result.user_attrs().items():
        proposal.trial.set_user_attr(key, value)
    names = constraint_names(evaluation.protocol)
    for name, value in zip(names, result.constraints, strict=True):
        proposal.trial.set_constraint(name, value)
    _finish(study, proposal, list(result.values))
    return TrialRecord(
        proposal.number,
        result.values,
        result.score.total,
        result.passed,
        result.met,
        result.applicable,
        tuple(result.failed_required),
        seconds,
    )


def record_of(trial: FrozenTrial, seconds: float) -> TrialRecord:
    """What ``tell`` or ``tell_error`` returned for a stored trial (another process told it)."""
    attrs = trial.user_attrs
    if "score" not in attrs:
        message = str(attrs.get(ERROR_ATTR, f"trial ended {trial.state.name}"))
        return TrialRecord(trial.number, None, math.inf, False, 0, 0, (), seconds, message)
    return TrialRecord(
        trial.number,
        None if trial.values is None else tuple(trial.values),
        float(attrs["score"]),
        bool(attrs["passed"]),
        int(attrs["criteria_met"]),
        int(attrs["criteria_applicable"]),
        tuple(attrs["failed_required"]),
        seconds,
    )


def tell_error(
    study: optuna.Study, proposal: Proposal, message: str, *, seconds: float
) -> TrialRecord:
    """Record a plan that could not be evaluated as a failed trial (samplers skip it)."""
    proposal.trial.set_user_attr(ERROR_ATTR, message)
    _finish(study, proposal, None, TrialState.FAIL)
    return TrialRecord(proposal.number, None, math.inf, False, 0, 0, (), seconds, message)


def _finish(
    study: optuna.Study,
    proposal: Proposal,
    values: list[float] | None,
    state: TrialState | None = None,
) -> None:
    """``Study.tell`` without the deep copy of the finished trial it returns, which nobody
    reads here and which cost ~0.5 ms of the driver's 8-9 ms per trial (Optuna is pinned;
    ``Study.tell`` is this call and the copy)."""
    _tell_with_warning(study=study, trial=proposal.trial, value_or_values=values, state=state)


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials that carry a score (told through ``tell``)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "score" in t.user_attrs
    ]


def candidates(space: SearchSpace, trials: Sequence[FrozenTrial]) -> list[Candidate]:
    """Told trials as fine-level candidates: plan, coarse score, pass and slack."""
    out = []
    for t in trials:
        room = t.user_attrs.get("slack")
        out.append(
            Candidate(
                t.number,
                dict(t.params),
                space.decode(t.params, name=f"trial {t.number}"),
                float(t.user_attrs["score"]),
                bool(t.user_attrs.get("passed", False)),
                float(room) if room is not None else -math.inf,
                tuple(float(v) for v in t.user_attrs.get("constraints") or ()),
                t.user_attrs.get("field_headroom"),
            )
        )
    return out


def pareto_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Non-dominated trials (minimising every value), among those passing every required
    criterion when any does."""
    feasible = [t for t in trials if t.user_attrs.get("passed")]
    pool = feasible or list(trials)

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        va, vb = a.values, b.values
        return all(x <= y for x, y in zip(va, vb, strict=True)) and va != vb

    return [t for t in pool if not any(dominates(o, t) for o in pool if o is not t)]
