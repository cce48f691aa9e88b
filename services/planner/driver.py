"""The distributed plan search: Optuna ask/tell in the driver, evaluations on Ray actors.

The driver owns the study (sampler, storage, tells); the actors (services.planner.actors) only
evaluate plans, except with ``islands=True`` (below), where each actor asks and tells on its own
copy and the driver stores what they tell. Exploration runs on the coarse grid, then the best
``refine_top_k`` distinct plans are re-evaluated on the fine grid with sigma(E) in parallel on
the actors (further rounds of as many while none passes and there is time), and the best fine
evaluation is the result (``optimizer.search.fidelity``: the same choice as the local
``run_search``). Each worker has at most ``PIPELINE_DEPTH`` trials out: one evaluating, one
queued (islands: that many calls of a few trials each).

Order of tells and what is reproducible:
- ``reproducible=True`` (default): pipelined batches. The driver asks one proposal per live
  worker, sends proposal i of the batch to worker i and tells results in ask order. Batch k+2
  is asked the moment batch k is wholly told, before any result of batch k+1 is told: two
  batches are always out, so every actor has its next plan queued while it evaluates one and
  never waits for the driver's tell and ask. The sampler thus sees the same history at every
  ask whatever the arrival order (it lags one batch), and each actor evaluates the same
  sequence of plans, so its pair cache (which decides between a cached and a fresh solve:
  equal to solver tolerance, not bitwise) is the same too. So are the pair solutions handed
  to it from the other actors (``unit_sharing``): the driver registers them as it tells.
  Same seed, same worker count, same inputs, a fresh study and a run that ends on its trial
  budget (no time limit reached, no worker lost, not cancelled): same trials, same scores,
  same plan.
- ``reproducible=False``: asynchronous. A worker is kept at two queued proposals, and results
  are told as they arrive: no worker waits for a slow batch member, no reproducibility with
  more than one worker.
- ``islands=True``: the actors ask and tell themselves, each with its own sampler on its own
  copy of the history, and stream their trials to the driver, which stores them and hands
  each actor the others' (``services.planner.island``, ``island_exploration``): the driver's
  CPU per trial is ~40 % lower. Reproducible with one worker only. Faults, stops and
  cancellation differ as ``island_exploration`` says: a dead worker's lost trial is stored
  as a failed trial without parameters, trials not begun go back to the budget, and a
  cancel records nothing for the trials running.

Why queue two plans per actor: the driver's ask and tell take a few ms per trial (the sampler,
the in-memory study, the write-through to storage) and run on the driver's own core; with one
plan per actor the actor idled for them after every trial.

Faults: a worker that dies mid-trial loses that trial only; it is told FAIL (user attribute
``error`` says which worker died) and the pool replaces the actor (``max_restarts`` times per
slot), which rebuilds its cases from the anatomy in the object store; the plan that was queued
behind the lost one is sent again (to the replacement, or to another worker when the slot is
retired); a result the actor had finished before it died is kept.
Every told trial is in the storage as it is told.

Silence: a worker that stops answering (a stopped process; a replacement the cluster cannot
place, whose plans wait for it) is stopped and the plans it holds are told FAIL; the search
goes on with the others, or with none left returns its best coarse plan. Under a time limit
that happens ``stall_grace_s`` after the end of the phase, with no replacement (exploration is
over). Without one, once the worker has held a plan for ``SILENCE_LIMIT_S`` without answering
anything, so that a search bounded by its trial budget alone never waits for ever; there a
silent exploration worker that had answered since it started (a hung process) gets a new
actor in its slot, counted against ``max_restarts`` like a death, while one that never
answered (a replacement not placed within ``pool.STARTUP_TIMEOUT_S``) is retired
(``stopped_by`` "workers" when none is left to finish the budget); islands alike. The fine
re-evaluation retires silent workers without replacement.

Stopping: the trial budget counts trials asked by this call (failed ones included); at the time
limit no further trial is asked, trials in flight finish and are told, and the fine
re-evaluation runs (always for the best candidate, the others only while in time).
Cancellation (``cancel_event`` set, or Ctrl-C) kills the actors at once, tells the trials in
flight FAIL and returns within a poll interval plus the tells: the result is then the best
*coarse* evaluation of this run, without fine confirmation (``stopped_by`` is "cancelled" and
``notes`` says so), or ``SearchCancelledError`` when nothing was evaluated yet. Ctrl-C in the
main thread sets ``cancel_event`` (``_ctrl_c_cancels``); a second Ctrl-C raises
KeyboardInterrupt, which cancels the same way from work that does not poll the event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import optuna
import ray
from optuna.samplers import BaseSampler
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from optimizer.anatomy.readers import load_anatomy
from optimizer.anatomy.structures import Anatomy
from optimizer.anatomy.target_scope import check_target_scope
from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.evaluator import DEFAULT_CACHE_BYTES, EvaluatedPlan, PlanEvaluator
from optimizer.evaluate.plan import Plan, PlanError
from optimizer.evaluate.protocol import Protocol
from optimizer.search.backoff import backoff_notes
from optimizer.search.fidelity import (
    DEFAULT_TOP_K,
    Candidate,
    TwoFidelity,
    exploration_deadline,
    plan_identity,
)
from optimizer.search.local import (
    ParetoPoint,
    SearchError,
    SearchProgress,
    SearchResult,
    check_budget,
)
from optimizer.search.objective import ranking_key, score
from optimizer.search.samplers import DEFAULT_MULTI_OBJECTIVE_SAMPLER, DEFAULT_SAMPLER, make_sampler
from optimizer.search.seeding import geometric_seed_params, seed_params_from_plans
from optimizer.search.settings import ScoreWeights, load_score_weights
from optimizer.search.study import (
    Proposal,
    TrialRecord,
    ask,
    completed,
    enqueue,
    flush,
    open_study,
    pareto_front,
    tell,
    tell_error,
)
from optimizer.search.study import candidates as trial_candidates
from optimizer.search.write_through import DurableWriteError
from optimizer.tissue.table import TissueTable
from services.planner.actors import (
    EVAL_SECONDS_ATTR,
    WORKER_ATTR,
    WORKER_PID_ATTR,
    CaseSpec,
    Reply,
    search_space,
)
from services.planner.affinity import PairAffinity, pair_keys
from services.planner.cluster import ClusterInfo, connect
from services.planner.island_exploration import IslandExploration
from services.planner.pool import (
    DEFAULT_MAX_RESTARTS,
    POLL_S,
    STARTUP_TIMEOUT_S,
    PoolError,
    Worker,
    WorkerPool,
)
from services.planner.progress import ClusterProgress, InFlight
from services.planner.slow_start import slow_start_note
from services.planner.storage import mask_url, open_storage, study_name_for
from services.planner.study_lock import CONFIRM_EVERY_S, StudyLock, lock_study
from services.planner.unit_sharing import SharedUnits
from services.planner.warm_library import DEFAULT_WARM_START_CASES, library_seed_plans

DEFAULT_WORKERS = 2
DEFAULT_COARSE_MM = 2.0
DEFAULT_FINE_MM = 1.0
# prepare_case's default margin around the target (mm).
DEFAULT_MARGIN_MM = 30.0
# Plans out per worker (one evaluating, one queued) and, reproducible, batches out at once.
PIPELINE_DEPTH = 2
# How long a dead actor's other results are waited for (they are known to Ray by then).
DEAD_RESULT_WAIT_S = 5.0
# Under a time limit, how long after a phase should have ended (exploration, fine
# re-evaluation) the driver still waits for a worker that does not answer (a stopped process, a
# replacement the cluster cannot place) before it stops that worker and tells its plans FAIL:
# the larger of this and half the limit, so a slow but working evaluation is still waited for.
STALL_GRACE_S = 30.0
STALL_GRACE_SHARE = 0.5
# Without a time limit, how long a worker may hold a plan without answering anything: beyond a
# worker's start on a fresh node (pool.STARTUP_TIMEOUT_S; a replacement's plans wait for it)
# plus the slowest fine evaluation measured (7 s, picai-10043 on 2 cores), many times over.
SILENCE_LIMIT_S = 600.0
# How long the returned plan's fields are waited for from a worker (its cache holds the pair
# solutions: seconds) before this process computes them itself.
FIELDS_WAIT_S = 120.0


class SearchCancelledError(SearchError):
    """Cancelled before any plan was evaluated: there is nothing to return."""


@dataclass
class _Task:
    proposal: Proposal
    worker: Worker
    handle: ActorHandle  # the actor it went to: a replaced worker has a new one
    order: int  # submission order: an actor runs its tasks in this order
    bundle: ray.ObjectRef | None = None  # the pair solutions it solves, when actors share
    sent_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _FineTask:
    candidate: Candidate
    worker: Worker
    handle: ActorHandle  # the actor it went to: a replaced worker has a new one
    order: int  # submission order: an actor runs its tasks in this order
    resent: bool = False  # already sent again after its first worker died
    sent_at: float = field(default_factory=time.monotonic)


@dataclass
class _Outcome:
    reply: Reply | None
    error: str | None


@dataclass
class RunStats:
    """Figures of one run beyond ``SearchResult`` (for search.json and benchmarks)."""

    startup_s: float = 0.0
    explore_s: float = 0.0
    refine_s: float = 0.0
    trials_told: int = 0
    failed_trials: int = 0
    worker_deaths: int = 0
    fine_worker_deaths: int = 0  # of worker_deaths: during the fine re-evaluation
    unexpected_errors: int = 0
    # Exploration's needle pairs: solved by an actor, served from its cache, and of those
    # handed over from another actor (services.planner.unit_sharing).
    pairs_solved: int = 0
    pairs_reused: int = 0
    pairs_adopted: int = 0
    workers: int = 0
    threads_per_worker: int = 0
    cluster: ClusterInfo | None = None
    worker_startup_s: list[float] = field(default_factory=list)

    @property
    def trials_per_s(self) -> float:
        return self.trials_told / self.explore_s if self.explore_s > 0 else 0.0


@contextlib.contextmanager
def _ctrl_c_cancels(event: threading.Event) -> Iterator[None]:
    """While a search runs in the main thread, Ctrl-C (SIGINT) sets ``event``; a second one
    raises KeyboardInterrupt as usual.

    Why not let KeyboardInterrupt do it: Python raises it wherever the main thread is when the
    signal is handled. One raised inside a finaliser (``__del__``, a weakref callback, as Ray's
    object references run them) is printed and dropped. Once, a search in CI went on as if
    Ctrl-C had never been pressed, most likely for that reason. Setting the event cannot be
    lost; the loops poll it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; there the caller's event cancels
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _actor_key(worker: Worker) -> tuple[int, int]:
    """One actor: its slot and how many actors died in that slot before it."""
    return worker.index, worker.deaths


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's cpuset), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def crowded_note(workers: int, cpus: int) -> str | None:
    """A note when a local Ray gets more workers than the machine has CPUs (it is started
    with as many CPUs as workers, so every worker starts, but they share the cores)."""
    if workers <= cpus:
        return None
    return (
        f"{workers} workers on this machine's {cpus} CPUs: each worker is one process with its "
        f"own grids and caches, so the {workers - cpus} beyond the CPUs only share them (more "
        f"memory, no more speed); --workers {cpus} or fewer is as fast"
    )


