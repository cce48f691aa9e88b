"""Lowering the voltage of a plan that fails only organ or heat limits."""

from __future__ import annotations

import dataclasses
import math

import pytest

from optimizer.search.backoff import (
    DEFAULT_FACTORS,
    backoff_notes,
    ladder,
    lowerable,
    lowered,
    needed_factor,
)
from optimizer.search.objective import criterion_class
from optimizer.search.seeding import geometric_seeds
from optimizer.search.space import SearchSpace


@pytest.fixture(scope="module")
def plan(phantom_case, ect):
    return geometric_seeds(SearchSpace(phantom_case, ect))[0]


@pytest.fixture(scope="module")
def evaluation(plan, ect_coarse):
    return ect_coarse.evaluate(plan)


def _with_failures(evaluation, classes: set[str]):
    """The evaluation with every required criterion passing except those of ``classes``."""
    results = [
        dataclasses.replace(r, status="fail" if criterion_class(r) in classes else "pass")
        if r.severity == "required" and r.status != "not_applicable" else r
        for r in evaluation.results
    ]  # fmt: skip
    return dataclasses.replace(evaluation, results=results)


def test_only_organ_or_heat_failures_can_be_lowered(evaluation):
    assert lowerable(_with_failures(evaluation, {"organ_at_risk"}))
    assert lowerable(_with_failures(evaluation, {"heat"}))
    assert lowerable(_with_failures(evaluation, {"organ_at_risk", "heat"}))
    # Coverage needs more field, not less; a passing plan needs nothing.
    assert not lowerable(_with_failures(evaluation, {"organ_at_risk", "coverage"}))
    assert not lowerable(_with_failures(evaluation, set()))


def test_lowered_scales_every_voltage_down_to_the_step_and_says_so(plan):
    low = lowered(plan, 0.9, 10.0, "trial 7's plan")
    for before, after in zip(plan.pairs, low.pairs, strict=True):
        assert after.voltage_V == pytest.approx(10.0 * int(before.voltage_V * 0.9 // 10.0))
        assert after.voltage_V % 10.0 == pytest.approx(0.0)
        assert after.pulses == before.pulses and after.anode == before.anode
    assert low.needles == plan.needles
    assert "90 %" in (low.name or "") and "trial 7's plan" in (low.notes or "")
    # Never below one step; a factor must lower.
    assert all(p.voltage_V == 500.0 for p in lowered(plan, 0.01, 500.0, "p").pairs)
    for bad in (1.0, 1.2, 0.0):
        with pytest.raises(ValueError, match="0 < factor < 1"):
            lowered(plan, bad, 10.0, "p")


def test_notes_name_the_trial_and_the_factor():
    assert backoff_notes(12, 1.0) == []
    (note,) = backoff_notes(12, 0.92)
    assert "trial 12's" in note and "92 %" in note


def _failing(evaluation, **by_kind):
    """Every required criterion passing except one per kind in ``by_kind``: kind=(value, limit)."""
    results, left = [], dict(by_kind)
    for r in evaluation.results:
        if r.severity == "required" and r.status != "not_applicable":
            if r.kind in left:
                value, limit = left.pop(r.kind)
                r = dataclasses.replace(r, status="fail", value=value, limit=limit)
            else:
                r = dataclasses.replace(r, status="pass")
        results.append(r)
    assert not left, f"no required criterion of kind {set(left)}"
    return dataclasses.replace(evaluation, results=results)


def test_needed_factor_brings_the_worst_peak_to_its_limit(evaluation):
    body = evaluation.metrics["settings"]["body_temperature_C"]
    assert body == pytest.approx(37.0)
    heat = _failing(evaluation, peak_temperature_max=(50.14, 50.0))
    assert needed_factor(heat) == pytest.approx(math.sqrt(13.0 / 13.14))
    assert ladder(heat) == [0.994, 0.98, 0.95, 0.92]
    # A volume over its limit has no such factor: the fixed ladder.
    organ = _failing(evaluation, volume_above_max=(0.2, 0.1))
    assert needed_factor(organ) is None and ladder(organ) == list(DEFAULT_FACTORS)
    both = _failing(evaluation, volume_above_max=(0.2, 0.1), peak_temperature_max=(51.0, 50.0))
    assert needed_factor(both) is None
    # The worst peak decides; a factor far down keeps only the fixed steps below it.
    far = _failing(evaluation, peak_temperature_max=(60.0, 50.0))
    assert ladder(far) == [math.floor(1000 * math.sqrt(13.0 / 23.0)) / 1000]
    assert needed_factor(_failing(evaluation)) is None


def test_field_and_heat_scale_as_the_needed_factor_assumes(plan, ect_coarse):
    """Constant conductivity: the peak field scales with the voltage, the adiabatic rise with
    its square (what ``needed_factor`` inverts)."""
    full = ect_coarse.evaluate(plan).metrics
    low_plan = lowered(plan, 0.9, 0.001, "p")
    low = ect_coarse.evaluate(low_plan).metrics
    f = low_plan.pairs[0].voltage_V / plan.pairs[0].voltage_V
    assert all(
        b.voltage_V / a.voltage_V == pytest.approx(f, rel=1e-5)
        for a, b in zip(plan.pairs, low_plan.pairs, strict=True)
    )
    body = full["settings"]["body_temperature_C"]
    assert low["totals"]["peak_field_V_per_cm"] == pytest.approx(
        f * full["totals"]["peak_field_V_per_cm"], rel=1e-4
    )
    assert low["totals"]["peak_temperature_C"] - body == pytest.approx(
        f**2 * (full["totals"]["peak_temperature_C"] - body), rel=1e-4
    )
