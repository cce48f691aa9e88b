"""A small synchronous Python client of the front (what ``ectplan submit/watch/...`` use).

with FrontClient("localhost:50051", token=...) as front:
    anatomy = front.upload_anatomy(load_anatomy("case/"))
    job = front.submit(anatomy.anatomy_id, protocol="ect", trials=200)
    for event in front.watch(job.job_id):
        ...
    front.download_artifacts(job.job_id, "out/")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from optimizer.anatomy.structures import Anatomy
from optimizer.evaluate.plan import Plan
from services.front.convert import plan_to_proto
from services.front.gen.ectplan.v1 import (
    anatomy_pb2,
    anatomy_service_pb2,
    anatomy_service_pb2_grpc,
    evaluation_service_pb2,
    evaluation_service_pb2_grpc,
    job_pb2,
    plan_pb2,
    planning_service_pb2,
    planning_service_pb2_grpc,
)
from services.front.uploads import encode_anatomy, header_anatomy_id

DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024


def protocol_ref(protocol: str | Path) -> plan_pb2.ProtocolRef:
    """A shipped protocol's name, or a local .toml file sent inline."""
    text = str(protocol)
    if text.endswith(".toml") or "/" in text:
        return plan_pb2.ProtocolRef(toml=Path(protocol).read_text())
    return plan_pb2.ProtocolRef(name=text)


