"""The score and constraints follow the evaluation: monotonic in shortfall and excess."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from optimizer.evaluate.evaluation import PlanEvaluation, evaluate_plan
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.objective import (
    OBJECTIVE_NAMES,
    constraint_names,
    constraints,
    criterion_class,
    field_headroom,
    objectives,
    outcome,
    score,
    slack,
)
from optimizer.search.settings import load_score_weights

from ..evaluate.builders import anatomy, box_grid, box_mask, two_needle_plan

SHAPE = (20, 10, 10)
PEAKS = (300.0, 600.0, 900.0, 1300.0, 1800.0, 2400.0)


@pytest.fixture(scope="module")
def case():
    grid = box_grid(SHAPE, 2.0)
    return anatomy(
        grid,
        {
            "gland": box_mask(SHAPE, (5, 2, 2), (12, 8, 8)),
            "rectum": box_mask(SHAPE, (14, 2, 2), (18, 8, 8)),
        },
    )


def evaluate(case, peak_V_per_cm: float, metrics_detail: str = "full") -> PlanEvaluation:
    """A field rising along x to ``peak``: more coverage of the gland and more rectum above
    E_irr as the peak grows (a real evaluation of synthetic fields)."""
    ramp = peak_V_per_cm * (np.arange(SHAPE[0]) + 1) / SHAPE[0]
    field = np.broadcast_to(ramp[:, None, None], SHAPE).astype(np.float32)
    plan = two_needle_plan(protocol="ect", pulses=8, voltage_V=1500.0)
    return evaluate_plan(
        plan, load_protocol("ect"), case, [field], [10.0], metrics_detail=metrics_detail
    )


@pytest.fixture(scope="module")
def evaluations(case):
    return [evaluate(case, peak) for peak in PEAKS]


def test_coverage_part_falls_and_organ_part_rises_with_the_field(evaluations):
    parts = [score(e) for e in evaluations]
    coverage = [p.coverage for p in parts]
    organ = [p.organ_at_risk for p in parts]
    assert all(a >= b for a, b in pairwise(coverage))
    assert all(a <= b for a, b in pairwise(organ))
    assert coverage[0] > coverage[-1] == 0.0  # the strongest field covers the target
    assert organ[0] == 0.0 < organ[-1]  # and overexposes the rectum


def test_parts_are_the_weighted_normalised_margins(evaluations):
    w = load_score_weights()
    e = evaluations[-1]
    rectum = next(r for r in e.results if r.id == "rectum_irreversible")
    assert rectum.status == "fail"
    assert score(e).organ_at_risk == pytest.approx(
        w.organ_at_risk * (rectum.value - rectum.limit) / w.scale("ml")
    )
    first = evaluations[0]
    cover = next(r for r in first.results if r.id == "target_reversible_coverage")
    assert score(first).coverage == pytest.approx(
        w.coverage * (cover.limit - cover.value) / w.scale("percent")
    )
    assert score(first).needles == pytest.approx(2 * w.per_needle)


def test_constraints_are_feasible_exactly_when_the_plan_passes(evaluations):
    names = constraint_names(evaluations[0].protocol)
    assert names[-1] == "limits"
    for e in evaluations:
        values = constraints(e)
        assert len(values) == len(names)
        assert all(v <= 0 for v in values) == e.passed
    # Each failing required criterion shows up as a positive constraint of the same name.
    e = evaluations[-1]
    failing = {r.id for r in e.failures if r.severity == "required"}
    positive = {n for n, v in zip(names, constraints(e), strict=True) if v > 0}
    assert failing <= positive


def test_multi_objectives_trade_coverage_against_organ_exposure(evaluations):
    values = [objectives(e) for e in evaluations]
    assert len(values[0]) == len(OBJECTIVE_NAMES)
    uncovered = [v[0] for v in values]
    exposure = [v[1] for v in values]
    assert all(a >= b for a, b in pairwise(uncovered))
    assert all(a <= b for a, b in pairwise(exposure))
    assert all(v[2] == 2.0 for v in values)


def test_outcome_summarises_for_the_study(evaluations):
    e = evaluations[-1]
    o = outcome(e)
    attrs = o.user_attrs()
    assert attrs["score"] == pytest.approx(score(e).total)
    assert attrs["passed"] is e.passed
    assert set(attrs["failed_required"]) == {r.id for r in e.failures if r.severity == "required"}
    assert o.applicable == sum(r.status != "not_applicable" for r in e.results)
    assert outcome(e, multi_objective=True).values == objectives(e)


def test_criterion_classes_cover_every_kind(evaluations):
    classes = {r.id: criterion_class(r) for r in evaluations[0].results}
    assert classes["target_reversible_coverage"] == "coverage"
    assert classes["rectum_irreversible"] == "organ_at_risk"
    assert classes["temperature_away_from_needles"] == "heat"
    assert classes["device.voltage_max_pair0"] == "limits"


def test_slack_is_the_tightest_required_room_and_says_pass_or_fail(evaluations):
    w = load_score_weights()
    for e in evaluations:
        room = slack(e, w)
        required = [
            r for r in e.results if r.severity == "required" and r.status != "not_applicable"
        ]
        field = [r for r in required if criterion_class(r) != "limits"]
        margins = [r.margin / w.scale(r.unit) for r in field if r.margin is not None]
        assert room == pytest.approx(min(margins))
        # Failing a criterion of the field is negative room, passing them all is not.
        assert (room >= 0) == all(r.status == "pass" for r in field)
    assert outcome(evaluations[0]).user_attrs()["slack"] == pytest.approx(slack(evaluations[0]))


def test_field_headroom_is_the_organs_threshold_over_their_peak_field(evaluations):
    headrooms = [field_headroom(e) for e in evaluations]
    assert all(h is not None for h in headrooms)
    assert all(a > b for a, b in pairwise(headrooms))  # more field, less headroom
    for e, h in zip(evaluations, headrooms, strict=True):
        rectum = e.metrics["structures"]["rectum"]
        expected = (
            rectum["thresholds"]["e_irr"]["threshold_min_V_per_cm"]
            / rectum["field"]["max_V_per_cm"]
        )
        assert h == pytest.approx(expected)
        # Above 1 exactly when no voxel of the rectum reaches its threshold.
        volume = next(r.value for r in e.results if r.id == "rectum_irreversible")
        assert (h > 1) == (volume == 0)
    assert outcome(evaluations[0]).user_attrs()["field_headroom"] == pytest.approx(headrooms[0])


def test_search_detail_metrics_rank_plans_exactly_as_the_full_ones(case, evaluations):
    """Exploration evaluations compute only the search's metrics: same score, same headroom,
    same criteria, same trial attributes."""
    for peak, full in zip(PEAKS, evaluations, strict=True):
        lean = evaluate(case, peak, metrics_detail="search")
        assert lean.metrics["detail"] == "search"
        assert [r.to_dict() for r in lean.results] == [r.to_dict() for r in full.results]
        assert score(lean) == score(full)
        assert field_headroom(lean) == field_headroom(full)
        assert outcome(lean).user_attrs() == outcome(full).user_attrs()