def _default_threads(cluster: ClusterInfo, workers: int) -> int:
    per_node = max(1, cluster.cpus // max(cluster.nodes, 1))
    return max(1, per_node // max(1, math.ceil(workers / max(cluster.nodes, 1))))


class DistributedSearch:
    """One search on a Ray cluster; ``run()`` once, then ``evaluate_with_fields`` for outputs.

    Use as a context manager (or call ``close()``) so the actors are released.
    """

    def __init__(
        self,
        anatomy: str | Path | Anatomy,
        protocol: Protocol,
        *,
        trials: int | None = 200,
        time_limit_s: float | None = None,
        workers: int = DEFAULT_WORKERS,
        seed: int | None = 0,
        multi_objective: bool = False,
        sampler: str | BaseSampler | None = None,
        storage_url: str | Path | None = None,
        study_name: str | None = None,
        ray_address: str | None = None,
        seed_plans: Sequence[Plan] = (),
        geometric_seeds: bool = True,
        refine_top_k: int = DEFAULT_TOP_K,
        coarse_mm: float = DEFAULT_COARSE_MM,
        fine_mm: float = DEFAULT_FINE_MM,
        margin_mm: float = DEFAULT_MARGIN_MM,
        reproducible: bool = True,
        threads_per_worker: int | None = None,
        backend: str = "auto",
        table: TissueTable | None = None,
        weights: ScoreWeights | None = None,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        target_scope: str = "auto",
        library: str | Path | None = None,
        warm_start_cases: int = DEFAULT_WARM_START_CASES,
        share_units: bool | None = None,
        islands: bool = False,
    ) -> None:
        check_budget(trials, time_limit_s, 1)
        if workers < 1:
            raise SearchError(f"workers must be >= 1 (got {workers})")
        if islands and isinstance(sampler, BaseSampler):
            raise SearchError(
                "island exploration needs a sampler name (each worker makes its own sampler), "
                f"not a {type(sampler).__name__} object"
            )
        if not (coarse_mm > 0 and fine_mm > 0):
            raise SearchError(f"grid spacings must be > 0 mm (got {coarse_mm}, {fine_mm})")
        self.anatomy_input = anatomy
        self.protocol = protocol
        self.trials = trials
        self.time_limit_s = time_limit_s
        self.workers = workers
        self.seed = seed
        self.multi_objective = multi_objective
        self.sampler_arg = sampler
        self.storage_url = None if storage_url is None else str(storage_url)
        self.study_name_arg = study_name
        self.ray_address = ray_address
        self.seed_plans = list(seed_plans)
        self.geometric_seeds = geometric_seeds
        self.refine_top_k = refine_top_k
        self.library = library
        self.warm_start_cases = warm_start_cases
        self.spec = CaseSpec(coarse_mm, fine_mm, margin_mm, check_target_scope(target_scope))
        self.islands = islands
        # Islands tell in arrival order, so they are reproducible with one worker only.
        self.reproducible = reproducible and not (islands and workers > 1)
        self.threads_per_worker = threads_per_worker
        self.backend = backend
        self.table = table
        self.weights = weights if weights is not None else load_score_weights()
        self.max_restarts = max_restarts
        self.cache_bytes = cache_bytes
        # Actors share coarse pair solutions (None: with more than one worker).
        self.share_units = workers > 1 if share_units is None else share_units
        self.notes: list[str] = []
        self.stats = RunStats(workers=workers)
        self.pool: WorkerPool | None = None
        self._fine_worker: dict[str, int] = {}
        self._fine_seconds: dict[str, float] = {}
        self._prepared = False
        self._ran = False
        self._study_lock: StudyLock | None = None  # held from prepare() to the end of run()
        self._study_confirmed = 0.0  # when the lock was last found held (``_confirm_study``)
        self._storage_failed = False
        self.stall_grace_s = (
            SILENCE_LIMIT_S
            if time_limit_s is None
            else max(STALL_GRACE_S, STALL_GRACE_SHARE * time_limit_s)
        )
        # When each worker (by slot) last answered: a worker that answers is not silent.
        self._heard: dict[int, float] = {}
        self._stall_seen = False  # a wait was cut short by the grace (not merely the clock)
        self._all_died: str | None = None  # every worker died in the fine re-evaluation
        self.island: IslandExploration | None = None  # islands: from exploration on

    @property
    def exploration(self) -> str:
        """How exploration asks and tells: "islands", "batches" or "asynchronous"."""
        if self.islands:
            return "islands"
        return "batches" if self.reproducible else "asynchronous"

    # ---- context -----------------------------------------------------------------------

    def __enter__(self) -> DistributedSearch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        self._release_study()

    def _release_study(self) -> None:
        if self._study_lock is not None:
            self._study_lock.release()
            self._study_lock = None

    # ---- set-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything that can fail on bad input, before any cluster work: the anatomy, both
        cases, the search space (an unreachable target fails here), sampler and storage (a
        study another search holds now: ``StudyBusyError``)."""
        try:
            self._prepare()
        except BaseException:
            self._release_study()  # a study it could not open is not kept from others
            raise

    def _prepare(self) -> None:
        a = self.anatomy_input
        self.anatomy = a if isinstance(a, Anatomy) else load_anatomy(a)
        self.case_coarse, self.case_fine = self.spec.prepare(self.anatomy)
        self.space = search_space(self.case_coarse, self.case_fine, self.protocol)
        if isinstance(self.sampler_arg, BaseSampler):
            self.sampler, self.sampler_name = self.sampler_arg, type(self.sampler_arg).__name__
        else:
            self.sampler_name = self.sampler_arg or (
                DEFAULT_MULTI_OBJECTIVE_SAMPLER if self.multi_objective else DEFAULT_SAMPLER
            )
            self.sampler = make_sampler(
                self.sampler_name, seed=self.seed, multi_objective=self.multi_objective,
                space=self.space,
            )  # fmt: skip
        self.study_name = self.study_name_arg or study_name_for(
            self.case_fine.case_id, self.protocol.name, self.seed,
            multi_objective=self.multi_objective, target_scope=self.case_fine.target_scope,
        )  # fmt: skip
        storage = open_storage(self.storage_url)
        # Before the study is opened: a refused search reads and writes nothing of it.
        self._release_study()  # prepared again: its own lock would refuse it
        self._study_lock = lock_study(
            self.storage_url, storage, self.study_name,
            mask_url(str(self.storage_url)) if self.storage_url is not None else "memory",
        )  # fmt: skip
        self._study_confirmed = time.monotonic()
        self.study = open_study(
            self.space, self.sampler, multi_objective=self.multi_objective, storage=storage,
            study_name=self.study_name,
        )  # fmt: skip
        # Not ``Study.trials``: that deep-copies every trial (1.1 s for 1000 at the end of a
        # search, inside its time limit).
        self.resumed_trials = len(self.study.get_trials(deepcopy=False))
        starts: list[dict[str, Any]] = []
        if not self.resumed_trials:
            if self.library is not None:
                warm, warm_notes = library_seed_plans(
                    self.library, self.space, self.warm_start_cases
                )
                self.seed_plans = [*warm, *self.seed_plans]
                self.notes += warm_notes
            extra, skipped = seed_params_from_plans(self.space, self.seed_plans)
            self.notes += skipped
            starts = [*extra, *(geometric_seed_params(self.space) if self.geometric_seeds else [])]
            if not self.islands:  # islands are dealt the starting plans with their calls
                enqueue(self.study, starts)
        else:
            self.notes.append(
                f"resumed study {self.study_name!r} with {self.resumed_trials} earlier trials"
                + (f" in {mask_url(self.storage_url)}" if self.storage_url else "")
            )
        self.starts = starts
        self.warm_plan = self.space.decode(starts[0], name="warm-up") if starts else None
        self._prepared = True

    def _start_workers(
        self, should_stop: Callable[[], bool], report: Callable[[str], None]
    ) -> bool:
        report("connecting to Ray")
        cluster = connect(self.ray_address, num_cpus=max(os.cpu_count() or 1, self.workers))
        self.stats.cluster = cluster
        crowded = crowded_note(self.workers, usable_cpus()) if cluster.started_here else None
        if crowded is not None:
            self.notes.append(crowded)
        threads = self.threads_per_worker or _default_threads(cluster, self.workers)
        self.stats.threads_per_worker = threads
        if self._cancelled():  # nor can Ray's start: before any actor is made
            return False
        report(f"starting {self.workers} workers ({threads} threads each)")
        self.affinity = PairAffinity(self.warm_plan)
        self.shared = SharedUnits()
        # Kept on self: a replacement actor is built from the same reference.
        self.anatomy_ref = ray.put(self.anatomy)
        self.pool = WorkerPool(
            self.anatomy_ref, self.protocol, self.spec, workers=self.workers, threads=threads,
            backend=self.backend, table=self.table, cache_bytes=self.cache_bytes,
            warm_plan=self.warm_plan, max_restarts=self.max_restarts,
        )  # fmt: skip
        ready = self.pool.wait_ready(should_stop=should_stop)
        self.stats.worker_startup_s = [
            i.startup_s + i.warmup_s for _, i in sorted(self.pool.infos.items())
        ]
        return ready

    # ---- the run -----------------------------------------------------------------------

    def run(
        self,
        *,
        on_progress: Callable[[SearchProgress], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> SearchResult:
        if self._ran:
            raise SearchError("a DistributedSearch runs once; make a new one")
        self._ran = True
        self.started = time.monotonic()
        self.deadline = None if self.time_limit_s is None else self.started + self.time_limit_s
        self.explore_until = exploration_deadline(self.started, self.time_limit_s)
        self.cancel_event = cancel_event or threading.Event()
        self.on_progress = on_progress
        self.history: list[TrialRecord] = []
        self.best: TrialRecord | None = None
        self.best_evaluation: PlanEvaluation | None = None
        self.asked = 0
        self.explore_started = self.started
        self.explore_ended: float | None = None
        self.inflight: dict[ray.ObjectRef, _Task] = {}
        self.batches: deque[list[_Task]] = deque()
        self.held: dict[int, _Outcome] = {}
        self.submissions = 0

        def stop_start() -> bool:
            return self._cancelled() or self._late()

        try:
            with _ctrl_c_cancels(self.cancel_event):
                return self._run(stop_start)
        finally:  # the study is written (and flushed) by now: another search may have it
            self._release_study()

    def _run(self, stop_start: Callable[[], bool]) -> SearchResult:
        """``_search``, with a failing study storage, wherever it shows (a tell, a cancel's
        tells, the last flush), turned into one clear error."""
        try:
            return self._search(stop_start)
        except DurableWriteError as exc:
            if self.pool is not None:
                self.pool.shutdown()
            shown = f" {mask_url(self.storage_url)}" if self.storage_url else ""
            raise SearchError(
                f"the study storage{shown} failed during the search: {exc}; the trials told "
                "before it are there. Fix the storage (disk space, database) and plan again "
                "with the same --out (or --storage) to resume the study"
            ) from exc

    def _search(self, stop_start: Callable[[], bool]) -> SearchResult:
        try:
            if not self._prepared:
                self._report("start", "building the planning grids")
                self.prepare()
            if self._cancelled():  # building the grids cannot be interrupted; checked after
                return self._cancel()
            ready = self._start_workers(stop_start, lambda m: self._report("start", m))
            self.stats.startup_s = time.monotonic() - self.started
            self.explore_started = time.monotonic()
            if ready:
                stopped_by = self._explore()
            elif self._cancelled():
                stopped_by = "cancelled"
            else:
                stopped_by = "time"  # the limit passed before the workers were ready
            self.explore_ended = time.monotonic()
            self.stats.explore_s = self.explore_ended - self.explore_started
            if stopped_by == "cancelled":
                return self._cancel()
            started_refine = time.monotonic()
            result = self._refine(stopped_by)
            self.stats.refine_s = time.monotonic() - started_refine
        except KeyboardInterrupt:
            self.cancel_event.set()
            return self._cancel()
        except PoolError as exc:
            self._abandon(f"not evaluated: {exc}")
            raise SearchError(str(exc)) from exc
        except DurableWriteError:
            self._storage_failed = True  # not tried again by the flush below
            raise
        finally:
            if self._prepared and not self._storage_failed:
                self._flush()
        self._report("done", "")
        return result

    def _flush(self) -> None:
        """Write the trials held back behind one that was never told (once: a storage that
        failed is not tried again while its error is being reported)."""
        try:
            flush(self.study)
        except DurableWriteError:
            self._storage_failed = True
            raise

    def _cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def _late(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _stalled(self, since: float | None, quiet: Mapping[int, float] | None = None) -> bool:
        """Stop waiting for workers: under a time limit, the grace after ``since`` (when the
        phase should have ended) is over; without one, a worker in ``quiet`` (slot: since when
        it has held a plan without answering, ``_quiet_since``) has been quiet for the grace."""
        if self.stall_grace_s is None:
            return False
        now = time.monotonic()
        if self.time_limit_s is None:
            return any(now - t >= self.stall_grace_s for t in (quiet or {}).values())
        return since is not None and now >= since + self.stall_grace_s

    def _quiet_since(self, held: Iterable[tuple[int, float]]) -> dict[int, float]:
        """Per slot holding plans (``held``: slot, when a plan still out was sent): since when
        it has not answered. Without a time limit the later of its last answer and its oldest
        plan's sending (a worker answering a long queue is not silent); under one its oldest
        plan's sending, so that nothing is waited for beyond one grace past the phase."""
        oldest: dict[int, float] = {}
        for index, sent_at in held:
            oldest[index] = min(sent_at, oldest.get(index, sent_at))
        if self.time_limit_s is not None:
            return oldest
        return {
            i: max(t, self._heard.get(i, t), self._starting_until(i)) for i, t in oldest.items()
        }

    def _starting_until(self, index: int) -> float:
        """Without a time limit, a slot's actor that has not answered since it was created
        (a replacement) is quiet only from STARTUP_TIMEOUT_S after its creation less the
        grace: its start on a busy node is not silence, yet one the cluster cannot place is
        still stopped in the end. Under a time limit nothing is waited for past the grace."""
        assert self.pool is not None and self.stall_grace_s is not None
        worker = self.pool.workers[index]
        if self.time_limit_s is not None or worker.pid is not None:
            return -math.inf
        return worker.created_at + STARTUP_TIMEOUT_S - self.stall_grace_s

    def _replaces(self, worker: Worker) -> bool:
        """Whether a silent exploration worker gets a new actor in its slot: only without a
        time limit (the search goes on) and only one that had answered since it started (a
        hung process; one that never answered is a replacement the cluster could not place)."""
        return self.time_limit_s is None and worker.pid is not None

    def _stall_message(self, what: str) -> str:
        if self.time_limit_s is None:
            return (
                f"{what}: no answer within {self.stall_grace_s:g} s of holding a plan (no time "
                "limit; a stopped worker process, or a replacement the cluster could not place; "
                "see `ray status`)"
            )
        return (
            f"{what}: no answer within {self.stall_grace_s:g} s of the end of its phase "
            f"under the {self.time_limit_s:g} s time limit (a stopped worker process, or a "
            "replacement the cluster could not place; see `ray status`)"
        )

    def _seconds(self) -> float:
        return time.monotonic() - self.started

    # ---- exploration -------------------------------------------------------------------

    def _may_ask(self) -> bool:
        if self.trials is not None and self.asked >= self.trials:
            return False
        # The rest of the limit is the fine re-evaluation's; the first plans go out whenever
        # the workers came up, so a search that started late still returns a plan.
        done_exploring = self.explore_until is not None and time.monotonic() >= self.explore_until
        return not self._late() and not (done_exploring and self.asked > 0)

    def _send(self, worker: Worker, plan: Plan) -> tuple[ray.ObjectRef, ray.ObjectRef | None]:
        """A coarse evaluation on ``worker``, handed the shared solutions of the pairs of
        ``plan`` it was never sent: (reply, bundle of the pairs it solves, when sharing)."""
        assert self.pool is not None
        key = _actor_key(worker)
        if not self.share_units:
            self.affinity.sent(key, plan)
            return self.pool.submit(worker, plan, "coarse"), None
        held = self.affinity.held(key)
        shared = self.shared.for_keys(k for k in pair_keys(plan) if k not in held)
        self.affinity.sent(key, plan)
        return self.pool.submit_sharing(worker, plan, shared)

    def _submit(self, proposal: Proposal, worker: Worker) -> _Task:
        ref, bundle = self._send(worker, proposal.plan)
        task = _Task(proposal, worker, worker.handle, self.submissions, bundle)
        self.submissions += 1
        self.inflight[ref] = task
        return task

    def _fill(self) -> None:
        """Keep every live worker busy with ``PIPELINE_DEPTH`` plans: whole batches while
        fewer than that are out (reproducible), else one more plan per worker below it."""
        assert self.pool is not None
        asked = False
        while self._may_ask():
            alive = self.pool.alive
            if self.reproducible:
                idle = alive if len(self.batches) < PIPELINE_DEPTH else []
            else:
                load = Counter(t.worker.index for t in self.inflight.values())
                idle = [w for w in alive if load[w.index] < PIPELINE_DEPTH]
            n = len(idle) if self.trials is None else min(len(idle), self.trials - self.asked)
            if n <= 0:
                break
            proposals = ask(self.study, self.space, n)
            places = self.affinity.assign(
                [p.plan for p in proposals], [_actor_key(w) for w in idle]
            )
            tasks = [self._submit(p, idle[i]) for p, i in zip(proposals, places, strict=True)]
            self.asked += len(tasks)
            if self.reproducible:
                self.batches.append(tasks)
            asked = True
        if asked:
            self._report("explore", "")  # shows the new trials in flight

    def _explore(self) -> str:
        assert self.pool is not None
        if self.islands:
            self.island = IslandExploration(self, self.starts)
            return self.island.run()
        while True:
            if self._cancelled():
                return "cancelled"
            self._fill()
            if not self.inflight:
                break
            if self._stalled(self.explore_until, self._quiet_since(self._held())):
                self._stop_waiting_for_silent_workers()
                if not self.inflight:
                    continue
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=POLL_S)
            for ref in done:
                if ref in self.inflight:  # not already settled with a dead worker's others
                    self._receive(ref)
        return self._exploration_stop()

    def _exploration_stop(self) -> str:
        """Why exploration ended, in a mode's loop that has nothing left out: its trial budget
        (under a time limit only if no worker had to be stopped for silence), the time limit,
        or, without one, no worker left to finish the budget."""
        budget_spent = self.trials is not None and self.asked >= self.trials
        if budget_spent and (self.time_limit_s is None or not self._stall_seen):
            return "trials"
        return "time" if self.time_limit_s is not None else "workers"

    def _held(self) -> list[tuple[int, float]]:
        return [(t.worker.index, t.sent_at) for t in self.inflight.values()]

    def _stop_waiting_for_silent_workers(self) -> None:
        """Past the grace (``_stalled``): take every result that has arrived, then stop the
        workers that have held a plan for a whole grace without answering (their plans told
        FAIL), so that the search goes on with the others alone."""
        assert self.pool is not None
        done, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
        for ref in done:
            if ref in self.inflight:
                self._receive(ref)
        # Silent: quiet for a whole grace (not a replacement that was just handed the plans of
        # a worker that died, nor a worker answering the plans queued before its last).
        assert self.stall_grace_s is not None
        now = time.monotonic()
        quiet = self._quiet_since(self._held())
        silent = {
            t.worker.index: t.worker
            for t in self.inflight.values()
            if now - quiet[t.worker.index] >= self.stall_grace_s
        }
        if not silent:
            return
        self._stall_seen = True
        message = self._stall_message("not evaluated")
        if self.time_limit_s is not None:  # exploration is over: nothing more is waited for
            self._abandon(message, kill=False)
        # Stopped (or replaced) before any tell: a tell may ask new plans, which must go to
        # the others or to the replacement, never to the silent actor.
        replaced = {i for i, worker in silent.items() if self._stop_silent(worker)}
        for ref, task in sorted(self.inflight.items(), key=lambda item: item[1].order):
            if task.worker.index in silent:
                del self.inflight[ref]
                self._record(task, _Outcome(None, message))
        for what, slots in (("replaced", replaced), ("stopped", set(silent) - replaced)):
            if slots:
                self.notes.append(
                    self._stall_message(
                        f"worker(s) {', '.join(map(str, sorted(slots)))} {what}: their plans "
                        "were told FAIL"
                    )
                )

    def _stop_silent(self, worker: Worker) -> bool:
        """Stop a silent worker in exploration; True when a new actor takes its slot. Without
        a time limit the search goes on, so a worker that had answered since it started (a hung
        process) is replaced, within ``max_restarts`` per slot (``_replaces``)."""
        assert self.pool is not None
        if not self._replaces(worker):
            self._retire(worker)
            return False
        old = _actor_key(worker)
        replaced = self.pool.replace_silent(worker)
        self.affinity.forget(old)
        self.shared.forget_owner(old)
        return replaced

    def _retire(self, worker: Worker) -> None:
        """Stop a silent worker for good; the pair solutions it held are gone with it."""
        assert self.pool is not None
        self.pool.retire(worker)
        self.affinity.forget(_actor_key(worker))
        self.shared.forget_owner(_actor_key(worker))

    def _receive(self, ref: ray.ObjectRef) -> None:
        task = self.inflight.pop(ref)
        self._heard[task.worker.index] = time.monotonic()
        try:
            reply: Reply = ray.get(ref)
        except RayActorError:
            self._worker_died(ref, task)
            return
        except RayTaskError as exc:
            self._record(task, self._unexpected(task, exc))
            return
        task.worker.pid = reply.pid
        self._record(task, _Outcome(reply, reply.error))

    def _unexpected(self, task: _Task, exc: RayTaskError) -> _Outcome:
        self.stats.unexpected_errors += 1
        cause = exc.cause if exc.cause is not None else exc
        outcome = _Outcome(None, f"evaluation raised {type(cause).__name__}: {cause}")
        if self.stats.unexpected_errors == 1:
            self.notes.append(f"trial {task.proposal.number}: {outcome.error}")
        return outcome

    def _worker_died(self, ref: ray.ObjectRef, task: _Task) -> None:
        """Settle every task the dead actor had: results it finished are kept, the one it was
        evaluating is told FAIL, the ones queued behind it are sent again."""
        assert self.pool is not None
        worker = task.worker
        mine = sorted(
            [(ref, task), *((r, t) for r, t in self.inflight.items() if t.handle is task.handle)],
            key=lambda item: item[1].order,
        )
        for r, _ in mine:
            self.inflight.pop(r, None)
        self.stats.worker_deaths += 1
        lost_message = (
            f"not evaluated: worker {worker.index} (pid {worker.pid}) died during the "
            "evaluation (RayActorError)"
        )
        settled: list[tuple[_Task, _Outcome]] = []  # finished, or the one it was evaluating
        again: list[_Task] = []  # queued behind that one: never started
        for r, t in mine:
            if len(settled) > 0 and settled[-1][1].error == lost_message:
                again.append(t)
                continue
            try:
                reply: Reply = ray.get(r, timeout=DEAD_RESULT_WAIT_S)
            except (RayActorError, GetTimeoutError):
                settled.append((t, _Outcome(None, lost_message)))
            except RayTaskError as exc:
                settled.append((t, self._unexpected(t, exc)))
            else:
                settled.append((t, _Outcome(reply, reply.error)))
        self.affinity.forget(_actor_key(worker))  # the replacement's cache starts empty
        self.shared.forget_owner(_actor_key(worker))  # its node may have gone with it
        try:
            # Before any tell: a tell may ask new plans, which must go to the replacement.
            self.pool.died(worker)
        except PoolError:
            for t, outcome in settled:
                self._record(t, outcome)
            for t in again:
                self._record(t, _Outcome(None, "not evaluated: every worker died"))
            raise
        for t, outcome in settled:
            self._record(t, outcome)
        for t in again:
            target = worker if not worker.retired else self._least_loaded()
            ref_again, bundle = self._send(target, t.proposal.plan)
            self.inflight[ref_again] = dataclasses.replace(
                t, worker=target, handle=target.handle, order=self.submissions, bundle=bundle,
                sent_at=time.monotonic(),
            )  # fmt: skip
            self.submissions += 1

    def _least_loaded(self) -> Worker:
        assert self.pool is not None
        load = Counter(t.worker.index for t in self.inflight.values())
        return min(self.pool.alive, key=lambda w: (load[w.index], w.index))

    def _record(self, task: _Task, outcome: _Outcome) -> None:
        """Tell now (asynchronous), or in ask order with the batch pipeline (reproducible)."""
        if not self.reproducible:
            self._tell(task, outcome)
            return
        self.held[task.proposal.number] = outcome
        while self.batches:
            head = self.batches[0]
            while head and head[0].proposal.number in self.held:
                first = head.pop(0)
                self._tell(first, self.held.pop(first.proposal.number))
            if head:
                return
            self.batches.popleft()
            self._fill()  # batch k+2 is asked before any result of batch k+1 is told

    def _tell(self, task: _Task, outcome: _Outcome) -> None:
        trial = task.proposal.trial
        trial.set_user_attr(WORKER_ATTR, task.worker.index)
        pid = outcome.reply.pid if outcome.reply is not None else task.worker.pid
        if pid is not None:
            trial.set_user_attr(WORKER_PID_ATTR, pid)
        if outcome.reply is not None:
            trial.set_user_attr(EVAL_SECONDS_ATTR, outcome.reply.seconds)
            self._count_pairs(task, outcome.reply)
        seconds = self._seconds()
        if outcome.reply is None or outcome.reply.evaluation is None:
            record = tell_error(
                self.study, task.proposal, outcome.error or "not evaluated", seconds=seconds
            )
            self.stats.failed_trials += 1
        else:
            record = tell(
                self.study, task.proposal, outcome.reply.evaluation, seconds=seconds,
                multi_objective=self.multi_objective, weights=self.weights,
            )  # fmt: skip
            if self.best is None or ranking_key(record.passed, record.score) < ranking_key(
                self.best.passed, self.best.score
            ):
                self.best = record
                self.best_evaluation = outcome.reply.evaluation
        self.stats.trials_told += 1
        self.history.append(record)
        self._report("explore", "")

    def _count_pairs(self, task: _Task, reply: Reply) -> None:
        """Pair figures, and the solutions the actor shared. Registered here, at the tell,
        so that in reproducible order what a plan is handed depends on the trial order only;
        not those of an actor that has died since (``SharedUnits.forget_owner``)."""
        self.stats.pairs_solved += reply.solved_pairs
        self.stats.pairs_reused += reply.reused_pairs
        self.stats.pairs_adopted += reply.adopted_pairs
        alive = task.handle is task.worker.handle and not task.worker.retired
        if task.bundle is not None and reply.bundled and alive:
            self.shared.add(_actor_key(task.worker), task.bundle, reply.bundled,
                            reply.bundled_bytes)  # fmt: skip

    # ---- progress ----------------------------------------------------------------------

    def _confirm_study(self) -> None:
        """Every ``CONFIRM_EVERY_S`` of exploration: make sure the search still holds its
        study (a PostgreSQL lock ends with its connection). A lock taken again is noted; a
        study another search took meanwhile stops this one (``StudyLostError``), its told
        trials stored."""
        now = time.monotonic()
        if self._study_lock is None or now < self._study_confirmed + CONFIRM_EVERY_S:
            return
        self._study_confirmed = now
        note = self._study_lock.confirm()
        if note is not None and note not in self.notes:
            self.notes.append(note)

    def _report(self, phase: str, message: str) -> None:
        if phase == "explore":  # every mode reports each trial; later phases add none
            self._confirm_study()
        if self.on_progress is None:
            return
        now = time.monotonic()
        explored = (self.explore_ended or now) - self.explore_started
        told = self.stats.trials_told
        best = self.best
        alive = len(self.pool.alive) if self.pool is not None else 0
        self.on_progress(
            ClusterProgress(
                phase=phase,
                trials_done=told,
                trials_budget=self.trials,
                elapsed_s=now - self.started,
                trials_per_s=told / explored if explored > 0 and told else 0.0,
                best_score=None if best is None else best.score,
                best_passed=best is not None and best.passed,
                criteria_met=0 if best is None else best.criteria_met,
                criteria_applicable=0 if best is None else best.criteria_applicable,
                best_trial=None if best is None else best.number,
                message=message,
                workers=self.workers,
                workers_alive=alive,
                failed_trials=self.stats.failed_trials,
                worker_deaths=self.stats.worker_deaths,
                in_flight=tuple(
                    InFlight(t.proposal.number, t.worker.index, t.worker.pid, "coarse")
                    for t in self.inflight.values()
                )
                + (self.island.in_flight() if self.island is not None else ()),
            )
        )

    # ---- fine confirmation ---------------------------------------------------------------

    def _refine(self, stopped_by: str) -> SearchResult:
        assert self.pool is not None
        done = completed(self.study)
        if not done:
            last = next((r.error for r in reversed(self.history) if r.error), None)
            late_start = ""
            if stopped_by == "time" and not self.history:
                late_start = (
                    f": the workers were not ready within the {self.time_limit_s:g} s time limit "
                    f"({self.stats.startup_s:.0f} s). A first search on a machine, or in a new "
                    "Numba cache directory, compiles the field solver for 20-30 s; run it "
                    "again or give a longer time limit"
                )
            raise SearchError(
                f"the search stopped ({stopped_by}) before any plan was evaluated on case "
                f"{self.space.case.case_id!r}" + late_start
                + (f"; last error: {last}" if last else "")
            )  # fmt: skip
        pool_trials = pareto_front(done) if self.multi_objective else done
        candidates = trial_candidates(self.space, pool_trials)
        self._report("refine", "re-evaluating the best plans on the fine grid")
        results: dict[str, PlanEvaluation | str] = {}

        def fine(plan: Plan) -> PlanEvaluation:
            found = results.get(plan_identity(plan))
            if found is None:
                raise PlanError(
                    "fine evaluation not finished: "
                    + ("the time limit had passed" if self.pool and self.pool.alive
                       else "no worker was left")
                )  # fmt: skip
            if isinstance(found, str):
                raise PlanError(found)
            return found

        # Each round's plans are evaluated in parallel on the actors; refine() below then
        # replays exactly the rounds that ran, reading their results.
        levels = TwoFidelity(
            _unused, fine, top_k=self.refine_top_k, weights=self.weights,
            voltage_step_V=self.space.settings.voltage_step_V,
        )  # fmt: skip

        def fine_so_far() -> dict[str, PlanEvaluation | None]:
            return {k: None if isinstance(v, str) else v for k, v in results.items()}

        picked, rounds = levels.pick(candidates), 0
        while picked:
            got = self._fine_evaluations(picked)
            if got is None:
                return self._cancel()
            results.update(got)
            rounds += 1
            if self._late() or not self.pool.alive:
                break
            picked = levels.next_round(candidates, fine_so_far(), rounds)
        levels.max_rounds = max(rounds, 1)
        lowered = (
            [] if self._late() or not self.pool.alive
            else levels.backoff(candidates, fine_so_far())
        )  # fmt: skip
        if lowered:
            got = self._fine_evaluations(lowered)
            if got is None:
                return self._cancel()
            results.update(got)
        else:
            levels.voltage_step_V = None  # the replay below runs no back-off round either
        # refine() timed the look-up; report the workers' evaluation time instead.
        refined = [
            dataclasses.replace(
                r, seconds=self._fine_seconds.get(plan_identity(r.candidate.plan), r.seconds)
            )
            for r in levels.refine(candidates)
        ]
        chosen = refined[0] if refined else None
        if chosen is None or chosen.evaluation is None or chosen.score is None:
            if self._all_died is not None and self.best is not None:
                return self._coarse_result(
                    stopped_by, f"no fine evaluation could be had ({self._all_died})"
                )
            if self._stall_seen and self.best is not None:
                return self._coarse_result(
                    stopped_by, self._stall_message("no fine evaluation finished")
                )
            errors = "; ".join(r.error or "" for r in refined)
            raise SearchError(f"no candidate could be evaluated on the fine level: {errors}")
        c = chosen.candidate
        return SearchResult(
            plan=c.plan,
            evaluation=chosen.evaluation,
            score=chosen.score,
            trial_number=c.trial_number,
            params=c.params,
            coarse_score=c.coarse_score,
            refined=refined,
            history=self.history,
            trials_run=self.stats.trials_told,
            trials_in_study=len(self.study.get_trials(deepcopy=False)),
            elapsed_s=self._seconds(),
            stopped_by=stopped_by,
            study_name=self.study.study_name,
            sampler=self.sampler_name,
            seed=self.seed,
            pareto=self._pareto(pool_trials),
            notes=self._notes(stopped_by) + backoff_notes(c.trial_number, c.voltage_factor),
            voltage_factor=c.voltage_factor,
        )

    def _fine_evaluations(
        self, picked: Sequence[Candidate]
    ) -> dict[str, PlanEvaluation | str] | None:
        """Fine evaluations of ``picked`` in parallel (candidate i on live worker i mod n);
        None when cancelled. Waits for all, or once late for the first that evaluates. Under
        a time limit not past the grace after the later of the limit and their sending;
        without one, a worker quiet for the grace (``_stalled``) is stopped and its candidates
        are lost, while the others' are still waited for. A worker that dies loses the
        candidate it was evaluating (``_fine_worker_died``)."""
        assert self.pool is not None
        alive = self.pool.alive
        if not alive:  # every worker stopped answering, or died
            return {}
        pending: dict[ray.ObjectRef, _FineTask] = {}
        sent = itertools.count()
        sent_at = time.monotonic()

        def send(candidate: Candidate, worker: Worker, resent: bool = False) -> None:
            assert self.pool is not None
            ref = self.pool.submit(worker, candidate.plan, "fine")
            pending[ref] = _FineTask(candidate, worker, worker.handle, next(sent), resent)

        def take(ref: ray.ObjectRef) -> None:
            if ref not in pending:
                return  # settled with its dead worker's other candidates
            task = pending.pop(ref)
            self._heard[task.worker.index] = time.monotonic()
            try:
                reply: Reply = ray.get(ref)
            except RayActorError:
                self._fine_worker_died(ref, task, pending, out, send)
                return
            except RayTaskError as exc:
                out[plan_identity(task.candidate.plan)] = (
                    f"fine evaluation raised {exc.cause or exc}"
                )
                return
            self._fine_result(task, reply, out)

        def quiet() -> dict[int, float]:
            return self._quiet_since((t.worker.index, t.sent_at) for t in pending.values())

        for i, c in enumerate(picked):
            send(c, alive[i % len(alive)])
        out: dict[str, PlanEvaluation | str] = {}
        have_first = False
        while pending:
            if self._cancelled():
                return None
            if self._late() and have_first:
                break
            since = None if self.deadline is None else max(self.deadline, sent_at)
            if self._stalled(since, quiet()):
                if self.deadline is not None:  # the search is over: keep what has evaluated
                    self._stall_seen = True
                    note = self._stall_message("the fine re-evaluation stopped waiting")
                    self.notes.append(note)
                    break
                # No time limit: first what has arrived (a worker that just answered is not
                # silent); then the silent workers' candidates are lost (a later round would
                # wait for them again), the others' still waited for.
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in done:
                    take(ref)
                silent = self._retire_quiet(quiet())
                self._stall_seen = self._stall_seen or bool(silent)
                lost = self._stall_message("not evaluated")
                for ref, t in list(pending.items()):
                    if t.worker.index in silent:
                        del pending[ref]
                        out[plan_identity(t.candidate.plan)] = lost
                continue
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in done:
                take(ref)
            # As in TwoFidelity.refine: once late, keep what has evaluated, in coarse order.
            have_first = any(isinstance(out.get(plan_identity(c.plan)), PlanEvaluation)
                             for c in picked)  # fmt: skip
        return out

    def _retire_quiet(self, quiet: Mapping[int, float]) -> set[int]:
        """Stop the workers of ``quiet`` (``_quiet_since``) that have been quiet for the grace,
        with no replacement, and say so; their slots."""
        assert self.pool is not None and self.stall_grace_s is not None
        now = time.monotonic()
        silent = sorted(i for i, t in quiet.items() if now - t >= self.stall_grace_s)
        for index in silent:
            self._retire(self.pool.workers[index])
        if silent:
            stopped = ", ".join(map(str, silent))
            self.notes.append(
                self._stall_message(f"worker(s) {stopped} stopped in the fine re-evaluation")
            )
        return set(silent)

    def _fine_result(
        self, task: _FineTask, reply: Reply, out: dict[str, PlanEvaluation | str]
    ) -> None:
        key = plan_identity(task.candidate.plan)
        self._fine_seconds[key] = reply.seconds
        task.worker.pid = reply.pid
        if reply.evaluation is None:
            out[key] = reply.error or "not evaluated"
        else:
            out[key] = reply.evaluation
            self._fine_worker[key] = task.worker.index

    def _fine_worker_died(
        self,
        ref: ray.ObjectRef,
        task: _FineTask,
        pending: dict[ray.ObjectRef, _FineTask],
        out: dict[str, PlanEvaluation | str],
        send: Callable[[Candidate, Worker, bool], None],
    ) -> None:
        """Settle every candidate the dead actor had, as exploration does with trials: results
        it finished are kept, the one it was evaluating is lost, the ones queued behind it go
        to the worker's replacement (or another live worker). The actor is replaced once,
        however many of its candidates report its death."""
        assert self.pool is not None
        worker = task.worker
        mine = sorted(
            [(ref, task), *((r, t) for r, t in pending.items() if t.handle is task.handle)],
            key=lambda item: item[1].order,
        )
        for r, _ in mine:
            pending.pop(r, None)
        self.stats.worker_deaths += 1
        self.stats.fine_worker_deaths += 1
        lost = False
        again: list[_FineTask] = []
        for r, t in mine:
            key = plan_identity(t.candidate.plan)
            if lost:
                again.append(t)
                continue
            try:
                reply: Reply = ray.get(r, timeout=DEAD_RESULT_WAIT_S)
            except (RayActorError, GetTimeoutError):
                out[key] = (
                    f"not evaluated: worker {worker.index} (pid {worker.pid}) died during the "
                    "fine evaluation (RayActorError)"
                )
                lost = True
            except RayTaskError as exc:
                out[key] = f"fine evaluation raised {exc.cause or exc}"
            else:
                self._fine_result(t, reply, out)
        try:
            self.pool.died(worker)
        except PoolError as exc:  # it was the last: what is in hand (or the coarse best) stays
            self._all_died = str(exc)
            for t in again:
                out[plan_identity(t.candidate.plan)] = f"not evaluated: {exc}"
            return
        for t in again:
            if t.resent:  # its second worker died too: not a third
                out[plan_identity(t.candidate.plan)] = (
                    "not evaluated: two workers died with this plan queued"
                )
                continue
            target = worker if not worker.retired else self.pool.alive[0]
            send(t.candidate, target, True)

    def _pareto(self, trials: Sequence[optuna.trial.FrozenTrial]) -> list[ParetoPoint]:
        if not self.multi_objective:
            return []
        return [
            ParetoPoint(
                t.number,
                dict(t.params),
                self.space.decode(t.params, name=f"trial {t.number}"),
                tuple(t.values),
                bool(t.user_attrs.get("passed", False)),
                float(t.user_attrs["score"]),
            )
            for t in sorted(trials, key=lambda t: t.values)
        ]

    def _notes(self, stopped_by: str | None = None) -> list[str]:
        """The run's notes; ``stopped_by``: why exploration ended (None when it was cut
        short), so that a slow start is told only where the time limit ended exploration."""
        notes = list(self.notes)
        exploring = self.stats.worker_deaths - self.stats.fine_worker_deaths
        if exploring:
            notes.append(
                f"{exploring} worker death(s): each lost at most the trial it was evaluating "
                "(told FAIL); the pool replaced the workers"
            )
        if self.stats.fine_worker_deaths:
            notes.append(
                f"{self.stats.fine_worker_deaths} worker death(s) during the fine "
                "re-evaluation: each lost the candidate it was evaluating (the ones queued "
                "behind it went to a live worker); the pool replaced the workers"
            )
        if self.stats.unexpected_errors:
            notes.append(f"{self.stats.unexpected_errors} trial(s) raised an unexpected error")
        if stopped_by == "time" and self.pool is not None:
            warmup_s = max((i.warmup_s for i in self.pool.infos.values()), default=0.0)
            slow = slow_start_note(
                self.time_limit_s, self.stats.startup_s, warmup_s, self.stats.explore_s,
                self.stats.trials_told,
            )  # fmt: skip
            if slow is not None:
                notes.append(slow)
        return notes

    # ---- cancellation ------------------------------------------------------------------

    def _abandon(self, message: str, *, kill: bool = True) -> None:
        """Kill the workers (unless not ``kill``) and tell every asked, untold trial:
        completed results in ask order as they are, the rest FAIL with ``message``."""
        if kill and self.pool is not None:
            self.pool.shutdown()
        batched = [t for batch in self.batches for t in batch]
        numbers = {t.proposal.number for t in batched}
        ordered = [
            *batched,
            *sorted(
                (t for t in self.inflight.values() if t.proposal.number not in numbers),
                key=lambda t: t.proposal.number,
            ),
        ]
        self.inflight.clear()
        self.batches.clear()
        for task in ordered:
            outcome = self.held.pop(task.proposal.number, None)
            # RuntimeError/ValueError: already finished in storage (interrupted mid-tell).
            try:
                with contextlib.suppress(RuntimeError, ValueError):
                    self._tell(task, outcome or _Outcome(None, message))
            except DurableWriteError:
                self._storage_failed = True  # not tried again by the search's last flush
                raise

    def _cancel(self) -> SearchResult:
        if not self._prepared:
            self.close()
            raise SearchCancelledError("the search was cancelled while it was being set up")
        self._abandon("not evaluated: search cancelled")
        if self.island is not None:
            self.island.settle_cancelled()
        result = self._coarse_result("cancelled", "cancelled before the fine re-evaluation")
        self._report("done", "cancelled")
        return result

    def _coarse_result(self, stopped_by: str, why: str) -> SearchResult:
        """The best exploration plan as it is, when no fine evaluation can be had (``why``)."""
        best, evaluation = self.best, self.best_evaluation
        if best is None or evaluation is None:
            cancelled = stopped_by == "cancelled"
            raise (SearchCancelledError if cancelled else SearchError)(
                ("the search was cancelled" if cancelled else f"the search stopped ({why})")
                + " before any plan was evaluated; "
                f"{len(completed(self.study))} completed trial(s) are in study "
                f"{self.study.study_name!r}"
            )
        params = dict(self.study.get_trials(deepcopy=False)[best.number].params)
        plan = self.space.decode(params, name=f"trial {best.number}")
        breakdown = score(evaluation, self.weights)
        return SearchResult(
            plan=plan,
            evaluation=evaluation,
            score=breakdown,
            trial_number=best.number,
            params=params,
            coarse_score=best.score,
            refined=[],
            history=self.history,
            trials_run=self.stats.trials_told,
            trials_in_study=len(self.study.get_trials(deepcopy=False)),
            elapsed_s=self._seconds(),
            stopped_by=stopped_by,
            study_name=self.study.study_name,
            sampler=self.sampler_name,
            seed=self.seed,
            pareto=self._pareto(
                pareto_front(completed(self.study)) if self.multi_objective else []
            ),
            notes=[
                *self._notes(),
                f"{why}: the plan and its evaluation are the coarse exploration result of trial "
                f"{best.number} ({self.spec.coarse_mm:g} mm grid, constant conductivity)",
            ],
        )

    # ---- outputs -----------------------------------------------------------------------

    def evaluate_with_fields(self, plan: Plan) -> EvaluatedPlan:
        """The fine evaluation of ``plan`` with its fields, from the worker that evaluated it
        (its cache holds the solutions), else any worker, else in this process; in this
        process at once after workers stopped answering under a time limit (``_stalled``;
        without one the silent workers were stopped and the others answer)."""
        key = plan_identity(plan)
        answering = not self._stall_seen or self.time_limit_s is None
        if self.pool is not None and self.pool.alive and answering:
            alive = self.pool.alive
            index = self._fine_worker.get(key)
            ordered = sorted(alive, key=lambda w: w.index != index)
            give_up_at = time.monotonic() + FIELDS_WAIT_S
            for worker in ordered:
                left = give_up_at - time.monotonic()
                if left <= 0:
                    break
                try:
                    evaluated: EvaluatedPlan = ray.get(self.pool.fields(worker, plan), timeout=left)
                    return evaluated
                except (RayActorError, GetTimeoutError):
                    continue
        evaluator = PlanEvaluator(
            self.case_fine, self.protocol, nonlinear=True, backend=self.backend, table=self.table
        )
        return evaluator.evaluate_with_fields(plan)


def _unused(plan: Plan) -> PlanEvaluation:
    raise AssertionError("the coarse level runs on the actors, not through TwoFidelity")


def plan_distributed(
    anatomy: str | Path | Anatomy,
    protocol: Protocol,
    *,
    trials: int | None = 200,
    time_limit_s: float | None = None,
    workers: int = DEFAULT_WORKERS,
    seed: int | None = 0,
    multi_objective: bool = False,
    sampler: str | BaseSampler | None = None,
    storage_url: str | Path | None = None,
    study_name: str | None = None,
    ray_address: str | None = None,
    seed_plans: Sequence[Plan] = (),
    on_progress: Callable[[SearchProgress], None] | None = None,
    cancel_event: threading.Event | None = None,
    **options: Any,
) -> SearchResult:
    """Run one distributed search and release its workers (see ``DistributedSearch`` for the
    further ``options``: grids, refine_top_k, reproducible, threads_per_worker, ...)."""
    with DistributedSearch(
        anatomy, protocol, trials=trials, time_limit_s=time_limit_s, workers=workers, seed=seed,
        multi_objective=multi_objective, sampler=sampler, storage_url=storage_url,
        study_name=study_name, ray_address=ray_address, seed_plans=seed_plans, **options,
    ) as search:  # fmt: skip
        return search.run(on_progress=on_progress, cancel_event=cancel_event)
