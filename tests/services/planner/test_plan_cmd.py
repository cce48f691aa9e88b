"""``ectplan plan`` end to end: every output file, multi-objective, and its bad input."""

from __future__ import annotations

import _thread
import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from bench.product import read_run
from optimizer.anatomy.readers.npz import save_anatomy_npz
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.evaluate.plan import Plan
from optimizer.search.local import SearchProgress
from optimizer.search.samplers import DEFAULT_SAMPLER
from services.cli.main import main
from services.planner.progress import ProgressView

REPO = Path(__file__).resolve().parents[3]
EVALUATE_FILES = (
    "metrics.json", "field_max_V_per_cm.nii.gz", "field_max_V_per_cm_planning.nii.gz",
    "needles.mrk.json", "report.html", "slices.png", "field_volume_histograms.png",
)  # fmt: skip


def test_plan_writes_the_plan_its_evaluation_and_the_search_record(
    ray_cluster, lesion_npz, tmp_path, capsys
):
    out = tmp_path / "out"
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect", "--out", str(out),
                 "--trials", "10", "--workers", "2", "--grid-mm", "2", "--seed", "1"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("plan.json", "search.json", "search_history.png", "study.journal.log",
                 *EVALUATE_FILES):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "pareto.json").exists()
    plan = Plan.load(out / "plan.json")
    metrics = json.loads((out / "metrics.json").read_text())
    search = json.loads((out / "search.json").read_text())
    assert metrics["plan"] == json.loads(plan.to_json())
    assert metrics["nonlinear"] is True and metrics["search"]["trials_run"] == 10
    assert search["trials"]["run"] == 10 and search["trials"]["in_study"] == 10
    assert search["sampler"] == DEFAULT_SAMPLER and search["seed"] == 1
    assert search["stopped_by"] == "trials"
    journal = (out / "study.journal.log").resolve()
    assert search["storage"] == str(journal) and not (out / "study.db").exists()
    assert search["dashboard"] == f"optuna-dashboard {journal}"
    assert search["workers"]["count"] == 2 and search["trials_per_s"] > 0
    # What could not be met, and by how much, agrees with the plan's own evaluation.
    assert search["passed"] == metrics["passed"]
    unmet_required = [u["id"] for u in search["unmet"] if u["severity"] == "required"]
    assert sorted(unmet_required) == sorted(metrics["failed_required"])
    assert all(u["margin"] is None or u["margin"] < 0 for u in search["unmet"])
    # Each refined plan says which required criteria it missed: the returned one as above.
    returned = next(r for r in search["refined"] if r["trial"] == search["best"]["trial"]
                    and r["voltage_factor"] == search["best"]["voltage_factor"])  # fmt: skip
    assert sorted(returned["failed_required"]) == sorted(metrics["failed_required"])
    for refined in search["refined"]:
        assert (refined["failed_required"] == {}) == refined["passed"]
        assert all(m is None or m < 0 for m in refined["failed_required"].values())
    verdict = "meets every required criterion" if metrics["passed"] else "does NOT meet"
    assert verdict in " ".join(printed.split())
    # The report says what the search said of its plan (tests/evaluate/test_report.py).
    report = (out / "report.html").read_text()
    for note in search["notes"]:
        assert html.escape(f"search: {note}") in report
    # bench/product.py reads the same record.
    run = read_run("lesion", "ect", 1, 9.0, 0, out, stderr="")
    assert (run.passed, run.trials, run.error) == (search["passed"], 10, "")
    assert sorted(run.unmet_required) == sorted(unmet_required)
    assert run.search_s["explore"] > 0 and run.search_s["total"] >= run.search_s["refine"]
    # The journal is read as the module docstring of services.planner.storage tells.
    storage = JournalStorage(JournalFileBackend(str(journal)))
    stored = optuna.load_study(study_name=search["study_name"], storage=storage)
    assert len(stored.trials) == 10


def test_multi_objective_search_writes_the_pareto_front(ray_cluster, lesion_npz, tmp_path):
    out = tmp_path / "out"
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect", "--out", str(out),
                 "--trials", "8", "--workers", "1", "--grid-mm", "2",
                 "--multi-objective"])  # fmt: skip
    assert code == 0
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["points"]
    for point in pareto["points"]:
        assert set(point["objectives"]) == {"uncovered_fraction", "organ_at_risk_exposure",
                                            "needles"}  # fmt: skip
        Plan.model_validate(point["plan"])
    assert json.loads((out / "search.json").read_text())["sampler"] == "nsga2"


