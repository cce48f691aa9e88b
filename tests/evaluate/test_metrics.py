"""The metrics dict: hand-computed figures on a small grid, units in every key, JSON-ready."""

import json

import numpy as np
import pytest

from optimizer.evaluate.exposure import Exposure, PairExposure
from optimizer.evaluate.metrics import METRICS_SCHEMA, compute_metrics

from .builders import anatomy, box_grid, box_mask, two_needle_plan

SHAPE = (10, 10, 10)
# Every numeric leaf key ends in its unit (or is a count or probability by name).
UNIT_SUFFIXES = (
    "_V_per_cm", "_ml", "_fraction", "_C", "_K", "_A", "_V", "_ohm", "_J", "_s", "_us", "_Hz",
    "_mm", "_probability", "_omega", "pulses", "pulses_above", "index", "anode", "cathode",
    "kill_level", "percents", "shape",
)  # fmt: skip


@pytest.fixture(scope="module")
def case():
    grid = box_grid(SHAPE, 2.0)  # 0.008 ml voxels
    return anatomy(
        grid,
        {
            "gland": box_mask(SHAPE, (2, 2, 2), (8, 8, 8)),
            "rectum": box_mask(SHAPE, (2, 0, 2), (8, 2, 8)),
            "nvb": np.zeros(SHAPE, bool),
        },
    )


@pytest.fixture(scope="module")
def metrics(case):
    field = np.broadcast_to(100.0 * np.arange(10)[:, None, None], SHAPE).astype(np.float32)
    plan = two_needle_plan(spacing_mm=10.0, centre_mm=(9.0, 9.0))
    exposure = Exposure.from_plan(plan, case, [field], [20.0])
    return compute_metrics(exposure, axis_V_per_cm=np.arange(0.0, 1001.0, 100.0))


def test_target_figures_match_the_hand_count(metrics):
    gland = metrics["structures"]["gland"]
    assert gland["volume_ml"] == pytest.approx(216 * 0.008)
    # 36 voxels each at 200, 300, ... 700 V/cm.
    f = gland["field"]
    assert (f["e98_V_per_cm"], f["e95_V_per_cm"], f["e50_V_per_cm"]) == (200.0, 200.0, 500.0)
    assert f["max_V_per_cm"] == 700.0 and f["mean_V_per_cm"] == pytest.approx(450.0)
    # The hottest 0.1 ml is 13 voxels: all at 700 V/cm.
    assert f["hottest_0p1ml_V_per_cm"] == 700.0
    irr = gland["thresholds"]["e_irr"]
    assert irr["coverage_fraction"] == pytest.approx(0.5)
    assert irr["volume_ml"] == pytest.approx(108 * 0.008)
    assert irr["threshold_min_V_per_cm"] == pytest.approx(500.0)
    assert irr["min_pulses_above"] == 0 and irr["mean_pulses_above"] == pytest.approx(45.0)
    assert gland["thresholds"]["e_rev"]["coverage_fraction"] == pytest.approx(4 / 6)
    assert gland["field_volume_histogram_fraction"][:9] == pytest.approx(
        [1, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0]
    )


def test_organ_at_risk_volume_above_its_own_threshold(metrics):
    rectum = metrics["structures"]["rectum"]
    assert rectum["tissue"] == "muscle"
    # Muscle E_irr(90) = 281.25 V/cm: i = 3..7, 60 of 72 voxels.
    assert rectum["thresholds"]["e_irr"]["volume_ml"] == pytest.approx(60 * 0.008)
    # Muscle E_rev = 200 V/cm: the whole slab.
    assert rectum["thresholds"]["e_rev"]["volume_ml"] == pytest.approx(72 * 0.008)


def test_kill_and_heat_are_reported_per_structure(metrics):
    gland = metrics["structures"]["gland"]
    kill = gland["kill"]
    # Kill >= 0.9 needs E >= 579 V/cm at 90 pulses: the 600 and 700 V/cm slices.
    assert kill["kill_at_least_0p9_fraction"] == pytest.approx(2 / 6)
    assert 0.3 < kill["mean_kill_probability"] < 0.6
    hot = gland["heat"]
    # 700 V/cm in prostate: t = 0.75, sigma = 0.28 + 0.42 x 0.84375 = 0.634 S/m.
    sigma = 0.28 + 0.42 * (0.75**2 * (3 - 1.5))
    expected = 37.0 + 90 * sigma * 7e4**2 * 1e-4 / 3.7e6
    assert hot["peak_temperature_C"] == pytest.approx(expected, rel=1e-5)


