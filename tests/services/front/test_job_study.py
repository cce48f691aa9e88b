"""Each front job's Optuna study: a journal file in its job folder (an earlier version's SQLite
file kept), and how many trials it holds when a job resumes (tests/services/front/
test_cancel_restart.py resumes one through the front)."""

from __future__ import annotations

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial

from services.front.searches import completed_trials
from services.planner.storage import default_storage_url, open_storage


def _store(url: str, name: str, states: list[TrialState]) -> None:
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=name)
    for state in states:
        value = 1.0 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value))
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()


def test_a_job_study_is_a_journal_whose_completed_trials_are_counted(tmp_path):
    job_dir = tmp_path / "jobs" / "job-1"
    url = default_storage_url(job_dir)
    assert url == str((job_dir / "study.journal.log").resolve())
    assert completed_trials(url, "job-1") == 0  # nothing stored yet
    _store(url, "job-1", [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE])
    assert completed_trials(url, "job-1") == 2
    assert completed_trials(url, "another-job") == 0
    # A study that cannot be opened counts nothing; the search then says what is wrong.
    (tmp_path / "file").write_text("not a folder")
    assert completed_trials(str(tmp_path / "file" / "study.journal.log"), "job-1") == 0


def test_a_job_of_an_earlier_version_keeps_its_sqlite_study(tmp_path):
    job_dir = tmp_path / "jobs" / "job-2"
    job_dir.mkdir(parents=True)
    _store(f"sqlite:///{job_dir / 'study.db'}", "job-2", [TrialState.COMPLETE] * 3)
    url = default_storage_url(job_dir)
    assert url == f"sqlite:///{(job_dir / 'study.db').resolve()}"
    assert completed_trials(url, "job-2") == 3
