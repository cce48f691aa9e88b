"""Island exploration, the actor's side: each actor asks its own sampler, evaluates, tells.

In the driver's other modes the driver asks Optuna for every plan and tells every result. Its
ask and tell (the sampler, the study, the write to storage: ~3 ms per trial with the Ray call)
run on one core beside the actors, which caps two workers at ~1.6x one on a 2-core machine
(docs/operations.md, Scaling). With islands each actor keeps an in-memory study of its own: it
asks its own sampler (seeded per slot), evaluates on its coarse evaluator and tells. How the
islands share their trials depends on the storage:

- The study's journal file on a one-host cluster (the embedded default of ``ectplan plan``):
  each island appends each trial to the journal as it is told and reads the others' trials
  there before it asks (``services.planner.island_journal``); a call sends the driver its trials
  in one item at its end. The driver stores nothing per trial.
- Otherwise (a database, workers on other hosts): each island streams each finished trial to the
  driver as it is told (a Ray streaming generator); the driver adds it to the stored study and
  hands the others' trials to each actor with its next call, one or two calls late (a call is
  queued behind the running one).

Either way a worker that dies loses only the trial it was evaluating. Not reproducible with more
than one worker: what an island has learned when it asks depends on the arrival order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.plan import Plan
from optimizer.search.objective import ranking_key
from optimizer.search.samplers import make_sampler
from optimizer.search.settings import ScoreWeights
from optimizer.search.space import SearchSpace
from optimizer.search.study import (
    ERROR_ATTR,
    TrialRecord,
    ask,
    enqueue,
    open_study,
    tell,
    tell_error,
)
from optimizer.search.write_through import finished_template
from services.planner.actors import EVAL_SECONDS_ATTR, WORKER_ATTR, WORKER_PID_ATTR, Reply
from services.planner.island_journal import JournalLink, SharedJournal
from services.planner.unit_folder import UnitFolderLink
from services.planner.unit_sharing import DEFAULT_SHARED_BYTES

# Trials per call: relayed, the others' trials reach an island with its next call, so a call
# is short (a few evaluations). A death costs one trial whatever the length: each trial is
# streamed to the driver, or in the journal, as soon as it is told.
TRIALS_PER_CALL = 4
# Sampler seeds of different islands and of a slot's replacements (primes: no overlap).
_SLOT_STRIDE = 7919
_RESTART_STRIDE = 104_729


class IslandError(RuntimeError):
    """An island cannot run the driver's search (another search space)."""


@dataclass(frozen=True)
class IslandSettings:
    """What every island of one search shares (the driver sends it with each call)."""

    sampler: str
    seed: int | None
    multi_objective: bool
    weights: ScoreWeights
    signature: str  # the driver's search space: an island must build the same one
    share_units: bool = False  # islands hand each other the pair solutions they solve
    # The other islands' solutions an island keeps referenced (pinned in the object store).
    # Each keeps the driver modes' whole budget: islands use mostly the same recent bundles,
    # so what they pin overlaps (a bound of workers x this, not measured beyond two).
    shared_bytes: int = DEFAULT_SHARED_BYTES
    # Islands append their trials to this journal and read each other's there
    # (services.planner.island_journal); None: the driver relays them.
    journal: JournalLink | None = None
    # With ``share_units`` on a one-host cluster: the folder through which islands hand each
    # other their pair solutions as soon as solved (services.planner.unit_folder); None: in
    # bundles through Ray's object store, one call late (services.planner.unit_sharing).
    units: UnitFolderLink | None = None


@dataclass(frozen=True)
class IslandTrial:
    """One trial an island told: the finished trial (its number is the island's own; None
    when the island appended it to the journal itself, as ``stored``), what the driver keeps
    of it, and the evaluation when it is the island's best so far (only such a trial can be
    the search's best, and an evaluation is ~50 kB)."""

    trial: FrozenTrial | None
    record: TrialRecord
    evaluation: PlanEvaluation | None
    seconds: float
    pid: int
    solved_pairs: int
    reused_pairs: int
    adopted_pairs: int = 0  # of the reused: handed over from another island
    unexpected: bool = False  # the evaluation raised an error that is not the plan's
    seen: int = 0  # trials in the island's study when it asked this one (its own and others')
    stored: int | None = None  # its number in the journal, when the island appended it


@dataclass(frozen=True)
class StopAt:
    """When an island stops starting trials: the driver's wall-clock end of exploration, and
    no later than the seconds left to it when the driver sent the call, counted on the
    actor's own clock from the call's start. The wall clock alone would let a host whose clock
    lags the driver's run trials into the fine phase's reserve; the second bound caps that at
    the time the call waited behind the one before it (a few trials). A host whose clock runs
    ahead stops early: less exploration, never a late plan."""

    wall: float  # time.time() on the driver's clock
    left_s: float

    def passed(self) -> Callable[[], bool]:
        """Call when the call starts: whether the end has passed, from then on."""
        until = time.monotonic() + self.left_s
        return lambda: time.time() >= self.wall or time.monotonic() >= until


