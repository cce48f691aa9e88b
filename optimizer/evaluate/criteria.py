"""A protocol's criteria evaluated on an exposure: pass/fail, value, limit, signed margin.

The margin is in the criterion's unit and positive when passing: value - limit for minimum
criteria (coverage), limit - value for maximum criteria (volumes, peaks). A criterion whose
structures are absent from the anatomy is "not_applicable" and neither passes nor fails.
Device limits and the protocol's pulse-count range are evaluated the same way (plans beyond
them are evaluated and flagged, never refused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from optimizer.evaluate.device import LimitCheck, check_device
from optimizer.evaluate.exposure import Exposure
from optimizer.evaluate.histograms import hottest_volume_level
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Criterion, CriterionKind, Protocol

Status = Literal["pass", "fail", "not_applicable"]
UNIT_TEXT = {"percent": "%", "ml": "ml", "V/cm": "V/cm", "degC": "degC"}


@dataclass(frozen=True)
class CriterionResult:
    id: str
    kind: str
    severity: str
    status: Status
    value: float | None
    limit: float
    margin: float | None
    unit: str
    description: str
    structures: tuple[str, ...] = ()
    source: str = ""
    modelled: tuple[str, ...] = ()  # structures ectplan generated, not segmented

    @property
    def passed(self) -> bool | None:
        return None if self.status == "not_applicable" else self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "status": self.status,
            "passed": self.passed,
            "value": self.value,
            "limit": self.limit,
            "margin": self.margin,
            "unit": self.unit,
            "description": self.description,
            "structures": list(self.structures),
            "modelled_structures": list(self.modelled),
            "source": self.source,
        }


def _fmt(value: float, unit: str) -> str:
    text = UNIT_TEXT.get(unit, unit)
    digits = 3 if unit == "ml" else 1
    return f"{value:.{digits}f} {text}"


def _result(
    crit: Criterion, value: float | None, structures: tuple[str, ...], why: str = ""
) -> CriterionResult:
    what = crit.description or f"{crit.kind.value} on {crit.structures.describe()}"
    op = ">=" if crit.is_minimum else "<="
    if value is None or not math.isfinite(value):
        return CriterionResult(
            crit.id, crit.kind.value, crit.severity, "not_applicable", None, crit.limit, None,
            crit.unit, f"N/A {what}: {why or 'nothing to measure'}", structures, crit.source,
        )  # fmt: skip
    margin = value - crit.limit if crit.is_minimum else crit.limit - value
    status: Status = "pass" if margin >= 0 else "fail"
    text = (
        f"{status.upper()} {what}: {_fmt(value, crit.unit)} (limit {op} "
        f"{_fmt(crit.limit, crit.unit)}, margin {margin:+.3g} {UNIT_TEXT[crit.unit]})"
    )
    return CriterionResult(
        crit.id, crit.kind.value, crit.severity, status, value, crit.limit, margin, crit.unit,
        text, structures, crit.source,
    )  # fmt: skip


def evaluate_criterion(exposure: Exposure, crit: Criterion) -> CriterionResult:
    result = _evaluate(exposure, crit)
    modelled = tuple(n for n in result.structures if exposure.anatomy[n].modelled)
    if not modelled:
        return result
    note = f" [modelled organ: {', '.join(modelled)}]"
    return replace(result, modelled=modelled, description=result.description + note)


def _evaluate(exposure: Exposure, crit: Criterion) -> CriterionResult:
    region = exposure.select(crit.structures)
    names = region.structures
    if region.voxel_count == 0:
        return _result(crit, None, names, f"no structure matches {crit.structures.describe()}")
    kind = crit.kind
    if kind in (CriterionKind.COVERAGE_MIN, CriterionKind.VOLUME_ABOVE_MAX):
        assert crit.threshold is not None  # the protocol model guarantees it
        treatable = exposure.treatable(region, crit.threshold)
        above = exposure.at_or_above(region, crit.threshold) & treatable
        if kind == CriterionKind.COVERAGE_MIN:
            n = int(np.count_nonzero(treatable))
            if n == 0:
                return _result(crit, None, names, f"{region.name} has no tissue with a threshold")
            return _result(crit, 100.0 * np.count_nonzero(above) / n, names)
        if crit.unit == "percent":
            return _result(crit, 100.0 * np.count_nonzero(above) / region.voxel_count, names)
        return _result(crit, np.count_nonzero(above) * region.voxel_volume_ml, names)
    if kind == CriterionKind.PEAK_FIELD_MAX:
        e = exposure.max_field_in(region)
        if crit.hottest_ml is None:
            return _result(crit, float(e.max()), names)
        return _result(
            crit, hottest_volume_level(e, crit.hottest_ml, region.voxel_volume_ml), names
        )
    keep = ~region.take(exposure.near_needles(crit.exclude_needle_vicinity_mm)).astype(bool)
    if not keep.any():
        return _result(crit, None, names, "every voxel lies in the excluded needle vicinity")
    if kind == CriterionKind.PEAK_TEMPERATURE_MAX:
        rise = region.take(exposure.heat.temperature_rise_K)[keep]
        return _result(crit, exposure.table.body_temperature_C + float(rise.max()), names)
    if kind == CriterionKind.THERMAL_DAMAGE_VOLUME_MAX:
        omega = region.take(exposure.heat.arrhenius_omega)[keep]
        return _result(crit, np.count_nonzero(omega >= 1.0) * region.voxel_volume_ml, names)
    raise AssertionError(f"criterion kind {kind} has no evaluation")  # pragma: no cover


def _limit_result(check: LimitCheck, prefix: str, source: str) -> CriterionResult:
    status: Status = "pass" if check.passed else "fail"
    margin = check.margin if math.isfinite(check.margin) else None
    value = check.value if math.isfinite(check.value) else None
    suffix = "" if check.pair is None else f"_pair{check.pair}"
    return CriterionResult(
        f"{prefix}.{check.name}{suffix}", f"{prefix}_{check.name}", "required", status, value,
        check.limit, margin, check.unit, f"{status.upper()} {check.description}", (), source,
    )  # fmt: skip


def evaluate_limits(
    plan: Plan, protocol: Protocol, currents_A: Sequence[float] | None = None
) -> list[CriterionResult]:
    """Device limits per pair and the protocol's allowed pulse-count range."""
    results = [
        _limit_result(c, "device", protocol.device.source)
        for c in check_device(plan, protocol.device, currents_A)
    ]
    rules = protocol.pulses
    for i, pair in enumerate(plan.pairs):
        for name, limit, is_max in (("pulses_min", rules.pulses_min, False),
                                    ("pulses_max", rules.pulses_max, True)):  # fmt: skip
            check = LimitCheck(
                name, i, pair.pulses, limit, "pulses", is_max,
                f"pair {i}: {pair.pulses} pulses; protocol {protocol.name} allows "
                f"{rules.pulses_min}..{rules.pulses_max}",
            )  # fmt: skip
            results.append(_limit_result(check, "protocol", rules.source))
    return results


def evaluate_criteria(
    protocol: Protocol, exposure: Exposure, plan: Plan | None = None
) -> list[CriterionResult]:
    """Every criterion of ``protocol``, then device and pulse limits when a plan is known.

    The plan defaults to the one the exposure was built from; currents come from the exposure.
    Without any current the current checks are left out; a single unknown (NaN) current among
    known ones fails its check (the limit cannot be shown to hold).
    """
    results = [evaluate_criterion(exposure, c) for c in protocol.criteria]
    plan = plan if plan is not None else exposure.plan
    if plan is not None:
        currents: list[float] | None = [p.current_A for p in exposure.pairs]
        if (
            currents is None
            or len(currents) != len(plan.pairs)
            or all(math.isnan(c) for c in currents)
        ):
            currents = None
        results += evaluate_limits(plan, protocol, currents)
    return results


def all_required_pass(results: Sequence[CriterionResult]) -> bool:
    return all(r.passed is not False for r in results if r.severity == "required")
