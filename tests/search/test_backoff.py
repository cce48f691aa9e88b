"""Lowering the voltage of a plan that fails only organ or heat limits."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer.search.backoff import backoff_notes, lowerable, lowered
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
