"""``ectplan batch`` and ``ectplan library`` from the command line: outputs, exit codes, and
clear, quick errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.cli.main import main
from services.planner.library import open_library
from tests.conftest_ray import ray_cluster  # noqa: F401
from tests.evaluate.cases import lesion_anatomy
from tests.services.planner.test_batch import broken_folder, write_mask_folder

REPO = Path(__file__).resolve().parents[3]
QUICK = ["--trials", "3", "--grid-mm", "2", "--linear"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("input")
    write_mask_folder(lesion_anatomy(), folder / "lesion")
    broken_folder(folder / "broken")
    return folder


def _text(captured: str) -> str:
    return " ".join(captured.split())


@pytest.mark.usefixtures("ray_cluster")
def test_batch_plans_records_the_failure_and_the_library_commands_read_it(cases, tmp_path,
                                                                         capsys):  # fmt: skip
    lib = tmp_path / "lib"
    assert main(["batch", "--input", str(cases), "--out", str(lib), *QUICK]) == 1
    out = _text(capsys.readouterr().out)
    assert "planned lesion in" in out and "failed broken after" in out
    assert "2 cases: 1 planned now, 0 already planned, 1 failed" in out
    assert "s per case on 1 node(s)" in out and f"open: {lib / 'library_report.html'}" in out
    assert open_library(lib).cases(status="planned") == ["lesion"]

    # A rerun skips the planned case and retries the broken one (still broken: exit 1).
    assert main(["batch", "--input", str(cases), "--out", str(lib), *QUICK]) == 1
    out = _text(capsys.readouterr().out)
    assert "1 case(s) already planned: skipped" in out and "failed broken" in out

    assert main(["library", "show", str(lib), "--status", "failed"]) == 0
    out = _text(capsys.readouterr().out)
    assert "broken failed loading the anatomy" in out and "1 of 2 cases" in out
    assert main(["library", "show", str(lib), "--criterion", "rectum_irreversible"]) == 0
    assert main(["library", "report", str(lib)]) == 0
    assert "library_report.html" in capsys.readouterr().out

    # Merging the library with itself is no conflict; with another plan of the case it is.
    assert main(["library", "merge", str(lib), str(lib), "--out", str(tmp_path / "same")]) == 0
    other = tmp_path / "other"
    assert main(["batch", "--input", str(cases), "--out", str(other), *QUICK, "--seed",
                 "1"]) == 1  # fmt: skip
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["library", "merge", str(lib), str(other), "--out", str(merged)]) == 2
    assert "--prefer newer" in _text(capsys.readouterr().err)
    assert main(["library", "merge", str(lib), str(other), "--out", str(merged),
                 "--prefer", "newer"]) == 0  # fmt: skip
    assert "merged 2 libraries" in _text(capsys.readouterr().out)
    assert open_library(merged).row("lesion")["run_id"] == open_library(other).row(
        "lesion")["run_id"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "no-such-protocol"], "no-such-protocol"),
        (["--trials", "0"], "argument --trials: must be 1 or more, got 0"),
        (["--time-limit-per-case", "0"], "argument --time-limit-per-case: must be a number"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
        (["--storage", "postgresql://me:secret@127.0.0.1:1/none"], "me:***@127.0.0.1:1"),
    ],
)
def test_bad_settings_are_refused_at_once(cases, tmp_path, capsys, args, message):
    started = time.monotonic()
    code = main(["batch", "--input", str(cases), "--out", str(tmp_path / "lib"), *args])
    assert code == 2
    err = _text(capsys.readouterr().err)
    assert message in err and "secret" not in err
    assert time.monotonic() - started < 8.0
    assert not (tmp_path / "lib").exists()


def test_an_empty_input_or_an_out_that_is_a_file_is_refused(cases, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["batch", "--input", str(empty), "--out", str(tmp_path / "lib")]) == 2
    assert "has no case subfolders" in _text(capsys.readouterr().err)
    a_file = tmp_path / "library.txt"
    a_file.write_text("not a folder")
    assert main(["batch", "--input", str(cases), "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in _text(capsys.readouterr().err)
    assert main(["library", "show", str(empty)]) == 2
    assert "not an ectplan plan library" in _text(capsys.readouterr().err)


def test_an_unreachable_ray_address_is_a_quick_clear_error(cases, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from services.cli.main import main; sys.exit(main())",
         "batch", "--input", str(cases),
         "--out", str(tmp_path / "lib"), *QUICK, "--ray-address", "127.0.0.1:1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot reach a Ray cluster" in _text(done.stderr)
    assert time.monotonic() - started < 25.0
    assert not (tmp_path / "lib").exists()  # nothing written before the cluster answered
