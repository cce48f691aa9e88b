"""Objectives and constraints of the plan search, computed from a ``PlanEvaluation``.

Single objective (lower is better), weights and scales in data/score.toml:

    score = sum over failing criteria r of  w_class(r) * a(r) * (-margin_r / scale(unit_r))
          + per_needle * needles + per_kJ * total energy in kJ

``margin_r`` is the signed margin the evaluation reports (negative when failing, in the
criterion's unit), so a criterion that passes adds nothing and a failing one adds its shortfall
or excess: coverage shortfall in percentage points, organ-at-risk volume above its threshold in
ml beyond the limit, degrees above a temperature limit, amperes above the current limit...
``a(r)`` scales advisory criteria down; classes are coverage, organ_at_risk, heat and limits
(device, protocol pulse counts, insertion paths). Needle count and energy break ties among
plans that pass.

Constraints (set on each trial with ``Trial.set_constraint``, <= 0 feasible): one value per
required protocol criterion, w_class * -margin / scale (0 when not applicable), and one for all
device/protocol/path limits together (the largest weighted violation), so the vector has the
same names for every plan of a protocol whatever its number of pairs. The class weights are
the score's: when no plan is feasible, TPE and NSGA-II rank plans by the sum of the positive
values, which then orders them as the score does (less its tie-breakers).

Multi-objective (all minimised): the uncovered fraction of the targets (mean over coverage
criteria of 1 - coverage), organ-at-risk exposure (sum over organ-at-risk criteria of value /
scale: ml above threshold for the volume criteria) and the number of needles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from optimizer.evaluate.criteria import CriterionResult
from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.protocol import CriterionKind, Protocol
from optimizer.search.settings import ScoreWeights, load_score_weights

OBJECTIVE_NAMES = ("uncovered_fraction", "organ_at_risk_exposure", "needles")
LIMITS_CONSTRAINT = "limits"

_CLASS_OF_KIND = {
    CriterionKind.COVERAGE_MIN.value: "coverage",
    CriterionKind.VOLUME_ABOVE_MAX.value: "organ_at_risk",
    CriterionKind.PEAK_FIELD_MAX.value: "organ_at_risk",
    CriterionKind.PEAK_TEMPERATURE_MAX.value: "heat",
    CriterionKind.THERMAL_DAMAGE_VOLUME_MAX.value: "heat",
}


def criterion_class(result: CriterionResult) -> str:
    """coverage, organ_at_risk, heat or limits (device, pulses, paths and anything unknown)."""
    return _CLASS_OF_KIND.get(result.kind, "limits")


@dataclass(frozen=True)
class ScoreBreakdown:
    """The score and its parts (each already weighted)."""

    coverage: float
    organ_at_risk: float
    heat: float
    limits: float
    needles: float
    energy: float

    @property
    def total(self) -> float:
        return (
            self.coverage
            + self.organ_at_risk
            + self.heat
            + self.limits
            + self.needles
            + self.energy
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self) | {"total": self.total}


def violation(result: CriterionResult, weights: ScoreWeights) -> float:
    """How far a result misses its limit, in units of its scale (0 when passing or N/A).

    A failing result without a margin (a limit that could not be shown to hold, e.g. an
    unknown current) counts as one full scale.
    """
    if result.status != "fail":
        return 0.0
    if result.margin is None or not math.isfinite(result.margin):
        return 1.0
    return float(max(-result.margin, 0.0)) / weights.scale(result.unit)


def score(evaluation: PlanEvaluation, weights: ScoreWeights | None = None) -> ScoreBreakdown:
    """The single-objective score of an evaluated plan (see the module docstring)."""
    w = weights if weights is not None else load_score_weights()
    parts = {"coverage": 0.0, "organ_at_risk": 0.0, "heat": 0.0, "limits": 0.0}
    for r in evaluation.results:
        factor = w.advisory_factor if r.severity == "advisory" else 1.0
        parts[criterion_class(r)] += _class_weight(r, w) * factor * violation(r, w)
    energy_J = evaluation.metrics.get("totals", {}).get("energy_J")
    energy = w.per_kJ * (float(energy_J) / 1000.0) if energy_J is not None else 0.0
    return ScoreBreakdown(
        **parts, needles=w.per_needle * len(evaluation.plan.needles), energy=energy
    )


def constraint_names(protocol: Protocol) -> list[str]:
    """Names of the constraint vector's entries, in order."""
    return [c.id for c in protocol.criteria if c.severity == "required"] + [LIMITS_CONSTRAINT]


def constraints(evaluation: PlanEvaluation, weights: ScoreWeights | None = None) -> list[float]:
    """One value per ``constraint_names`` entry: <= 0 feasible, > 0 by how much it fails."""
    w = weights if weights is not None else load_score_weights()
    by_id = {r.id: r for r in evaluation.results}
    values: list[float] = []
    for c in evaluation.protocol.criteria:
        if c.severity != "required":
            continue
        r = by_id.get(c.id)
        values.append(_class_weight(r, w) * _signed(r, w) if r is not None else 0.0)
    limits = [
        _signed(r, w)
        for r in evaluation.results
        if criterion_class(r) == "limits" and r.severity == "required"
    ]
    values.append(w.limits * max(limits, default=0.0))
    return values


