"""One search at a time per stored study: file locks beside a journal or SQLite file, advisory
locks in PostgreSQL, held by other processes and dropped when they die."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from optimizer.evaluate.protocol import load_protocol
from optimizer.search.study import SearchStudyError
from services.planner.driver import DistributedSearch
from services.planner.storage import default_storage_url, open_storage
from services.planner.study_lock import (
    StudyBusyError,
    StudyLock,
    StudyLostError,
    lock_file_path,
    lock_study,
)
from tests.services.planner.conftest import QUICK

POSTGRES_URL = os.environ.get("ECTPLAN_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="ECTPLAN_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL)"
)


def _lock(url: str, name: str = "study-a"):  # type: ignore[no-untyped-def]
    return lock_study(url, open_storage(url), name, url)


def _holding(url: str, name: str) -> subprocess.Popen[str]:
    """Another process holding the study's lock until it is killed."""
    code = textwrap.dedent(f"""
        from services.planner.storage import open_storage
        from services.planner.study_lock import lock_study
        lock = lock_study({url!r}, open_storage({url!r}), {name!r}, "x")
        print("held", flush=True)
        import time
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[3])  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def _storages(tmp_path: Path) -> list[str]:
    urls = [str(tmp_path / "study.journal.log"), f"sqlite:///{tmp_path / 'study.db'}"]
    return [*urls, POSTGRES_URL] if POSTGRES_URL else urls


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_a_second_holder_is_refused_by_name_until_the_first_releases(tmp_path, kind):
    urls = dict(zip(["journal", "sqlite", "postgresql"], _storages(tmp_path), strict=False))
    if kind not in urls:
        pytest.skip("ECTPLAN_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL)")
    url = urls[kind]
    first = _lock(url)
    assert first is not None
    try:
        with pytest.raises(StudyBusyError, match=rf"study 'study-a' .* by .*pid {os.getpid()}"):
            _lock(url)
        other = _lock(url, "study-b")  # another study of the same storage is free
        assert other is not None
        other.release()
    finally:
        first.release()
    first.release()  # idempotent
    again = _lock(url)
    assert again is not None
    again.release()
    if kind != "postgresql":  # the holder removes its lock file
        assert not lock_file_path(Path(url.removeprefix("sqlite:///")).resolve(),
                                  "study-a").exists()  # fmt: skip


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_killed_holder_leaves_the_study_free(tmp_path, kind):
    urls = dict(zip(["journal", "sqlite", "postgresql"], _storages(tmp_path), strict=False))
    if kind not in urls:
        pytest.skip("ECTPLAN_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL)")
    url = urls[kind]
    child = _holding(url, "killed")
    try:
        with pytest.raises(StudyBusyError, match=rf"pid {child.pid}"):
            _lock(url, "killed")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # A killed process never removes its file: the kernel (or the server) dropped the lock.
    lock = _lock(url, "killed")
    assert lock is not None
    lock.release()


def test_studies_in_memory_are_not_locked():
    assert lock_study(None, None, "any", "memory") is None


def test_a_search_of_a_study_another_search_holds_is_refused(ray_cluster, lesion, ect, tmp_path):
    url = default_storage_url(tmp_path / "out")
    first = DistributedSearch(lesion, ect, trials=2, workers=1, storage_url=url, **QUICK)
    second = DistributedSearch(lesion, ect, trials=2, workers=1, storage_url=url, **QUICK)
    try:
        first.prepare()
        with pytest.raises(
            StudyBusyError, match=r"is being searched now by ectplan search pid \d+"
        ):
            second.prepare()
        first.run()
        # Free once the first search has ended, closed or not: the second resumes its study.
        second.prepare()
        result = second.run()
    finally:
        first.close()
        second.close()
    assert result.trials_run == 2 and result.trials_in_study == 4


def test_a_search_that_cannot_open_the_study_lets_it_go(lesion, ect, tmp_path):
    url = default_storage_url(tmp_path / "out")
    first = DistributedSearch(lesion, ect, trials=2, workers=1, storage_url=url,
                              study_name="shared", **QUICK)  # fmt: skip
    first.prepare()  # makes the study for ECT
    first.close()
    other = DistributedSearch(lesion, load_protocol("irect"), trials=2, workers=1,
                              storage_url=url, study_name="shared", **QUICK)  # fmt: skip
    with pytest.raises(SearchStudyError, match="another case, protocol or search space"):
        other.prepare()
    lock = _lock(url, "shared")  # not left held by the search that failed
    assert lock is not None
    lock.release()


@needs_postgres
def test_lock_sessions_name_their_holder_to_postgresql():
    assert POSTGRES_URL is not None
    lock = _lock(POSTGRES_URL, "named")
    try:
        with pytest.raises(StudyBusyError, match=r"ectplan search pid \d+ on .* \(connected since"):
            _lock(POSTGRES_URL, "named")
    finally:
        assert lock is not None
        lock.release()


def _cut_connection(lock) -> None:  # type: ignore[no-untyped-def]
    """End a PostgreSQL lock's session from another connection, as a server restart or an
    administrator would: the server drops the session's advisory locks with it."""
    from sqlalchemy import create_engine, text

    backend = lock.connection.execute(text("SELECT pg_backend_pid()")).scalar()
    lock.connection.commit()
    engine = create_engine(lock.engine.url)
    try:
        with engine.connect() as other:
            assert other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend}).scalar()
    finally:
        engine.dispose()


