"""A fixed set of evaluator actors: start-up, one task at a time each, deaths, shutdown.

A task in flight when its actor dies is lost: the driver tells that trial FAIL and carries on.
The pool then replaces the actor in the same slot (a new actor from the same anatomy
reference, which the pool keeps alive; tasks sent to it wait until it has started), up to
``max_restarts`` times per slot; after that the slot is retired. Replacing it here rather than
with Ray's ``max_restarts`` keeps the anatomy a plain constructor argument (Ray warns about
restartable actors whose arguments live in the object store) and lets the driver count deaths.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError

from optimizer.anatomy.structures import Anatomy
from optimizer.evaluate.evaluator import DEFAULT_CACHE_BYTES
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol
from optimizer.tissue.table import TissueTable
from services.planner.actors import (
    CaseSpec,
    EvaluatorWorker,
    Fidelity,
    WorkerInfo,
)

DEFAULT_MAX_RESTARTS = 3
# Generous: the first actor on a fresh node imports the whole stack and loads Numba's cache.
STARTUP_TIMEOUT_S = 300.0
POLL_S = 0.1


class PoolError(RuntimeError):
    """The workers could not be started, or all of them died."""


@dataclass
class Worker:
    index: int
    handle: ActorHandle
    pid: int | None = None
    host: str = ""
    deaths: int = 0
    retired: bool = False
    # time.monotonic() when this slot's current actor was created (a replacement's start-up
    # is not silence: services.planner.driver gives it STARTUP_TIMEOUT_S).
    created_at: float = field(default_factory=time.monotonic)


class WorkerPool:
    def __init__(
        self,
        anatomy: ray.ObjectRef | Anatomy,
        protocol: Protocol,
        spec: CaseSpec,
        *,
        workers: int,
        threads: int = 1,
        backend: str = "auto",
        table: TissueTable | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        warm_plan: Plan | None = None,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
    ) -> None:
        if workers < 1:
            raise PoolError(f"workers must be >= 1, got {workers}")
        self.max_restarts = max_restarts
        actor_class: Any = ray.remote(EvaluatorWorker)
        self._options = actor_class.options(num_cpus=1, max_restarts=0, max_task_retries=0)
        self._args = (anatomy, protocol, spec)
        self._kwargs = {"table": table, "threads": threads, "backend": backend,
                        "cache_bytes": cache_bytes, "warm_plan": warm_plan}  # fmt: skip
        self.workers = [Worker(i, self._create()) for i in range(workers)]
        self.infos: dict[int, WorkerInfo] = {}

    def _create(self) -> ActorHandle:
        handle: ActorHandle = self._options.remote(*self._args, **self._kwargs)
        return handle

    # ---- start-up ----------------------------------------------------------------------

    def wait_ready(
        self,
        *,
        timeout_s: float = STARTUP_TIMEOUT_S,
        should_stop: Callable[[], bool] | None = None,
    ) -> bool:
        """Wait until every actor has built its cases and warmed up; False when stopped."""
        pending: dict[Any, Worker] = {w.handle.info.remote(): w for w in self.workers}
        deadline = time.monotonic() + timeout_s
        while pending:
            if should_stop is not None and should_stop():
                return False
            if time.monotonic() > deadline:
                cpus = ray.available_resources().get("CPU", 0)
                raise PoolError(
                    f"only {len(self.workers) - len(pending)} of {len(self.workers)} workers "
                    f"started within {timeout_s:.0f} s ({cpus:g} CPUs free in the cluster; each "
                    "worker takes 1): use fewer workers or add nodes"
                )
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in done:
                worker = pending.pop(ref)
                try:
                    info: WorkerInfo = ray.get(ref)
                except (RayActorError, RayTaskError) as exc:
                    raise PoolError(f"worker {worker.index} failed to start: {exc}") from exc
                worker.pid, worker.host = info.pid, info.host
                self.infos[worker.index] = info
        return True

    # ---- work --------------------------------------------------------------------------

    @property
    def alive(self) -> list[Worker]:
        return [w for w in self.workers if not w.retired]

    def submit(self, worker: Worker, plan: Plan, fidelity: Fidelity) -> ray.ObjectRef:
        ref: ray.ObjectRef = worker.handle.evaluate.remote(plan, fidelity)
        return ref

    def submit_sharing(
        self, worker: Worker, plan: Plan, shared: dict[str, ray.ObjectRef]
    ) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """A coarse evaluation handed ``shared`` (other actors' unit solutions for pairs of
        ``plan`` this one lacks): (its reply, the bundle of pair solutions it solves)."""
        method: Any = worker.handle.evaluate_sharing
        reply, bundle = method.options(num_returns=2).remote(plan, shared or None)
        return reply, bundle

    def fields(self, worker: Worker, plan: Plan) -> ray.ObjectRef:
        ref: ray.ObjectRef = worker.handle.evaluate_with_fields.remote(plan, "fine")
        return ref

    def died(self, worker: Worker) -> None:
        """Count a death and replace the actor, or retire the slot after ``max_restarts``."""
        worker.deaths += 1
        worker.pid = None
        with contextlib.suppress(Exception):  # it may only be unreachable: make sure
            ray.kill(worker.handle, no_restart=True)
        if worker.deaths > self.max_restarts:
            worker.retired = True
        else:
            worker.handle, worker.created_at = self._create(), time.monotonic()
        if not self.alive:
            raise PoolError(
                f"all {len(self.workers)} workers died ({self.max_restarts} restarts each); "
                "see the Ray logs (/tmp/ray/session_latest/logs) for the cause, often memory"
            )

    def kill(self, worker: Worker) -> None:
        """Kill the slot's actor and leave the slot as it is (``retire`` or
        ``replace_silent`` decides what follows)."""
        with contextlib.suppress(Exception):  # already gone
            ray.kill(worker.handle, no_restart=True)

    def replace_silent(self, worker: Worker) -> bool:
        """Kill a worker that stopped answering after it had answered (a hung process) and
        start another in its slot, counted against ``max_restarts`` like a death; past those,
        retire the slot. True when replaced. Never raises for the last slot: a search whose
        workers all fell silent ends with what it has (the driver's "workers" stop)."""
        self.kill(worker)
        if worker.deaths >= self.max_restarts:
            worker.retired = True
            return False
        worker.deaths += 1
        worker.pid = None
        worker.handle, worker.created_at = self._create(), time.monotonic()
        return True

    def retire(self, worker: Worker) -> None:
        """Stop a worker that does not answer, with no replacement (past a time limit there is
        no use for one; without one, a replacement the cluster could not place is what may
        have gone silent). Not counted as a death."""
        self.kill(worker)
        worker.retired = True

    def shutdown(self) -> None:
        """Kill every actor now (running tasks included: Ray cannot interrupt a running
        actor task, and Numba code would not notice anyway)."""
        for w in self.workers:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(w.handle, no_restart=True)
            w.retired = True
