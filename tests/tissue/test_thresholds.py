"""Thresholds versus pulse count: exact at the tissue table's anchors, power law between."""

import itertools
import math
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optimizer.tissue.table import TissueTableError, load_tissue_table
from optimizer.tissue.thresholds import (
    IRE_ANCHOR_PULSES,
    ThresholdError,
    ThresholdTable,
    irreversible_threshold_V_per_cm,
)


@pytest.fixture(scope="module")
def thresholds() -> ThresholdTable:
    return ThresholdTable(load_tissue_table())


def test_prostate_passes_through_both_anchors(thresholds):
    assert thresholds.value("prostate", "e_irr", 8) == pytest.approx(800.0, rel=1e-12)
    assert thresholds.value("prostate", "e_irr", IRE_ANCHOR_PULSES) == pytest.approx(500.0)


def test_between_anchors_it_is_a_power_law_in_the_pulse_count(thresholds):
    # Straight line in log E versus log n through (8, 800) and (90, 500).
    p = math.log(800 / 500) / math.log(90 / 8)
    for n in (10, 30, 50, 70):
        expected = math.exp(math.log(800) - p * math.log(n / 8))
        assert thresholds.value("prostate", "e_irr", n) == pytest.approx(expected, rel=1e-12)
    values = [thresholds.value("tumour", "e_irr", n) for n in range(1, 200)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert (
        thresholds.value("prostate", "e_irr", 1)
        > 800
        > 500
        > thresholds.value("prostate", "e_irr", 200)
    )


def test_reversible_threshold_does_not_depend_on_pulses(thresholds):
    assert thresholds.value("prostate", "e_rev", 8) == thresholds.value("prostate", "e_rev", 90)
    assert thresholds.value("muscle", "e_rev", 90) == 200.0


def test_non_electroporable_tissue_has_no_threshold_and_looks_up_as_infinite(thresholds):
    assert thresholds.value("urine", "e_irr", 90) is None
    lut = thresholds.lookup(["prostate", "urine", "muscle"], "e_irr", 90)
    assert lut[0] == pytest.approx(500.0) and math.isinf(lut[1]) and lut[2] == pytest.approx(281.25)
    numeric = thresholds.lookup(["prostate", "urine"], 650.0, 90)
    assert np.array_equal(numeric, [650.0, 650.0])


def test_tissue_without_90_pulse_anchor_keeps_a_constant_threshold():
    table = load_tissue_table()
    bare = replace(table["muscle"], e_irr_90_pulses_V_per_cm=None)
    assert irreversible_threshold_V_per_cm(bare, 90, 8) == 450.0
    assert irreversible_threshold_V_per_cm(bare, 8, 8) == 450.0


def test_added_90_pulse_values_follow_the_documented_prostate_ratio():
    # tissues.toml: tissues without data take their 8-pulse E_irr x 500/800.
    table = load_tissue_table()
    ratio = table["prostate"].e_irr_90_pulses_V_per_cm / table["prostate"].e_irr_V_per_cm
    raw = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "optimizer/tissue/data/tissues.toml").read_text()
    )
    for name in ("muscle", "urethra", "fat", "nvb"):
        t = table[name]
        assert t.e_irr_90_pulses_V_per_cm == pytest.approx(t.e_irr_V_per_cm * ratio)
        assert "0.625" in raw["tissue"][name]["e_irr_90_pulses_source"]


def test_bad_requests_are_refused_with_the_reason(thresholds):
    with pytest.raises(ThresholdError, match="e_rev, e_irr"):
        thresholds.value("prostate", "e_kill", 8)
    with pytest.raises(ThresholdError, match=">= 1"):
        thresholds.value("prostate", "e_irr", 0)
    with pytest.raises(ThresholdError, match="> 0 V/cm"):
        thresholds.lookup(["prostate"], -5.0, 8)
    with pytest.raises(TissueTableError, match="liver"):
        thresholds.value("liver", "e_irr", 8)


def test_a_90_pulse_threshold_above_the_8_pulse_one_is_refused():
    table = load_tissue_table()
    wrong = replace(table["prostate"], e_irr_90_pulses_V_per_cm=900.0)
    with pytest.raises(ThresholdError, match="fall with pulse number"):
        irreversible_threshold_V_per_cm(wrong, 30, 8)


def test_report_rows_list_every_electroporable_tissue(thresholds):
    rows = thresholds.rows([8, 90])
    names = {r["tissue"] for r in rows}
    assert {"prostate", "muscle", "nvb"} <= names and "urine" not in names
    prostate = next(r for r in rows if r["tissue"] == "prostate")
    assert prostate["e_irr_90_pulses_V_per_cm"] == pytest.approx(500.0)
