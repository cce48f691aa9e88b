"""Prometheus metrics of the front: jobs by state, trial throughput, queue length, RPC latency.

Each server owns its own registry (several fronts can live in one test process); ``serve``
exposes it on ``--metrics-port`` with prometheus_client's HTTP server. Jobs by state are read
from the job store at scrape time, so they are right after a restart too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.front.jobs import STATE_NAMES

# RPC latency buckets (s): unary calls take milliseconds, EvaluatePlan seconds; streams are
# timed to their end (a Watch lasts as long as the job).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class _JobStates(Collector):
    def __init__(self, counts: Callable[[], dict[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("ectplan_front_jobs", "Plan jobs by state", labels=["state"])
        try:
            counts = self._counts()
        except Exception:  # a scrape must not fail because the database blinked
            counts = {}
        for state, name in STATE_NAMES.items():
            family.add_metric([name], counts.get(state, 0))
        yield family


class FrontMetrics:
    def __init__(self, job_counts: Callable[[], dict[int, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_JobStates(job_counts))
        self.queue_length = Gauge(
            "ectplan_front_queue_length", "Jobs waiting for a worker", registry=self.registry
        )
        self.running = Gauge(
            "ectplan_front_running_jobs", "Jobs being searched now", registry=self.registry
        )
        self.trials = Counter(
            "ectplan_front_trials", "Search trials completed by jobs", registry=self.registry
        )
        self.trial_rate = Gauge(
            "ectplan_front_trials_per_second",
            "Trial throughput summed over running jobs",
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "ectplan_front_jobs_finished",
            "Jobs that ended, by state",
            ["state"],
            registry=self.registry,
        )
        self.rpc_latency = Histogram(
            "ectplan_front_rpc_seconds",
            "RPC latency by method and code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.evaluator_cache = Gauge(
            "ectplan_front_evaluators_cached",
            "PlanEvaluators kept for EvaluatePlan",
            registry=self.registry,
        )

    def serve_http(self, port: int, address: str = "127.0.0.1") -> Any:
        """Start the /metrics endpoint; returns (server, thread) to shut down."""
        return start_http_server(port, addr=address, registry=self.registry)


class LatencyInterceptor(grpc.aio.ServerInterceptor):
    """Times every RPC (streams to their end) into ``FrontMetrics.rpc_latency``."""

    def __init__(self, metrics: FrontMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = str(details.method).rsplit("/", 1)[-1]
        return _wrap(handler, method, self._metrics)


def _code_of(context: Any) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return "OK"
    return str(getattr(code, "name", code))


def _wrap(handler: grpc.RpcMethodHandler, method: str, metrics: FrontMetrics) -> Any:
    observe = metrics.rpc_latency

    def timed_unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await fn(request, context)
            except BaseException:
                code = _code_of(context)
                code = "UNKNOWN" if code == "OK" else code
                raise
            finally:
                if code == "OK":
                    code = _code_of(context)
                observe.labels(method, code).observe(time.perf_counter() - started)

        return call

    def timed_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                async for item in fn(request, context):
                    yield item
            except BaseException:
                code = _code_of(context)
                code = "CANCELLED" if code == "OK" else code
                raise
            finally:
                if code == "OK":
                    code = _code_of(context)
                observe.labels(method, code).observe(time.perf_counter() - started)

        return call

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            timed_unary(handler.unary_unary),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            timed_unary(handler.stream_unary),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            timed_stream(handler.unary_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            timed_stream(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )
    return handler
