"""Plans and evaluations between the optimizer's models and the API's messages."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from pydantic import ValidationError

from optimizer.evaluate.criteria import CriterionResult
from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.plan import PLAN_FORMAT, Plan, field_path
from services.front.errors import Violation, invalid_many
from services.front.gen.ectplan.v1 import plan_pb2

_STATUS = {
    "pass": plan_pb2.CRITERION_STATUS_PASS,
    "fail": plan_pb2.CRITERION_STATUS_FAIL,
    "not_applicable": plan_pb2.CRITERION_STATUS_NOT_APPLICABLE,
}


def _vec(v: plan_pb2.Vector3) -> tuple[float, float, float]:
    return (v.x, v.y, v.z)


def _pvec(v: Sequence[float]) -> plan_pb2.Vector3:
    return plan_pb2.Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def plan_to_proto(plan: Plan) -> plan_pb2.Plan:
    msg = plan_pb2.Plan(
        format=plan.format,
        name=plan.name or "",
        notes=plan.notes or "",
        protocol=plan.protocol,
        tissue_table=plan.tissue_table or "",
        software_version=plan.software_version,
    )
    for n in plan.needles:
        needle = msg.needles.add(
            tip_mm=_pvec(n.tip_mm),
            direction=_pvec(n.direction),
            exposure_mm=n.exposure_mm,
            diameter_mm=n.diameter_mm,
            hole=n.hole or "",
        )
        if n.entry_mm is not None:
            needle.entry_mm.CopyFrom(_pvec(n.entry_mm))
    for p in plan.pairs:
        msg.pairs.add(
            anode=p.anode,
            cathode=p.cathode,
            voltage_v=p.voltage_V,
            pulses=p.pulses,
            pulse_length_us=p.pulse_length_us,
        )
    return msg


def plan_from_proto(msg: plan_pb2.Plan, where: str = "plan") -> Plan:
    """Validate a plan message; every problem becomes a field violation under ``where``."""
    needles: list[dict[str, object]] = []
    for n in msg.needles:
        needle: dict[str, object] = {
            "tip_mm": _vec(n.tip_mm),
            "direction": _vec(n.direction),
            "exposure_mm": n.exposure_mm,
            "hole": n.hole or None,
            "entry_mm": _vec(n.entry_mm) if n.HasField("entry_mm") else None,
        }
        if n.diameter_mm != 0.0:  # 0 is proto3's "unset": keep the 19 G default
            needle["diameter_mm"] = n.diameter_mm
        needles.append(needle)
    data = {
        "format": msg.format or PLAN_FORMAT,
        "name": msg.name or None,
        "notes": msg.notes or None,
        "protocol": msg.protocol,
        "tissue_table": msg.tissue_table or None,
        "needles": needles,
        "pairs": [
            {
                "anode": p.anode,
                "cathode": p.cathode,
                "voltage_V": p.voltage_v,
                "pulses": p.pulses,
                "pulse_length_us": p.pulse_length_us,
            }
            for p in msg.pairs
        ],
    }
    if msg.software_version:
        data["software_version"] = msg.software_version
    return validate_plan_data(data, where)


def plan_from_json(text: str, where: str = "plan_json") -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid_many(
            [Violation(where, f"not valid JSON: {exc.msg} at line {exc.lineno}")], "bad plan"
        ) from None
    return validate_plan_data(data, where)


def validate_plan_data(data: object, where: str) -> Plan:
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        violations = [
            Violation(
                f"{where}.{field_path(tuple(err['loc']))}",
                str(err["msg"]).removeprefix("Value error, "),
            )
            for err in exc.errors()
        ]
        raise invalid_many(violations, "bad plan") from None
    if not plan.protocol:
        raise invalid_many([Violation(f"{where}.protocol", "name the protocol")], "bad plan")
    return plan


def _opt(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def criterion_to_proto(r: CriterionResult) -> plan_pb2.CriterionResult:
    msg = plan_pb2.CriterionResult(
        id=r.id,
        kind=r.kind,
        severity=r.severity,
        status=_STATUS.get(r.status, plan_pb2.CRITERION_STATUS_UNSPECIFIED),
        limit=r.limit if math.isfinite(r.limit) else 0.0,
        unit=r.unit,
        description=r.description,
        structures=list(r.structures),
        modelled_structures=list(r.modelled),
        source=r.source,
    )
    value, margin = _opt(r.value), _opt(r.margin)
    if value is not None:
        msg.value = value
    if margin is not None:
        msg.margin = margin
    return msg


def criteria_counts(results: Sequence[CriterionResult]) -> tuple[int, int]:
    """(required criteria passing, required criteria applicable)."""
    required = [r for r in results if r.severity == "required" and r.status != "not_applicable"]
    return sum(r.status == "pass" for r in required), len(required)


def evaluation_to_proto(
    evaluation: PlanEvaluation,
    *,
    score: float,
    fidelity: str,
    modelled: Sequence[str] = (),
    with_metrics: bool = True,
) -> plan_pb2.Evaluation:
    met, applicable = criteria_counts(evaluation.results)
    document = evaluation.to_dict()
    return plan_pb2.Evaluation(
        passed=evaluation.passed,
        failed_required=list(document["failed_required"]),
        criteria=[criterion_to_proto(r) for r in evaluation.results],
        score=score if math.isfinite(score) else 0.0,
        criteria_met=met,
        criteria_applicable=applicable,
        metrics_json=json.dumps(document["metrics"], default=_jsonable) if with_metrics else "",
        fidelity=fidelity,
        modelled_structures=list(modelled),
    )


def _jsonable(value: object) -> object:
    # Metrics are plain floats and lists; NumPy scalars sneak in from reductions.
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
