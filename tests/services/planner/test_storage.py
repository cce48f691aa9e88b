"""Study storage: a journal file by default (a legacy SQLite file kept), database URLs with
fast, password-free errors."""

from __future__ import annotations

import json
import time

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from optimizer.evaluate.protocol import load_protocol
from optimizer.search.study import (
    JOURNAL_SUFFIXES,
    SIGNATURE_ATTR,
    SearchStudyError,
)
from services.planner.driver import DistributedSearch, plan_distributed
from services.planner.storage import (
    StorageError,
    dashboard_command,
    default_storage_url,
    mask_url,
    open_storage,
    storage_url_for,
    study_name_for,
    study_path,
)
from tests.services.planner.conftest import QUICK


def _tell_one(storage: optuna.storages.BaseStorage, name: str, score: float) -> None:
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("score", score)
    study.tell(trial, score)


def test_default_is_a_journal_file_in_the_output_folder(tmp_path):
    url = default_storage_url(tmp_path / "out")
    journal = (tmp_path / "out" / "study.journal.log").resolve()
    assert url == str(journal) and not journal.parent.exists()
    storage = open_storage(url)  # makes the folder
    assert isinstance(storage, JournalStorage) and journal.is_file()
    _tell_one(storage, "s", 1.5)
    # JSON lines, readable by anyone; Optuna reads them back as the module docstring says.
    operations = [json.loads(line) for line in journal.read_text().splitlines()]
    assert operations[0]["study_name"] == "s" and len(operations) >= 3
    again = optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(url)))
    assert again.trials[0].user_attrs["score"] == 1.5 and again.trials[0].params["x"] >= 0
    assert dashboard_command(url) == f"optuna-dashboard {journal}"
    # journal:path is the same file; the dashboard gets the bare path (it has no prefix).
    assert isinstance(open_storage(f"journal:{journal}"), JournalStorage)
    assert dashboard_command(f"journal:{journal}") == f"optuna-dashboard {journal}"
    assert dashboard_command("journal:/a b/s.log") == "optuna-dashboard '/a b/s.log'"


def test_a_legacy_sqlite_study_stays_the_default_until_a_journal_exists(tmp_path):
    legacy = tmp_path / "study.db"
    _tell_one(open_storage(f"sqlite:///{legacy}"), "old", 2.0)
    assert study_path(tmp_path) == legacy
    url = default_storage_url(tmp_path)
    assert url == f"sqlite:///{legacy.resolve()}"
    assert isinstance(open_storage(url), RDBStorage)
    assert optuna.load_study(study_name="old", storage=url).trials[0].value == 2.0
    assert dashboard_command(url) == f"optuna-dashboard {url}"
    # Per-case files in a library: the same rule with the case as the stem.
    assert study_path(tmp_path, "case-1") == tmp_path / "case-1.journal.log"
    (tmp_path / "case-1.db").write_bytes(b"")
    assert study_path(tmp_path, "case-1") == tmp_path / "case-1.db"
    # Once a journal exists beside it, the journal wins.
    (tmp_path / "study.journal.log").touch()
    assert study_path(tmp_path) == tmp_path / "study.journal.log"
    assert storage_url_for(study_path(tmp_path)) == str((tmp_path / "study.journal.log").resolve())


def test_a_second_search_into_the_same_folder_resumes_its_journal(ray_cluster, lesion, ect,
                                                                   tmp_path):  # fmt: skip
    out = tmp_path / "out"
    first = plan_distributed(lesion, ect, trials=3, workers=2, storage_url=default_storage_url(out),
                             refine_top_k=1, **QUICK)  # fmt: skip
    second = plan_distributed(lesion, ect, trials=2, workers=2,
                              storage_url=default_storage_url(out), refine_top_k=1,
                              **QUICK)  # fmt: skip
    assert first.study_name == second.study_name
    assert second.trials_run == 2 and second.trials_in_study == 5
    assert [r.number for r in second.history] == [3, 4]
    assert any("resumed study" in n for n in second.notes)
    # The flock's file stays (it is never held between appends); no symlink lock is made.
    assert sorted(p.name for p in out.iterdir()) == ["study.journal.log", "study.journal.log.flock"]
    journal = open_storage(out / "study.journal.log")
    stored = optuna.load_study(study_name=first.study_name, storage=journal)
    assert [t.state for t in stored.trials] == [TrialState.COMPLETE] * 5
    # The stored signature is this search space's; another protocol's space is refused.
    ire = load_protocol("ire")
    with DistributedSearch(lesion, ect, trials=1, storage_url=default_storage_url(out),
                           **QUICK) as search:  # fmt: skip
        search.prepare()
        assert stored.user_attrs[SIGNATURE_ATTR] == search.space.signature()
    with pytest.raises(SearchStudyError, match="another case, protocol or search space"), \
            DistributedSearch(lesion, ire, trials=1, storage_url=default_storage_url(out),
                              study_name=first.study_name, **QUICK) as other:  # fmt: skip
        other.prepare()


