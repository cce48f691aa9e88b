"""Evaluator actors: each holds one anatomy's cases, warm evaluators and their pair caches.

An actor builds its coarse and fine cases itself from the input ``Anatomy``, which the driver
puts in the object store once (``ray.put``; Ray hands it to the constructor): a call then
ships only a ``Plan`` (a few kB) and returns a ``PlanEvaluation`` (metrics and criteria,
~50 kB), never field arrays. Keeping the
evaluators in a long-lived actor keeps their pair-solution caches across trials, which is
what makes a search that revisits needle pairs cheap. With several actors, each also shares
the coarse unit solutions it solves and adopts those the driver hands it with a plan
(``services.planner.unit_sharing``), so a pair is solved once per search, not once per actor.
With island exploration (``explore``, ``services.planner.island``) an actor instead runs its
own ask/evaluate/tell loop, streams its trials, puts the pairs it solved in the object store
itself and keeps its own index of the other islands' solutions.

Start-up runs one coarse evaluation of a warm-up plan (the first seed: trial 0 then hits the
cache) and one nonlinear pair on the coarse grid, so Numba's compiles (or cache loads) happen
before the first measured trial. Numba threads: ``threads`` per actor (the driver passes cores
per actor), re-applied on every call because Numba's setting is per thread.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import ray
from optuna.trial import FrozenTrial

from optimizer.anatomy.structures import Anatomy
from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.evaluator import (
    DEFAULT_CACHE_BYTES,
    CachedUnit,
    EvaluatedPlan,
    PlanEvaluator,
)
from optimizer.evaluate.plan import Plan, PlanError
from optimizer.evaluate.protocol import Protocol
from optimizer.field.errors import SolverError
from optimizer.search.space import SearchSpace
from optimizer.tissue.table import TissueTable
from services.planner.unit_folder import UnitFolder, UnitFolderUnreachableError
from services.planner.unit_sharing import SharedBundle, SharedUnits, adopt, solved_bundle

if TYPE_CHECKING:
    from services.planner.island import Island, IslandSettings, IslandTrial, StopAt

Fidelity = Literal["coarse", "fine"]
# User attributes a search adds to each trial (besides the search library's).
WORKER_ATTR = "worker"
WORKER_PID_ATTR = "worker_pid"
EVAL_SECONDS_ATTR = "evaluation_s"
# Errors that condemn one plan, not the worker: told as a failed trial.
PLAN_ERRORS = (PlanError, SolverError)


@dataclass(frozen=True)
class CaseSpec:
    """How an actor builds its cases from the anatomy (the driver builds the same ones)."""

    coarse_mm: float
    fine_mm: float
    margin_mm: float
    target_scope: str = "auto"

    def prepare(self, anatomy: Anatomy) -> tuple[PreparedCase, PreparedCase]:
        coarse = prepare_case(
            anatomy, spacing_mm=self.coarse_mm, margin_mm=self.margin_mm,
            target_scope=self.target_scope,
        )  # fmt: skip
        if self.fine_mm == self.coarse_mm:
            return coarse, coarse
        fine = prepare_case(
            anatomy, spacing_mm=self.fine_mm, margin_mm=self.margin_mm,
            target_scope=self.target_scope,
        )  # fmt: skip
        return coarse, fine


def search_space(coarse: PreparedCase, fine: PreparedCase, protocol: Protocol) -> SearchSpace:
    """The search space of a search on these cases: needle paths clear of the organs on both
    grids (the driver and island actors build the same one)."""
    return SearchSpace.for_levels(coarse, fine, protocol)


@dataclass(frozen=True)
class Reply:
    """One evaluation: the plan's evaluation, or why there is none."""

    evaluation: PlanEvaluation | None
    error: str | None
    seconds: float
    pid: int
    solved_pairs: int = 0
    reused_pairs: int = 0
    adopted_pairs: int = 0  # of the reused: handed over from another actor with the plan
    # Pair geometries whose unit solutions ``evaluate_sharing`` returned (and their bytes).
    bundled: tuple[str, ...] = ()
    bundled_bytes: int = 0


@dataclass(frozen=True)
class WorkerInfo:
    pid: int
    host: str
    threads: int
    startup_s: float
    warmup_s: float
    timings_s: dict[str, float] = field(default_factory=dict)


def _set_threads(threads: int) -> int:
    import numba

    most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    n = max(1, min(int(threads), most))
    numba.set_num_threads(n)
    return n


