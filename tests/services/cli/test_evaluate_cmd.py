"""``ectplan evaluate`` on every real case, its outputs, its report and its bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from services.cli.main import main
from tests.browser import dump_dom, screenshot
from tests.conftest import REAL_CASES

PLANS = Path(__file__).resolve().parents[2] / "data" / "plans"


@pytest.mark.realdata
@pytest.mark.parametrize("case_name", REAL_CASES or ["prostatex-0000"])
def test_evaluate_every_real_case_with_its_four_needle_plan(case_name, real_case_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["evaluate", "--anatomy", str(real_case_dir(case_name)), "--plan",
                 str(PLANS / f"{case_name}.json"), "--out", str(out), "--grid-mm", "2",
                 "--linear"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["case"] == case_name
    assert metrics["organs_modelled"] is True and "rectal_wall" in metrics["modelled_structures"]
    assert metrics["tissue_table"].startswith("ectplan-default")
    assert metrics["protocol"]["name"] == "ect"
    assert len(metrics["metrics"]["pairs"]) == 4
    for pair in metrics["metrics"]["pairs"]:
        assert 1.0 < pair["current_A"] < 50.0
    target = next(s for s in metrics["metrics"]["structures"].values() if s["role"] == "target")
    assert target["field"]["e98_V_per_cm"] is not None
    for name in ("field_max_V_per_cm.nii.gz", "field_max_V_per_cm_planning.nii.gz",
                 "needles.mrk.json", "report.html", "slices.png",
                 "field_volume_histograms.png"):
        assert (out / name).is_file(), name


@pytest.mark.realdata
def test_full_evaluation_of_prostatex_0000_round_trips_onto_the_oblique_input_grid(
    real_case_dir, tmp_path
):
    case_dir = real_case_dir("prostatex-0000")
    out = tmp_path / "out"
    assert main(["evaluate", "--anatomy", str(case_dir), "--plan",
                 str(PLANS / "prostatex-0000.json"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nonlinear"] is True
    assert all(p["picard_iterations"] >= 1 for p in metrics["metrics"]["pairs"])
    source = nib.load(case_dir / "whole_gland_AI_Bosma22b.nii.gz")
    on_input = nib.load(out / "field_max_V_per_cm.nii.gz")
    on_planning = nib.load(out / "field_max_V_per_cm_planning.nii.gz")
    assert on_input.shape == source.shape
    np.testing.assert_allclose(on_input.affine, source.affine, atol=1e-5)
    assert abs(on_input.affine[1, 2]) > 0.1  # the oblique slice tilt survived
    # The same world points read alike from both files (trilinear mapping, away from needles).
    field_in = np.asarray(on_input.dataobj)
    field_pl = np.asarray(on_planning.dataobj)
    gland = np.asarray(source.dataobj) > 0
    ijk = np.argwhere(gland & (field_in > 100) & (field_in < 1500))[::97]
    world = ijk @ on_input.affine[:3, :3].T + on_input.affine[:3, 3]
    inv = np.linalg.inv(on_planning.affine)
    pl = np.rint(world @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    values_pl = field_pl[pl[:, 0], pl[:, 1], pl[:, 2]]
    values_in = field_in[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert np.median(np.abs(values_pl - values_in) / values_in) < 0.1
    # Slicer markups: one line per needle, RAS.
    markups = json.loads((out / "needles.mrk.json").read_text())
    assert [m["type"] for m in markups["markups"]] == ["Line"] * 4
    # The report shows its pictures and criteria in a real browser.
    dom = dump_dom(out / "report.html")
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total and int(loaded.group(1)) == int(total.group(1)) >= 2
    assert "Research use only" in dom and "target_reversible_coverage" in dom
    png = screenshot(out / "report.html", tmp_path / "report.png")
    image = np.asarray(__import__("matplotlib.image", fromlist=["imread"]).imread(png))
    assert image.shape[0] > 500 and image[..., :3].std() > 0.05


def _write_plan(tmp_path: Path, mutate) -> Path:
    plan = json.loads((PLANS / "prostatex-0000.json").read_text())
    mutate(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["pairs"].append({**p["pairs"][0], "cathode": 9}), "needle 9"),
        (lambda p: p["needles"][1].update(tip_mm=[500.0, 0.0, 0.0]), "needle 1"),
        (lambda p: p.update(protocol="ectx"), "ectx"),
        (lambda p: p["needles"][0].update(direction=[0.0, 0.0, 0.0]), "direction"),
    ],
)
def test_bad_plans_fail_with_a_clear_message(mutate, message, real_case_dir, tmp_path, capsys):
    plan = _write_plan(tmp_path, mutate)
    code = main(["evaluate", "--anatomy", str(real_case_dir("prostatex-0000")), "--plan",
                 str(plan), "--out", str(tmp_path / "o"), "--grid-mm", "2", "--linear"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unparseable_plan_and_unknown_protocol(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text("{ not json")
    assert main(["evaluate", "--anatomy", str(tmp_path), "--plan", str(bad), "--out",
                 str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_over_voltage_is_evaluated_and_flagged_not_refused(real_case_dir, tmp_path):
    plan = _write_plan(tmp_path, lambda p: p["pairs"][0].update(voltage_V=3600.0))
    out = tmp_path / "o"
    assert main(["evaluate", "--anatomy", str(real_case_dir("prostatex-0000")), "--plan",
                 str(plan), "--out", str(out), "--grid-mm", "2", "--linear"]) == 0
    criteria = {c["id"]: c for c in json.loads((out / "metrics.json").read_text())["criteria"]}
    assert criteria["device.voltage_max_pair0"]["status"] == "fail"
    assert criteria["device.voltage_max_pair0"]["margin"] == pytest.approx(-600.0)