def island_seed(seed: int | None, slot: int, restarts: int) -> int | None:
    """The sampler seed of slot ``slot``'s island after ``restarts`` deaths: one per island,
    so that two islands do not propose the same plans."""
    if seed is None:
        return None
    return seed + _SLOT_STRIDE * (slot + 1) + _RESTART_STRIDE * restarts


class Island:
    """An in-memory study, its sampler and the island's best, on one actor."""

    def __init__(
        self, space: SearchSpace, settings: IslandSettings, *, slot: int, restarts: int
    ) -> None:
        if space.signature() != settings.signature:
            raise IslandError(
                f"worker {slot} built another search space than the driver "
                f"({space.signature()} against {settings.signature}): the driver and the "
                "workers must run the same ectplan version and data files"
            )
        self.space = space
        self.settings = settings
        self.slot = slot
        sampler = make_sampler(
            settings.sampler, seed=island_seed(settings.seed, slot, restarts),
            multi_objective=settings.multi_objective, space=space,
        )  # fmt: skip
        self.study = open_study(space, sampler, multi_objective=settings.multi_objective)
        self.best: tuple[int, float] | None = None
        self.journal = SharedJournal(settings.journal, slot) if settings.journal else None

    def absorb(self, trials: Sequence[FrozenTrial]) -> None:
        """Add other islands' finished trials (and a resumed study's) to this history."""
        for t in trials:
            self.study.add_trial(finished_template(t))

    def run(
        self,
        evaluate: Callable[[Plan], Reply],
        count: int,
        *,
        seeds: Sequence[dict[str, Any]] = (),
        stop_at: StopAt | None = None,
        pid: int,
    ) -> Iterator[IslandTrial]:
        """Up to ``count`` trials, the ``seeds`` first; none started after ``stop_at`` has
        passed. A seed is enqueued just before its trial, so the seeds of trials not run stay
        the driver's."""
        passed = stop_at.passed() if stop_at is not None else None  # the call's start
        for i in range(count):
            if passed is not None and passed():
                return
            if self.journal is not None:
                self.absorb(self.journal.news())
            if i < len(seeds):
                enqueue(self.study, seeds[i : i + 1])
            yield self._one(evaluate, pid)

    def _one(self, evaluate: Callable[[Plan], Reply], pid: int) -> IslandTrial:
        (proposal,) = ask(self.study, self.space, 1)
        unexpected = False
        try:
            reply = evaluate(proposal.plan)
        except Exception as exc:  # as the driver's modes do: that trial fails, the search goes on
            unexpected = True
            reply = Reply(None, f"evaluation raised {type(exc).__name__}: {exc}", 0.0, pid)
        trial = proposal.trial
        trial.set_user_attr(WORKER_ATTR, self.slot)
        trial.set_user_attr(WORKER_PID_ATTR, pid)
        trial.set_user_attr(EVAL_SECONDS_ATTR, reply.seconds)
        evaluation = reply.evaluation
        if evaluation is None:
            record = tell_error(
                self.study, proposal, reply.error or "not evaluated", seconds=reply.seconds
            )
        else:
            record = tell(
                self.study, proposal, evaluation, seconds=reply.seconds,
                multi_objective=self.settings.multi_objective, weights=self.settings.weights,
            )  # fmt: skip
        key = ranking_key(record.passed, record.score)
        improved = evaluation is not None and (self.best is None or key < self.best)
        if improved:
            self.best = key
        finished = self.study._storage.get_trial(trial._trial_id)
        stored = self.journal.append(finished) if self.journal is not None else None
        return IslandTrial(
            trial=finished if stored is None else None,
            record=record,
            evaluation=evaluation if improved else None,
            seconds=reply.seconds,
            pid=pid,
            solved_pairs=reply.solved_pairs,
            reused_pairs=reply.reused_pairs,
            adopted_pairs=reply.adopted_pairs,
            unexpected=unexpected,
            seen=finished.number,
            stored=stored,
        )


def lost_trial(message: str, slot: int, pid: int | None) -> FrozenTrial:
    """The failed trial that stands, in the stored study, for one an island was evaluating
    when it died: its parameters died with it."""
    attrs: dict[str, Any] = {ERROR_ATTR: message, WORKER_ATTR: slot}
    if pid is not None:
        attrs[WORKER_PID_ATTR] = pid
    return optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs)