class EvaluatorWorker:
    """The actor's body (plain Python: usable and testable without Ray)."""

    def __init__(
        self,
        anatomy: Anatomy,
        protocol: Protocol,
        spec: CaseSpec,
        *,
        table: TissueTable | None = None,
        threads: int = 1,
        backend: str = "auto",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        warm_plan: Plan | None = None,
    ) -> None:
        started = time.perf_counter()
        self.threads = _set_threads(threads)
        self.protocol = protocol
        self.table = table
        self.backend = backend
        self.cache_bytes = cache_bytes
        self.coarse_case, self.fine_case = spec.prepare(anatomy)
        self.coarse = PlanEvaluator(
            self.coarse_case, protocol, nonlinear=False, backend=backend, table=table,
            cache_bytes=cache_bytes, metrics_detail="search",
        )  # fmt: skip
        self._fine: PlanEvaluator | None = None  # built on first use: most actors never need it
        self._island: Island | None = None  # built on the first ``explore`` call
        self._island_units = SharedUnits()  # the other islands' pair solutions
        self._folder: UnitFolder | None = None  # or the folder they are shared through
        ready = time.perf_counter()
        if warm_plan is not None:
            self._warm_up(warm_plan)
        self.info_ = WorkerInfo(
            pid=os.getpid(),
            host=socket.gethostname(),
            threads=self.threads,
            startup_s=ready - started,
            warmup_s=time.perf_counter() - ready,
            timings_s=dict(self.coarse_case.timings_s),
        )

    def _warm_up(self, plan: Plan) -> None:
        try:
            self.coarse.evaluate(plan)
            one_pair = plan.model_copy(update={"pairs": plan.pairs[:1]})
            PlanEvaluator(
                self.coarse_case, self.protocol, nonlinear=True, backend=self.backend,
                table=self.table, cache_bytes=0,
            ).evaluate(one_pair)  # fmt: skip
        except PLAN_ERRORS:
            pass  # only the compiles matter here; the search reports the plan's own error

    @property
    def fine(self) -> PlanEvaluator:
        if self._fine is None:
            self._fine = PlanEvaluator(
                self.fine_case, self.protocol, nonlinear=True, backend=self.backend,
                table=self.table, cache_bytes=self.cache_bytes,
            )  # fmt: skip
        return self._fine

    def _evaluator(self, fidelity: Fidelity) -> PlanEvaluator:
        if fidelity == "coarse":
            return self.coarse
        if fidelity == "fine":
            return self.fine
        raise ValueError(f"fidelity must be 'coarse' or 'fine', not {fidelity!r}")

    # ---- actor methods -----------------------------------------------------------------

    def info(self) -> WorkerInfo:
        return self.info_

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, plan: Plan, fidelity: Fidelity = "coarse") -> Reply:
        return self._evaluate(plan, fidelity, None)[0]

    def evaluate_sharing(
        self, plan: Plan, shared: dict[str, Any] | None = None
    ) -> tuple[Reply, dict[str, CachedUnit]]:
        """A coarse ``evaluate`` that also returns the unit solutions it solved, for the other
        actors: call with ``num_returns=2`` and leave the second unread (it stays in the object
        store, the driver's to hand on; ``services.planner.unit_sharing``). ``shared``: pair
        geometry -> reference of another actor's bundle holding it, adopted first."""
        reply, solved = self._evaluate(plan, "coarse", shared)
        bundle = solved_bundle(self.coarse, solved)
        if not bundle:
            return reply, bundle
        nbytes = sum(c.nbytes for c in bundle.values())
        return dataclasses.replace(reply, bundled=tuple(bundle), bundled_bytes=nbytes), bundle

    def _evaluate(
        self, plan: Plan, fidelity: Fidelity, shared: dict[str, Any] | None
    ) -> tuple[Reply, tuple[str, ...]]:
        """The reply, and the pair geometries whose coarse unit solutions it solved."""
        self.threads = _set_threads(self.threads)
        evaluator = self._evaluator(fidelity)
        started = time.perf_counter()
        adopted = adopt(evaluator, shared) if shared and evaluator is self.coarse else 0
        try:
            done = evaluator.evaluate_with_fields(plan)
        except PLAN_ERRORS as exc:
            return Reply(None, str(exc), time.perf_counter() - started, os.getpid()), ()
        reply = Reply(
            done.evaluation, None, time.perf_counter() - started, os.getpid(),
            done.solved_pairs, done.reused_pairs, adopted,
        )  # fmt: skip
        return reply, done.solved_units if evaluator is self.coarse else ()

    def explore(
        self,
        settings: IslandSettings,
        slot: int,
        restarts: int,
        count: int,
        seeds: Sequence[dict[str, Any]],
        incoming: Sequence[FrozenTrial],
        bundles: Sequence[SharedBundle],
        stop_at: StopAt | None,
        dead_owners: Sequence[Hashable] = (),
    ) -> Iterator[IslandTrial | list[IslandTrial] | SharedBundle]:
        """Island exploration (``services.planner.island``): add ``incoming`` (the other
        islands' trials) to this actor's own study and index ``bundles`` (their pair
        solutions; those of ``dead_owners``, islands that died, are dropped), then ask, evaluate
        on the coarse grid and tell up to ``count`` trials, yielding each as it is told (with
        ``settings.journal``: reading the others' trials from the journal and appending each
        told one there, and yielding them all in one list at the end), and last the bundle of
        the pairs solved in this call when ``settings.share_units`` (with ``settings.units``,
        the pairs go through that folder instead, as each trial needs and solves them). Call
        with ``num_returns="streaming"``."""
        from services.planner.island import Island  # it imports this module

        if self._island is None:
            space = search_space(self.coarse_case, self.fine_case, self.protocol)
            self._island = Island(space, settings, slot=slot, restarts=restarts)
            self._island_units = SharedUnits(max_bytes=settings.shared_bytes)
        self._island.absorb(incoming)
        for owner in dead_owners:
            self._island_units.forget_owner(owner)
        for b in bundles:
            self._island_units.add(b.owner, b.ref, b.keys, b.nbytes)
        solved: list[str] = []
        folder = self._unit_folder(settings, slot)

        def evaluate(plan: Plan) -> Reply:
            if folder is not None:  # the others' solutions at once, this one's for them
                started = time.perf_counter()
                taken = folder.take(self.coarse, plan.pair_geometry_hashes())
                took = time.perf_counter() - started
                reply, keys = self._evaluate(plan, "coarse", None)
                started = time.perf_counter()
                folder.publish(self.coarse, keys)
                took += time.perf_counter() - started
                return dataclasses.replace(reply, seconds=reply.seconds + took, adopted_pairs=taken)
            shared = self._island_units.for_keys(plan.pair_geometry_hashes())
            reply, keys = self._evaluate(plan, "coarse", shared)
            solved.extend(keys)
            return reply

        told = self._island.run(evaluate, count, seeds=seeds, stop_at=stop_at, pid=os.getpid())
        if settings.journal is None:
            yield from told  # each as it is told: a death then loses only the running trial
        elif trials := list(told):
            # Each is in the journal as soon as told: one item per call spares the Ray
            # round per trial, and a death still loses only the running trial.
            yield trials
        if settings.share_units and (bundle := solved_bundle(self.coarse, solved)):
            nbytes = sum(c.nbytes for c in bundle.values())
            yield SharedBundle((slot, restarts), ray.put(bundle), tuple(bundle), nbytes)

    def _unit_folder(self, settings: IslandSettings, slot: int) -> UnitFolder | None:
        """This actor's use of the search's unit folder. None: bundles (also when this actor
        cannot see the folder, as on another filesystem with the driver's address: the
        driver notes it when the bundles arrive), or no sharing."""
        link = settings.units if settings.share_units else None
        if link is None:
            return None
        if self._folder is None or self._folder.link != link:
            try:
                self._folder = UnitFolder(link, slot)
            except UnitFolderUnreachableError:
                return None
        return self._folder

    def evaluate_with_fields(self, plan: Plan, fidelity: Fidelity = "fine") -> EvaluatedPlan:
        """The evaluation with every pair's field (tens of MB on the fine grid): only for the
        plan a search returns, whose fields this actor usually still has in its cache."""
        self.threads = _set_threads(self.threads)
        return self._evaluator(fidelity).evaluate_with_fields(plan)

    def cache_info(self) -> dict[str, dict[str, int]]:
        out = {"coarse": self.coarse.cache_info()}
        if self._fine is not None and self._fine is not self.coarse:
            out["fine"] = self._fine.cache_info()
        return out
