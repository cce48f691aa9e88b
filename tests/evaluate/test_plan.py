"""Plan JSON: round trip, validation errors that name the file and field, pair hashes."""

import json

import numpy as np
import pytest

from optimizer import __version__
from optimizer.electrodes.needle import NEEDLE_19G_DIAMETER_MM, Needle
from optimizer.evaluate.plan import Plan, PlanError, PlanNeedle, PulsedPair

from .builders import two_needle_plan


def plan_dict(**changes):
    data = json.loads(two_needle_plan().to_json())
    data.update(changes)
    return data


def test_json_round_trip_keeps_every_field(tmp_path):
    plan = two_needle_plan()
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again == plan
    raw = json.loads(path.read_text())
    assert raw["format"] == "ectplan.plan/1"
    assert raw["software_version"] == __version__
    assert raw["needles"][0]["diameter_mm"] == NEEDLE_19G_DIAMETER_MM
    assert raw["needles"][1]["hole"] == "E3"
    assert raw["pairs"][0] == {
        "anode": 0, "cathode": 1, "voltage_V": 1500.0, "pulses": 90, "pulse_length_us": 100.0
    }  # fmt: skip


def test_needles_convert_to_electrode_geometry():
    plan = two_needle_plan(spacing_mm=12.0)
    needles = plan.to_needles()
    assert all(isinstance(n, Needle) for n in needles)
    start, tip = needles[1].exposed_segment()
    assert np.allclose(tip, [16.0, 10.0, 15.0]) and np.allclose(start, [16.0, 10.0, 5.0])
    assert needles[0].hole == "C3"


def test_direction_is_stored_as_a_unit_vector():
    n = PlanNeedle(tip_mm=(0, 0, 0), direction=(0, 3, 4), exposure_mm=10)
    assert n.direction == pytest.approx((0, 0.6, 0.8))


def test_pair_naming_a_missing_needle_names_the_pair_and_needle_count(tmp_path):
    data = plan_dict()
    data["pairs"].append(dict(data["pairs"][0], cathode=5))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError) as err:
        Plan.load(path)
    text = str(err.value)
    assert str(path) in text and "pairs" in text
    assert "pair 1 names needle 5" in text and "2 needle(s)" in text


def test_same_needle_twice_in_a_pair_is_refused():
    data = plan_dict()
    data["pairs"][0]["cathode"] = 0
    with pytest.raises(PlanError, match="pair 0 uses needle 0 as both anode and cathode"):
        Plan.from_json(json.dumps(data), "p.json")


def test_non_finite_numbers_name_the_json_path():
    data = plan_dict()
    data["needles"][1]["tip_mm"][2] = float("nan")
    data["pairs"][0]["voltage_V"] = float("inf")
    with pytest.raises(PlanError) as err:
        Plan.from_json(json.dumps(data), "case7/plan.json")
    text = str(err.value)
    assert text.startswith("case7/plan.json: 2 problem(s)")
    assert "needles[1].tip_mm[2]: Input should be a finite number" in text
    assert "pairs[0].voltage_V" in text


def test_zero_direction_and_bad_values_are_refused():
    data = plan_dict()
    data["needles"][0]["direction"] = [0, 0, 0]
    data["needles"][0]["exposure_mm"] = -1
    data["pairs"][0]["pulses"] = 0
    with pytest.raises(PlanError) as err:
        Plan.from_json(json.dumps(data))
    text = str(err.value)
    assert "needles[0].direction: direction has zero length" in text
    assert "needles[0].exposure_mm" in text and "pairs[0].pulses" in text


def test_unknown_keys_bad_json_and_missing_files_are_clear(tmp_path):
    with pytest.raises(PlanError, match=r"needles\[0\]\.colour"):
        data = plan_dict()
        data["needles"][0]["colour"] = "red"
        Plan.from_json(json.dumps(data))
    path = tmp_path / "broken.json"
    path.write_text('{"protocol": "ire",\n "needles": [}')
    with pytest.raises(PlanError, match=r"broken\.json is not valid JSON: .* line 2"):
        Plan.load(path)
    with pytest.raises(PlanError, match="cannot read plan file"):
        Plan.load(tmp_path / "absent.json")


def test_pair_hash_depends_on_geometry_only():
    plan = two_needle_plan()
    base = plan.pair_geometry_hash(0)
    assert len(base) == 64
    # Voltage, pulses, labels and polarity do not change the |E| solution.
    other = two_needle_plan(voltage_V=2500.0, pulses=8)
    assert other.pair_geometry_hash(0) == base
    swapped = plan.model_copy(
        update={"pairs": [PulsedPair(anode=1, cathode=0, voltage_V=1, pulses=1, pulse_length_us=1)]}
    )
    assert swapped.pair_geometry_hash(0) == base
    relabelled = plan.model_copy(
        update={"needles": [n.model_copy(update={"hole": None}) for n in plan.needles]}
    )
    assert relabelled.pair_geometry_hash(0) == base
    # Geometry does.
    assert two_needle_plan(exposure_mm=15.0).pair_geometry_hash(0) != base
    assert two_needle_plan(spacing_mm=11.0).pair_geometry_hash(0) != base
    # And it survives a JSON round trip.
    assert Plan.from_json(plan.to_json()).pair_geometry_hashes() == [base]
    with pytest.raises(PlanError, match="no pair 3"):
        plan.pair_geometry_hash(3)


def test_pair_hash_ignores_float_noise_below_a_tenth_of_a_micron():
    plan = two_needle_plan()
    nudged = plan.model_copy(
        update={
            "needles": [
                plan.needles[0].model_copy(update={"tip_mm": (5.0 + 1e-9, 10.0, 15.0)}),
                plan.needles[1],
            ]
        }
    )
    assert nudged.pair_geometry_hash(0) == plan.pair_geometry_hash(0)