def _class_weight(result: CriterionResult, weights: ScoreWeights) -> float:
    return {
        "coverage": weights.coverage,
        "organ_at_risk": weights.organ_at_risk,
        "heat": weights.heat,
        "limits": weights.limits,
    }[criterion_class(result)]


def _signed(result: CriterionResult, weights: ScoreWeights) -> float:
    """-margin / scale: negative with room to spare, positive when failing, 0 when N/A."""
    if result.status == "not_applicable":
        return 0.0
    if result.margin is None or not math.isfinite(result.margin):
        return 1.0 if result.status == "fail" else 0.0
    return -float(result.margin) / weights.scale(result.unit)


def objectives(
    evaluation: PlanEvaluation, weights: ScoreWeights | None = None
) -> tuple[float, float, float]:
    """(uncovered fraction, organ-at-risk exposure, needles), all minimised."""
    w = weights if weights is not None else load_score_weights()
    coverage = [
        r.value
        for r in evaluation.results
        if criterion_class(r) == "coverage" and r.value is not None
    ]
    uncovered = sum(1.0 - v / 100.0 for v in coverage) / len(coverage) if coverage else 0.0
    exposure = sum(
        r.value / w.scale(r.unit)
        for r in evaluation.results
        if criterion_class(r) == "organ_at_risk" and r.value is not None
    )
    return (float(uncovered), float(exposure), float(len(evaluation.plan.needles)))


@dataclass(frozen=True)
class Outcome:
    """What a search tells Optuna about one evaluated plan."""

    values: tuple[float, ...]
    constraints: list[float]
    score: ScoreBreakdown
    passed: bool
    met: int
    applicable: int
    failed_required: list[str]
    slack: float = math.inf
    headroom: float | None = None

    def user_attrs(self) -> dict[str, Any]:
        """Trial user attributes (JSON-safe): what a study keeps about each trial."""
        return {
            "score": self.score.total,
            "score_parts": self.score.to_dict(),
            "constraints": self.constraints,
            "passed": self.passed,
            "criteria_met": self.met,
            "criteria_applicable": self.applicable,
            "failed_required": self.failed_required,
            "slack": self.slack if math.isfinite(self.slack) else None,
            "field_headroom": self.headroom,
        }


def outcome(
    evaluation: PlanEvaluation,
    *,
    multi_objective: bool = False,
    weights: ScoreWeights | None = None,
) -> Outcome:
    w = weights if weights is not None else load_score_weights()
    breakdown = score(evaluation, w)
    values = objectives(evaluation, w) if multi_objective else (breakdown.total,)
    applicable = [r for r in evaluation.results if r.status != "not_applicable"]
    return Outcome(
        values=values,
        constraints=constraints(evaluation, w),
        score=breakdown,
        passed=evaluation.passed,
        met=sum(r.status == "pass" for r in applicable),
        applicable=len(applicable),
        failed_required=[
            r.id for r in evaluation.results if r.status == "fail" and r.severity == "required"
        ],
        slack=slack(evaluation, w),
        headroom=field_headroom(evaluation),
    )


def slack(evaluation: PlanEvaluation, weights: ScoreWeights | None = None) -> float:
    """The smallest room any applicable required criterion of the field or heat has, in units
    of its scale (negative when one fails; inf when none applies): how safely a plan passes.
    Device and pulse limits are left out: they are exact on every grid, and a plan at the
    generator's maximum voltage has no room there by design."""
    w = weights if weights is not None else load_score_weights()
    return min(
        (
            -_signed(r, w)
            for r in evaluation.results
            if r.severity == "required" and r.status != "not_applicable"
            and criterion_class(r) != "limits"
        ),
        default=math.inf,
    )  # fmt: skip


def field_headroom(evaluation: PlanEvaluation) -> float | None:
    """How far below its threshold the field stays in the organs at risk of the required
    volume criteria: the smallest threshold / peak field over their structures (> 1: no voxel
    reaches it). None when no such criterion applies.

    A volume criterion says nothing more once no voxel is above threshold; this says how
    close one is. On the coarse grid, that is what tells which of many plans with no voxel
    over a limit will still have none on the fine grid.
    """
    structures = evaluation.metrics.get("structures", {})
    results = {r.id: r for r in evaluation.results}
    ratios: list[float] = []
    for c in evaluation.protocol.criteria:
        result = results.get(c.id)
        if (
            c.severity != "required" or c.kind != CriterionKind.VOLUME_ABOVE_MAX
            or result is None or result.status == "not_applicable"
        ):  # fmt: skip
            continue
        for name in result.structures:
            s = structures.get(name) or {}
            peak = (s.get("field") or {}).get("max_V_per_cm")
            if isinstance(c.threshold, str):
                threshold = ((s.get("thresholds") or {}).get(c.threshold) or {}).get(
                    "threshold_min_V_per_cm"
                )
            else:
                threshold = c.threshold
            if peak and threshold:
                ratios.append(float(threshold) / float(peak))
    return min(ratios, default=None)


def ranking_key(passed: bool, total_score: float) -> tuple[int, float]:
    """Sort key for "best": plans passing every required criterion first, then by score."""
    return (0 if passed else 1, total_score)
