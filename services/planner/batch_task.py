"""One case of a batch: load, prepare, search, evaluate with fields, and hand back the outputs.

``plan_case`` is the body of the batch's Ray task (one CPU) and runs just as well in-process.
It returns every output file as bytes together with the case's index row, so the driver alone
writes the library and worker nodes need no shared file system. It never raises for a bad
case: an unreadable anatomy, an unreachable target or a failed search comes back as a failed
outcome whose reason names the stage and the error.

The case's Optuna study lives in the given database, else in the library's per-case journal
file (``studies/<case>.journal.log``; a library of an earlier version keeps its SQLite
``studies/<case>.db``). A node that cannot see that file (no shared file system) works on a
private copy of it (the driver sends the earlier contents, if any) and hands the file back.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import optuna

from optimizer import __version__
from optimizer.evaluate.protocol import Protocol
from services.planner.batch_case import run_case_steps
from services.planner.library import now_utc
from services.planner.library_index import FAILED, PLANNED
from services.planner.storage import LEGACY_SUFFIX, open_storage, storage_url_for

# prepare_case's default margin around the target (mm), as ``ectplan plan`` uses.
DEFAULT_MARGIN_MM = 30.0
# Exploration never runs on a grid finer than this (mm), as ``ectplan plan``.
COARSE_MIN_MM = 2.0


@dataclass(frozen=True)
class BatchSettings:
    """How every case of a batch is planned."""

    trials: int | None = 200
    time_limit_s: float | None = None
    seed: int | None = 0
    grid_mm: float = 1.0
    nonlinear: bool = True
    margin_mm: float = DEFAULT_MARGIN_MM
    target_scope: str = "auto"  # optimizer/anatomy/target_scope.py

    @property
    def coarse_mm(self) -> float:
        return max(COARSE_MIN_MM, self.grid_mm)


@dataclass(frozen=True)
class CaseJob:
    case_id: str
    anatomy_path: str
    protocol: Protocol
    protocol_sha256: str
    settings: BatchSettings
    study_name: str
    storage_url: str | None  # a database for every case (e.g. PostgreSQL); None: study_file
    study_file: str | None = None  # the library's study file for this case (journal or .db)
    study_bytes: bytes | None = None  # its earlier contents, for a node that cannot see it


@dataclass(frozen=True)
class CaseOutcome:
    case_id: str
    row: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    study_bytes: bytes | None = None  # the private study copy, to store in the library

    @property
    def planned(self) -> bool:
        return self.row.get("status") == PLANNED

    @property
    def reason(self) -> str | None:
        reason = self.row.get("reason")
        return None if reason is None else str(reason)


def _where() -> dict[str, Any]:
    node_id = None
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # only a label: the case must not fail over it
        node_id = None
    return {"node_id": node_id, "host": socket.gethostname(), "pid": os.getpid()}


def base_row(job: CaseJob, started_at: str) -> dict[str, Any]:
    """What every row says, planned or failed."""
    p = job.protocol
    return {
        "case_id": job.case_id,
        "protocol": p.name,
        "protocol_title": p.title,
        "modality": p.modality.value,
        "protocol_sha256": job.protocol_sha256,
        "ectplan_version": __version__,
        "run_id": uuid.uuid4().hex,
        "started_at": started_at,
        "study_name": job.study_name,
        "trials_budget": job.settings.trials,
        "time_limit_s": job.settings.time_limit_s,
        "seed": job.settings.seed,
        "grid_mm": job.settings.grid_mm,
        "coarse_mm": job.settings.coarse_mm,
        "nonlinear": job.settings.nonlinear,
    }


def failed_row(job: CaseJob, reason: str, started_at: str, seconds: float,
               where: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        **base_row(job, started_at),
        **(where or {}),
        "status": FAILED,
        "reason": reason,
        "finished_at": now_utc(),
        "seconds": seconds,
    }


@contextmanager
def _study_storage(job: CaseJob, scratch: Path) -> Iterator[tuple[Any, Path | None]]:
    """(Optuna storage, path of the private study copy or None); closes its connections."""
    from optuna.storages import RDBStorage

    private: Path | None = None
    if job.storage_url is not None:
        storage = open_storage(job.storage_url)
    else:
        assert job.study_file is not None
        path = Path(job.study_file)
        if not path.parent.is_dir():
            private = scratch / path.name  # the same kind of file: journal, or legacy SQLite
            if job.study_bytes:
                private.write_bytes(job.study_bytes)
            path = private
        storage = open_storage(storage_url_for(path))
    try:
        yield storage, private
    finally:
        if isinstance(storage, RDBStorage):
            storage.engine.dispose()


def _read_private_study(path: Path | None) -> bytes | None:
    if path is None or not path.is_file():
        return None
    if path.suffix == LEGACY_SUFFIX:
        # Fold SQLite's write-ahead log into the file so the bytes are the whole study (a
        # journal is one append-only file already).
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
    return path.read_bytes()


def plan_case(job: CaseJob) -> CaseOutcome:
    """Plan one case (see the module docstring); never raises for a bad case."""
    started = time.monotonic()
    started_at = now_utc()
    stage = "setting up"
    where = _where()
    private: Path | None = None
    with tempfile.TemporaryDirectory(prefix="ectplan-batch-") as tmp:
        scratch = Path(tmp)
        threads = numba.get_num_threads()
        try:
            # One CPU per task: Numba's default (every core) would oversubscribe the node.
            numba.set_num_threads(1)
            optuna.logging.set_verbosity(optuna.logging.WARNING)

            def on_stage(name: str) -> None:
                nonlocal stage
                stage = name

            with _study_storage(job, scratch) as (storage, private):
                row, files = run_case_steps(job, storage, scratch / "out", on_stage)
            row = {**base_row(job, started_at), **where, **row, "status": PLANNED,
                   "finished_at": now_utc(), "seconds": time.monotonic() - started}  # fmt: skip
            return CaseOutcome(job.case_id, row, files, _read_private_study(private))
        except Exception as exc:  # any failure of this case is recorded, never propagated
            reason = f"{stage}: {type(exc).__name__}: {exc}"
            row = failed_row(job, reason, started_at, time.monotonic() - started, where)
            try:
                study = _read_private_study(private)
            except sqlite3.Error:
                study = None
            return CaseOutcome(job.case_id, row, {}, study)
        finally:
            numba.set_num_threads(threads)
