"""The grpc.aio front: services, health, reflection, auth, metrics, graceful shutdown.

``serve(config)`` runs until SIGTERM/SIGINT, then drains: health turns NOT_SERVING (load
balancers stop sending), new uploads, submissions and evaluations get UNAVAILABLE, watchers
are told to reconnect, in-flight calls get ``grace_s`` to finish, and running searches stop at
their next trial and go back to QUEUED with their trials stored, so the next front resumes them.

``BackgroundServer`` runs one in a thread with its own event loop (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.front.auth import AuthInterceptor, TlsConfig, TokenAuth
from services.front.evaluations import EvaluatorCache
from services.front.gen.ectplan.v1 import (
    anatomy_service_pb2,
    anatomy_service_pb2_grpc,
    evaluation_service_pb2,
    evaluation_service_pb2_grpc,
    planning_service_pb2,
    planning_service_pb2_grpc,
)
from services.front.jobs import JobStore
from services.front.logging import log_event
from services.front.metrics import FrontMetrics, LatencyInterceptor
from services.front.runner import EventHub, JobQueue, QueueLimits
from services.front.searches import JobRunner, default_runner
from services.front.servicers.anatomy import AnatomyServicer
from services.front.servicers.evaluation import EvaluationServicer
from services.front.servicers.planning import PlanningServicer
from services.front.state import FrontState
from services.front.uploads import AnatomyStore, UploadLimits

SERVICE_NAMES = (
    anatomy_service_pb2.DESCRIPTOR.services_by_name["AnatomyService"].full_name,
    planning_service_pb2.DESCRIPTOR.services_by_name["PlanningService"].full_name,
    evaluation_service_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,
)
# Chunks are 1-4 MiB: leave headroom over gRPC's 4 MiB default for the envelope.
MAX_MESSAGE_BYTES = 5 * 1024 * 1024


@dataclass
class FrontConfig:
    data_dir: Path
    address: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (see FrontServer.port)
    database_url: str | None = None  # None: sqlite under data_dir
    runner: str = "auto"  # "auto", "ray" or "local"
    ray_address: str | None = None
    queue: QueueLimits = field(default_factory=QueueLimits)
    uploads: UploadLimits = field(default_factory=UploadLimits)
    auth: TokenAuth = field(default_factory=TokenAuth)
    tls: TlsConfig | None = None
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    grace_s: float = 10.0
    evaluators: int = 4
    evaluate_threads: int = 2
    max_concurrent_uploads: int = 4
    # Plan libraries (ectplan batch) that requests may name for warm starts; None: none.
    libraries_dir: Path | None = None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'jobs.db'}"


class FrontServer:
    def __init__(self, config: FrontConfig, runner: JobRunner | None = None) -> None:
        self.config = config
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(config.db_url)
        self.anatomies = AnatomyStore(data / "anatomies", limits=config.uploads)
        self.metrics = FrontMetrics(self.jobs.counts_by_state)
        self.hub = EventHub()
        self.runner = runner or default_runner(config.runner, config.ray_address)
        self.queue = JobQueue(
            self.jobs, self.anatomies, self.runner, self.hub, self.metrics, data, config.queue,
            libraries_dir=config.libraries_dir,
        )  # fmt: skip
        self.state = FrontState(
            anatomies=self.anatomies,
            jobs=self.jobs,
            queue=self.queue,
            hub=self.hub,
            auth=config.auth,
            evaluators=EvaluatorCache(self.anatomies, capacity=config.evaluators),
            metrics=self.metrics,
            evaluate_executor=ThreadPoolExecutor(
                config.evaluate_threads, thread_name_prefix="ectplan-evaluate"
            ),
            max_concurrent_uploads=config.max_concurrent_uploads,
        )
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int = 0
        self._metrics_http: Any = None
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        cfg = self.config
        self.hub.bind(asyncio.get_running_loop())
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        server = grpc.aio.server(
            interceptors=[LatencyInterceptor(self.metrics), AuthInterceptor(cfg.auth)],
            options=options,
        )
        anatomy_service_pb2_grpc.add_AnatomyServiceServicer_to_server(
            AnatomyServicer(self.state), server
        )
        planning_service_pb2_grpc.add_PlanningServiceServicer_to_server(
            PlanningServicer(self.state), server
        )
        evaluation_service_pb2_grpc.add_EvaluationServiceServicer_to_server(
            EvaluationServicer(self.state), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        target = f"{cfg.address}:{cfg.port}"
        if cfg.tls is not None:
            self.port = server.add_secure_port(target, cfg.tls.server_credentials())
        else:
            self.port = server.add_insecure_port(target)
        await asyncio.to_thread(self.queue.start)
        await server.start()
        self.server = server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port is not None:
            self._metrics_http = self.metrics.serve_http(cfg.metrics_port, cfg.metrics_address)
        log_event(
            "front serving",
            address=cfg.address,
            port=self.port,
            tls=cfg.tls is not None,
            mtls=bool(cfg.tls and cfg.tls.mutual),
            auth=cfg.auth.enabled,
            runner=self.runner.name,
            workers=cfg.queue.workers,
            database=cfg.db_url.split(":", 1)[0],
        )
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop (see the module docstring); safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace_s is None else grace_s
        log_event("front draining", seconds=grace)
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        self.hub.close_all()
        # Searches stop at their next trial; their jobs go back to QUEUED.
        await asyncio.to_thread(self.queue.stop, max(grace, 1.0) + 60.0)
        if self.server is not None:
            await self.server.stop(grace)
        if self._metrics_http is not None:
            http_server, thread = self._metrics_http
            http_server.shutdown()
            thread.join(5)
        self.state.evaluate_executor.shutdown(wait=False, cancel_futures=True)
        self.jobs.close()
        log_event("front stopped")


async def serve(config: FrontConfig, runner: JobRunner | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully."""
    front = FrontServer(config, runner)
    await front.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await front.stop()


class BackgroundServer:
    """A front on its own event loop in a thread: ``with BackgroundServer(cfg) as s: s.port``."""

    def __init__(self, config: FrontConfig, runner: JobRunner | None = None) -> None:
        self.config = config
        self._runner = runner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ectplan-front", daemon=True
        )
        self.front: FrontServer | None = None
        self.port = 0

    def start(self) -> BackgroundServer:
        self._thread.start()

        async def make() -> int:
            self.front = FrontServer(self.config, self._runner)
            return await self.front.start()

        self.port = asyncio.run_coroutine_threadsafe(make(), self._loop).result(120)
        return self

    @property
    def target(self) -> str:
        return f"{self.config.address}:{self.port}"

    def stop(self, grace_s: float | None = None) -> None:
        if self.front is not None:
            asyncio.run_coroutine_threadsafe(self.front.stop(grace_s), self._loop).result(300)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0.5)
