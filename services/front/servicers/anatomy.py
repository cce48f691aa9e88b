"""AnatomyService: streamed, content-addressed uploads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from services.front.errors import invalid
from services.front.gen.ectplan.v1 import anatomy_service_pb2, anatomy_service_pb2_grpc
from services.front.logging import log_event
from services.front.servicers.common import unary
from services.front.state import FrontState
from services.front.uploads import UploadSession


class AnatomyServicer(anatomy_service_pb2_grpc.AnatomyServiceServicer):
    def __init__(self, state: FrontState) -> None:
        self.state = state

    @unary
    async def UploadAnatomy(
        self,
        request_iterator: AsyncIterator[anatomy_service_pb2.UploadAnatomyRequest],
        context: grpc.aio.ServicerContext,
    ) -> anatomy_service_pb2.UploadAnatomyResponse:
        state = self.state
        state.refuse_if_draining()
        state.begin_upload()
        session: UploadSession | None = None
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "header":
                    if session is not None:
                        raise invalid("header", "the header came twice; send it once, first")
                    session = await asyncio.to_thread(state.anatomies.begin, message.header)
                    if await asyncio.to_thread(state.anatomies.has, session.anatomy_id):
                        # Content-addressed: the same header (bytes hash included) is stored.
                        summary = await asyncio.to_thread(
                            state.anatomies.summary, session.anatomy_id
                        )
                        log_event(
                            "anatomy upload skipped (stored)",
                            anatomy_id=session.anatomy_id,
                            reused=True,
                        )
                        return anatomy_service_pb2.UploadAnatomyResponse(
                            anatomy=summary, already_stored=True
                        )
                elif part == "chunk":
                    if session is None:
                        raise invalid("header", "send the header before any chunk")
                    await asyncio.to_thread(
                        session.add_chunk, message.chunk.sequence, message.chunk.data
                    )
                else:
                    raise invalid("part", "each message holds a header or a chunk")
            if session is None:
                raise invalid("header", "the upload was empty; send a header, then chunks")
            summary, stored_before = await asyncio.to_thread(session.finish)
            log_event(
                "anatomy uploaded",
                anatomy_id=summary.anatomy_id,
                bytes=summary.content_length,
                reused=stored_before,
            )
            return anatomy_service_pb2.UploadAnatomyResponse(
                anatomy=summary, already_stored=stored_before
            )
        finally:
            if session is not None:
                session.abort()
            state.end_upload()

    @unary
    async def GetAnatomy(
        self, request: anatomy_service_pb2.GetAnatomyRequest, context: grpc.aio.ServicerContext
    ) -> anatomy_service_pb2.GetAnatomyResponse:
        summary = await asyncio.to_thread(self.state.anatomies.summary, request.anatomy_id)
        return anatomy_service_pb2.GetAnatomyResponse(anatomy=summary)
