"""Criteria on a constructed good plan and a bad one (rectal wall violated)."""

import json
import math

import numpy as np
import pytest

from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.evaluate.criteria import evaluate_criteria, evaluate_limits
from optimizer.evaluate.evaluation import evaluate_plan
from optimizer.evaluate.exposure import Exposure
from optimizer.evaluate.protocol import load_protocol, parse_protocol

from .builders import anatomy, box_grid, box_mask, two_needle_plan

SHAPE = (20, 20, 20)  # 1 mm voxels, 0.001 ml


@pytest.fixture(scope="module")
def case():
    return anatomy(
        box_grid(SHAPE, 1.0),
        {
            "gland": box_mask(SHAPE, (5, 5, 5), (15, 15, 15)),  # 1000 voxels = 1 ml
            "rectum": box_mask(SHAPE, (5, 1, 5), (15, 3, 15)),  # 200 voxels, y = 1, 2
        },
    )


def good_field() -> np.ndarray:
    """600 V/cm over the gland (>= E_irr(90) = 500), 100 V/cm elsewhere; 40 gland voxels
    (4 %) left at 100 V/cm, so coverage is exactly 96 %."""
    e = np.full(SHAPE, 100.0, np.float32)
    e[5:15, 5:15, 5:15] = 600.0
    e[5:15, 5:9, 14] = 100.0
    return e


def bad_field() -> np.ndarray:
    """The good field plus 400 V/cm in 30 rectal-wall voxels (muscle E_irr(90) = 281 V/cm)."""
    e = good_field()
    e[5:15, 2, 5:8] = 400.0
    return e


def results_by_id(results):
    return {r.id: r for r in results}


def test_good_plan_passes_with_the_expected_margins(case):
    plan = two_needle_plan(spacing_mm=10.0, centre_mm=(10.0, 10.0))
    ev = evaluate_plan(plan, load_protocol("ire"), case, [good_field()], [20.0])
    r = results_by_id(ev.results)
    coverage = r["target_irreversible_coverage"]
    assert coverage.status == "pass"
    assert coverage.value == pytest.approx(96.0) and coverage.margin == pytest.approx(1.0)
    assert coverage.unit == "percent" and coverage.structures == ("gland",)
    rectum = r["rectum_irreversible"]
    assert rectum.status == "pass" and rectum.value == 0.0 and rectum.margin == pytest.approx(0.01)
    assert r["nvb_irreversible"].status == "not_applicable" and r["nvb_irreversible"].passed is None
    assert "no structure matches kind nvb" in r["nvb_irreversible"].description
    assert r["device.voltage_max_pair0"].status == "pass"
    assert r["protocol.pulses_min_pair0"].status == "pass"
    assert ev.passed and ev.failures == []


def test_bad_plan_fails_on_the_rectum_with_the_right_margin(case):
    plan = two_needle_plan(spacing_mm=10.0, centre_mm=(10.0, 10.0))
    ev = evaluate_plan(plan, load_protocol("ire"), case, [bad_field()], [20.0])
    rectum = results_by_id(ev.results)["rectum_irreversible"]
    assert rectum.status == "fail" and rectum.passed is False
    assert rectum.value == pytest.approx(0.030)
    assert rectum.margin == pytest.approx(0.01 - 0.030)
    assert rectum.description.startswith("FAIL no rectal wall at or above E_irr: 0.030 ml")
    assert not ev.passed
    out = ev.to_dict()
    assert out["failed_required"] == ["rectum_irreversible"]
    json.dumps(out, allow_nan=False)


def test_ect_margin_coverage_counts_margin_voxels_at_their_own_threshold(case):
    # ECT: gland + 3 mm at E_rev. 450 V/cm covers the gland (prostate E_rev 400) and, of the
    # margin, only the 3-voxel slab on the +x side (fat, E_rev 100): 1000 + 300 voxels.
    protocol = load_protocol("ect")
    e = np.zeros(SHAPE, np.float32)
    e[5:18, 5:15, 5:15] = 450.0
    exposure = Exposure.from_plan(two_needle_plan(pulses=8, protocol="ect"), case, [e], [5.0])
    crit = next(c for c in protocol.criteria if c.id == "target_reversible_coverage")
    region = exposure.select(crit.structures)
    assert region.name == "gland + 3 mm" and region.voxel_count > 1300
    result = results_by_id(evaluate_criteria(protocol, exposure))["target_reversible_coverage"]
    assert result.value == pytest.approx(100.0 * 1300 / region.voxel_count)
    assert result.status == "fail" and result.margin == pytest.approx(result.value - 95.0)


