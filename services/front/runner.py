"""The job queue: a bounded queue, per-client limits, worker threads running searches.

- Submissions beyond ``max_queued`` waiting jobs (or a client's ``per_client_queued``) are
  refused with RESOURCE_EXHAUSTED before anything is stored.
- A worker takes the oldest queued job whose client runs fewer than ``per_client_running``
  jobs, so one client cannot hold every worker.
- Every state change is an event in the job store (numbered, in the same transaction as the
  job row) and is then published to live watchers through the ``EventHub``.
- Restart: ``start`` re-queues jobs the store lists as queued or running (a running one was
  interrupted by a crash or a shutdown; it gets a REQUEUED event). Its search resumes from the
  job's Optuna study (``jobs/<id>/study.journal.log``: completed trials are kept there), with
  the budget that is left.
- Shutdown (``stop``): running searches are asked to stop at their next trial and go back to
  QUEUED (not CANCELLED), so the next front resumes them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from optimizer.search.fidelity import DEFAULT_TOP_K
from optimizer.search.local import SearchProgress, SearchResult
from services.front.artifacts import write_job_artifacts
from services.front.convert import evaluation_to_proto, plan_from_proto, plan_to_proto
from services.front.errors import FrontError, exhausted, failed_precondition, invalid
from services.front.explorations import DEFAULT_EXPLORATION
from services.front.gen.ectplan.v1 import job_pb2
from services.front.jobs import JobRecord, JobStore, JobUpdate
from services.front.logging import log_event
from services.front.metrics import FrontMetrics
from services.front.searches import (
    DEFAULT_FINE_SPACING_MM,
    Improvement,
    JobRunner,
    RunnerEvent,
    SearchJob,
    completed_trials,
)
from services.front.uploads import AnatomyStore
from services.front.validation import resolve_protocol
from services.planner.library import META_FILE as LIBRARY_META_FILE
from services.planner.storage import default_storage_url

TERMINAL_EVENT_KINDS = frozenset({
    job_pb2.JOB_EVENT_KIND_SUCCEEDED, job_pb2.JOB_EVENT_KIND_FAILED,
    job_pb2.JOB_EVENT_KIND_CANCELLED,
})  # fmt: skip


@dataclass(frozen=True)
class QueueLimits:
    max_queued: int = 100
    per_client_queued: int = 20
    per_client_running: int = 1
    workers: int = 1
    # Progress events are stored at most this often (improvements always are).
    progress_interval_s: float = 0.5
    # Best explored plans confirmed at clinical quality per job (the search library's default).
    refine_top_k: int = DEFAULT_TOP_K


class EventHub:
    """Delivers live job events to watchers' asyncio queues (publish from any thread)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: dict[str, set[asyncio.Queue[job_pb2.JobEvent | None]]] = {}
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, job_id: str) -> asyncio.Queue[job_pb2.JobEvent | None]:
        q: asyncio.Queue[job_pb2.JobEvent | None] = asyncio.Queue()
        with self._lock:
            self._subscribers.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue[job_pb2.JobEvent | None]) -> None:
        with self._lock:
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(q)
                if not subs:
                    del self._subscribers[job_id]

    def publish(self, event: job_pb2.JobEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            queues = list(self._subscribers.get(event.job_id, ()))
        for q in queues:
            try:
                loop.call_soon_threadsafe(q.put_nowait, event)
            except RuntimeError:  # the loop closed meanwhile
                return

    def close_all(self) -> None:
        """Wake every watcher with the end-of-stream marker (the server drains)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            queues = [q for subs in self._subscribers.values() for q in subs]
        for q in queues:
            loop.call_soon_threadsafe(q.put_nowait, None)


@dataclass
class _Running:
    job_id: str
    client_id: str
    cancel_event: threading.Event = field(default_factory=threading.Event)
    reason: str = ""  # "cancel" (the user) or "shutdown" (the server)
    trials_before: int = 0
    elapsed_before: float = 0.0
    last_progress_store: float = 0.0
    last_trials: int = 0
    progress: job_pb2.JobProgress = field(default_factory=job_pb2.JobProgress)


class JobQueue:
    def __init__(
        self,
        store: JobStore,
        anatomies: AnatomyStore,
        runner: JobRunner,
        hub: EventHub,
        metrics: FrontMetrics,
        data_dir: Path,
        limits: QueueLimits | None = None,
        *,
        libraries_dir: Path | None = None,
    ) -> None:
        self.libraries_dir = libraries_dir
        self.store = store
        self.anatomies = anatomies
        self.runner = runner
        self.hub = hub
        self.metrics = metrics
        self.data_dir = Path(data_dir)
        self.limits = limits or QueueLimits()
        self._cond = threading.Condition()
        self._pending: list[tuple[str, str]] = []  # (job id, client id), oldest first
        self._running: dict[str, _Running] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def library_path(self, name: str) -> Path:
        """The library a request names, under the configured folder; FrontError if none."""
        if self.libraries_dir is None:
            raise invalid(
                "options.warm_start_library",
                "this server has no plan libraries (start it with --libraries-dir)",
            )
        path = Path(self.libraries_dir) / name
        if not (path / LIBRARY_META_FILE).is_file():
            known = sorted(
                p.name
                for p in Path(self.libraries_dir).glob("*")
                if (p / LIBRARY_META_FILE).is_file()
            )
            raise invalid(
                "options.warm_start_library",
                f"no plan library {name!r} on this server "
                f"(libraries: {', '.join(known) or 'none'})",
            )
        return path

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> int:
        """Re-queue unfinished jobs from the store, start the workers; returns jobs re-queued."""
        requeued = 0
        for record in self.store.unfinished():
            if record.state == job_pb2.JOB_STATE_RUNNING:
                self._event(
                    record.job_id,
                    job_pb2.JOB_EVENT_KIND_REQUEUED,
                    JobUpdate(state=job_pb2.JOB_STATE_QUEUED),
                    message="the front restarted while this job ran; it resumes from "
                    "its stored trials",
                )
            with self._cond:
                self._pending.append((record.job_id, record.client_id))
            requeued += 1
        self._update_gauges()
        for i in range(self.limits.workers):
            t = threading.Thread(target=self._work, name=f"ectplan-job-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if requeued:
            log_event("jobs re-queued after start", count=requeued)
        return requeued

    def stop(self, timeout_s: float = 30.0) -> None:
        """Interrupt running searches (they go back to QUEUED) and stop the workers."""
        with self._cond:
            self._stopping = True
            for running in self._running.values():
                running.reason = running.reason or "shutdown"
                running.cancel_event.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    # ---- requests ---------------------------------------------------------------------------

    def check_capacity(self, client_id: str) -> None:
        with self._cond:
            queued = len(self._pending)
            mine = sum(1 for _, c in self._pending if c == client_id)
        if queued >= self.limits.max_queued:
            raise exhausted("queue", f"the job queue is full ({queued} jobs waiting); retry later")
        if mine >= self.limits.per_client_queued:
            raise exhausted(
                "client",
                f"you have {mine} jobs waiting (limit "
                f"{self.limits.per_client_queued}); wait for some to start",
            )

    def enqueue(self, record: JobRecord) -> None:
        with self._cond:
            self._pending.append((record.job_id, record.client_id))
            self._cond.notify_all()
        self._update_gauges()

    def cancel(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record.terminal:
            raise failed_precondition(
                "JOB_ENDED", f"job {job_id} already ended ({_state_name(record.state)})"
            )
        self.store.set_cancel_requested(job_id)
        with self._cond:
            running = self._running.get(job_id)
            if running is not None:
                running.reason = "cancel"
                running.cancel_event.set()
                queued = False
            else:
                before = len(self._pending)
                self._pending = [p for p in self._pending if p[0] != job_id]
                queued = len(self._pending) < before
        if running is not None:
            return self.store.get(job_id)
        if queued or record.state == job_pb2.JOB_STATE_QUEUED:
            _, record = self._event(
                job_id,
                job_pb2.JOB_EVENT_KIND_CANCELLED,
                JobUpdate(state=job_pb2.JOB_STATE_CANCELLED, finished=True),
                message="cancelled before it started",
            )
            self.metrics.jobs_finished.labels("cancelled").inc()
            self._update_gauges()
        return record

    # ---- workers ----------------------------------------------------------------------------

    def _next_runnable(self) -> tuple[str, str] | None:
        busy: dict[str, int] = {}
        for r in self._running.values():
            busy[r.client_id] = busy.get(r.client_id, 0) + 1
        for i, (_, client) in enumerate(self._pending):
            if busy.get(client, 0) < self.limits.per_client_running:
                return self._pending.pop(i)
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                picked = None
                while not self._stopping and (picked := self._next_runnable()) is None:
                    self._cond.wait(timeout=1.0)
                if self._stopping or picked is None:
                    return
                running = _Running(*picked)
                self._running[running.job_id] = running
            self._update_gauges()
            try:
                self._execute(running)
            except Exception:
                log_event(
                    "job worker error", level=logging.ERROR, exc_info=True, job_id=running.job_id
                )
            finally:
                with self._cond:
                    self._running.pop(running.job_id, None)
                    self._cond.notify_all()
                self._update_gauges()

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def _execute(self, running: _Running) -> None:
        job_id = running.job_id
        record = self.store.get(job_id)
        if record.terminal:
            return
        if record.cancel_requested:
            self._finish_cancelled(job_id, None)
            return
        request = record.request
        job_dir = self.job_dir(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        # jobs/<id>/study.journal.log (a job started by an earlier version keeps its study.db)
        storage_url = default_storage_url(job_dir)
        running.trials_before = completed_trials(storage_url, job_id)
        running.elapsed_before = record.progress.elapsed_s
        attempt = record.attempts + 1
        running.progress = job_pb2.JobProgress(
            phase="explore",
            trials_done=running.trials_before,
            trials_budget=request.budget.trials,
            elapsed_s=running.elapsed_before,
            attempt=attempt,
        )
        self._event(
            job_id,
            job_pb2.JOB_EVENT_KIND_STARTED,
            JobUpdate(
                state=job_pb2.JOB_STATE_RUNNING,
                started=True,
                attempt=True,
                progress=running.progress,
            ),
        )
        log_event(
            "job started",
            job_id=job_id,
            attempt=attempt,
            runner=self.runner.name,
            anatomy_id=record.anatomy_id,
            # The in-process runner has one loop: no exploration order to log.
            exploration=(record.request.options.exploration or DEFAULT_EXPLORATION)
            if self.runner.name == "ray"
            else None,
        )
        try:
            search_job = self._search_job(record, running, storage_url, job_dir)
            outcome = self.runner.run(
                search_job, lambda e: self._on_runner_event(running, e), running.cancel_event
            )
        except Exception as exc:
            # A search stopped before its first evaluated plan raises (SearchCancelledError).
            if running.reason == "shutdown":
                self._requeue(job_id, "the front shut down while this job started")
            elif running.reason == "cancel":
                self._finish_cancelled(job_id, None)
            else:
                self._fail(job_id, exc)
            return
        result = self._result_proto(outcome.result, outcome.case_fine.modelled_structures)
        if running.reason == "shutdown":
            self._requeue(
                job_id, "the front shut down; the job resumes from its stored trials", result
            )
            return
        if running.reason == "cancel":
            self._finish_cancelled(job_id, result)
            return
        running.progress.phase = "artifacts"
        self._event(job_id, job_pb2.JOB_EVENT_KIND_PROGRESS, JobUpdate(progress=running.progress))
        try:
            protocol = search_job.protocol
            extra = {
                "job": {
                    "trials_run": outcome.result.trials_run,
                    "stopped_by": outcome.result.stopped_by,
                    "runner": self.runner.name,
                }
            }
            names = write_job_artifacts(
                job_dir, outcome.case_fine, outcome.result.plan, protocol, outcome.evaluated, extra,
                search_notes=outcome.result.notes,
            )  # fmt: skip
            result.artifacts.extend(names)
        except Exception as exc:
            log_event("artifacts failed", level=logging.ERROR, exc_info=True, job_id=job_id)
            result.notes.append(f"artifacts could not be written: {type(exc).__name__}: {exc}")
        running.progress.phase = "done"
        self._event(
            job_id,
            job_pb2.JOB_EVENT_KIND_SUCCEEDED,
            JobUpdate(
                state=job_pb2.JOB_STATE_SUCCEEDED,
                result=result,
                finished=True,
                progress=running.progress,
            ),
            best=result,
        )
        self.metrics.jobs_finished.labels("succeeded").inc()
        log_event(
            "job succeeded",
            job_id=job_id,
            trials=outcome.result.trials_run,
            stopped_by=outcome.result.stopped_by,
        )

    def _search_job(
        self, record: JobRecord, running: _Running, storage_url: str, job_dir: Path
    ) -> SearchJob:
        request = record.request
        budget = request.budget
        trials = None
        if budget.trials > 0:
            trials = max(1, budget.trials - running.trials_before)
        time_limit = None
        if budget.time_limit_s > 0:
            time_limit = max(1.0, budget.time_limit_s - running.elapsed_before)
        return SearchJob(
            job_id=record.job_id,
            anatomy=self.anatomies.load(record.anatomy_id),
            protocol=resolve_protocol(request.protocol),
            trials=trials,
            time_limit_s=time_limit,
            seed=request.seed,
            workers=request.options.workers,
            multi_objective=request.options.multi_objective,
            sampler=request.options.sampler or None,
            grid_spacing_mm=request.options.grid_spacing_mm or DEFAULT_FINE_SPACING_MM,
            seed_plans=tuple(plan_from_proto(p) for p in request.seed_plans),
            storage_url=storage_url,
            study_name=record.job_id,
            work_dir=job_dir,
            refine_top_k=self.limits.refine_top_k,
            target_scope=request.options.target_scope or "auto",
            warm_start_library=(
                self.library_path(request.options.warm_start_library)
                if request.options.warm_start_library
                else None
            ),
            exploration=request.options.exploration or DEFAULT_EXPLORATION,
        )

    # ---- events -----------------------------------------------------------------------------

    def _event(
        self,
        job_id: str,
        kind: int,
        update: JobUpdate,
        *,
        message: str = "",
        best: job_pb2.PlanResult | None = None,
    ) -> tuple[job_pb2.JobEvent, JobRecord]:
        msg = job_pb2.JobEvent(kind=kind, message=message)  # type: ignore[arg-type]
        if update.progress is not None:
            msg.progress.CopyFrom(update.progress)
        if best is not None:
            msg.best.CopyFrom(best)
        stored, record = self.store.append_event(job_id, msg, update)
        self.hub.publish(stored)
        return stored, record

    def _on_runner_event(self, running: _Running, event: RunnerEvent) -> None:
        p = running.progress
        if isinstance(event, Improvement):
            best = job_pb2.PlanResult(trial_number=event.trial_number)  # the study's numbering
            if event.plan is not None:
                best.plan.CopyFrom(plan_to_proto(event.plan))
                best.plan_json = event.plan.to_json()
            if event.evaluation is not None:
                best.evaluation.CopyFrom(
                    evaluation_to_proto(
                        event.evaluation, score=event.score, fidelity="coarse", with_metrics=False
                    )
                )
            p.best_score = event.score
            p.best_passed = event.passed
            p.criteria_met = event.criteria_met
            p.criteria_applicable = event.criteria_applicable
            self._event(
                running.job_id,
                job_pb2.JOB_EVENT_KIND_IMPROVED,
                JobUpdate(progress=p, result=best),
                best=best,
            )
            return
        assert isinstance(event, SearchProgress)
        p.phase = event.phase
        p.trials_done = running.trials_before + event.trials_done
        p.elapsed_s = running.elapsed_before + event.elapsed_s
        p.trials_per_second = event.trials_per_s
        if event.best_score is not None and math.isfinite(event.best_score):
            p.best_score = event.best_score
        p.best_passed = event.best_passed
        p.criteria_met = event.criteria_met
        p.criteria_applicable = event.criteria_applicable
        delta = event.trials_done - running.last_trials
        if delta > 0:
            self.metrics.trials.inc(delta)
            running.last_trials = event.trials_done
        self._update_rate()
        now = time.monotonic()
        phase_change = event.phase != "explore"
        if phase_change or now - running.last_progress_store >= self.limits.progress_interval_s:
            running.last_progress_store = now
            self._event(running.job_id, job_pb2.JOB_EVENT_KIND_PROGRESS, JobUpdate(progress=p))

    def _result_proto(self, result: SearchResult, modelled: list[str]) -> job_pb2.PlanResult:
        # A search stopped before its fine re-evaluation (cancelled, or no fine evaluation
        # could be had) returns its best coarse evaluation.
        fidelity = "fine" if result.refined else "coarse"
        return job_pb2.PlanResult(
            plan=plan_to_proto(result.plan),
            plan_json=result.plan.to_json(),
            evaluation=evaluation_to_proto(
                result.evaluation, score=result.score.total, fidelity=fidelity, modelled=modelled
            ),
            trial_number=result.trial_number,
            stopped_by=result.stopped_by,
            trials_run=result.trials_run,
            notes=list(result.notes),
        )

    def _requeue(self, job_id: str, why: str, result: job_pb2.PlanResult | None = None) -> None:
        self._event(
            job_id,
            job_pb2.JOB_EVENT_KIND_REQUEUED,
            JobUpdate(state=job_pb2.JOB_STATE_QUEUED, result=result),
            message=why,
        )
        log_event("job interrupted, queued again", job_id=job_id)

    def _finish_cancelled(self, job_id: str, result: job_pb2.PlanResult | None) -> None:
        self._event(
            job_id,
            job_pb2.JOB_EVENT_KIND_CANCELLED,
            JobUpdate(state=job_pb2.JOB_STATE_CANCELLED, result=result, finished=True),
            message="cancelled; the best plan found so far is kept" if result else "cancelled",
            best=result,
        )
        self.metrics.jobs_finished.labels("cancelled").inc()
        log_event("job cancelled", job_id=job_id)

    def _fail(self, job_id: str, exc: Exception) -> None:
        # AnatomyError, PlanError, SearchError, ... and the front's own (anatomy gone).
        user_error = isinstance(exc, ValueError | FrontError)
        text = str(exc) if user_error else f"internal error ({type(exc).__name__}); see the logs"
        log_event(
            "job failed",
            level=logging.WARNING if user_error else logging.ERROR,
            exc_info=not user_error,
            job_id=job_id,
            error_type=type(exc).__name__,
        )
        self._event(
            job_id,
            job_pb2.JOB_EVENT_KIND_FAILED,
            JobUpdate(state=job_pb2.JOB_STATE_FAILED, error=text, finished=True),
            message=text,
        )
        self.metrics.jobs_finished.labels("failed").inc()

    # ---- gauges -----------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        with self._cond:
            self.metrics.queue_length.set(len(self._pending))
            self.metrics.running.set(len(self._running))

    def _update_rate(self) -> None:
        with self._cond:
            rate = sum(r.progress.trials_per_second for r in self._running.values())
        self.metrics.trial_rate.set(rate)

    def queue_length(self) -> int:
        with self._cond:
            return len(self._pending)


def _state_name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]
