"""Device limits: flags with signed margins, never exceptions."""

import math

import numpy as np
import pytest

from optimizer.evaluate.device import (
    check_device,
    pair_spacing_mm,
    segment_distance_mm,
)
from optimizer.evaluate.plan import PlanNeedle, PulsedPair
from optimizer.evaluate.protocol import load_protocol

from .builders import two_needle_plan

LIMITS = load_protocol("ire").device


def by_name(checks, name, pair=None):
    return next(c for c in checks if c.name == name and c.pair == pair)


def test_segment_distance_cases():
    def dist(*points):
        return segment_distance_mm(*(np.array(p, dtype=float) for p in points))

    # Parallel segments 10 mm apart.
    assert dist([0, 0, 0], [0, 0, 10], [10, 0, 0], [10, 0, 10]) == 10.0
    # Crossing skew lines: 3 mm apart at the crossing.
    assert dist([-5, 0, 0], [5, 0, 0], [0, -5, 3], [0, 5, 3]) == pytest.approx(3.0)
    # End to end along one line: 2 mm gap.
    assert dist([0, 0, 0], [0, 0, 1], [0, 0, 3], [0, 0, 9]) == 2.0
    # A point against a segment.
    assert dist([3, 4, 5], [3, 4, 5], [0, 0, 0], [0, 0, 10]) == 5.0


def test_a_plan_within_limits_passes_every_check():
    plan = two_needle_plan(spacing_mm=12.0, voltage_V=1800.0)
    checks = check_device(plan, LIMITS, [22.0])
    assert all(c.passed for c in checks)
    assert pair_spacing_mm(plan, 0) == pytest.approx(12.0)
    assert by_name(checks, "current_max", 0).margin == pytest.approx(28.0)
    assert by_name(checks, "pair_spacing_min", 0).margin == pytest.approx(7.0)


def test_out_of_limit_pairs_are_flagged_with_negative_margins():
    plan = two_needle_plan(spacing_mm=30.0, voltage_V=3500.0)
    checks = check_device(plan, LIMITS, [60.0])
    assert by_name(checks, "voltage_max", 0).margin == -500.0
    assert by_name(checks, "current_max", 0).margin == -10.0
    assert by_name(checks, "pair_spacing_max", 0).margin == pytest.approx(-5.0)
    assert not by_name(checks, "pair_spacing_max", 0).passed
    assert "30.0 mm apart" in by_name(checks, "pair_spacing_max", 0).description


def test_needle_count_and_unknown_currents():
    plan = two_needle_plan()
    extra = [
        PlanNeedle(tip_mm=(i * 6.0, 0, 0), direction=(0, 0, 1), exposure_mm=10) for i in range(6)
    ]
    seven = plan.model_copy(update={"needles": plan.needles[:1] + extra})
    checks = check_device(seven, LIMITS)
    assert by_name(checks, "needles_max").margin == -1 and not by_name(checks, "needles_max").passed
    assert not any(c.name == "current_max" for c in checks)
    unknown = by_name(check_device(plan, LIMITS, [math.nan]), "current_max", 0)
    assert not unknown.passed and "current unknown" in unknown.description
    with pytest.raises(ValueError, match="one current per pair"):
        check_device(plan, LIMITS, [1.0, 2.0])


def test_too_close_needles_fail_the_minimum_spacing():
    plan = two_needle_plan(spacing_mm=4.0)
    pair = PulsedPair(anode=1, cathode=0, voltage_V=500, pulses=90, pulse_length_us=100)
    plan = plan.model_copy(update={"pairs": [pair]})
    check = by_name(check_device(plan, LIMITS), "pair_spacing_min", 0)
    assert check.margin == pytest.approx(-1.0) and check.to_dict()["passed"] is False