def upload_messages(
    header: anatomy_pb2.AnatomyHeader, data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    yield anatomy_service_pb2.UploadAnatomyRequest(header=header)
    view = memoryview(data)
    for sequence, start in enumerate(range(0, len(data), chunk_bytes)):
        yield anatomy_service_pb2.UploadAnatomyRequest(
            chunk=anatomy_pb2.AnatomyChunk(
                sequence=sequence, data=bytes(view[start : start + chunk_bytes])
            )
        )


class FrontClient:
    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
        timeout_s: float = 60.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if root_certificates is not None or client_certificate is not None:
            creds = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
            self.channel = grpc.secure_channel(target, creds, options=list(options))
        else:
            self.channel = grpc.insecure_channel(target, options=list(options))
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.timeout_s = timeout_s
        self.anatomy = anatomy_service_pb2_grpc.AnatomyServiceStub(self.channel)
        self.planning = planning_service_pb2_grpc.PlanningServiceStub(self.channel)
        self.evaluation = evaluation_service_pb2_grpc.EvaluationServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> FrontClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout_s: float | None = None) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": timeout_s or self.timeout_s}

    # ---- anatomies ----------------------------------------------------------------------

    def upload_anatomy(
        self,
        anatomy: Anatomy,
        *,
        encoding: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        skip_if_stored: bool = True,
    ) -> anatomy_pb2.AnatomySummary:
        header, data = encode_anatomy(anatomy, encoding)
        return self.upload_raw(header, data, chunk_bytes=chunk_bytes, skip_if_stored=skip_if_stored)

    def upload_raw(
        self,
        header: anatomy_pb2.AnatomyHeader,
        data: bytes,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        skip_if_stored: bool = True,
    ) -> anatomy_pb2.AnatomySummary:
        if skip_if_stored:
            try:
                return self.get_anatomy(header_anatomy_id(header))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        response = self.anatomy.UploadAnatomy(
            upload_messages(header, data, chunk_bytes), **self._kw(max(self.timeout_s, 600.0))
        )
        return response.anatomy

    def get_anatomy(self, anatomy_id: str) -> anatomy_pb2.AnatomySummary:
        request = anatomy_service_pb2.GetAnatomyRequest(anatomy_id=anatomy_id)
        return self.anatomy.GetAnatomy(request, **self._kw()).anatomy

    # ---- jobs ---------------------------------------------------------------------------

    def submit(
        self,
        anatomy_id: str,
        *,
        protocol: str | Path = "ect",
        trials: int = 0,
        time_limit_s: float = 0.0,
        seed: int | None = None,
        workers: int = 0,
        multi_objective: bool = False,
        grid_spacing_mm: float = 0.0,
        sampler: str = "",
        idempotency_key: str = "",
        seed_plans: Sequence[Plan] = (),
        target_scope: str = "",
        warm_start_library: str = "",
        exploration: str = "",
    ) -> planning_service_pb2.SubmitPlanJobResponse:
        request = planning_service_pb2.SubmitPlanJobRequest(
            anatomy_id=anatomy_id,
            protocol=protocol_ref(protocol),
            budget=job_pb2.Budget(trials=trials, time_limit_s=time_limit_s),
            options=job_pb2.SearchOptions(
                workers=workers,
                multi_objective=multi_objective,
                grid_spacing_mm=grid_spacing_mm,
                sampler=sampler,
                target_scope=target_scope,
                warm_start_library=warm_start_library,
                exploration=exploration,
            ),
            idempotency_key=idempotency_key,
            seed_plans=[plan_to_proto(p) for p in seed_plans],
        )
        if seed is not None:
            request.seed = seed
        return self.planning.SubmitPlanJob(request, **self._kw())

    def get(self, job_id: str) -> job_pb2.PlanJob:
        request = planning_service_pb2.GetPlanJobRequest(job_id=job_id)
        return self.planning.GetPlanJob(request, **self._kw()).job

    def watch(
        self, job_id: str, after_sequence: int = 0, timeout_s: float | None = None
    ) -> Iterator[job_pb2.JobEvent]:
        """Events until the job ends (the stream closes after its terminal event)."""
        request = planning_service_pb2.WatchPlanJobRequest(
            job_id=job_id, after_sequence=after_sequence
        )
        for response in self.planning.WatchPlanJob(
            request, metadata=self.metadata, timeout=timeout_s
        ):
            yield response.event

    def cancel(self, job_id: str) -> job_pb2.PlanJob:
        request = planning_service_pb2.CancelPlanJobRequest(job_id=job_id)
        return self.planning.CancelPlanJob(request, **self._kw()).job

    def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        states: Sequence[int] = (),
        anatomy_id: str = "",
    ) -> planning_service_pb2.ListPlanJobsResponse:
        request = planning_service_pb2.ListPlanJobsRequest(
            page_size=page_size,
            page_token=page_token,
            states=list(states),  # type: ignore[arg-type]
            anatomy_id=anatomy_id,
        )
        return self.planning.ListPlanJobs(request, **self._kw())

    def artifacts(self, job_id: str, names: Sequence[str] = ()) -> dict[str, bytes]:
        """Every artifact (or the named ones) in memory, reassembled from the chunks."""
        request = planning_service_pb2.GetPlanArtifactsRequest(job_id=job_id, names=list(names))
        files: dict[str, bytearray] = {}
        for chunk in self.planning.GetPlanArtifacts(request, **self._kw(600.0)):
            buf = files.setdefault(chunk.name, bytearray())
            if chunk.offset != len(buf):
                raise RuntimeError(
                    f"artifact {chunk.name}: chunk at {chunk.offset}, expected {len(buf)}"
                )
            buf.extend(chunk.data)
        return {name: bytes(data) for name, data in files.items()}

    def download_artifacts(
        self, job_id: str, out_dir: str | Path, names: Sequence[str] = ()
    ) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, data in self.artifacts(job_id, names).items():
            path = out / Path(name).name  # never outside out_dir
            path.write_bytes(data)
            paths[name] = path
        return paths

    # ---- evaluation ---------------------------------------------------------------------

    def evaluate(
        self,
        anatomy_id: str,
        plan: Plan,
        *,
        protocol: str | Path | None = None,
        grid_spacing_mm: float = 0.0,
        linear: bool = False,
        timeout_s: float | None = None,
        target_scope: str = "",
    ) -> evaluation_service_pb2.EvaluatePlanResponse:
        request = evaluation_service_pb2.EvaluatePlanRequest(
            anatomy_id=anatomy_id,
            plan=plan_to_proto(plan),
            grid_spacing_mm=grid_spacing_mm,
            linear=linear,
            target_scope=target_scope,
        )
        if protocol is not None:
            request.protocol.CopyFrom(protocol_ref(protocol))
        return self.evaluation.EvaluatePlan(request, **self._kw(timeout_s or 300.0))