def test_device_and_pulse_limits_are_flagged_not_refused(case):
    plan = two_needle_plan(spacing_mm=30.0, voltage_V=3200.0, pulses=120, centre_mm=(10, 10))
    ev = evaluate_plan(plan, load_protocol("ire"), case, [good_field()], [55.0])
    r = results_by_id(ev.results)
    assert r["device.voltage_max_pair0"].margin == -200.0
    assert r["device.current_max_pair0"].margin == -5.0
    assert r["device.pair_spacing_max_pair0"].margin == pytest.approx(-5.0)
    assert r["protocol.pulses_max_pair0"].margin == -20
    assert not ev.passed
    assert {f.id for f in ev.failures} >= {"device.voltage_max_pair0", "protocol.pulses_max_pair0"}


def test_limits_without_currents_leave_the_current_check_out():
    results = evaluate_limits(two_needle_plan(), load_protocol("ire"))
    assert not any("current" in r.id for r in results)


CUSTOM = """
name = "custom"
title = "checks"
modality = "IRE"
sources = ["test"]
[pulses]
pulses_min = 1
pulses_max = 100
source = "test"
[[pulses.trains]]
name = "t"
pulses = 90
pulse_length_us = 100
repetition_rate_Hz = 1
source = "test"
[device]
voltage_max_V = 3000
current_max_A = 50
needles_min = 2
needles_max = 6
pair_spacing_min_mm = 5
pair_spacing_max_mm = 25
source = "test"
[[criterion]]
id = "rectum_peak"
kind = "peak_field_max"
structures = { kind = ["rectum"] }
limit = 350
unit = "V/cm"
source = "test"
[[criterion]]
id = "rectum_hot_0.01ml"
kind = "peak_field_max"
structures = { kind = ["rectum"] }
hottest_ml = 0.05
limit = 350
unit = "V/cm"
source = "test"
[[criterion]]
id = "rectum_percent"
kind = "volume_above_max"
structures = { name = ["rectum"] }
threshold = 300.0
limit = 10
unit = "percent"
source = "test"
[[criterion]]
id = "hot"
kind = "peak_temperature_max"
structures = { everywhere = true }
limit = 40
unit = "degC"
exclude_needle_vicinity_mm = 2
source = "test"
[[criterion]]
id = "damage"
kind = "thermal_damage_volume_max"
structures = { role = ["target"] }
limit = 0.5
unit = "ml"
source = "test"
"""


def test_peak_field_temperature_and_damage_criteria(case):
    protocol = parse_protocol(CUSTOM, "custom.toml")
    plan = two_needle_plan(spacing_mm=10.0, centre_mm=(10.0, 10.0))
    exposure = Exposure.from_plan(plan, case, [bad_field()], [20.0])
    r = results_by_id(evaluate_criteria(protocol, exposure))
    assert r["rectum_peak"].value == 400.0 and r["rectum_peak"].margin == -50.0
    # 30 rectal voxels at 400 V/cm: the hottest 0.05 ml (50 voxels) reaches only 100 V/cm.
    assert r["rectum_hot_0.01ml"].value == 100.0 and r["rectum_hot_0.01ml"].status == "pass"
    assert r["rectum_percent"].value == pytest.approx(15.0) and r["rectum_percent"].margin == -5.0
    # 600 V/cm in prostate for 90 pulses: sigma 0.49 S/m, dT = 4.29 K -> 41.3 degC.
    sigma = 0.28 + 0.42 * 0.5
    assert r["hot"].value == pytest.approx(37 + 90 * sigma * 6e4**2 * 1e-4 / 3.7e6, rel=1e-5)
    assert r["hot"].status == "fail"
    assert r["damage"].status == "pass" and r["damage"].value == 0.0
    assert math.isfinite(r["damage"].margin)


def test_results_on_modelled_organs_say_so():
    shape = (12, 12, 12)
    grid = box_grid(shape)
    gland, _ = Structure.from_name("gland", box_mask(shape, (3, 3, 3), (9, 9, 9)))
    rectum, _ = Structure.from_name(
        "rectum", box_mask(shape, (3, 0, 3), (9, 2, 9)), modelled=True, source="model"
    )
    case = Anatomy(grid, [gland, rectum])
    e = np.full(shape, 50.0, np.float32)
    plan = two_needle_plan(centre_mm=(6.0, 6.0), tip_z_mm=8.0)
    results = results_by_id(
        evaluate_criteria(load_protocol("ire"), Exposure.from_plan(plan, case, [e]))
    )
    assert results["rectum_irreversible"].modelled == ("rectum",)
    assert results["rectum_irreversible"].description.endswith("[modelled organ: rectum]")
    assert results["target_irreversible_coverage"].modelled == ()
