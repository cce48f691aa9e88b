"""Batch planning on Ray: every real case, failures recorded and retried, crashes, resumption.

Cheap settings throughout (4 trials, both grids 2 mm, constant conductivity): these tests are
about the batch machinery; the search and the physics have their own tests.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import optuna
import pytest
from optuna.storages import RDBStorage

from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.evaluate.protocol import load_protocol
from services.planner.batch import (
    BatchError,
    BatchEvent,
    discover_cases,
    protocol_sha256,
    run_batch,
)
from services.planner.batch_task import BatchSettings, CaseJob, plan_case
from services.planner.library import open_library
from services.planner.library_report import REPORT_FILE
from services.planner.storage import open_storage, storage_url_for
from tests.conftest import REAL_CASES
from tests.evaluate.cases import lesion_anatomy

REAL = BatchSettings(trials=4, grid_mm=2.0, nonlinear=False)
# The lesion phantom keeps its admissible holes with a 25 mm margin (planner conftest).
PHANTOM = BatchSettings(trials=3, grid_mm=2.0, nonlinear=False, margin_mm=25.0)
CASE_FILES = ("plan.json", "metrics.json", "report.html", "search.json", "slices.png",
              "field_max_V_per_cm.nii.gz", "needles.mrk.json", "search_history.png")  # fmt: skip


def write_mask_folder(anatomy: Anatomy, folder: Path) -> Path:
    """The anatomy as a folder of NIfTI masks, one structure a file (the real cases' layout)."""
    folder.mkdir(parents=True)
    for s in anatomy.structures:
        image = nib.Nifti1Image(s.mask.astype(np.uint8), anatomy.grid.affine)
        nib.save(image, folder / f"{s.name}.nii.gz")
    return folder


def blocked_lesion() -> Anatomy:
    """The lesion phantom behind a bone wall across every needle path."""
    lesion = lesion_anatomy()
    xyz = lesion.grid.voxel_centres()
    wall, _ = Structure.from_name("pubic_bone", (xyz[..., 2] > -12) & (xyz[..., 2] < -8))
    return Anatomy(lesion.grid, [*lesion.structures, wall], case_id="blocked", source="test")


def broken_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "whole_gland.nii.gz").write_bytes(b"this is not a NIfTI file")
    return folder


@pytest.fixture(scope="module")
def lesion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mask_folder(lesion_anatomy(), tmp_path_factory.mktemp("phantom") / "lesion")


@pytest.mark.realdata
@pytest.mark.slow
def test_every_real_case_is_planned_and_a_rerun_skips_them_and_retries_failures(
    ray_cluster, anatomy_dir, tmp_path
):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in REAL_CASES:
        (cases / name).symlink_to(anatomy_dir / name, target_is_directory=True)
    broken_folder(cases / "broken")
    write_mask_folder(blocked_lesion(), cases / "unreachable")
    library = tmp_path / "library"
    events: list[BatchEvent] = []
    first = run_batch(cases, library, load_protocol("ect"), settings=REAL,
                      on_event=events.append)  # fmt: skip

    assert sorted(first.planned) == sorted(REAL_CASES) and not first.skipped
    assert set(first.failed) == {"broken", "unreachable"}
    assert "loading the anatomy" in first.failed["broken"]
    assert "whole_gland.nii.gz" in first.failed["broken"]
    assert "no template hole reaches the target" in first.failed["unreachable"]
    assert [e.kind for e in events].count("finished") == len(REAL_CASES) + 2
    assert events[0].kind == "queued" and events[0].todo == len(REAL_CASES) + 2
    lib = open_library(library)
    assert lib.cases(status="planned") == sorted(REAL_CASES)
    for name in REAL_CASES:
        row = lib.row(name)
        assert row["trials_run"] == 4 and row["protocol"] == "ect" and row["needles"] >= 2
        assert row["desc_target_volume_ml"] > 0 and row["target_volume_ml"] > 0
        assert row["input_gland_volume_ml"] > 10  # the real glands are 32-66 ml
        assert row["organs_modelled"] is True and "rectal_wall" in row["modelled_structures"]
        assert row["node_id"] and row["seconds"] > 0
        for f in CASE_FILES:
            assert (lib.case_dir(name) / f).is_file(), (name, f)
        assert lib.study_file(name) == library / "studies" / f"{name}.journal.log"
        study = optuna.load_study(study_name=row["study_name"],
                                  storage=open_storage(lib.study_file(name)))  # fmt: skip
        assert sum(t.state.is_finished() for t in study.trials) == 4  # seeds wait unasked
    assert (library / REPORT_FILE).is_file()
    # Two cases at a time on the session's two-CPU Ray: each in its own task.
    assert first.concurrency == 2

    # The broken case is mended, the unreachable one is not; planned cases are left alone.
    planned_runs = {name: lib.row(name)["run_id"] for name in REAL_CASES}
    failed_run = lib.row("unreachable")["run_id"]
    for f in (cases / "broken").iterdir():
        f.unlink()
    for f in (anatomy_dir / "prostatex-0000").glob("*.nii.gz"):
        (cases / "broken" / f.name).symlink_to(f)
    second = run_batch(cases, library, load_protocol("ect"), settings=REAL)
    assert sorted(second.skipped) == sorted(REAL_CASES)
    assert second.planned == ["broken"] and list(second.failed) == ["unreachable"]
    lib = open_library(library)
    assert {name: lib.row(name)["run_id"] for name in REAL_CASES} == planned_runs
    assert lib.row("unreachable")["run_id"] != failed_run
    assert lib.row("broken")["status"] == "planned" and lib.plan("broken").needles


