"""Errors as gRPC statuses a UI can show: a code, a message, and google.rpc details.

Field problems travel as ``google.rpc.BadRequest`` field violations (the standard rich error
model, in the ``grpc-status-details-bin`` trailer; read it with ``grpc_status.rpc_status`` or
``services.front.client``), so a form can mark the offending field. Quota problems travel as
``google.rpc.QuotaFailure``, precondition problems as ``google.rpc.PreconditionFailure``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class Violation:
    """One bad field: its path in the request (``header.affine[3]``) and what is wrong."""

    field: str
    description: str


@dataclass
class FrontError(Exception):
    """A request the front refuses; raised anywhere below a servicer, turned into a status."""

    code: grpc.StatusCode
    message: str
    violations: Sequence[Violation] = field(default_factory=tuple)
    quota_subject: str | None = None
    precondition: str | None = None

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        details: list[any_pb2.Any] = []
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.quota_subject is not None:
            quota = error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=self.quota_subject, description=self.message
                    )
                ]
            )
            details.append(_pack(quota))
        if self.precondition is not None:
            pre = error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=self.precondition, subject="", description=self.message
                    )
                ]
            )
            details.append(_pack(pre))
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        return rpc_status.to_status(status)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def invalid(field_name: str, description: str, message: str | None = None) -> FrontError:
    """INVALID_ARGUMENT for one field."""
    return FrontError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message or f"{field_name}: {description}",
        (Violation(field_name, description),),
    )


def invalid_many(violations: Sequence[Violation], what: str) -> FrontError:
    """INVALID_ARGUMENT listing every bad field at once (a form shows them all)."""
    text = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return FrontError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {text}", tuple(violations))


def not_found(what: str, ident: str, hint: str) -> FrontError:
    return FrontError(grpc.StatusCode.NOT_FOUND, f"no {what} {ident!r}; {hint}")


def exhausted(subject: str, message: str) -> FrontError:
    return FrontError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, quota_subject=subject)


def failed_precondition(kind: str, message: str) -> FrontError:
    return FrontError(grpc.StatusCode.FAILED_PRECONDITION, message, precondition=kind)


def unavailable(message: str) -> FrontError:
    return FrontError(grpc.StatusCode.UNAVAILABLE, message)


def field_violations(error: grpc.RpcError) -> list[Violation]:
    """The BadRequest field violations carried by a failed call (empty when none)."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    out: list[Violation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [Violation(v.field, v.description) for v in bad.field_violations]
    return out
