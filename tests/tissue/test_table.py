import pytest

from optimizer.tissue.table import TissueTableError, load_tissue_table


def test_default_table_has_every_design_tissue_with_a_source():
    table = load_tissue_table()
    for name in ["tumour", "prostate", "muscle", "fat", "nvb", "urine", "blood", "bone"]:
        tissue = table[name]
        assert tissue.source.strip()
        assert tissue.sigma1_S_per_m >= tissue.sigma0_S_per_m > 0
    assert table["prostate"].e_rev_V_per_cm == 400.0
    assert not table["urine"].electroporable
    assert table.label.startswith("ectplan-default")


def test_unknown_tissue_lists_known_ones():
    with pytest.raises(TissueTableError, match="prostate"):
        load_tissue_table()["liver"]


def test_a_number_without_a_source_is_refused(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text(
        "[table]\nreference_pulses=8\nreference_pulse_length_us=100\nbody_temperature_C=37\n"
        "rho_c_J_per_m3K=3.7e6\n[table.arrhenius]\nfrequency_factor_per_s=1\n"
        "activation_energy_J_per_mol=1\n[tissue.x]\nsigma0_S_per_m=0.1\nsigma1_S_per_m=0.2\n"
    )
    with pytest.raises(TissueTableError, match="source"):
        load_tissue_table(bad)


def test_thresholds_must_be_ordered(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text(
        "[table]\nreference_pulses=8\nreference_pulse_length_us=100\nbody_temperature_C=37\n"
        "rho_c_J_per_m3K=3.7e6\n[table.arrhenius]\nfrequency_factor_per_s=1\n"
        "activation_energy_J_per_mol=1\n[tissue.x]\nsigma0_S_per_m=0.1\nsigma1_S_per_m=0.2\n"
        "e_rev_V_per_cm=500\ne_irr_V_per_cm=400\nsource='x'\n"
    )
    with pytest.raises(TissueTableError, match="e_rev"):
        load_tissue_table(bad)