def test_plan_on_a_running_cluster_with_the_default_fine_grid(ray_cluster, lesion_npz, tmp_path):
    # --ray-address names the cluster this process runs (probed like any address), the fine
    # level is the default 1 mm grid with sigma(E), and the flags the first test leaves out.
    out = tmp_path / "out"
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect", "--out", str(out),
                 "--trials", "8", "--workers", "2", "--seed", "3",
                 "--ray-address", ray_cluster.address, "--asynchronous",
                 "--study-name", "named-study", "--sampler", "tpe"])  # fmt: skip
    assert code == 0
    search = json.loads((out / "search.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert search["grids_mm"] == {"coarse": 2.0, "fine": 1.0}
    assert metrics["planning_grid"]["spacing_mm"] == 1.0 and metrics["nonlinear"] is True
    assert search["best"]["confirmed_on_fine_grid"] is True
    assert search["workers"]["ray_address"] == ray_cluster.address
    assert search["workers"]["local_ray"] is False  # connected to, not started
    assert (search["study_name"], search["sampler"], search["seed"]) == ("named-study", "tpe", 3)
    assert search["reproducible_order"] is False and search["exploration"] == "asynchronous"
    assert search["trials"]["run"] == 8
    # The returned plan's evaluation is the fine one written out.
    plan = Plan.load(out / "plan.json")
    assert metrics["plan"] == json.loads(plan.to_json())
    fine = next(r for r in search["refined"] if r["trial"] == search["best"]["trial"]
                and r["voltage_factor"] == search["best"]["voltage_factor"])  # fmt: skip
    assert fine["passed"] == metrics["passed"]


def test_ctrl_c_exits_130_with_the_best_plan_explored_so_far(
    ray_cluster, lesion_npz, tmp_path, monkeypatch, capsys
):
    shown = ProgressView.update
    interrupted: list[int] = []

    def update(view: ProgressView, p: SearchProgress) -> None:
        shown(view, p)
        if p.trials_done >= 3 and not interrupted:
            interrupted.append(p.trials_done)
            _thread.interrupt_main()  # what Ctrl-C does

    monkeypatch.setattr(ProgressView, "update", update)
    out = tmp_path / "out"
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect", "--out", str(out),
                 "--trials", "100000", "--time-limit", "120", "--workers", "1",
                 "--grid-mm", "2"])  # fmt: skip
    assert interrupted and code == 130
    search = json.loads((out / "search.json").read_text())
    assert search["stopped_by"] == "cancelled"
    assert search["best"]["confirmed_on_fine_grid"] is False
    assert "(coarse)" in search["summary"]
    assert "on the coarse grid (not re-evaluated on the fine one)" in " ".join(
        capsys.readouterr().out.split()
    )
    Plan.load(out / "plan.json")