def test_pairs_and_totals(metrics):
    (pair,) = metrics["pairs"]
    assert pair["current_A"] == 20.0 and pair["resistance_ohm"] == pytest.approx(75.0)
    assert pair["energy_J"] == pytest.approx(1500 * 20 * 90 * 100e-6)
    assert metrics["totals"]["pulses"] == 90 and metrics["totals"]["delivery_time_s"] == 90.0
    assert metrics["totals"]["peak_field_V_per_cm"] == 900.0


def test_empty_structures_report_none_not_nan(metrics):
    nvb = metrics["structures"]["nvb"]
    assert nvb["volume_ml"] == 0 and nvb["field"]["e98_V_per_cm"] is None
    assert nvb["thresholds"]["e_irr"]["coverage_fraction"] is None
    assert nvb["heat"]["peak_temperature_C"] is None


def test_dict_is_strict_json_with_units_in_every_numeric_key(metrics):
    text = json.dumps(metrics, allow_nan=False)
    assert json.loads(text)["schema"] == METRICS_SCHEMA

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, int | float) and not isinstance(node, bool):
            assert key.endswith(UNIT_SUFFIXES), f"{key!r} carries no unit"

    walk(metrics)


def test_metrics_of_a_200_cubed_grid_with_15_pairs():
    # Runs in a few seconds (no timing assert: DESIGN.md). One line-source field, 1/r around
    # the grid's central axis, stands for each of the 15 pairs (one array: little memory).
    shape = (200, 200, 200)
    i, j = np.ogrid[:200, :200]
    r = np.hypot(i - 99.5, j - 99.5)
    field = np.broadcast_to((6000.0 / (r + 1.0))[:, :, None], shape).astype(np.float32)
    case = anatomy(box_grid(shape), {"gland": box_mask(shape, (80, 80, 80), (120, 120, 120))})
    exposure = Exposure(case, [PairExposure(field, 90, 100.0)] * 15)
    out = compute_metrics(exposure)
    gland = out["structures"]["gland"]
    # E >= 400 V/cm (prostate E_rev) where r + 1 <= 15.
    inside = r[80:120, 80:120]
    assert gland["thresholds"]["e_rev"]["coverage_fraction"] == np.mean(inside <= 14.0)
    assert gland["thresholds"]["e_rev"]["min_pulses_above"] == 0
    assert out["totals"]["pulses"] == 15 * 90


def _search_and_full(case):
    field = np.broadcast_to(100.0 * np.arange(10)[:, None, None], SHAPE).astype(np.float32)
    plan = two_needle_plan(spacing_mm=10.0, centre_mm=(9.0, 9.0))
    exposure = Exposure.from_plan(plan, case, [field], [20.0])
    return compute_metrics(exposure, detail="search"), compute_metrics(exposure)


def test_search_detail_is_the_full_metrics_without_the_reporting_figures(case):
    search, full = _search_and_full(case)
    assert search["detail"] == "search" and "detail" not in full
    assert "field_volume_histogram_axis_V_per_cm" not in search
    for key in ("schema", "research_use_notice", "tissue_table", "pairs", "totals", "grid"):
        assert search[key] == full[key]
    assert search["structures"].keys() == full["structures"].keys()
    for name, lean in search["structures"].items():
        whole = full["structures"][name]
        assert set(lean) == {"kind", "role", "tissue", "modelled", "volume_ml", "field",
                             "thresholds"}  # fmt: skip
        assert lean["volume_ml"] == whole["volume_ml"]
        assert lean["field"] == {k: whole["field"][k] for k in ("max_V_per_cm", "mean_V_per_cm")}
        for threshold, summary in lean["thresholds"].items():
            assert summary == {
                k: whole["thresholds"][threshold][k]
                for k in ("threshold_min_V_per_cm", "threshold_max_V_per_cm")
            }
    # The empty structure: no field, no thresholds, as in the full set.
    assert search["structures"]["nvb"]["field"]["max_V_per_cm"] is None
    json.dumps(search, allow_nan=False)


def test_unknown_detail_is_refused(case):
    exposure = Exposure.from_plan(
        two_needle_plan(spacing_mm=10.0, centre_mm=(9.0, 9.0)), case,
        [np.zeros(SHAPE, np.float32)], [20.0],
    )  # fmt: skip
    with pytest.raises(ValueError, match="detail"):
        compute_metrics(exposure, detail="brief")
