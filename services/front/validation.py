"""Checks of job requests before anything is queued: every bad field named, all at once."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from optimizer.anatomy.target_scope import TARGET_SCOPES
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol, ProtocolError, load_protocol, parse_protocol
from optimizer.search.samplers import SAMPLERS
from services.front.convert import plan_from_proto
from services.front.errors import FrontError, Violation, invalid_many
from services.front.explorations import EXPLORATIONS
from services.front.gen.ectplan.v1 import plan_pb2, planning_service_pb2

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_TRIALS = 100_000
MAX_TIME_LIMIT_S = 7 * 24 * 3600.0
MAX_WORKERS = 256
GRID_SPACING_RANGE_MM = (0.5, 4.0)
MAX_SEED_PLANS = 64
MAX_PROTOCOL_TOML_BYTES = 256 * 1024


@dataclass(frozen=True)
class ValidSubmit:
    protocol: Protocol
    seed_plans: tuple[Plan, ...]


def resolve_protocol(ref: plan_pb2.ProtocolRef, where: str = "protocol") -> Protocol:
    """A shipped protocol by name or an inline TOML protocol, as INVALID_ARGUMENT when bad."""
    source = ref.WhichOneof("source")
    if source is None:
        raise invalid_many(
            [Violation(where, "name a protocol (ect, ire, irect) or give its TOML")], "no protocol"
        )
    if source == "name":
        name = ref.name
        if "/" in name or name.endswith(".toml") or not name:
            # Names only: a path would read the server's files.
            raise invalid_many(
                [Violation(f"{where}.name", "a protocol name, not a path")], "bad protocol"
            )
        try:
            return load_protocol(name)
        except ProtocolError as exc:
            raise invalid_many([Violation(f"{where}.name", str(exc))], "unknown protocol") from None
    text = ref.toml
    if len(text.encode()) > MAX_PROTOCOL_TOML_BYTES:
        raise invalid_many(
            [Violation(f"{where}.toml", f"over {MAX_PROTOCOL_TOML_BYTES} bytes")], "bad protocol"
        )
    try:
        return parse_protocol(text, "inline protocol")
    except ProtocolError as exc:
        raise invalid_many([Violation(f"{where}.toml", str(exc))], "bad protocol") from None


LIBRARY_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


def validate_submit(request: planning_service_pb2.SubmitPlanJobRequest) -> ValidSubmit:
    """Everything but the anatomy's existence (the servicer asks the store)."""
    bad: list[Violation] = []
    if not request.anatomy_id:
        bad.append(Violation("anatomy_id", "upload the anatomy first and give its id"))
    b = request.budget
    if b.trials < 0:
        bad.append(Violation("budget.trials", f"must be >= 0 (0: no trial limit), got {b.trials}"))
    elif b.trials > MAX_TRIALS:
        bad.append(Violation("budget.trials", f"at most {MAX_TRIALS}, got {b.trials}"))
    if not math.isfinite(b.time_limit_s) or b.time_limit_s < 0:
        bad.append(
            Violation(
                "budget.time_limit_s",
                f"must be a finite number of seconds >= 0, got {b.time_limit_s}",
            )
        )
    elif b.time_limit_s > MAX_TIME_LIMIT_S:
        bad.append(Violation("budget.time_limit_s", f"at most {MAX_TIME_LIMIT_S:.0f} s"))
    if b.trials == 0 and b.time_limit_s == 0:
        bad.append(Violation("budget", "give a trial budget, a time limit, or both"))
    o = request.options
    if not 0 <= o.workers <= MAX_WORKERS:
        bad.append(Violation("options.workers", f"must lie in 0..{MAX_WORKERS}, got {o.workers}"))
    lo, hi = GRID_SPACING_RANGE_MM
    if o.grid_spacing_mm != 0 and not (
        math.isfinite(o.grid_spacing_mm) and lo <= o.grid_spacing_mm <= hi
    ):
        bad.append(
            Violation(
                "options.grid_spacing_mm",
                f"must lie in {lo}..{hi} mm (0: 1 mm), got {o.grid_spacing_mm}",
            )
        )
    if o.sampler and o.sampler not in SAMPLERS:
        bad.append(
            Violation(
                "options.sampler",
                f"unknown sampler {o.sampler[:40]!r}; use one of {', '.join(SAMPLERS)}",
            )
        )
    if o.target_scope and o.target_scope not in TARGET_SCOPES:
        bad.append(
            Violation(
                "options.target_scope",
                f"unknown target scope {o.target_scope[:40]!r}; use one of "
                f"{', '.join(TARGET_SCOPES)}",
            )
        )
    if o.exploration and o.exploration not in EXPLORATIONS:
        bad.append(
            Violation(
                "options.exploration",
                f"unknown exploration {o.exploration[:40]!r}; use one of "
                f"{', '.join(EXPLORATIONS)} (empty: batches)",
            )
        )
    lib = o.warm_start_library
    if lib and not LIBRARY_NAME.match(lib):
        bad.append(
            Violation(
                "options.warm_start_library",
                "a library name: 1-64 letters, digits, '.', '_' or '-', not starting with '.'",
            )
        )
    key = request.idempotency_key
    if key and not IDEMPOTENCY_KEY.match(key):
        bad.append(Violation("idempotency_key", "1-128 printable ASCII characters, no spaces"))
    if len(request.seed_plans) > MAX_SEED_PLANS:
        bad.append(Violation("seed_plans", f"at most {MAX_SEED_PLANS} plans"))
    protocol: Protocol | None = None
    try:
        protocol = resolve_protocol(request.protocol)
    except FrontError as exc:
        bad.extend(exc.violations)
    plans: list[Plan] = []
    for i, msg in enumerate(request.seed_plans[:MAX_SEED_PLANS]):
        try:
            plans.append(plan_from_proto(msg, f"seed_plans[{i}]"))
        except FrontError as exc:
            bad.extend(exc.violations)
    if bad:
        raise invalid_many(bad, "bad plan job request")
    assert protocol is not None
    return ValidSubmit(protocol, tuple(plans))
