"""The job store: every plan job's request, state, progress, result and events, in a database.

SQLite (a file under the front's data folder) by default, PostgreSQL (or any SQLAlchemy URL)
by configuration. Requests, progress, results and events are stored as their protobuf bytes,
so what a client reads back after a restart is exactly what it was sent before; the columns
that are filtered or ordered on (state, anatomy, client, creation time) are plain columns.

Each job's events are numbered 1, 2, 3, ... in the same transaction that updates the job row,
so a watcher that replays the history and then follows live events never misses or repeats
one (it resumes after the last sequence it saw).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from services.front.errors import FrontError, invalid, not_found
from services.front.explorations import DEFAULT_EXPLORATION
from services.front.gen.ectplan.v1 import job_pb2, planning_service_pb2

TERMINAL_STATES = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
UNFINISHED_STATES = (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
STATE_NAMES = {
    job_pb2.JOB_STATE_QUEUED: "queued",
    job_pb2.JOB_STATE_RUNNING: "running",
    job_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    job_pb2.JOB_STATE_FAILED: "failed",
    job_pb2.JOB_STATE_CANCELLED: "cancelled",
}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "ectplan_jobs"
    __table_args__ = (UniqueConstraint("client_id", "idempotency_key", name="uq_job_idempotency"),)

    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    anatomy_id: Mapped[str] = mapped_column(String(64), index=True)
    protocol: Mapped[str] = mapped_column(String(128))
    state: Mapped[int] = mapped_column(Integer, index=True)
    request: Mapped[bytes] = mapped_column(LargeBinary)
    progress: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)


class EventRow(Base):
    __tablename__ = "ectplan_job_events"

    job_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("ectplan_jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


@dataclass
class JobRecord:
    """A snapshot of one job row, decoded."""

    job_id: str
    client_id: str
    idempotency_key: str | None
    anatomy_id: str
    protocol: str
    state: int
    request: planning_service_pb2.SubmitPlanJobRequest
    progress: job_pb2.JobProgress
    result: job_pb2.PlanResult | None
    error: str
    attempts: int
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    last_sequence: int

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def of(cls, row: JobRow) -> JobRecord:
        request = planning_service_pb2.SubmitPlanJobRequest()
        request.ParseFromString(row.request)
        progress = job_pb2.JobProgress()
        progress.ParseFromString(row.progress or b"")
        result = None
        if row.result:
            result = job_pb2.PlanResult()
            result.ParseFromString(row.result)
        return cls(
            job_id=row.job_id,
            client_id=row.client_id,
            idempotency_key=row.idempotency_key,
            anatomy_id=row.anatomy_id,
            protocol=row.protocol,
            state=row.state,
            request=request,
            progress=progress,
            result=result,
            error=row.error or "",
            attempts=row.attempts,
            cancel_requested=row.cancel_requested,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            last_sequence=row.last_sequence,
        )

    def to_proto(self) -> job_pb2.PlanJob:
        r = self.request
        job = job_pb2.PlanJob(
            job_id=self.job_id,
            state=self.state,  # type: ignore[arg-type]
            anatomy_id=self.anatomy_id,
            protocol=self.protocol,
            budget=r.budget,
            options=r.options,
            seed=r.seed,
            idempotency_key=self.idempotency_key or "",
            progress=self.progress,
            error=self.error,
            last_event_sequence=self.last_sequence,
            client_id=self.client_id,
        )
        if self.result is not None:
            job.result.CopyFrom(self.result)
        for name, value in (
            ("create_time", self.created_at),
            ("start_time", self.started_at),
            ("end_time", self.finished_at),
        ):
            if value is not None:
                getattr(job, name).CopyFrom(timestamp(value))
        return job


@dataclass
class JobUpdate:
    """What an event changes on the job row (None: unchanged)."""

    state: int | None = None
    progress: job_pb2.JobProgress | None = None
    result: job_pb2.PlanResult | None = None
    error: str | None = None
    started: bool = False
    finished: bool = False
    attempt: bool = False


def request_fingerprint(request: planning_service_pb2.SubmitPlanJobRequest) -> str:
    """What makes two submissions the same (deterministic serialization of the request, with
    the default exploration spelled out, left empty or options absent counted as one: they
    run the same search)."""
    canonical = planning_service_pb2.SubmitPlanJobRequest()
    canonical.CopyFrom(request)
    if canonical.options.exploration == DEFAULT_EXPLORATION:
        canonical.options.exploration = ""
    if not canonical.options.ListFields():
        canonical.ClearField("options")
    return hashlib.sha256(canonical.SerializeToString(deterministic=True)).hexdigest()


def _page_token(created_at: float, job_id: str, filters: str) -> str:
    raw = json.dumps({"c": created_at, "j": job_id, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _read_page_token(token: str, filters: str) -> tuple[float, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        created, job_id, f = float(data["c"]), str(data["j"]), str(data["f"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise invalid(
            "page_token",
            "not a page token this service issued; start again with an empty page_token",
        ) from None
    if f != filters:
        raise invalid(
            "page_token",
            "this page token belongs to a listing with other filters; "
            "repeat the same states and anatomy_id, or start again",
        )
    return created, job_id


class JobStore:
    """Thread-safe access to the jobs database (one engine, short transactions)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has no row locks: serialise writers in this process.
        self._write_lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    # ---- creating and reading ---------------------------------------------------------------

    def create(
        self,
        *,
        client_id: str,
        request: planning_service_pb2.SubmitPlanJobRequest,
        protocol: str,
        first_event: job_pb2.JobEvent,
    ) -> tuple[JobRecord, bool]:
        """Insert a queued job with its first event; (record, deduplicated)."""
        key = request.idempotency_key or None
        fingerprint = request_fingerprint(request)
        if key is not None:
            existing = self._by_key(client_id, key)
            if existing is not None:
                return self._same_request(existing, fingerprint), True
        now = time.time()
        job_id = "job-" + uuid.uuid4().hex
        progress = job_pb2.JobProgress(phase="queued", trials_budget=request.budget.trials)
        row = JobRow(
            job_id=job_id,
            client_id=client_id,
            idempotency_key=key,
            request_fingerprint=fingerprint,
            anatomy_id=request.anatomy_id,
            protocol=protocol,
            state=job_pb2.JOB_STATE_QUEUED,
            request=request.SerializeToString(),
            progress=progress.SerializeToString(),
            result=None,
            error="",
            attempts=0,
            cancel_requested=False,
            created_at=now,
            last_sequence=1,
        )
        first = job_pb2.JobEvent()
        first.CopyFrom(first_event)
        first.job_id, first.sequence = job_id, 1
        first.time.CopyFrom(timestamp(now))
        first.progress.CopyFrom(progress)
        try:
            with self._write_lock, self._session.begin() as s:
                s.add(row)
                s.flush()
                s.add(
                    EventRow(
                        job_id=job_id,
                        sequence=1,
                        kind=first.kind,
                        time=now,
                        payload=first.SerializeToString(),
                    )
                )
        except IntegrityError:
            # Another submission with the same key won the race.
            assert key is not None
            existing = self._by_key(client_id, key)
            if existing is None:
                raise
            return self._same_request(existing, fingerprint), True
        return JobRecord.of(row), False

    def has_key(self, client_id: str, key: str) -> bool:
        return self._by_key(client_id, key) is not None

    def _by_key(self, client_id: str, key: str) -> JobRow | None:
        with self._session() as s:
            return s.scalars(
                select(JobRow).where(JobRow.client_id == client_id, JobRow.idempotency_key == key)
            ).first()

    @staticmethod
    def _same_request(row: JobRow, fingerprint: str) -> JobRecord:
        if row.request_fingerprint != fingerprint:
            raise FrontError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"idempotency key {row.idempotency_key!r} was used for job {row.job_id} with a "
                "different request; use a new key for a new job",
            )
        return JobRecord.of(row)

    def get(self, job_id: str) -> JobRecord:
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise not_found("job", job_id, "list jobs with ListPlanJobs")
            return JobRecord.of(row)

    def list_jobs(
        self,
        *,
        client_id: str | None,
        page_size: int,
        page_token: str,
        states: Sequence[int],
        anatomy_id: str,
    ) -> tuple[list[JobRecord], str]:
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise invalid(
                "page_size", f"must lie in 1..{MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})"
            )
        size = page_size or DEFAULT_PAGE_SIZE
        for i, st in enumerate(states):
            if st not in STATE_NAMES:
                raise invalid(f"states[{i}]", f"unknown job state {st}")
        filters = json.dumps([client_id, sorted(states), anatomy_id])
        query = select(JobRow)
        if client_id is not None:
            query = query.where(JobRow.client_id == client_id)
        if states:
            query = query.where(JobRow.state.in_(list(states)))
        if anatomy_id:
            query = query.where(JobRow.anatomy_id == anatomy_id)
        if page_token:
            created, last_id = _read_page_token(page_token, filters)
            query = query.where(
                or_(
                    JobRow.created_at < created,
                    and_(JobRow.created_at == created, JobRow.job_id < last_id),
                )
            )
        query = query.order_by(JobRow.created_at.desc(), JobRow.job_id.desc()).limit(size + 1)
        with self._session() as s:
            rows = list(s.scalars(query))
        more = len(rows) > size
        rows = rows[:size]
        token = _page_token(rows[-1].created_at, rows[-1].job_id, filters) if more else ""
        return [JobRecord.of(r) for r in rows], token

    def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (what a restarted front must pick up)."""
        with self._session() as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.state.in_(UNFINISHED_STATES))
                .order_by(JobRow.created_at, JobRow.job_id)
            )
            return [JobRecord.of(r) for r in rows]

    def counts_by_state(self) -> dict[int, int]:
        with self._session() as s:
            rows = s.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all()
        return {int(state): int(n) for state, n in rows}

    def events_after(self, job_id: str, sequence: int) -> list[job_pb2.JobEvent]:
        with self._session() as s:
            rows = s.scalars(
                select(EventRow)
                .where(EventRow.job_id == job_id, EventRow.sequence > sequence)
                .order_by(EventRow.sequence)
            )
            out = []
            for row in rows:
                ev = job_pb2.JobEvent()
                ev.ParseFromString(row.payload)
                out.append(ev)
            return out

    # ---- changing ---------------------------------------------------------------------------

    def append_event(
        self, job_id: str, event_msg: job_pb2.JobEvent, update: JobUpdate
    ) -> tuple[job_pb2.JobEvent, JobRecord]:
        """Number ``event_msg``, apply ``update`` to the job row, both in one transaction."""
        now = time.time()
        with self._write_lock, self._session.begin() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise not_found("job", job_id, "list jobs with ListPlanJobs")
            if update.state is not None:
                row.state = update.state
            if update.progress is not None:
                row.progress = update.progress.SerializeToString()
            if update.result is not None:
                row.result = update.result.SerializeToString()
            if update.error is not None:
                row.error = update.error
            if update.started:
                row.started_at = row.started_at or now
            if update.finished:
                row.finished_at = now
            if update.attempt:
                row.attempts += 1
            row.last_sequence += 1
            out = job_pb2.JobEvent()
            out.CopyFrom(event_msg)
            out.job_id = job_id
            out.sequence = row.last_sequence
            out.state = row.state  # type: ignore[assignment]
            out.time.CopyFrom(timestamp(now))
            if not out.HasField("progress"):
                progress = job_pb2.JobProgress()
                progress.ParseFromString(row.progress or b"")
                out.progress.CopyFrom(progress)
            s.add(
                EventRow(
                    job_id=job_id,
                    sequence=out.sequence,
                    kind=out.kind,
                    time=now,
                    payload=out.SerializeToString(),
                )
            )
            s.flush()
            record = JobRecord.of(row)
        return out, record

    def set_cancel_requested(self, job_id: str) -> JobRecord:
        with self._write_lock, self._session.begin() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise not_found("job", job_id, "list jobs with ListPlanJobs")
            row.cancel_requested = True
            s.flush()
            return JobRecord.of(row)


def normalize_url(url: str) -> str:
    """A bare postgresql:// URL names SQLAlchemy 2.1's default driver, psycopg 3; ectplan pins
    psycopg2 (services/planner/storage.py does the same), so send it to whichever is there."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        driver = "psycopg" if importlib.util.find_spec("psycopg") is not None else "psycopg2"
        return f"postgresql+{driver}://{rest}"
    return url


def _make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers (watchers, listings) never wait for the writer (the runner).
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)
