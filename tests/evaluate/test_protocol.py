"""Shipped protocols and the errors a malformed protocol file gives."""

from pathlib import Path

import pytest

from optimizer.evaluate.protocol import (
    CriterionKind,
    Modality,
    ProtocolError,
    load_protocol,
    shipped_protocols,
)

PROTOCOLS = Path(__file__).resolve().parents[2] / "optimizer/evaluate/data/protocols"


def test_three_protocols_ship():
    assert shipped_protocols() == ["ect", "ire", "irect"]


def test_ect_follows_the_esope_train_and_covers_target_plus_margin_at_e_rev():
    p = load_protocol("ect")
    assert p.modality == Modality.ECT
    train = p.pulses.default
    assert (train.pulses, train.pulse_length_us) == (8, 100.0)
    coverage = next(c for c in p.criteria if c.kind == CriterionKind.COVERAGE_MIN)
    assert coverage.threshold == "e_rev" and coverage.limit == 95.0
    assert coverage.structures.margin_mm > 0
    assert any("Mir" in s and "2006" in s for s in p.sources)
    assert any("Gehl" in s and "2018" in s for s in p.sources)


def test_ire_covers_the_target_at_e_irr_with_90_pulses():
    p = load_protocol("IRE")
    assert (p.pulses.default.pulses, p.pulses.default.pulse_length_us) == (90, 100.0)
    coverage = next(c for c in p.criteria if c.kind == CriterionKind.COVERAGE_MIN)
    assert coverage.threshold == "e_irr" and coverage.limit == 95.0
    assert any("Scheltema" in s for s in p.sources)


def test_irect_has_an_ire_core_and_an_ect_margin():
    p = load_protocol("irect")
    assert {(t.name, t.pulses) for t in p.pulses.trains} == {("ire_core", 90), ("ect_margin", 8)}
    assert p.pulses.train_for(8).name == "ect_margin" and p.pulses.train_for(85).name == "ire_core"
    coverage = {c.threshold: c for c in p.criteria if c.kind == CriterionKind.COVERAGE_MIN}
    assert coverage["e_irr"].structures.kind == ["lesion"]
    assert coverage["e_rev"].structures.margin_mm > 0


@pytest.mark.parametrize("name", ["ect", "ire", "irect"])
def test_every_protocol_limits_organs_at_risk_heat_and_device(name):
    p = load_protocol(name)
    by_id = {c.id: c for c in p.criteria}
    assert by_id["rectum_irreversible"].limit <= 0.01
    assert by_id["urethra_irreversible"].limit <= 0.01
    assert by_id["nvb_irreversible"].limit == 0.1
    assert by_id["nvb_temperature"].limit == 45.0
    assert by_id["temperature_away_from_needles"].limit == 50.0
    d = p.device
    assert (d.voltage_max_V, d.current_max_A, d.needles_min, d.needles_max) == (3000, 50, 2, 6)
    assert (d.pair_spacing_min_mm, d.pair_spacing_max_mm) == (5.0, 25.0)
    assert all(c.source.strip() for c in p.criteria)


def test_unknown_name_lists_the_shipped_protocols():
    with pytest.raises(ProtocolError, match=r"unknown protocol 'gene'.*ect, ire, irect"):
        load_protocol("gene")


def write_variant(tmp_path, old: str, new: str) -> Path:
    text = (PROTOCOLS / "ire.toml").read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_protocol_file_loads_by_path(tmp_path):
    path = write_variant(tmp_path, 'name = "ire"', 'name = "ire-local"')
    assert load_protocol(path).name == "ire-local"
    assert load_protocol(str(path)).name == "ire-local"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("limit = 95.0", "limit = 'most'", r"criterion\[0\]\.limit"),
        ('kind = "coverage_min"', 'kind = "coverage_max"', r"criterion\[0\]\.kind"),
        (
            'unit = "percent"',
            'unit = "ml"',
            r"criterion\[0\] \(criterion 'target_irreversible_coverage'\): .*takes unit percent",
        ),
        ('threshold = "e_irr"', 'threshold = "e_lethal"', "e_lethal"),
        ("voltage_max_V = 3000.0", "voltage_max_V = -1.0", r"device\.voltage_max_V"),
        ("pulses_min = 70", "pulses_min = 95", r"train 'ire' has 90 pulses"),
        ('modality = "IRE"', 'modality = "RF"', "modality"),
        ("[device]", "[device]\ncolour = 'red'", r"device\.colour"),
        ('structures = { role = ["target"] }', 'structures = { kind = ["liver"] }', "liver"),
        ('structures = { role = ["target"] }', "structures = {}", "select structures"),
    ],
)
def test_malformed_protocol_names_the_file_and_key(tmp_path, old, new, message):
    path = write_variant(tmp_path, old, new)
    with pytest.raises(ProtocolError, match=message) as err:
        load_protocol(path)
    assert str(path) in str(err.value)


def test_invalid_toml_and_missing_files(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("name = \n")
    with pytest.raises(ProtocolError, match="not valid TOML"):
        load_protocol(path)
    with pytest.raises(ProtocolError, match="cannot read protocol file"):
        load_protocol(tmp_path / "none.toml")


def test_duplicate_criterion_ids_are_refused(tmp_path):
    path = write_variant(tmp_path, 'id = "rectum_irreversible"', 'id = "nvb_temperature"')
    with pytest.raises(ProtocolError, match="repeated: nvb_temperature"):
        load_protocol(path)
