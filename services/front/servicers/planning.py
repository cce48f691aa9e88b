"""PlanningService: submit, get, watch, cancel, list plan jobs, and stream their artifacts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from services.front.artifacts import artifact_chunks, list_artifacts
from services.front.errors import failed_precondition, not_found, unavailable
from services.front.gen.ectplan.v1 import job_pb2, planning_service_pb2, planning_service_pb2_grpc
from services.front.jobs import JobRecord
from services.front.logging import log_event
from services.front.runner import TERMINAL_EVENT_KINDS
from services.front.servicers.common import streaming, unary
from services.front.state import FrontState
from services.front.validation import validate_submit


class PlanningServicer(planning_service_pb2_grpc.PlanningServiceServicer):
    def __init__(self, state: FrontState) -> None:
        self.state = state

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> JobRecord:
        """The caller's job, or NOT_FOUND (other clients' jobs are not revealed)."""
        if not job_id:
            raise not_found("job", job_id, "give the job_id SubmitPlanJob returned")
        record = await asyncio.to_thread(self.state.jobs.get, job_id)
        if record.client_id != self.state.client_id(context):
            raise not_found("job", job_id, "list your jobs with ListPlanJobs")
        return record

    @unary
    async def SubmitPlanJob(
        self, request: planning_service_pb2.SubmitPlanJobRequest, context: grpc.aio.ServicerContext
    ) -> planning_service_pb2.SubmitPlanJobResponse:
        state = self.state
        state.refuse_if_draining()
        client = state.client_id(context)
        valid = await asyncio.to_thread(validate_submit, request)
        if request.options.warm_start_library:
            await asyncio.to_thread(state.queue.library_path, request.options.warm_start_library)
        if not await asyncio.to_thread(state.anatomies.has, request.anatomy_id):
            raise not_found("anatomy", request.anatomy_id, "upload it first with UploadAnatomy")
        key = request.idempotency_key
        retry = bool(key) and await asyncio.to_thread(state.jobs.has_key, client, key)
        if not retry:  # a retry of an accepted submission succeeds even when the queue is full
            state.queue.check_capacity(client)
        stored = planning_service_pb2.SubmitPlanJobRequest()
        stored.CopyFrom(request)
        if not stored.HasField("seed"):
            stored.seed = 0
        first = job_pb2.JobEvent(kind=job_pb2.JOB_EVENT_KIND_QUEUED, state=job_pb2.JOB_STATE_QUEUED)
        record, deduplicated = await asyncio.to_thread(
            lambda: state.jobs.create(
                client_id=client, request=stored, protocol=valid.protocol.name, first_event=first
            )
        )
        if not deduplicated:
            state.queue.enqueue(record)
            log_event(
                "job submitted",
                job_id=record.job_id,
                anatomy_id=record.anatomy_id,
                client_id=client,
                queue_length=state.queue.queue_length(),
            )
        return planning_service_pb2.SubmitPlanJobResponse(
            job=record.to_proto(), deduplicated=deduplicated
        )

    @unary
    async def GetPlanJob(
        self, request: planning_service_pb2.GetPlanJobRequest, context: grpc.aio.ServicerContext
    ) -> planning_service_pb2.GetPlanJobResponse:
        record = await self._job(request.job_id, context)
        return planning_service_pb2.GetPlanJobResponse(job=record.to_proto())

    @streaming
    async def WatchPlanJob(
        self, request: planning_service_pb2.WatchPlanJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[planning_service_pb2.WatchPlanJobResponse]:
        state = self.state
        record = await self._job(request.job_id, context)
        job_id = record.job_id
        # Subscribe before reading the history: nothing falls between the two.
        live = state.hub.subscribe(job_id)
        try:
            last = request.after_sequence
            history = await asyncio.to_thread(state.jobs.events_after, job_id, last)
            for event in history:
                yield planning_service_pb2.WatchPlanJobResponse(event=event)
                last = event.sequence
                if event.kind in TERMINAL_EVENT_KINDS:
                    return
            if record.terminal and not history:
                return  # resumed after the terminal event: nothing more will come
            while True:
                incoming = await live.get()
                if incoming is None:
                    raise unavailable(
                        "the server is shutting down; watch again with "
                        f"after_sequence={last} on another replica or later"
                    )
                if incoming.sequence <= last:
                    continue
                batch = [incoming]
                if incoming.sequence > last + 1:  # events from two threads crossed: fill the gap
                    batch = await asyncio.to_thread(state.jobs.events_after, job_id, last)
                for e in batch:
                    yield planning_service_pb2.WatchPlanJobResponse(event=e)
                    last = e.sequence
                    if e.kind in TERMINAL_EVENT_KINDS:
                        return
        finally:
            state.hub.unsubscribe(job_id, live)

    @unary
    async def CancelPlanJob(
        self, request: planning_service_pb2.CancelPlanJobRequest, context: grpc.aio.ServicerContext
    ) -> planning_service_pb2.CancelPlanJobResponse:
        record = await self._job(request.job_id, context)
        record = await asyncio.to_thread(self.state.queue.cancel, record.job_id)
        return planning_service_pb2.CancelPlanJobResponse(job=record.to_proto())

    @unary
    async def ListPlanJobs(
        self, request: planning_service_pb2.ListPlanJobsRequest, context: grpc.aio.ServicerContext
    ) -> planning_service_pb2.ListPlanJobsResponse:
        client = self.state.client_id(context)
        records, token = await asyncio.to_thread(
            lambda: self.state.jobs.list_jobs(
                client_id=client,
                page_size=request.page_size,
                page_token=request.page_token,
                states=list(request.states),
                anatomy_id=request.anatomy_id,
            )
        )
        return planning_service_pb2.ListPlanJobsResponse(
            jobs=[r.to_proto() for r in records], next_page_token=token
        )

    @streaming
    async def GetPlanArtifacts(
        self,
        request: planning_service_pb2.GetPlanArtifactsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[planning_service_pb2.GetPlanArtifactsResponse]:
        record = await self._job(request.job_id, context)
        if record.state != job_pb2.JOB_STATE_SUCCEEDED:
            state_name = job_pb2.JobState.Name(record.state)  # type: ignore[arg-type]
            raise failed_precondition(
                "JOB_NOT_SUCCEEDED",
                f"job {record.job_id} is {state_name.removeprefix('JOB_STATE_').lower()}; "
                "artifacts exist once it succeeded",
            )
        job_dir = self.state.queue.job_dir(record.job_id)
        available = await asyncio.to_thread(list_artifacts, job_dir)
        chunks = artifact_chunks(job_dir, available, list(request.names))
        sentinel = object()
        while True:
            chunk = await asyncio.to_thread(next, chunks, sentinel)
            if chunk is sentinel:
                return
            yield chunk  # type: ignore[misc]
