"""Plan libraries: recording cases, the Parquet index, queries, locking and merging.

The cases are real: the lesion phantom planned by the batch task body (``plan_case``) in this
process, twice (two runs of one case differ in run id, time and possibly plan), plus a case
whose anatomy cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from optuna.storages import RDBStorage

from optimizer.anatomy.readers.npz import save_anatomy_npz
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import load_protocol
from services.planner.batch import protocol_sha256
from services.planner.batch_task import BatchSettings, CaseJob, CaseOutcome, plan_case
from services.planner.library import INDEX_FILE, Library, LibraryError, open_library
from services.planner.library_create import create_library, open_or_create_library
from services.planner.library_merge import merge_libraries
from services.planner.storage import open_storage, storage_url_for
from tests.evaluate.cases import lesion_anatomy

QUICK = BatchSettings(trials=3, grid_mm=2.0, nonlinear=False, margin_mm=25.0)


def plan(tmp: Path, anatomy: Path, case_id: str, seed: int = 0) -> CaseOutcome:
    protocol = load_protocol("ect")
    settings = BatchSettings(**{**QUICK.__dict__, "seed": seed})
    study = tmp / f"{case_id}-{seed}.journal.log"
    job = CaseJob(case_id, str(anatomy), protocol, protocol_sha256(protocol), settings,
                  f"test-{case_id}-{seed}", None, str(study))  # fmt: skip
    return plan_case(job)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaseOutcome]:
    tmp = tmp_path_factory.mktemp("cases")
    lesion = save_anatomy_npz(lesion_anatomy(), tmp / "lesion.npz")
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "gland.nii.gz").write_bytes(b"not an image")
    out = {"first": plan(tmp, lesion, "lesion"), "second": plan(tmp, lesion, "lesion", seed=1),
           "broken": plan(tmp, broken, "broken")}  # fmt: skip
    assert out["first"].planned and out["second"].planned, out["first"].reason
    return out


def new_library(path: Path) -> Library:
    protocol = load_protocol("ect")
    return open_or_create_library(path, protocol="ect", protocol_sha256=protocol_sha256(protocol),
                                  tissue_table="ectplan-default 2026.11")  # fmt: skip


def test_a_recorded_case_can_be_queried_and_its_plan_read_back(outcomes, tmp_path):
    lib = new_library(tmp_path / "lib")
    first, broken = outcomes["first"], outcomes["broken"]
    lib.record(first.row, first.files)
    lib.record(broken.row)
    lib = open_library(tmp_path / "lib")
    assert lib.case_ids == ["broken", "lesion"]
    assert lib.cases(status="planned") == ["lesion"] and lib.cases(status="failed") == ["broken"]
    assert lib.cases(protocol="ect") == ["broken", "lesion"] and lib.cases(protocol="ire") == []
    saved = Plan.load(tmp_path / "lib" / "cases" / "lesion" / "plan.json")
    assert lib.plan("lesion") == saved
    assert lib.metrics("lesion")["case"] == "lesion"
    # Every criterion of the evaluation is a column, status and margin as metrics.json says.
    metrics = json.loads(first.files["metrics.json"])
    rectum = next(c for c in metrics["criteria"] if c["id"] == "rectum_irreversible")
    row = lib.row("lesion")
    assert row["crit_rectum_irreversible_status"] == rectum["status"]
    assert row["crit_rectum_irreversible_margin"] == pytest.approx(rectum["margin"])
    assert lib.cases(criterion="rectum_irreversible", criterion_status=rectum["status"]) == [
        "lesion"]  # fmt: skip
    assert row["passed"] is metrics["passed"]
    assert lib.cases(passed=metrics["passed"]) == ["lesion"]
    assert row["needles"] == len(saved.needles) and row["pairs"] == len(saved.pairs)
    assert any(k.startswith("desc_") for k in row) and json.loads(row["portable_plan"])
    assert row["target_volume_ml"] > 0 and row["m_structures_lesion_volume_ml"] > 0
    with pytest.raises(LibraryError, match="it failed"):
        lib.plan("broken")
    with pytest.raises(LibraryError, match="no case 'nope'"):
        lib.plan("nope")
    with pytest.raises(LibraryError, match=r"known: .*rectum_irreversible"):
        lib.cases(criterion="no_such_criterion")


def test_the_index_is_plain_parquet_and_left_without_temporary_files(outcomes, tmp_path):
    lib = new_library(tmp_path / "lib")
    lib.record(outcomes["broken"].row)
    lib.record(outcomes["first"].row, outcomes["first"].files)
    table = pq.read_table(tmp_path / "lib" / INDEX_FILE)
    assert table.column("case_id").to_pylist() == ["broken", "lesion"]
    assert table.column("status").to_pylist() == ["failed", "planned"]
    reason = table.column("reason").to_pylist()[0]
    assert "loading the anatomy" in reason and "gland.nii.gz" in reason
    assert pa.types.is_boolean(table.schema.field("passed").type)
    assert pa.types.is_float64(table.schema.field("score").type)
    assert not [p.name for p in (tmp_path / "lib").rglob(".*") if p.name != ".lock"]
    meta = json.loads((tmp_path / "lib" / "library.json").read_text())
    assert meta["cases"] == {"total": 2, "planned": 1, "failed": 1}
    assert "research" in meta["research_use_notice"] and meta["protocols"].keys() == {"ect"}


def test_to_pandas_says_what_to_install_when_pandas_is_missing(outcomes, tmp_path):
    lib = new_library(tmp_path / "lib")
    lib.record(outcomes["first"].row, outcomes["first"].files)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(LibraryError, match="pip install pandas"):
            lib.to_pandas()
    else:
        assert list(lib.to_pandas()["case_id"]) == ["lesion"]


def test_bad_library_folders_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LibraryError, match="is a file"):
        open_library(tmp_path / "file")
    with pytest.raises(LibraryError, match="is a file"):
        new_library(tmp_path / "file")
    with pytest.raises(LibraryError, match="not an ectplan plan library"):
        open_library(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LibraryError, match="not empty"):
        new_library(tmp_path / "other")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "library.json").write_text(json.dumps({"format": "ectplan.library/0"}))
    with pytest.raises(LibraryError, match=r"ectplan\.library/0"):
        open_library(tmp_path / "old")


def test_a_library_refuses_another_protocol_or_tissue_table(tmp_path):
    new_library(tmp_path / "lib")
    ire = load_protocol("ire")
    with pytest.raises(LibraryError, match=r"planned with protocol.*ect.*not 'ire'"):
        open_or_create_library(tmp_path / "lib", protocol="ire",
                               protocol_sha256=protocol_sha256(ire),
                               tissue_table="ectplan-default 2026.11")  # fmt: skip
    with pytest.raises(LibraryError, match="differs from the definition"):
        open_or_create_library(tmp_path / "lib", protocol="ect", protocol_sha256="0" * 64,
                               tissue_table="ectplan-default 2026.11")  # fmt: skip
    with pytest.raises(LibraryError, match="tissue table"):
        open_or_create_library(tmp_path / "lib", protocol="ect",
                               protocol_sha256=protocol_sha256(load_protocol("ect")),
                               tissue_table="someone-else 1")  # fmt: skip


def test_only_one_writer_at_a_time(tmp_path):
    lib = create_library(tmp_path / "lib", tissue_table="t")
    second = open_library(tmp_path / "lib")
    with lib.locked(), pytest.raises(LibraryError, match="being written by another process"), \
            second.locked():  # fmt: skip
        pass
    with open_library(tmp_path / "lib").locked():  # released
        pass


def _library_with(path: Path, *outcomes: CaseOutcome) -> Path:
    lib = new_library(path)
    for o in outcomes:
        lib.record(o.row, o.files if o.planned else None)
    return path


def test_merge_unites_distinct_cases(outcomes, tmp_path):
    a = _library_with(tmp_path / "a", outcomes["first"])
    b = _library_with(tmp_path / "b", outcomes["broken"])
    merged = merge_libraries([a, b], tmp_path / "c")
    assert open_library(tmp_path / "c").case_ids == ["broken", "lesion"]
    assert merged.plan("lesion") == open_library(a).plan("lesion")
    assert [m["cases"] for m in merged.meta["merged_from"]] == [1, 1]
    assert "rectum_irreversible" in merged.meta["criteria"]
    assert merged.meta["criteria"] == open_library(a).meta["criteria"]


def test_study_files_are_journals_a_legacy_sqlite_one_is_kept_and_merges_copy_both(
    outcomes, tmp_path
):
    a = _library_with(tmp_path / "a", outcomes["first"])
    b = _library_with(tmp_path / "b", outcomes["broken"])
    lib_a, lib_b = open_library(a), open_library(b)
    assert lib_b.study_file("broken") == b / "studies" / "broken.journal.log"
    legacy = a / "studies" / "lesion.db"  # what an earlier version wrote
    for path, value in ((legacy, 1.0), (lib_b.study_file("broken"), 2.0)):
        storage = open_storage(storage_url_for(path))
        optuna.create_study(storage=storage, study_name="s").add_trial(
            optuna.trial.create_trial(value=value)
        )
        if isinstance(storage, RDBStorage):
            storage.engine.dispose()
    assert lib_a.study_file("lesion") == legacy
    merged = merge_libraries([a, b], tmp_path / "c")
    assert merged.study_file("lesion") == tmp_path / "c" / "studies" / "lesion.db"
    assert merged.study_file("broken") == tmp_path / "c" / "studies" / "broken.journal.log"
    for case_id, value in (("lesion", 1.0), ("broken", 2.0)):
        storage = open_storage(storage_url_for(merged.study_file(case_id)))
        assert optuna.load_study(study_name="s", storage=storage).trials[0].value == value


def test_two_plans_of_one_case_conflict_unless_the_newer_is_preferred(outcomes, tmp_path):
    first, second = outcomes["first"], outcomes["second"]
    assert first.row["run_id"] != second.row["run_id"]
    a = _library_with(tmp_path / "a", first)
    b = _library_with(tmp_path / "b", second)
    with pytest.raises(LibraryError, match=r"lesion: planned in .*--prefer newer"):
        merge_libraries([a, b], tmp_path / "c")
    assert not (tmp_path / "c").exists()
    merged = merge_libraries([b, a], tmp_path / "d", prefer="newer")
    assert first.row["finished_at"] != second.row["finished_at"]
    newer = max((first, second), key=lambda o: o.row["finished_at"])
    assert merged.row("lesion")["run_id"] == newer.row["run_id"]
    assert merged.plan("lesion") == Plan.model_validate_json(newer.files["plan.json"])
    # The same library merged with itself is no conflict: the same runs.
    assert merge_libraries([a, a], tmp_path / "e").case_ids == ["lesion"]


def test_a_failure_never_replaces_a_plan_in_a_merge(outcomes, tmp_path):
    planned = outcomes["first"]
    failed_row = {**outcomes["broken"].row, "case_id": "lesion", "run_id": "later-failure",
                  "finished_at": "2999-01-01T00:00:00+00:00"}  # fmt: skip
    a = _library_with(tmp_path / "a", planned)
    b = new_library(tmp_path / "b")
    b.record(failed_row)
    for order, out in (([a, tmp_path / "b"], "c"), ([tmp_path / "b", a], "d")):
        merged = merge_libraries(order, tmp_path / out)
        assert merged.row("lesion")["status"] == "planned"
        assert merged.plan("lesion") == planned_plan(planned)


def planned_plan(outcome: CaseOutcome) -> Plan:
    return Plan.model_validate_json(outcome.files["plan.json"])


def test_merge_refuses_bad_targets_and_mismatched_protocols(outcomes, tmp_path):
    a = _library_with(tmp_path / "a", outcomes["first"])
    with pytest.raises(LibraryError, match="at least two"):
        merge_libraries([a], tmp_path / "c")
    with pytest.raises(LibraryError, match="one of the libraries being merged"):
        merge_libraries([a, a], a)
    other = open_or_create_library(tmp_path / "b", protocol="ect", protocol_sha256="f" * 64,
                                   tissue_table="ectplan-default 2026.11")  # fmt: skip
    other.save()
    with pytest.raises(LibraryError, match="different definitions"):
        merge_libraries([a, tmp_path / "b"], tmp_path / "c")
