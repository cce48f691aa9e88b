"""Lower the voltage of a plan that fails only organ or heat limits on the fine grid.

When no refined plan passes every required criterion, the one that fails only organ-at-risk or
heat criteria, and by least, is evaluated again at lower voltage: every pair's voltage times
each of ``DEFAULT_FACTORS``, snapped down to the generator's step. Lower voltage shrinks the
field everywhere. A sliver of organ over its threshold, or a degree over a heat limit, goes
first; the target's coverage shrinks too, which the fine evaluation checks. A planner does the
same by hand. A plan failing coverage is left alone: it needs more field, not less.

Why: on picai-10043 (300 trials, 2 workers, seed 2) no refined plan passed. The IRECT plan
closest to passing failed the sphincter by a sliver and passed at 92 % and at 88 % of its
voltages. An ECT plan failed the 50 degC limit by 0.02 of a scale with 0.03 of room on
coverage; at 95 % its coverage failed instead, so the ladder's first step is small (the search
then passed at 98 %).

Where every failing criterion is a peak (field or temperature), the ladder starts at the factor
that brings the worst of them to its limit (``needed_factor``): the field scales with the
voltage and an adiabatic temperature rise with its square (constant conductivity; sigma(E)
falls with the field, so it falls faster). Why: on picai-10043 ECT seed 3 (300 trials, 2
workers) the closest plan was 0.14 degC over the 50 degC limit, a factor of 0.995, and at 98 %
its coverage already failed; the fixed ladder had no step between. (That plan has no window:
at 99.4 % its coverage is still 0.13 % short. A plan with one gets the highest voltage that
meets its peaks, hence the most coverage.)
"""

from __future__ import annotations

import math

from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import CriterionKind
from optimizer.search.objective import criterion_class

# Fractions of the plan's voltages tried, one fine evaluation each, evaluated side by side.
DEFAULT_FACTORS = (0.98, 0.95, 0.92, 0.88)
# Failures that less field can cure.
LOWERABLE_CLASSES = frozenset({"organ_at_risk", "heat"})


def lowerable(evaluation: PlanEvaluation) -> bool:
    """Whether the plan fails required criteria, and only organ-at-risk or heat ones."""
    failing = [r for r in evaluation.results if r.severity == "required" and r.status == "fail"]
    return bool(failing) and all(criterion_class(r) in LOWERABLE_CLASSES for r in failing)


def needed_factor(evaluation: PlanEvaluation) -> float | None:
    """The fraction of the voltages that brings every failing required peak criterion to its
    limit (field: limit / value; temperature: the square root of the allowed over the actual
    rise above body temperature); None when a failing criterion is not a peak, or none fails."""
    body = evaluation.metrics.get("settings", {}).get("body_temperature_C")
    factors: list[float] = []
    for r in evaluation.results:
        if r.severity != "required" or r.status != "fail":
            continue
        if r.value is None or r.value <= 0 or r.value <= r.limit:
            return None
        if r.kind == CriterionKind.PEAK_FIELD_MAX.value:
            factors.append(r.limit / r.value)
        elif r.kind == CriterionKind.PEAK_TEMPERATURE_MAX.value and body is not None:
            allowed, rise = r.limit - float(body), r.value - float(body)
            if allowed <= 0:
                return None  # a limit at or below body temperature: no voltage meets it
            factors.append(math.sqrt(allowed / rise))
        else:
            return None
    return min(factors) if factors else None


def ladder(evaluation: PlanEvaluation, factors: tuple[float, ...] = DEFAULT_FACTORS) -> list[float]:
    """The factors to try for ``evaluation``'s plan: ``needed_factor`` first when it is known
    and below 1, then the ones of ``factors`` below it; as many as ``factors`` in all."""
    need = needed_factor(evaluation)
    if need is None or not 0.0 < need < 1.0:
        return list(factors)
    need = math.floor(need * 1000) / 1000  # a readable percent, never above what is needed
    return [need, *(f for f in factors if f < need)][: len(factors)]


def lowered(plan: Plan, factor: float, step_V: float, source: str) -> Plan:
    """``plan`` with every pair's voltage times ``factor``, down to the generator's
    ``step_V`` (never below one step); ``source`` names the plan in the notes."""
    if not 0.0 < factor < 1.0:
        raise ValueError(f"a voltage factor lowers the voltage: 0 < factor < 1, got {factor}")
    pairs = [
        p.model_copy(
            update={"voltage_V": max(step_V, math.floor(p.voltage_V * factor / step_V) * step_V)}
        )
        for p in plan.pairs
    ]
    percent = f"{100 * factor:g} %"
    return plan.model_copy(
        update={
            "pairs": pairs,
            "name": f"{plan.name or 'plan'} at {percent} voltage",
            "notes": (
                f"{source} with every pair's voltage lowered to {percent} (down to the "
                f"{step_V:g} V step): at full voltage it failed only organ or heat limits on "
                "the fine grid"
            ),
        }
    )


def backoff_notes(trial_number: int, voltage_factor: float) -> list[str]:
    """What a search's notes say when it returns a plan at lowered voltage."""
    if voltage_factor >= 1.0:
        return []
    return [
        f"the returned plan is trial {trial_number}'s with every voltage lowered to "
        f"{100 * voltage_factor:g} %: at full voltage it failed only organ or heat "
        "limits on the fine grid (its parameters are the trial's, at full voltage)"
    ]
