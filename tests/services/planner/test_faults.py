"""Faults and stops with real Ray actors: a worker killed mid-trial, cancellation, Ctrl-C."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.search.local import SearchError, SearchProgress
from optimizer.search.study import ERROR_ATTR
from services.planner.driver import (
    WORKER_ATTR,
    DistributedSearch,
    SearchCancelledError,
    _ctrl_c_cancels,
)
from services.planner.progress import ClusterProgress
from services.planner.storage import default_storage_url, open_storage
from tests.services.planner.conftest import QUICK
from tests.services.planner.silence import StopWhenBusy, running, watchdog


@pytest.mark.parametrize("reproducible", [True, False], ids=["batches", "asynchronous"])
def test_a_worker_killed_mid_trial_loses_only_its_trial(
    ray_cluster, lesion, ect, tmp_path, reproducible
):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    killed: dict[str, object] = {}

    def kill_once(p: SearchProgress) -> None:
        # Right after a batch was handed out both workers are mid-trial.
        assert isinstance(p, ClusterProgress)
        if killed or p.trials_done < 4 or len(p.in_flight) < 2:
            return
        victim = next(t for t in p.in_flight if t.worker == 1)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        killed["pid"] = victim.pid
        killed["trials"] = {t.trial for t in p.in_flight if t.worker == victim.worker}

    with DistributedSearch(lesion, ect, trials=12, workers=2, seed=0, storage_url=url,
                           study_name="killed", reproducible=reproducible,
                           **QUICK) as search:  # fmt: skip
        result = search.run(on_progress=kill_once)
    assert killed, "the search never had both workers busy"
    assert search.stats.worker_deaths == 1
    assert result.trials_run == 12 and result.stopped_by == "trials"
    assert any("worker death" in n for n in result.notes)
    stored = optuna.load_study(study_name="killed", storage=url)
    failed = {t.number for t in stored.trials if t.state == TrialState.FAIL}
    # One trial is lost: the one worker 1 was evaluating when it died (the kill may land just
    # after it finished the trials the progress showed: then the next one sent to it). The
    # plan queued behind the lost one is sent again, a finished result is kept.
    assert len(failed) == 1
    (lost,) = failed
    assert stored.trials[lost].user_attrs[WORKER_ATTR] == 1
    assert lost >= min(killed["trials"])
    for t in stored.trials:
        if t.number in failed:
            assert "worker 1" in t.user_attrs[ERROR_ATTR] and "died" in t.user_attrs[ERROR_ATTR]
        else:
            assert t.state == TrialState.COMPLETE and "score" in t.user_attrs
    # The replacement actor (another process) went on evaluating trials in slot 1.
    later = [t for t in stored.trials if t.number > max(failed) and t.user_attrs[WORKER_ATTR] == 1]
    assert later and all(t.state == TrialState.COMPLETE for t in later)
    assert all(t.user_attrs["worker_pid"] != killed["pid"] for t in later)
    assert len(stored.trials) == 12


def test_a_worker_killed_before_the_fine_re_evaluation_loses_one_candidate_only(
    ray_cluster, lesion, ect
):
    killed: list[int] = []

    def kill_at_refine(p: SearchProgress) -> None:
        # The fine candidates all go to the one worker right after this report: it is dead
        # by then, and each of them learns so.
        assert isinstance(p, ClusterProgress)
        if p.phase == "refine" and not killed:
            assert search.pool is not None
            pid = search.pool.workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with DistributedSearch(lesion, ect, trials=12, workers=1, seed=0, refine_top_k=3,
                           **QUICK) as search:  # fmt: skip
        result = search.run(on_progress=kill_at_refine)
        assert search.pool is not None
        replacement = search.pool.workers[0]
        assert replacement.deaths == 1 and not replacement.retired
    assert killed
    # Replaced once, not once per candidate that found it dead.
    assert search.stats.worker_deaths == search.stats.fine_worker_deaths == 1
    lost = [r for r in result.refined if r.error is not None and "died" in r.error]
    assert len(lost) == 1 and f"pid {killed[0]}" in lost[0].error
    # The candidates queued behind the lost one were evaluated by the replacement.
    evaluated = [r for r in result.refined if r.evaluation is not None]
    assert len(evaluated) >= 2
    assert result.evaluation is not None and result.trial_number != lost[0].candidate.trial_number
    assert any("during the fine re-evaluation" in n for n in result.notes)
    assert not any("told FAIL" in n for n in result.notes)


def test_the_last_worker_dying_in_the_fine_phase_returns_the_coarse_best(
    ray_cluster, lesion, ect
):
    def kill_at_refine(p: SearchProgress) -> None:
        if p.phase == "refine" and search.pool is not None and search.pool.workers[0].pid:
            os.kill(search.pool.workers[0].pid, signal.SIGKILL)

    with DistributedSearch(lesion, ect, trials=8, workers=1, seed=0, max_restarts=0,
                           **QUICK) as search:  # fmt: skip
        result = search.run(on_progress=kill_at_refine)
    assert result.refined == [] and "(coarse)" in result.summary()
    assert result.trials_run == 8 and result.evaluation is not None
    assert any("no fine evaluation could be had" in n and "coarse exploration result" in n
               for n in result.notes)  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_stops_answering_is_stopped_after_the_grace(
    ray_cluster, lesion, ect, workers
):
    # Exploration ends at 24 s of the 40 s limit; the silent worker is given 2 s more.
    search = DistributedSearch(lesion, ect, trials=None, time_limit_s=40, workers=workers,
                               seed=0, **QUICK)  # fmt: skip
    search.stall_grace_s = 2.0
    stop = StopWhenBusy(search, slot=workers - 1, after=1)
    started = time.monotonic()
    try:
        with watchdog(150) as timed_out:
            result = search.run(on_progress=stop, cancel_event=timed_out)
        took = time.monotonic() - started
        assert search.pool is not None and search.pool.workers[-1].retired
        evaluated = search.evaluate_with_fields(result.plan)
    finally:
        stop.kill(wait_s=200)  # abandoned: killed outright, and waited for
        search.close()
    assert stop.stopped, "the last worker never had a plan in flight after the first tell"
    assert not timed_out.is_set(), "the search waited for the silent worker for ever"
    assert took < 40 + 2 + 20  # the limit, the grace, slack for a busy machine
    assert result.stopped_by == "time" and result.trials_run >= 1
    silent = f"worker(s) {workers - 1} stopped: their plans were told FAIL"
    assert any(silent in n and "no answer within 2 s" in n for n in result.notes)
    stored = search.study.get_trials(deepcopy=False)
    failed = [t for t in stored if t.state == TrialState.FAIL]
    # Only the silent worker's plans are lost; the other's results, held behind them in
    # reproducible order, are kept.
    assert failed and all(t.user_attrs[WORKER_ATTR] == workers - 1 for t in failed)
    assert all("no answer within 2 s" in t.user_attrs[ERROR_ATTR] for t in failed)
    if workers == 2:  # the other worker re-evaluates the best plans on the fine grid
        assert any(t.state == TrialState.COMPLETE and t.user_attrs[WORKER_ATTR] == 0
                   and t.number > min(f.number for f in failed) for t in stored)  # fmt: skip
        assert result.refined and "(fine)" in result.summary()
    else:  # none left: the best exploration plan, and it says so
        assert result.refined == [] and "(coarse)" in result.summary()
        assert any("coarse exploration result of trial" in n for n in result.notes)
    assert evaluated.evaluation.plan.name == result.plan.name


# Without a time limit the grace applies to every worker for the whole search: several times
# the slowest evaluation of these tests (0.2 s), so that a busy machine stops only the silent one.
GRACE_S = 5.0


@pytest.mark.parametrize(
    ("workers", "reproducible"), [(1, True), (2, True), (2, False)],
    ids=["one-worker", "batches", "asynchronous"],
)  # fmt: skip
def test_without_a_time_limit_a_silent_worker_is_replaced_and_the_budget_spent(
    ray_cluster, lesion, ect, workers, reproducible
):
    # A trial budget alone: the search goes on, so a hung worker is replaced, not just stopped.
    search = DistributedSearch(lesion, ect, trials=10, workers=workers, seed=0,
                               reproducible=reproducible, **QUICK)  # fmt: skip
    search.stall_grace_s = GRACE_S
    stop = StopWhenBusy(search, slot=workers - 1, after=1)
    try:
        with watchdog(150) as timed_out:
            result = search.run(on_progress=stop, cancel_event=timed_out)
        assert search.pool is not None
        slot = search.pool.workers[-1]
        assert not slot.retired and slot.deaths == 1 and slot.pid not in (None, *stop.stopped)
    finally:
        stop.kill()
        search.close()
    assert stop.stopped, "the last worker never had a plan in flight after the first tell"
    assert not timed_out.is_set(), "the search waited for the silent worker for ever"
    replaced = f"worker(s) {workers - 1} replaced: their plans were told FAIL"
    assert any(replaced in n and f"no answer within {GRACE_S:g} s of holding a plan" in n
               for n in result.notes)  # fmt: skip
    stored = search.study.get_trials(deepcopy=False)
    failed = [t for t in stored if t.state == TrialState.FAIL]
    assert 1 <= len(failed) <= 2  # the plan it was evaluating and the one queued behind it
    assert all(t.user_attrs[WORKER_ATTR] == workers - 1 for t in failed)
    assert all(f"no answer within {GRACE_S:g} s" in t.user_attrs[ERROR_ATTR] for t in failed)
    # The whole budget is spent and the best plans are refined. Alone, the replacement spent
    # the rest itself (with two, the other may finish the budget while it starts: it answered
    # then in the fine re-evaluation, as its pid above says).
    assert result.stopped_by == "trials" and result.trials_run == 10
    assert sum(t.state == TrialState.COMPLETE for t in stored) == 10 - len(failed)
    after = [t for t in stored if t.number > max(f.number for f in failed)]
    assert workers == 2 or all(t.state == TrialState.COMPLETE for t in after)
    assert result.refined and "(fine)" in result.summary()


def test_without_a_time_limit_a_silent_worker_past_its_restarts_is_stopped(
    ray_cluster, lesion, ect
):
    search = DistributedSearch(lesion, ect, trials=10, workers=1, seed=0, max_restarts=0,
                               **QUICK)  # fmt: skip
    search.stall_grace_s = GRACE_S
    stop = StopWhenBusy(search, slot=0, after=1)
    try:
        with watchdog(150) as timed_out:
            result = search.run(on_progress=stop, cancel_event=timed_out)
        assert search.pool is not None and search.pool.workers[0].retired
    finally:
        stop.kill()
        search.close()
    assert stop.stopped and not timed_out.is_set()
    assert any("worker(s) 0 stopped: their plans were told FAIL" in n for n in result.notes)
    failed = [t for t in search.study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert 1 <= len(failed) <= 2
    # None left to spend the budget: the best exploration plan, and it says why.
    assert result.stopped_by == "workers" and result.trials_run < 10
    assert result.refined == [] and "(coarse)" in result.summary()
    assert any("coarse exploration result of trial" in n for n in result.notes)


def test_without_a_time_limit_a_worker_silent_in_the_fine_phase_loses_only_its_candidates(
    ray_cluster, lesion, ect
):
    search = DistributedSearch(lesion, ect, trials=8, workers=2, seed=0, refine_top_k=3, **QUICK)
    search.stall_grace_s = GRACE_S
    stop = StopWhenBusy(search, slot=1, phase="refine")
    try:
        with watchdog(150) as timed_out:
            result = search.run(on_progress=stop, cancel_event=timed_out)
        assert search.pool is not None and search.pool.workers[1].retired
        assert not search.pool.workers[0].retired  # only the silent one
    finally:
        stop.kill()
        search.close()
    assert stop.stopped and not timed_out.is_set()
    assert result.stopped_by == "trials" and result.trials_run == 8
    # Candidate i went to worker i mod 2: worker 1's is lost, worker 0's were waited for.
    lost = [r for r in result.refined if r.error is not None]
    silent = f"no answer within {GRACE_S:g} s of holding a plan"
    assert lost and all(silent in r.error for r in lost)
    assert result.evaluation is not None and "(fine)" in result.summary()
    assert any("worker(s) 1 stopped in the fine re-evaluation" in n for n in result.notes)


def test_a_storage_that_fails_mid_search_is_a_clear_error(ray_cluster, lesion, ect, tmp_path):
    journal = tmp_path / "study.journal.log"
    broken: list[int] = []

    def break_after_three(p: SearchProgress) -> None:
        # The journal file becomes a folder: every later write fails as on a lost volume.
        if p.trials_done >= 3 and not broken:
            journal.unlink()
            journal.mkdir()
            broken.append(p.trials_done)

    search = DistributedSearch(lesion, ect, trials=30, workers=1, seed=0,
                               storage_url=str(journal), **QUICK)  # fmt: skip
    with pytest.raises(SearchError, match=r"the study storage .*study\.journal\.log failed") as err:
        search.run(on_progress=break_after_three)
    assert broken
    assert "could not be written (IsADirectoryError" in str(err.value)
    assert "plan again with the same --out" in str(err.value)
    assert search.pool is not None and not search.pool.alive  # the workers were stopped
    search.close()


def test_a_search_cancelled_while_it_builds_its_grids_starts_no_worker(ray_cluster, lesion, ect):
    cancel = threading.Event()
    cancel.set()  # as a front's cancel arriving while the job prepares
    search = DistributedSearch(lesion, ect, trials=10, workers=2, **QUICK)
    with pytest.raises(SearchCancelledError, match="cancelled before any plan was evaluated"):
        search.run(cancel_event=cancel)
    assert search.pool is None
    search.close()


def _run_in_thread(search: DistributedSearch, cancel: threading.Event, started: threading.Event):
    box: dict[str, object] = {}

    def progress(p: SearchProgress) -> None:
        if p.trials_done >= 3:
            started.set()

    def target() -> None:
        try:
            box["result"] = search.run(on_progress=progress, cancel_event=cancel)
        except BaseException as exc:
            box["error"] = exc
        box["returned_at"] = time.monotonic()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


@pytest.mark.parametrize(
    ("islands", "journal"),
    [(False, False), (True, False), (True, True)],
    ids=["driver", "islands", "islands-sharing-the-journal"],
)
def test_cancellation_stops_within_two_seconds_and_keeps_completed_trials(
    ray_cluster, lesion, ect, tmp_path, islands, journal
):
    url = default_storage_url(tmp_path) if journal else f"sqlite:///{tmp_path / 'study.db'}"
    cancel, going = threading.Event(), threading.Event()
    search = DistributedSearch(lesion, ect, trials=100_000, workers=2, storage_url=url,
                               study_name="cancelled", islands=islands, **QUICK)  # fmt: skip
    thread, box = _run_in_thread(search, cancel, going)
    assert going.wait(120), "no trial finished"
    cancel.set()
    set_at = time.monotonic()
    thread.join(10)
    assert not thread.is_alive()
    assert box["returned_at"] - set_at < 2.0
    result = box["result"]
    assert result.stopped_by == "cancelled"
    assert any("cancelled before the fine re-evaluation" in n for n in result.notes)
    assert search.island is None or search.island.direct == journal
    stored = optuna.load_study(study_name="cancelled", storage=open_storage(url))
    states = [t.state for t in stored.trials]
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.COMPLETE) == sum(r.error is None for r in result.history)
    assert states.count(TrialState.COMPLETE) >= 3
    # The workers' processes were killed with the search (Ray kills them asynchronously).
    assert search.pool is not None and not search.pool.alive
    pids = [w.pid for w in search.pool.workers if w.pid is not None]
    assert len(pids) == 2
    while any(running(pid) for pid in pids) and time.monotonic() < set_at + 10:
        time.sleep(0.05)
    assert not any(running(pid) for pid in pids), "a worker process outlived the cancellation"
    if islands:  # the folder the islands shared their pair solutions through is gone
        units = search.island is not None and search.island.settings.units
        assert units and not os.path.exists(units.path)


def test_ctrl_c_cancels_like_the_event(ray_cluster, lesion, ect):
    # The time limit only keeps a broken cancellation from running for ever.
    search = DistributedSearch(lesion, ect, trials=100_000, time_limit_s=120, workers=1, **QUICK)
    seen: list[float] = []
    before = signal.getsignal(signal.SIGINT)

    def interrupt_after_three(p: SearchProgress) -> None:
        if p.trials_done >= 3 and not seen:
            seen.append(time.monotonic())
            _thread.interrupt_main()  # what Ctrl-C does: SIGINT handled in the main thread

    result = search.run(on_progress=interrupt_after_three)
    assert time.monotonic() - seen[0] < 2.0
    assert result.stopped_by == "cancelled" and result.trials_run >= 3
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back
    search.close()


def test_ctrl_c_sets_the_event_once_then_interrupts_and_only_in_the_main_thread():
    event = threading.Event()
    before = signal.getsignal(signal.SIGINT)
    with _ctrl_c_cancels(event):
        _thread.interrupt_main()
        time.sleep(0.01)  # the handler runs here, in the main thread, without raising
        assert event.is_set()
        # A second Ctrl-C stops work that does not poll the event (building grids, say).
        with pytest.raises(KeyboardInterrupt):
            _thread.interrupt_main()
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before
    # Elsewhere than the main thread nothing is installed (signals reach the main thread).
    seen: list[object] = []

    def in_thread() -> None:
        with _ctrl_c_cancels(threading.Event()):
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [before]


def test_cancelling_before_anything_was_evaluated_says_so(ray_cluster, lesion, ect):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SearchCancelledError, match="cancelled"):
        DistributedSearch(lesion, ect, trials=5, workers=1, **QUICK).run(cancel_event=cancel)