def _held_then_cut(name: str):  # type: ignore[no-untyped-def]
    """A PostgreSQL lock on study ``name``, confirmed held, whose connection was then cut."""
    assert POSTGRES_URL is not None
    lock = _lock(POSTGRES_URL, name)
    assert lock is not None
    assert lock.confirm() is None  # held: nothing to say
    _cut_connection(lock)
    return lock


@needs_postgres
def test_a_lock_whose_connection_dropped_is_taken_again():
    assert POSTGRES_URL is not None
    lock = _held_then_cut("dropped")
    try:
        note = lock.confirm()
        assert note is not None and "has been taken again" in note
        with pytest.raises(StudyBusyError):  # held again, on its new connection
            _lock(POSTGRES_URL, "dropped")
        assert lock.confirm() is None
    finally:
        lock.release()


@needs_postgres
def test_a_lock_lost_to_another_search_says_who_took_the_study():
    assert POSTGRES_URL is not None
    lock = _held_then_cut("taken")
    thief = _lock(POSTGRES_URL, "taken")  # free while the first search has not noticed
    assert thief is not None
    try:
        with pytest.raises(StudyLostError, match=rf"was taken by ectplan search pid {os.getpid()}"):
            lock.confirm()
        lock.release()  # already let go: idempotent
        assert lock.confirm() is None
    finally:
        thief.release()


@needs_postgres
def test_a_search_whose_study_is_taken_stops_and_keeps_its_trials(
    ray_cluster, lesion, ect, tmp_path, monkeypatch
):
    """A search notices within ``CONFIRM_EVERY_S`` (0 here) of exploration: the first time
    its lock connection drops it takes the lock again and says so; the second time another
    search has taken the study and it stops, naming that search, its told trials stored."""
    import optuna

    import services.planner.driver as driver_module

    assert POSTGRES_URL is not None
    monkeypatch.setattr(driver_module, "CONFIRM_EVERY_S", 0.0)
    name = f"lost-{tmp_path.name}"
    search = DistributedSearch(lesion, ect, trials=40, workers=1, storage_url=POSTGRES_URL,
                               study_name=name, **QUICK)  # fmt: skip
    taken: list[StudyLock | None] = []

    def on_progress(progress) -> None:  # type: ignore[no-untyped-def]
        lock = search._study_lock
        if progress.trials_done == 3 and lock is not None and len(taken) == 0:
            _cut_connection(lock)
            taken.append(None)
        elif progress.trials_done == 6 and lock is not None and len(taken) == 1:
            _cut_connection(lock)
            taken.append(_lock(POSTGRES_URL, name))

    try:
        with pytest.raises(StudyLostError, match="this search stopped") as info:
            search.run(on_progress=on_progress)
        assert any("has been taken again" in note for note in search.notes)
    finally:
        search.close()
        for lock in taken:
            if lock is not None:
                lock.release()
    assert len(taken) == 2 and "lost-" in str(info.value)
    stored = optuna.load_study(study_name=name, storage=open_storage(POSTGRES_URL))
    told = [t for t in stored.get_trials(deepcopy=False) if t.state.is_finished()]
    assert 6 <= len(told) < 40
