"""Peleg-Fermi kill: the prostate calibration, the in vitro reference, multi-pair products."""

import math

import numpy as np
import pytest

from optimizer.tissue.kill import (
    KillModelError,
    PelegFermi,
    calibrate_peleg_fermi,
    kill_probability,
    load_kill_models,
    survival,
)
from optimizer.tissue.table import load_tissue_table


@pytest.fixture(scope="module")
def prostate() -> PelegFermi:
    table = load_tissue_table()
    model = load_kill_models().for_tissue(table["prostate"], table.reference_pulses)
    assert model is not None
    return model


def test_prostate_kills_half_at_about_500_V_per_cm_after_90_pulses(prostate):
    assert prostate.critical_field_V_per_cm(90) == pytest.approx(500.0, rel=1e-9)
    assert prostate.survival(500.0, 90) == pytest.approx(0.5, abs=1e-12)
    assert prostate.critical_field_V_per_cm(8) == pytest.approx(800.0, rel=1e-9)
    # Documented in kill_models.toml: k1 = ln(800/500)/82, Ec0 ~ 838 V/cm.
    assert prostate.k1_per_pulse == pytest.approx(math.log(1.6) / 82)
    assert prostate.ec0_V_per_cm == pytest.approx(837.5, abs=0.1)


def test_prostate_kill_rises_from_10_to_90_percent_over_the_reported_spread(prostate):
    # A/Ec = sqrt(3)/pi * 66/506: 10 % and 90 % kill at 421 and 579 V/cm after 90 pulses.
    assert prostate.field_for_kill_V_per_cm(0.1, 90) == pytest.approx(421.0, abs=0.5)
    assert prostate.field_for_kill_V_per_cm(0.9, 90) == pytest.approx(579.0, abs=0.5)
    assert 1 - prostate.survival(579.0, 90) == pytest.approx(0.9, abs=1e-3)


def test_survival_falls_with_field_and_with_pulses(prostate):
    fields = np.linspace(0, 2000, 201)
    s = prostate.survival(fields, 90)
    assert np.all(np.diff(s) <= 0) and s[0] > 0.999 and s[-1] < 1e-6
    assert prostate.survival(600.0, 90) < prostate.survival(600.0, 8)


def test_in_vitro_reference_is_far_below_in_vivo_prostate(prostate):
    garcia = load_kill_models().named("garcia2014_in_vitro")
    assert garcia.ec0_V_per_cm == 3996.0 and garcia.a0_V_per_cm == 1441.0
    assert garcia.critical_field_V_per_cm(90) == pytest.approx(3996 * math.exp(-2.7))
    assert garcia.critical_field_V_per_cm(90) < 0.6 * prostate.critical_field_V_per_cm(90)
    with pytest.raises(KillModelError, match="garcia2014_in_vitro"):
        load_kill_models().named("nope")


def test_non_electroporable_tissue_has_no_model():
    table = load_tissue_table()
    assert load_kill_models().for_tissue(table["urine"], 8) is None


def test_several_pairs_multiply_survivals(prostate):
    # Two pairs each at the 50 % field: survival 0.25, kill 0.75; urine voxels never die.
    models = [prostate, None]
    tissue = np.array([0, 1])
    field = np.array([500.0, 500.0], dtype=np.float32)
    kill = kill_probability([field, field], [90, 90], tissue, models)
    assert kill[0] == pytest.approx(0.75, abs=1e-6)
    assert kill[1] == 0.0
    assert survival(field, tissue, models, 90)[0] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(KillModelError, match="one per pair"):
        kill_probability([field], [90, 8], tissue, models)


def test_calibration_checks_its_anchors():
    with pytest.raises(KillModelError, match="e_high <= e_low"):
        calibrate_peleg_fermi(500, 8, 800, 90, 0.07)
    with pytest.raises(KillModelError, match="relative width"):
        calibrate_peleg_fermi(800, 8, 500, 90, 1.5)


def test_malformed_kill_model_files_name_the_key(tmp_path):
    f = tmp_path / "k.toml"
    f.write_text("[model.x]\nec0_V_per_cm = 1\n")
    with pytest.raises(KillModelError, match=r"\[calibration\]"):
        load_kill_models(f)
    f.write_text(
        "[calibration]\nlethal_threshold_mean_V_per_cm = 506\nlethal_threshold_sd_V_per_cm = 66\n"
        "source = 's'\n[model.x]\nec0_V_per_cm = 'big'\na0_V_per_cm = 1\nk1_per_pulse = 0\n"
        "k2_per_pulse = 0\nsource = 's'\n"
    )
    with pytest.raises(KillModelError, match=r"\[model\.x\]: ec0_V_per_cm must be a number"):
        load_kill_models(f)
    f.write_text(
        "[calibration]\nlethal_threshold_mean_V_per_cm = 506\nlethal_threshold_sd_V_per_cm = 66\n"
    )
    with pytest.raises(KillModelError, match="source"):
        load_kill_models(f)
    with pytest.raises(KillModelError, match="cannot read"):
        load_kill_models(tmp_path / "missing.toml")
