"""Malformed requests: each gets the right status and field, and nothing else is disturbed."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy, Structure
from services.front.client import FrontClient, upload_messages
from services.front.errors import field_violations
from services.front.gen.ectplan.v1 import (
    anatomy_pb2,
    anatomy_service_pb2,
    evaluation_service_pb2,
    job_pb2,
    plan_pb2,
    planning_service_pb2,
)
from services.front.server import BackgroundServer
from services.front.uploads import encode_anatomy
from tests.services.front.conftest import GRID_MM

S = grpc.StatusCode
UNKNOWN_ID = "0" * 64


def small_anatomy(target: bool = True, empty_target: bool = False, x0_mm: float = 0.0) -> Anatomy:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = x0_mm
    grid = VoxelGrid((12, 10, 8), affine)
    ball = np.zeros(grid.shape, dtype=bool)
    if not empty_target:
        ball[4:8, 3:7, 2:6] = True
    gland = np.zeros(grid.shape, dtype=bool)
    gland[1:11, 7:10, 1:7] = True  # beside the lesion: no overlap, so a uint8 label map
    structures = [Structure.from_name("prostate", gland, role="avoid")[0]]
    if target:
        structures.insert(0, Structure.from_name("lesion", ball)[0])
    return Anatomy(grid, structures, case_id="t")


def encoded() -> tuple[anatomy_pb2.AnatomyHeader, bytes]:
    # Placed elsewhere than the stored small case: an upload whose header matches a stored
    # anatomy is answered "already stored" before any chunk is read (content addressing).
    return encode_anatomy(small_anatomy(x0_mm=50.0))


def with_header(
    edit: Callable[[anatomy_pb2.AnatomyHeader, bytes], bytes | None],
) -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    header, data = encoded()
    changed = edit(header, data)
    return upload_messages(header, data if changed is None else changed, chunk_bytes=256)


def rehash(header: anatomy_pb2.AnatomyHeader, data: bytes) -> bytes:
    header.content_sha256 = hashlib.sha256(data).hexdigest()
    header.content_length = len(data)
    return data


def _nan_affine(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.affine[5] = math.nan


def _short_affine(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    del h.affine[15]


def _singular_affine(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.affine[:] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]


def _shape_mismatch(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.shape[0] = 13


def _truncated(h: anatomy_pb2.AnatomyHeader, d: bytes) -> bytes:
    return d[:-10]


def _corrupted(h: anatomy_pb2.AnatomyHeader, d: bytes) -> bytes:
    return b"\x07" + d[1:]


def _field(name: str, value: object) -> Callable[[anatomy_pb2.AnatomyHeader, bytes], None]:
    def edit(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
        setattr(h.structures[0], name, value)

    return edit


def _duplicate_names(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.structures[1].name = h.structures[0].name


def _stray_label(h: anatomy_pb2.AnatomyHeader, d: bytes) -> bytes:
    return rehash(h, d[:5] + b"\x09" + d[6:])


def _no_encoding(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.encoding = anatomy_pb2.LABEL_ENCODING_UNSPECIFIED


def _bad_sha(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.content_sha256 = "not-a-hash"


def _too_many_structures(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    for i in range(70):
        h.structures.add(name=f"extra_{i}", label=10 + i)


def _oversized_header(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.affine.extend([0.5] * 10_000)  # 80 kB of doubles


def _huge_grid(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    h.shape[:] = [600, 600, 600]


def _no_structures(h: anatomy_pb2.AnatomyHeader, d: bytes) -> None:
    del h.structures[:]


def raw(
    *messages: anatomy_service_pb2.UploadAnatomyRequest,
) -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    return iter(messages)


def out_of_order() -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    header, data = encoded()
    messages = list(upload_messages(header, data, chunk_bytes=200))
    messages[1], messages[2] = messages[2], messages[1]
    return iter(messages)


def header_twice() -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    header, data = encoded()
    messages = list(upload_messages(header, data, chunk_bytes=200))
    return iter([messages[0], *messages])


def chunk_first() -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    return raw(
        anatomy_service_pb2.UploadAnatomyRequest(
            chunk=anatomy_pb2.AnatomyChunk(sequence=0, data=b"x")
        )
    )


def empty_target_upload() -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    return upload_messages(*encode_anatomy(small_anatomy(empty_target=True)))


def no_target_upload() -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    return upload_messages(*encode_anatomy(small_anatomy(target=False)))


def giant_chunk() -> Iterator[anatomy_service_pb2.UploadAnatomyRequest]:
    header, _ = encoded()
    return raw(
        anatomy_service_pb2.UploadAnatomyRequest(header=header),
        anatomy_service_pb2.UploadAnatomyRequest(
            chunk=anatomy_pb2.AnatomyChunk(sequence=0, data=b"\0" * (6 << 20))
        ),
    )


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[FrontClient, str], object]
    code: grpc.StatusCode
    field: str | None = None  # a BadRequest field violation naming it (prefix match)


def upload(
    messages: Callable[[], Iterator[anatomy_service_pb2.UploadAnatomyRequest]],
) -> Callable[[FrontClient, str], object]:
    return lambda c, _: c.anatomy.UploadAnatomy(messages(), timeout=30)


def edited(
    edit: Callable[[anatomy_pb2.AnatomyHeader, bytes], bytes | None],
) -> Callable[[FrontClient, str], object]:
    return upload(lambda: with_header(edit))


def submit(**fields: object) -> Callable[[FrontClient, str], object]:
    def call(c: FrontClient, anatomy_id: str) -> object:
        request = planning_service_pb2.SubmitPlanJobRequest(
            anatomy_id=anatomy_id,
            protocol=plan_pb2.ProtocolRef(name="ect"),
            budget=job_pb2.Budget(trials=2),
            options=job_pb2.SearchOptions(grid_spacing_mm=GRID_MM),
        )
        for key, value in fields.items():
            target, _, attr = key.rpartition("__")
            message = getattr(request, target) if target else request
            if isinstance(value, list):
                getattr(message, attr).extend(value)
            elif hasattr(value, "CopyFrom"):
                getattr(message, attr).CopyFrom(value)
            else:
                setattr(message, attr, value)
        return c.planning.SubmitPlanJob(request, timeout=30)

    return call


def evaluate(**fields: object) -> Callable[[FrontClient, str], object]:
    def call(c: FrontClient, anatomy_id: str) -> object:
        request = evaluation_service_pb2.EvaluatePlanRequest(anatomy_id=anatomy_id, **fields)
        return c.evaluation.EvaluatePlan(request, timeout=60)

    return call


def bad_plan() -> plan_pb2.Plan:
    return plan_pb2.Plan(
        protocol="ect",
        needles=[
            plan_pb2.Needle(tip_mm=plan_pb2.Vector3(), direction=plan_pb2.Vector3(), exposure_mm=15)
        ],
        pairs=[
            plan_pb2.PulsedPair(anode=0, cathode=3, voltage_v=1000, pulses=8, pulse_length_us=100)
        ],
    )


def far_plan() -> plan_pb2.Plan:
    return plan_pb2.Plan(
        protocol="ect",
        needles=[
            plan_pb2.Needle(
                tip_mm=plan_pb2.Vector3(x=900 + i), direction=plan_pb2.Vector3(z=1), exposure_mm=15
            )
            for i in range(2)
        ],
        pairs=[
            plan_pb2.PulsedPair(anode=0, cathode=1, voltage_v=1000, pulses=8, pulse_length_us=100)
        ],
    )


CASES = [
    Case(
        "shape does not match the bytes",
        edited(_shape_mismatch),
        S.INVALID_ARGUMENT,
        "header.content_length",
    ),
    Case("fewer bytes than announced", edited(_truncated), S.INVALID_ARGUMENT, "chunk.data"),
    Case(
        "bytes do not hash to the header's sha256",
        edited(_corrupted),
        S.INVALID_ARGUMENT,
        "header.content_sha256",
    ),
    Case("NaN in the affine", edited(_nan_affine), S.INVALID_ARGUMENT, "header.affine"),
    Case("15 affine numbers", edited(_short_affine), S.INVALID_ARGUMENT, "header.affine"),
    Case("singular affine", edited(_singular_affine), S.INVALID_ARGUMENT, "header.affine"),
    Case(
        "unknown structure role",
        edited(_field("role", "victim")),
        S.INVALID_ARGUMENT,
        "header.structures[0].role",
    ),
    Case(
        "unknown tissue",
        edited(_field("tissue", "kryptonite")),
        S.INVALID_ARGUMENT,
        "header.structures[0].tissue",
    ),
    Case(
        "unknown kind",
        edited(_field("kind", "spleen")),
        S.INVALID_ARGUMENT,
        "header.structures[0].kind",
    ),
    Case(
        "bad structure name",
        edited(_field("name", "../etc")),
        S.INVALID_ARGUMENT,
        "header.structures[0].name",
    ),
    Case(
        "duplicate structure names",
        edited(_duplicate_names),
        S.INVALID_ARGUMENT,
        "header.structures[1].name",
    ),
    Case(
        "label value 0",
        edited(_field("label", 0)),
        S.INVALID_ARGUMENT,
        "header.structures[0].label",
    ),
    Case(
        "label value no structure names",
        edited(_stray_label),
        S.INVALID_ARGUMENT,
        "header.structures",
    ),
    Case("empty target", upload(empty_target_upload), S.INVALID_ARGUMENT, "header.structures"),
    Case("no target structure", upload(no_target_upload), S.INVALID_ARGUMENT, "header.structures"),
    Case("no structures", edited(_no_structures), S.INVALID_ARGUMENT, "header.structures"),
    Case("no encoding", edited(_no_encoding), S.INVALID_ARGUMENT, "header.encoding"),
    Case("content hash not hex", edited(_bad_sha), S.INVALID_ARGUMENT, "header.content_sha256"),
    Case("too many structures", edited(_too_many_structures), S.RESOURCE_EXHAUSTED),
    Case("oversized header", edited(_oversized_header), S.RESOURCE_EXHAUSTED),
    Case("grid over 512^3", edited(_huge_grid), S.RESOURCE_EXHAUSTED),
    Case("chunk over the message limit", upload(giant_chunk), S.RESOURCE_EXHAUSTED),
    Case("chunks out of order", upload(out_of_order), S.INVALID_ARGUMENT, "chunk.sequence"),
    Case("header twice", upload(header_twice), S.INVALID_ARGUMENT, "header"),
    Case("chunk before the header", upload(chunk_first), S.INVALID_ARGUMENT, "header"),
    Case("empty upload", upload(lambda: raw()), S.INVALID_ARGUMENT, "header"),
    Case("unknown anatomy", submit(anatomy_id=UNKNOWN_ID), S.NOT_FOUND),
    Case("malformed anatomy id", submit(anatomy_id="case-17"), S.INVALID_ARGUMENT, "anatomy_id"),
    Case("negative trial budget", submit(budget__trials=-5), S.INVALID_ARGUMENT, "budget.trials"),
    Case(
        "NaN time limit",
        submit(budget__time_limit_s=math.nan),
        S.INVALID_ARGUMENT,
        "budget.time_limit_s",
    ),
    Case("no budget at all", submit(budget__trials=0), S.INVALID_ARGUMENT, "budget"),
    Case(
        "unknown protocol",
        submit(protocol=plan_pb2.ProtocolRef(name="cryo")),
        S.INVALID_ARGUMENT,
        "protocol.name",
    ),
    Case(
        "protocol given as a server path",
        submit(protocol=plan_pb2.ProtocolRef(name="/etc/passwd.toml")),
        S.INVALID_ARGUMENT,
        "protocol.name",
    ),
    Case(
        "inline protocol that is not TOML",
        submit(protocol=plan_pb2.ProtocolRef(toml="name = [")),
        S.INVALID_ARGUMENT,
        "protocol.toml",
    ),
    Case(
        "unknown sampler",
        submit(options__sampler="annealing"),
        S.INVALID_ARGUMENT,
        "options.sampler",
    ),
    Case(
        "unknown target scope",
        submit(options__target_scope="prostate"),
        S.INVALID_ARGUMENT,
        "options.target_scope",
    ),
    Case(
        "unknown exploration",
        submit(options__exploration="swarm"),
        S.INVALID_ARGUMENT,
        "options.exploration",
    ),
    Case(
        "library name that is a path",
        submit(options__warm_start_library="../../etc"),
        S.INVALID_ARGUMENT,
        "options.warm_start_library",
    ),
    Case(
        "library on a server that has none",
        submit(options__warm_start_library="atlas"),
        S.INVALID_ARGUMENT,
        "options.warm_start_library",
    ),
    Case(
        "grid spacing of 10 mm",
        submit(options__grid_spacing_mm=10.0),
        S.INVALID_ARGUMENT,
        "options.grid_spacing_mm",
    ),
    Case(
        "negative worker count", submit(options__workers=-1), S.INVALID_ARGUMENT, "options.workers"
    ),
    Case(
        "idempotency key with a space",
        submit(idempotency_key="my key"),
        S.INVALID_ARGUMENT,
        "idempotency_key",
    ),
    Case(
        "seed plan naming a missing needle",
        submit(seed_plans=[bad_plan()]),
        S.INVALID_ARGUMENT,
        "seed_plans[0]",
    ),
    Case("unknown job", lambda c, _: c.get("job-" + "f" * 32), S.NOT_FOUND),
    Case("cancel an unknown job", lambda c, _: c.cancel("job-nope"), S.NOT_FOUND),
    Case("watch an unknown job", lambda c, _: list(c.watch("job-nope", timeout_s=10)), S.NOT_FOUND),
    Case("artifacts of an unknown job", lambda c, _: c.artifacts("job-nope"), S.NOT_FOUND),
    Case(
        "bad page token",
        lambda c, _: c.list(page_token="!!garbage"),
        S.INVALID_ARGUMENT,
        "page_token",
    ),
    Case(
        "page size over 200", lambda c, _: c.list(page_size=1000), S.INVALID_ARGUMENT, "page_size"
    ),
    Case("unknown anatomy id for evaluation", evaluate(plan=far_plan()), S.NOT_FOUND),
    Case(
        "plan with a zero direction and a missing needle",
        evaluate(plan=bad_plan()),
        S.INVALID_ARGUMENT,
        "plan.needles[0].direction",
    ),
    Case(
        "plan JSON that is not JSON",
        evaluate(plan_json="{needles"),
        S.INVALID_ARGUMENT,
        "plan_json",
    ),
    Case("evaluation without a plan", evaluate(), S.INVALID_ARGUMENT, "plan"),
]


@pytest.fixture(scope="module")
def small_id(client: FrontClient) -> str:
    return client.upload_anatomy(small_anatomy()).anatomy_id


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_request_gets_its_status(case: Case, client: FrontClient, small_id: str):
    anatomy_id = UNKNOWN_ID if case.name == "unknown anatomy id for evaluation" else small_id
    with pytest.raises(grpc.RpcError) as caught:
        case.call(client, anatomy_id)
    exc = caught.value
    assert exc.code() == case.code, exc.details()
    assert exc.details()  # a message a UI can show
    if case.field is not None:
        fields = [v.field for v in field_violations(exc)]
        assert any(f.startswith(case.field) for f in fields), (fields, exc.details())


def test_needle_outside_the_grid_is_named(client: FrontClient, small_id: str):
    with pytest.raises(grpc.RpcError) as caught:
        client.evaluation.EvaluatePlan(
            evaluation_service_pb2.EvaluatePlanRequest(
                anatomy_id=small_id, plan=far_plan(), grid_spacing_mm=2.0, linear=True
            ),
            timeout=60,
        )
    assert caught.value.code() == S.INVALID_ARGUMENT
    assert "outside the planning grid" in caught.value.details()


def test_same_key_different_request_is_already_exists(client: FrontClient, small_id: str):
    first = submit(idempotency_key="conflict-1")(client, small_id)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            submit(idempotency_key="conflict-1", budget__trials=3)(client, small_id)
        assert caught.value.code() == S.ALREADY_EXISTS
        assert "conflict-1" in caught.value.details()
    finally:
        client.cancel(first.job.job_id)  # type: ignore[attr-defined]


def test_cancel_twice_is_a_failed_precondition(client: FrontClient, phantom_id: str):
    job = client.submit(phantom_id, trials=2, grid_spacing_mm=GRID_MM).job
    cancelled = client.cancel(job.job_id)
    events = list(client.watch(job.job_id, timeout_s=120))
    assert events[-1].kind == job_pb2.JOB_EVENT_KIND_CANCELLED
    assert cancelled.job_id == job.job_id
    with pytest.raises(grpc.RpcError) as caught:
        client.cancel(job.job_id)
    assert caught.value.code() == S.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        client.artifacts(job.job_id)
    assert caught.value.code() == S.FAILED_PRECONDITION


def test_nothing_else_was_disturbed(front: BackgroundServer, client: FrontClient, small_id: str):
    """Runs last in this module: the server still serves, stores nothing half-written."""
    stub = health_pb2_grpc.HealthStub(client.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert client.get_anatomy(small_id).anatomy_id == small_id
    assert front.front is not None
    store_root = front.front.anatomies.root
    assert list((store_root / ".tmp").iterdir()) == []
    stored = [p.name for p in store_root.iterdir() if p.name != ".tmp"]
    assert small_id in stored
    # Only well-formed uploads were stored: the small case and the module's phantom, if any.
    assert len(stored) <= 2
    assert client.list(page_size=200).jobs is not None
