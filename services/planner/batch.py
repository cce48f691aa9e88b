"""Plan every case of a folder into a plan library, one Ray task per case (``ectplan batch``).

Each subfolder of the input folder is a case (its name is the case id; anything
``optimizer.anatomy.readers.load_anatomy`` reads). Cases run in parallel as Ray tasks of one
CPU each (``services.planner.batch_task.plan_case``), at most ``concurrency`` at a time; each
task hands its outputs back as bytes and this driver writes them into the library, the index
after every case. A failed case (unreadable anatomy, unreachable target, a crashed task) is
recorded with its reason and never stops the others.

Resumable: a rerun skips planned cases and retries failed ones, and an interrupted case resumes
its Optuna study (one study per case, named from the library, case, protocol and seed; in the
library's ``studies/`` journal files unless a database URL is given).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizer.evaluate.protocol import Protocol
from services.planner.batch_task import BatchSettings, CaseJob, CaseOutcome, failed_row, plan_case
from services.planner.cluster import ClusterInfo, connect, probe, requested_address, shutdown
from services.planner.library import Library, now_utc
from services.planner.library_create import open_or_create_library
from services.planner.storage import mask_url, open_storage, study_name_for

# How often the driver looks at its tasks and the cancel flag (s).
POLL_S = 0.5


class BatchError(ValueError):
    """Bad batch input (the folder, the settings); the message says what to change."""


@dataclass(frozen=True)
class BatchEvent:
    """What the driver reports: "queued" (once: what will run), "connected" (once, when there
    is work: the cluster, in ``message``), "started" and "finished" (per case; finished
    carries the outcome), "cancelled" (per case not finished)."""

    kind: str
    case_id: str | None = None
    outcome: CaseOutcome | None = None
    todo: int = 0
    skipped: int = 0
    message: str = ""


@dataclass
class BatchSummary:
    library: Library
    cases: int
    skipped: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)
    case_seconds: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    concurrency: int = 0
    cluster: ClusterInfo | None = None
    cancelled: bool = False


def discover_cases(input_dir: str | Path) -> list[tuple[str, Path]]:
    """(case id, folder) for every subfolder (hidden ones excepted), sorted by id."""
    folder = Path(input_dir)
    if not folder.exists():
        raise BatchError(f"--input {folder} does not exist; give a folder with one subfolder "
                         "per case")  # fmt: skip
    if not folder.is_dir():
        raise BatchError(f"--input {folder} is a file; give a folder with one subfolder per case")
    cases = [(p.name, p.resolve()) for p in sorted(folder.iterdir())
             if p.is_dir() and not p.name.startswith(".")]  # fmt: skip
    if not cases:
        raise BatchError(
            f"--input {folder} has no case subfolders: put each case (a folder of NIfTI/NRRD "
            "masks, a DICOM folder, ...) in its own subfolder"
        )
    return cases


def protocol_sha256(protocol: Protocol) -> str:
    """Identifies a protocol definition (an edited protocol file gives another)."""
    return hashlib.sha256(protocol.model_dump_json().encode()).hexdigest()


def _check_settings(settings: BatchSettings, concurrency: int | None) -> None:
    from optimizer.search.local import check_budget

    check_budget(settings.trials, settings.time_limit_s, 1)
    if not settings.grid_mm > 0:
        raise BatchError(f"--grid-mm must be > 0 (got {settings.grid_mm})")
    if concurrency is not None and concurrency < 1:
        raise BatchError(f"--concurrency must be >= 1 (got {concurrency})")


def _check_storage(url: str) -> None:
    """Open the database once: an unreachable one fails now, and its tables exist before the
    tasks open it concurrently."""
    from optuna.storages import RDBStorage

    storage = open_storage(url)
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()


def _describe(cluster: ClusterInfo, concurrency: int) -> str:
    where = "a local Ray" if cluster.local else f"the Ray cluster at {cluster.address}"
    text = (f"{where}: {cluster.nodes} node(s), {cluster.cpus} CPUs, {concurrency} case(s) at "
            "once")  # fmt: skip
    if cluster.cpus == 0:
        # An autoscaling cluster starts worker nodes for the waiting tasks; any other waits.
        text += "; no CPU yet: the cases wait for worker nodes to join"
    return text


def _default_remote() -> Any:
    import ray

    # No automatic retry: a case that crashes its worker is recorded as failed and retried by
    # the next run, instead of crashing three more workers now.
    return ray.remote(num_cpus=1, max_retries=0)(plan_case)


class _Driver:
    def __init__(self, library: Library, jobs: list[CaseJob], summary: BatchSummary,
                 on_event: Callable[[BatchEvent], None]) -> None:  # fmt: skip
        self.library = library
        self.queue = list(jobs)
        self.summary = summary
        self.on_event = on_event
        self.inflight: dict[Any, tuple[CaseJob, str, float]] = {}

    def record(self, outcome: CaseOutcome) -> None:
        lib = self.library
        if outcome.study_bytes:
            path = lib.study_file(outcome.case_id)
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_bytes(outcome.study_bytes)
            os.replace(temporary, path)
        lib.record(outcome.row, outcome.files if outcome.planned else None)
        s = self.summary
        s.case_seconds[outcome.case_id] = float(outcome.row.get("seconds", 0.0))
        if outcome.planned:
            s.planned.append(outcome.case_id)
        else:
            s.failed[outcome.case_id] = outcome.reason or "no reason given"
        self.on_event(BatchEvent("finished", outcome.case_id, outcome))

    def run(self, remote: Any, concurrency: int, cancel: threading.Event) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        while self.queue or self.inflight:
            if cancel.is_set():
                return
            while self.queue and len(self.inflight) < concurrency:
                job = self.queue.pop(0)
                ref = remote.options(name=f"ectplan-batch {job.case_id}").remote(job)
                self.inflight[ref] = (job, now_utc(), time.monotonic())
                self.on_event(BatchEvent("started", job.case_id))
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=POLL_S)
            for ref in done:
                job, started_at, started = self.inflight.pop(ref)
                try:
                    outcome: CaseOutcome = ray.get(ref)
                except RayTaskError as exc:
                    cause = exc.cause if exc.cause is not None else exc
                    reason = f"the task raised {type(cause).__name__}: {cause}"
                    outcome = CaseOutcome(job.case_id, failed_row(
                        job, reason, started_at, time.monotonic() - started))  # fmt: skip
                except RayError as exc:  # the worker or its node died
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    reason = f"the task crashed ({type(exc).__name__}): {first}"
                    outcome = CaseOutcome(job.case_id, failed_row(
                        job, reason, started_at, time.monotonic() - started))  # fmt: skip
                self.record(outcome)

    def abandon(self) -> None:
        """Cancel the cases in flight (their studies keep what they told; each is reported) and
        drop the queue (counted as not run)."""
        import ray

        for ref, (job, _, _) in list(self.inflight.items()):
            ray.cancel(ref, force=True)
            self.summary.not_run.append(job.case_id)
            self.on_event(BatchEvent("cancelled", job.case_id))
        self.inflight.clear()
        self.summary.not_run += [job.case_id for job in self.queue]
        self.queue.clear()


def run_batch(
    input_dir: str | Path,
    out: str | Path,
    protocol: Protocol,
    *,
    settings: BatchSettings | None = None,
    storage_url: str | None = None,
    ray_address: str | None = None,
    concurrency: int | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    cancel_event: threading.Event | None = None,
    remote_task: Any = None,
) -> BatchSummary:
    """Plan the cases of ``input_dir`` not yet planned in the library ``out`` (see the module
    docstring). ``remote_task``: a Ray remote function standing in for ``plan_case``."""
    from optimizer.tissue.table import load_tissue_table
    from services.planner.library_report import write_library_report

    started = time.monotonic()
    s = settings or BatchSettings()
    _check_settings(s, concurrency)
    cases = discover_cases(input_dir)
    sha = protocol_sha256(protocol)
    if storage_url is not None:
        _check_storage(storage_url)
    address = requested_address(ray_address)
    if address is not None:
        probe(address)  # an unreachable cluster fails before the library is touched
    library = open_or_create_library(
        out, protocol=protocol.name, protocol_sha256=sha, tissue_table=load_tissue_table().label
    )
    summary = BatchSummary(library, len(cases))
    emit = on_event or (lambda event: None)
    cancel = cancel_event or threading.Event()
    with library.locked():
        library.meta["last_batch"] = {
            "started": now_utc(), "trials": s.trials, "time_limit_s": s.time_limit_s,
            "seed": s.seed, "grid_mm": s.grid_mm, "coarse_mm": s.coarse_mm,
            "nonlinear": s.nonlinear,
            "storage": "library studies/" if storage_url is None
            else mask_url(storage_url),
        }  # fmt: skip
        (library.path / "studies").mkdir(exist_ok=True)
        prefix = f"batch-{library.meta['library_id'][:12]}"
        jobs = []
        scope = "" if s.target_scope == "auto" else f"-{s.target_scope}"
        for case_id, path in cases:
            if library.is_planned(case_id):
                summary.skipped.append(case_id)
                continue
            study = library.study_file(case_id)
            jobs.append(CaseJob(
                case_id, str(path), protocol, sha, s,
                # An explicit scope gets its own studies: "auto" and "gland" search different
                # spaces on a case with a lesion.
                study_name_for(f"{prefix}-{case_id}{scope}", protocol.name, s.seed),
                storage_url,
                None if storage_url else str(study.resolve()),
                study.read_bytes() if storage_url is None and study.is_file() else None,
            ))  # fmt: skip
        emit(BatchEvent("queued", todo=len(jobs), skipped=len(summary.skipped)))
        driver = _Driver(library, jobs, summary, emit)
        try:
            if jobs:
                c = summary.cluster = connect(ray_address)
                summary.concurrency = concurrency or max(1, c.cpus)
                emit(BatchEvent("connected", message=_describe(c, summary.concurrency)))
                driver.run(remote_task or _default_remote(), summary.concurrency, cancel)
                summary.cancelled = cancel.is_set()
        except KeyboardInterrupt:
            summary.cancelled = True
        finally:
            if driver.inflight or driver.queue:
                driver.abandon()
            library.meta["last_batch"]["finished"] = now_utc()
            library.save()
            write_library_report(library)
            if summary.cluster is not None and summary.cluster.started_here:
                shutdown()
    summary.elapsed_s = time.monotonic() - started
    return summary
