"""The job store on SQLite and PostgreSQL: idempotency, event numbering, paging, restarts."""

from __future__ import annotations

import uuid

import grpc
import pytest

from services.front.client import FrontClient
from services.front.errors import FrontError
from services.front.gen.ectplan.v1 import job_pb2, plan_pb2, planning_service_pb2
from services.front.jobs import JobStore, JobUpdate, request_fingerprint
from services.front.server import BackgroundServer
from tests.services.front.conftest import GRID_MM, make_config


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    s = JobStore(url)
    yield s
    s.close()


def submit_request(
    anatomy: str, key: str = "", trials: int = 5
) -> planning_service_pb2.SubmitPlanJobRequest:
    return planning_service_pb2.SubmitPlanJobRequest(
        anatomy_id=anatomy,
        protocol=plan_pb2.ProtocolRef(name="ect"),
        budget=job_pb2.Budget(trials=trials),
        idempotency_key=key,
    )


def queued() -> job_pb2.JobEvent:
    return job_pb2.JobEvent(kind=job_pb2.JOB_EVENT_KIND_QUEUED)


def close_jobs(store: JobStore, job_ids: list[str]) -> None:
    """End these made-up jobs: a front started later on this database would run them."""
    for job_id in job_ids:
        if not store.get(job_id).terminal:
            store.append_event(
                job_id,
                job_pb2.JobEvent(kind=job_pb2.JOB_EVENT_KIND_CANCELLED),
                JobUpdate(state=job_pb2.JOB_STATE_CANCELLED, finished=True),
            )


def test_default_exploration_spelled_out_is_the_same_submission(store: JobStore):
    # A retry that names the default exploration runs the same search as one that left it
    # empty: it must find the first job, not be refused as a different request.
    client = "c-" + uuid.uuid4().hex[:8]
    implicit = submit_request("b" * 64, "k-default")
    explicit = submit_request("b" * 64, "k-default")
    explicit.options.exploration = "batches"
    assert request_fingerprint(implicit) == request_fingerprint(explicit)
    assert explicit.options.exploration == "batches"  # the caller's request is left alone
    other = submit_request("b" * 64, "k-default")
    other.options.exploration = "islands"
    assert request_fingerprint(other) != request_fingerprint(implicit)
    first, _ = store.create(
        client_id=client, request=implicit, protocol="ect", first_event=queued()
    )
    again, dedup = store.create(
        client_id=client, request=explicit, protocol="ect", first_event=queued()
    )
    assert dedup and again.job_id == first.job_id
    close_jobs(store, [first.job_id])


def test_jobs_events_and_idempotency(store: JobStore):
    client = "c-" + uuid.uuid4().hex[:8]  # PostgreSQL's database outlives one test
    record, dedup = store.create(
        client_id=client,
        request=submit_request("a" * 64, "k1"),
        protocol="ect",
        first_event=queued(),
    )
    assert not dedup and record.state == job_pb2.JOB_STATE_QUEUED and record.last_sequence == 1
    again, dedup = store.create(
        client_id=client,
        request=submit_request("a" * 64, "k1"),
        protocol="ect",
        first_event=queued(),
    )
    assert dedup and again.job_id == record.job_id
    with pytest.raises(FrontError) as caught:
        store.create(
            client_id=client,
            request=submit_request("a" * 64, "k1", trials=9),
            protocol="ect",
            first_event=queued(),
        )
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    started, _ = store.append_event(
        record.job_id,
        job_pb2.JobEvent(kind=job_pb2.JOB_EVENT_KIND_STARTED),
        JobUpdate(state=job_pb2.JOB_STATE_RUNNING, started=True, attempt=True),
    )
    result = job_pb2.PlanResult(plan_json="{}", trial_number=3)
    done, after = store.append_event(
        record.job_id,
        job_pb2.JobEvent(kind=job_pb2.JOB_EVENT_KIND_SUCCEEDED, best=result),
        JobUpdate(state=job_pb2.JOB_STATE_SUCCEEDED, result=result, finished=True),
    )
    assert (started.sequence, done.sequence) == (2, 3)
    assert started.state == job_pb2.JOB_STATE_RUNNING and done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert after.result is not None and after.result.trial_number == 3 and after.attempts == 1
    assert [e.sequence for e in store.events_after(record.job_id, 1)] == [2, 3]
    assert store.events_after(record.job_id, 1)[1].best.trial_number == 3


def test_paging_is_newest_first_with_filters(store: JobStore):
    client = "c-" + uuid.uuid4().hex[:8]
    anatomy = uuid.uuid4().hex * 2
    ids = [
        store.create(
            client_id=client, request=submit_request(anatomy), protocol="ect", first_event=queued()
        )[0].job_id
        for _ in range(7)
    ]
    seen, token = [], ""
    for _ in range(4):
        page, token = store.list_jobs(
            client_id=client,
            page_size=3,
            page_token=token,
            states=[job_pb2.JOB_STATE_QUEUED],
            anatomy_id=anatomy,
        )
        seen += [r.job_id for r in page]
        if not token:
            break
    assert seen == ids[::-1]
    _, token = store.list_jobs(
        client_id=client, page_size=3, page_token="", states=[], anatomy_id=anatomy
    )
    with pytest.raises(FrontError, match="other filters"):
        store.list_jobs(
            client_id=client,
            page_size=3,
            page_token=token,
            states=[job_pb2.JOB_STATE_FAILED],
            anatomy_id=anatomy,
        )
    assert {r.job_id for r in store.unfinished()} >= set(ids)
    close_jobs(store, ids)
    assert not {r.job_id for r in store.unfinished()} & set(ids)


def test_a_front_on_postgresql_remembers_jobs_across_restarts(postgres_url, tmp_path, phantom):
    # The store is under test here, not the search: the job is cancelled once it is queued or
    # running, with the in-process runner.
    cfg = make_config(tmp_path, database_url=postgres_url, runner="local")
    with BackgroundServer(cfg) as server, FrontClient(server.target) as client:
        anatomy_id = client.upload_anatomy(phantom).anatomy_id
        job = client.submit(anatomy_id, trials=50, grid_spacing_mm=GRID_MM).job
        client.cancel(job.job_id)
        events = list(client.watch(job.job_id, timeout_s=300))
        assert events[-1].kind == job_pb2.JOB_EVENT_KIND_CANCELLED
    # A new front on the same database lists it and replays its events.
    with (
        BackgroundServer(
            make_config(tmp_path, database_url=postgres_url, runner="local")
        ) as server,
        FrontClient(server.target) as client,
    ):
        found = client.get(job.job_id)
        assert found.state == job_pb2.JOB_STATE_CANCELLED and found.end_time.seconds > 0
        listed = client.list(anatomy_id=anatomy_id, states=[job_pb2.JOB_STATE_CANCELLED])
        assert job.job_id in [j.job_id for j in listed.jobs]
        replayed = list(client.watch(job.job_id, timeout_s=30))
        assert [e.SerializeToString() for e in replayed] == [e.SerializeToString() for e in events]