def test_a_crashed_task_is_recorded_and_the_other_cases_go_on(ray_cluster, lesion_folder,
                                                               tmp_path):  # fmt: skip
    import ray

    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("crasher", "lesion"):
        (cases / name).symlink_to(lesion_folder, target_is_directory=True)

    def crash_or_plan(job):  # pickled by value: a stand-in for plan_case that kills its worker
        if job.case_id == "crasher":
            os._exit(3)
        return plan_case(job)

    remote = ray.remote(num_cpus=1, max_retries=0)(crash_or_plan)
    summary = run_batch(cases, tmp_path / "lib", load_protocol("ect"), settings=PHANTOM,
                        remote_task=remote)  # fmt: skip
    assert summary.planned == ["lesion"]
    assert "the task crashed" in summary.failed["crasher"]
    lib = open_library(tmp_path / "lib")
    assert lib.row("crasher")["status"] == "failed"
    assert "crashed" in lib.row("crasher")["reason"]


def test_a_cancelled_batch_records_nothing_unfinished_and_resumes(ray_cluster, lesion_folder,
                                                                   tmp_path):  # fmt: skip
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("one", "two"):
        (cases / name).symlink_to(lesion_folder, target_is_directory=True)
    cancel = threading.Event()

    def on_event(event: BatchEvent) -> None:
        if event.kind == "started":
            cancel.set()

    first = run_batch(cases, tmp_path / "lib", load_protocol("ect"), settings=PHANTOM,
                      concurrency=1, on_event=on_event, cancel_event=cancel)  # fmt: skip
    assert first.cancelled and sorted(first.not_run) == ["one", "two"] and not first.planned
    assert open_library(tmp_path / "lib").case_ids == []
    second = run_batch(cases, tmp_path / "lib", load_protocol("ect"), settings=PHANTOM)
    assert sorted(second.planned) == ["one", "two"] and not second.cancelled
    assert open_library(tmp_path / "lib").cases(status="planned") == ["one", "two"]


def test_a_library_of_an_earlier_version_resumes_its_sqlite_studies(ray_cluster, lesion_folder,
                                                                    tmp_path):  # fmt: skip
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "one").symlink_to(lesion_folder, target_is_directory=True)
    library = tmp_path / "lib"
    run_batch(cases, library, load_protocol("ect"), settings=PHANTOM)
    lib = open_library(library)
    name = str(lib.row("one")["study_name"])
    journal = library / "studies" / "one.journal.log"
    # What an earlier version left: the study in studies/one.db, the case not planned yet.
    legacy = library / "studies" / "one.db"
    to_storage = open_storage(storage_url_for(legacy))
    assert isinstance(to_storage, RDBStorage)
    optuna.copy_study(from_study_name=name, from_storage=open_storage(journal),
                      to_storage=to_storage)  # fmt: skip
    # Closed as the earlier run closed it: a connection this process kept would see its WAL
    # vanish when the task's last connection closes (POSIX locks are per process).
    to_storage.engine.dispose()
    journal.unlink()
    (lib.case_dir("one") / "plan.json").unlink()
    again = run_batch(cases, library, load_protocol("ect"), settings=PHANTOM)
    assert again.planned == ["one"]
    assert open_library(library).row("one")["trials_in_study"] == 2 * PHANTOM.trials
    assert not journal.exists()
    stored = optuna.load_study(study_name=name, storage=storage_url_for(legacy))
    assert sum(t.state.is_finished() for t in stored.trials) == 2 * PHANTOM.trials


def test_the_input_folder_must_hold_case_folders(tmp_path):
    with pytest.raises(BatchError, match="does not exist"):
        discover_cases(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BatchError, match="is a file"):
        discover_cases(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no cases here")
    (tmp_path / "empty" / ".hidden").mkdir()
    with pytest.raises(BatchError, match="no case subfolders"):
        discover_cases(tmp_path / "empty")
    (tmp_path / "empty" / "b").mkdir()
    (tmp_path / "empty" / "a").mkdir()
    assert [c for c, _ in discover_cases(tmp_path / "empty")] == ["a", "b"]


@pytest.mark.parametrize("ending", [".journal.log", ".db"])  # the default; a legacy library's
def test_a_node_without_the_library_works_on_a_copy_of_the_study_and_hands_it_back(
    lesion_folder, tmp_path, ending
):
    """No shared file system: the library's study file is not on the task's node."""
    protocol = load_protocol("ect")
    missing = tmp_path / "not-on-this-node" / "studies" / f"lesion{ending}"

    def job(study_bytes: bytes | None) -> CaseJob:
        return CaseJob("lesion", str(lesion_folder), protocol, protocol_sha256(protocol),
                       PHANTOM, "copy-test", None, str(missing), study_bytes)  # fmt: skip

    first = plan_case(job(None))
    assert first.planned and first.study_bytes is not None and not missing.parent.exists()
    stored = tmp_path / f"stored{ending}"
    stored.write_bytes(first.study_bytes)  # the whole study (a SQLite file with its WAL folded)
    study = optuna.load_study(study_name="copy-test", storage=open_storage(storage_url_for(stored)))
    assert sum(t.state.is_finished() for t in study.trials) == PHANTOM.trials
    # The next run on such a node resumes from the copy the driver sends along.
    second = plan_case(job(first.study_bytes))
    assert second.row["trials_in_study"] == 2 * PHANTOM.trials