def test_a_legacy_sqlite_study_in_the_output_folder_is_resumed(ray_cluster, lesion, ect,
                                                               tmp_path):  # fmt: skip
    """A folder an earlier version planned into (its default was sqlite:///<out>/study.db)."""
    legacy = tmp_path / "study.db"
    first = plan_distributed(lesion, ect, trials=3, workers=2, storage_url=f"sqlite:///{legacy}",
                             refine_top_k=1, **QUICK)  # fmt: skip
    second = plan_distributed(lesion, ect, trials=2, workers=2,
                              storage_url=default_storage_url(tmp_path), refine_top_k=1,
                              **QUICK)  # fmt: skip
    assert second.trials_in_study == 5 and [r.number for r in second.history] == [3, 4]
    assert not (tmp_path / "study.journal.log").exists()
    stored = optuna.load_study(study_name=first.study_name, storage=f"sqlite:///{legacy}")
    assert len(stored.trials) == 5


def test_an_unwritable_sqlite_location_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot open the SQLite study file"):
        open_storage(f"sqlite:///{blocker / 'study.db'}")
    not_a_db = tmp_path / "text.db"
    not_a_db.write_text("hello, I am not a database" * 100)
    with pytest.raises(StorageError, match=r"text\.db"):
        open_storage(f"sqlite:///{not_a_db}")


def test_an_unwritable_journal_location_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for url in (default_storage_url(blocker / "out"), f"journal:{blocker / 'study.jsonl'}"):
        with pytest.raises(StorageError, match=r"cannot open the journal study file .*file/"):
            open_storage(url)
    with pytest.raises(StorageError, match="cannot open the journal study file"):
        open_storage(f"journal:{tmp_path}")  # a folder, not a file
    not_a_journal = tmp_path / "notes.log"
    not_a_journal.write_text("hello, I am not a journal\n" * 10)
    with pytest.raises(StorageError, match=r"notes\.log is not an Optuna journal file"):
        open_storage(not_a_journal)


def test_every_journal_ending_opens_as_a_journal(tmp_path):
    for ending in JOURNAL_SUFFIXES:
        path = tmp_path / f"study{ending}"
        assert isinstance(open_storage(path), JournalStorage), ending
        assert path.is_file(), ending


@pytest.mark.parametrize("host", ["127.0.0.1:1", "198.51.100.7:5432"])
def test_an_unreachable_postgresql_fails_within_seconds_without_the_password(host):
    pytest.importorskip("psycopg2")
    url = f"postgresql://planner:s3cret@{host}/ectplan"
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_storage(url)
    assert time.monotonic() - started < 15.0
    message = str(caught.value)
    assert "s3cret" not in message and "planner:***@" in message
    assert "check the host, port" in message
    # The database itself answered (refused, or timed out), not a missing driver.
    assert "DB access module" not in message and "pip install" not in message


def test_journal_files_and_nonsense_urls():
    assert open_storage(None) is None
    with pytest.raises(StorageError, match="neither an RDB URL"):
        open_storage("my-study")
    with pytest.raises(StorageError, match="empty"):
        open_storage(" ")


def test_masking_and_study_names():
    assert mask_url("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert study_name_for("prostatex-0000", "ect", 7) == "ectplan-prostatex-0000-ect-seed7"
    assert study_name_for("a b/c", "ire", None, multi_objective=True) == (
        "ectplan-a_b_c-ire-unseeded-mo"
    )


POSTGRES_ENV = "ECTPLAN_TEST_POSTGRES_URL"


def test_a_distributed_search_keeps_its_trials_in_postgresql(ray_cluster, lesion, ect):
    """Runs where CI provides a database: ECTPLAN_TEST_POSTGRES_URL=postgresql://.../db."""
    import os

    from services.planner.driver import plan_distributed
    from tests.services.planner.conftest import QUICK

    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = f"pg-{time.time_ns()}"
    result = plan_distributed(lesion, ect, trials=6, workers=2, storage_url=url,
                              study_name=name, refine_top_k=1, **QUICK)  # fmt: skip
    storage = open_storage(url)  # a bare postgresql:// URL goes through psycopg2
    stored = optuna.load_study(study_name=name, storage=storage)
    assert len(stored.trials) == result.trials_run == 6
    assert stored.trials[result.trial_number].params == result.params
    optuna.delete_study(study_name=name, storage=storage)


def test_focal_studies_get_their_own_default_name():
    focal = study_name_for("picai-10032", "ect", 0, target_scope="lesion")
    assert focal == "ectplan-picai-10032-ect-seed0-focal"
    assert study_name_for("picai-10032", "ect", 0, target_scope="gland") != focal
