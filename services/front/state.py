"""What every servicer shares: the stores, the queue, auth, the evaluator cache, drain state."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from services.front.auth import TokenAuth
from services.front.errors import exhausted, unavailable
from services.front.evaluations import EvaluatorCache
from services.front.jobs import JobStore
from services.front.metrics import FrontMetrics
from services.front.runner import EventHub, JobQueue
from services.front.uploads import AnatomyStore

T = TypeVar("T")


@dataclass
class FrontState:
    anatomies: AnatomyStore
    jobs: JobStore
    queue: JobQueue
    hub: EventHub
    auth: TokenAuth
    evaluators: EvaluatorCache
    metrics: FrontMetrics
    evaluate_executor: ThreadPoolExecutor
    max_concurrent_uploads: int = 4
    draining: bool = False
    _uploads: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client_id(self, context: grpc.aio.ServicerContext) -> str:
        # The auth interceptor already refused calls without a valid token.
        return self.auth.client_for(context.invocation_metadata()) or "anonymous"

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise unavailable("the server is shutting down; retry on another replica or later")

    def begin_upload(self) -> None:
        with self._lock:
            if self._uploads >= self.max_concurrent_uploads:
                raise exhausted(
                    "uploads",
                    f"{self._uploads} uploads are in progress (limit "
                    f"{self.max_concurrent_uploads}); retry shortly",
                )
            self._uploads += 1

    def end_upload(self) -> None:
        with self._lock:
            self._uploads -= 1

    async def run_evaluation(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.evaluate_executor, fn, *args)