def test_a_study_of_another_search_in_the_out_folder_names_the_flags(
    ray_cluster, lesion_npz, tmp_path, capsys
):
    out = tmp_path / "out"
    first = ["plan", "--anatomy", str(lesion_npz), "--out", str(out), "--trials", "2",
             "--workers", "1", "--grid-mm", "2", "--study-name", "mine"]  # fmt: skip
    assert main([*first, "--protocol", "ect"]) == 0
    capsys.readouterr()
    assert main([*first, "--protocol", "irect"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "another case, protocol or search space" in err
    assert "plan into a new --out folder, or name another study with --study-name" in err


def test_the_same_command_in_another_process_gives_the_same_plan(
    ray_cluster, lesion_npz, tmp_path
):
    args = ["plan", "--anatomy", str(lesion_npz), "--protocol", "ect", "--trials", "10",
            "--workers", "2", "--grid-mm", "2", "--seed", "4",
            "--ray-address", ray_cluster.address]  # fmt: skip
    # Another process on the same cluster (it inherits this one's Ray token).
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from services.cli.main import main; sys.exit(main())",
         *args, "--out", str(tmp_path / "a")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    plans = [json.loads((tmp_path / d / "plan.json").read_text()) for d in "ab"]
    assert plans[0] == plans[1]
    trials = []
    for d in "ab":
        storage = JournalStorage(JournalFileBackend(str(tmp_path / d / "study.journal.log")))
        study = optuna.load_study(study_name=None, storage=storage)
        trials.append([(t.params, t.values, t.state) for t in study.trials])
    assert len(trials[0]) == 10 and trials[0] == trials[1]


def test_a_zero_budget_is_refused(lesion_npz, tmp_path, capsys):
    started = time.monotonic()
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect",
                 "--out", str(tmp_path / "out"), "--trials", "0"])  # fmt: skip
    assert code == 2
    assert "argument --trials: must be 1 or more, got 0" in capsys.readouterr().err
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--time-limit", "-1", "argument --time-limit: must be a number of seconds above 0"),
        ("--time-limit", "nan", "argument --time-limit: must be a number of seconds above 0"),
        ("--time-limit", "soon", "argument --time-limit: expected a number of seconds"),
        ("--workers", "0", "argument --workers: must be 1 or more, got 0"),
        ("--trials", "2.5", "argument --trials: expected a whole number, got '2.5'"),
    ],
)
def test_a_bad_budget_is_refused_by_its_flag(lesion_npz, tmp_path, capsys, flag, value, message):
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect",
                 "--out", str(tmp_path / "out"), flag, value])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_two_exploration_orders_at_once_are_refused(lesion_npz, tmp_path, capsys):
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect",
                 "--out", str(tmp_path / "out"), "--asynchronous", "--islands"])  # fmt: skip
    assert code == 2
    assert "argument --islands: not allowed with argument --asynchronous" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(lesion_npz, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("where the output folder should go")
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect",
                 "--out", str(blocker / "out"), "--trials", "5"])  # fmt: skip
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    # (rich folds the long path itself, so only the words around it are checked)
    assert "cannot open the journal study file" in err and "choose a writable output" in err


def test_a_target_no_needle_can_reach_is_refused(lesion: Anatomy, tmp_path, capsys):
    xyz = lesion.grid.voxel_centres()
    wall, _ = Structure.from_name("pubic_bone", (xyz[..., 2] > -12) & (xyz[..., 2] < -8))
    blocked = Anatomy(lesion.grid, [*lesion.structures, wall], case_id="blocked-lesion",
                      source="test")  # fmt: skip
    path = save_anatomy_npz(blocked, tmp_path / "blocked.npz")
    code = main(["plan", "--anatomy", str(path), "--protocol", "ect",
                 "--out", str(tmp_path / "out"), "--trials", "5"])  # fmt: skip
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no template hole reaches the target" in err and "pubic_bone" in err


def test_an_unreachable_ray_address_is_a_quick_clear_error(lesion_npz, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from services.cli.main import main; sys.exit(main())",
         "plan", "--anatomy", str(lesion_npz),
         "--protocol", "ect", "--out", str(tmp_path / "out"), "--trials", "5",
         "--grid-mm", "2", "--ray-address", "127.0.0.1:1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot reach a Ray cluster" in " ".join(done.stderr.split())
    assert time.monotonic() - started < 25.0


@pytest.mark.realdata
def test_plan_on_a_real_case(ray_cluster, real_case_dir, tmp_path):
    out = tmp_path / "out"
    case = real_case_dir("prostatex-0000")
    code = main(["plan", "--anatomy", str(case), "--protocol", "ect", "--out", str(out),
                 "--trials", "6", "--workers", "2", "--grid-mm", "2"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["case"] == "prostatex-0000" and metrics["organs_modelled"] is True
    assert np.isfinite(json.loads((out / "search.json").read_text())["best"]["score"])


def test_plan_with_islands_records_how_it_explored(ray_cluster, lesion_npz, tmp_path):
    out = tmp_path / "out"
    code = main(["plan", "--anatomy", str(lesion_npz), "--protocol", "ect", "--out", str(out),
                 "--trials", "8", "--workers", "2", "--grid-mm", "2", "--islands"])  # fmt: skip
    assert code == 0
    search = json.loads((out / "search.json").read_text())
    assert search["exploration"] == "islands" and search["reproducible_order"] is False
    assert search["trials"]["run"] == 8 and search["trials"]["in_study"] == 8
    assert search["best"]["confirmed_on_fine_grid"] is True
    assert Plan.load(out / "plan.json").pairs
