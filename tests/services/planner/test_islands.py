"""Island exploration on the lesion phantom with real Ray actors: each worker asks its own
sampler, and the driver keeps the study, the budget and the faults."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from optimizer.search.local import SearchError, SearchProgress
from optimizer.search.seeding import geometric_seed_params
from optimizer.search.settings import load_score_weights
from optimizer.search.study import ERROR_ATTR
from services.planner import driver, island, island_exploration
from services.planner import unit_folder as unit_folder_module
from services.planner.actors import CaseSpec, EvaluatorWorker, search_space
from services.planner.driver import WORKER_ATTR, WORKER_PID_ATTR, DistributedSearch
from services.planner.island import IslandError, IslandSettings, IslandTrial, StopAt
from services.planner.progress import ClusterProgress
from services.planner.storage import default_storage_url, open_storage
from services.planner.unit_folder import UnitFolderLink
from services.planner.unit_sharing import SharedBundle
from tests.services.planner.conftest import LESION_MARGIN_MM, QUICK
from tests.services.planner.silence import StopWhenBusy, watchdog

# A database: the driver relays the trials between islands. The journal file on this one-host
# cluster: the islands append and read them there themselves.
STORAGES = ["sqlite", "journal"]


def storage_url(kind: str, folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}" if kind == "sqlite" else default_storage_url(folder)


def stored_trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).trials


@pytest.mark.parametrize("kind", STORAGES)
def test_two_islands_share_one_study_and_find_a_passing_plan(
    ray_cluster, lesion, ect, tmp_path, kind, monkeypatch
):
    url = storage_url(kind, tmp_path)
    if kind == "sqlite":  # as on a cluster of several hosts: pair solutions in Ray's store
        monkeypatch.setattr(island_exploration, "one_host", lambda: False)
    seen: list[ClusterProgress] = []
    with DistributedSearch(lesion, ect, trials=40, workers=2, seed=0, islands=True,
                           storage_url=url, study_name="islands", **QUICK) as search:  # fmt: skip
        result = search.run(on_progress=lambda p: seen.append(p))
    assert result.passed, result.summary()
    assert result.stopped_by == "trials" and result.trials_run == 40
    assert result.refined and result.refined[0].evaluation is result.evaluation
    assert search.island is not None and search.island.direct == (kind == "journal")
    stored = stored_trials(url, "islands")
    assert [t.number for t in stored] == list(range(40))
    assert all(t.state == TrialState.COMPLETE and "score" in t.user_attrs for t in stored)
    assert {t.user_attrs[WORKER_ATTR] for t in stored} == {0, 1}
    assert len({t.user_attrs[WORKER_PID_ATTR] for t in stored}) == 2
    # The driver's study holds the same trials (the islands' numbers are the study's).
    assert [(t.number, t.params) for t in search.study.trials] == [
        (t.number, t.params) for t in stored
    ]
    assert stored[result.trial_number].params == result.params
    # Every starting plan was evaluated once, by one island or the other.
    fixed = [t.system_attrs["fixed_params"] for t in stored
             if "fixed_params" in t.system_attrs]  # fmt: skip
    assert search.starts and sorted(map(str, fixed)) == sorted(map(str, search.starts))
    # Both workers were busy at once, the progress numbered trials as they were told.
    assert max(len(p.in_flight) for p in seen) == 2
    assert seen[-1].phase == "done" and seen[-1].trials_done == 40
    assert not search.reproducible
    # The islands handed each other the pair solutions they solved (whether a later plan
    # needed one depends on timing: ``test_an_island_adopts_another_islands_solutions``):
    # on this one host through a folder, removed at the end; else in Ray's object store.
    assert search.share_units and search.island is not None
    units = search.island.settings.units
    if kind == "journal":
        assert units is not None and not os.path.exists(units.path)
        assert search.island.bundles_handed == 0
    else:
        assert units is None and search.island.bundles_handed
    # Each island asked its latest plan knowing trials of the other (its study held more
    # trials than it had sent before that one).
    island = search.island
    assert all(island.history_seen[s] >= island.told_by[s] for s in (0, 1))


@pytest.mark.parametrize("kind", STORAGES)
def test_a_worker_killed_mid_trial_loses_only_the_trial_it_was_evaluating(
    ray_cluster, lesion, ect, tmp_path, kind
):
    url = storage_url(kind, tmp_path)
    killed: list[int] = []

    def kill_once(p: SearchProgress) -> None:
        assert isinstance(p, ClusterProgress)
        if killed or p.trials_done < 4 or not any(t.worker == 1 for t in p.in_flight):
            return
        assert search.pool is not None and search.pool.workers[1].pid is not None
        killed.append(search.pool.workers[1].pid)
        os.kill(killed[0], signal.SIGKILL)

    with DistributedSearch(lesion, ect, trials=24, workers=2, seed=0, islands=True,
                           storage_url=url, study_name="killed", **QUICK) as search:  # fmt: skip
        result = search.run(on_progress=kill_once)
    assert killed and search.stats.worker_deaths == 1
    # The trials the dead island had not begun went back to the budget: all 24 were run.
    assert result.stopped_by == "trials" and result.trials_run == 24
    assert any("worker death" in n for n in result.notes)
    stored = stored_trials(url, "killed")
    assert len(stored) == 24
    failed = [t for t in stored if t.state == TrialState.FAIL]
    assert len(failed) == 1  # the trial worker 1 was evaluating; its parameters died with it
    (lost,) = failed
    assert lost.user_attrs[WORKER_ATTR] == 1 and lost.params == {}
    assert "worker 1" in lost.user_attrs[ERROR_ATTR] and "died" in lost.user_attrs[ERROR_ATTR]
    assert all(t.state == TrialState.COMPLETE for t in stored if t is not lost)
    # The replacement (another process) went on in slot 1.
    later = [t for t in stored if t.number > lost.number and t.user_attrs[WORKER_ATTR] == 1]
    assert later and all(t.user_attrs[WORKER_PID_ATTR] != killed[0] for t in later)


@pytest.mark.parametrize("workers", [1, 2])
def test_one_island_reproduces_its_search_and_two_need_not(ray_cluster, lesion, ect, workers):
    def run(seed: int) -> list[tuple[str, float]]:
        with DistributedSearch(lesion, ect, trials=12, workers=workers, seed=seed, islands=True,
                               refine_top_k=1, **QUICK) as search:  # fmt: skip
            result = search.run()
        trials = search.study.get_trials(deepcopy=False)
        assert [r.number for r in result.history] == [t.number for t in trials]
        return [(str(sorted(t.params.items())), t.value) for t in trials]

    first = run(3)
    if workers == 1:  # same seed, same trials; another seed explores other plans
        assert run(3) == first
        assert run(4) != first
    else:  # the order of arrival decides; still every trial is a told, complete one
        assert len(first) == 12 and all(v is not None for _, v in first)


def test_islands_stop_at_the_time_limit_with_a_fine_plan(ray_cluster, lesion, ect):
    started = time.monotonic()
    with DistributedSearch(lesion, ect, trials=None, time_limit_s=12, workers=2, seed=0,
                           islands=True, **QUICK) as search:  # fmt: skip
        result = search.run()
    took = time.monotonic() - started
    assert result.stopped_by == "time" and result.trials_run >= 2
    assert result.refined and "(fine)" in result.summary()
    assert took < 12 + 15  # the limit, and slack for a busy machine
    # No call was left running: every trial handed out was run or handed back.
    assert search.asked == result.trials_run


@pytest.mark.parametrize("kind", STORAGES)
def test_a_resumed_study_is_handed_to_every_island(ray_cluster, lesion, ect, tmp_path, kind):
    url = storage_url(kind, tmp_path)
    options = {"workers": 2, "seed": 0, "islands": True, "storage_url": url,
               "study_name": "resumed", "refine_top_k": 1, **QUICK}  # fmt: skip
    with DistributedSearch(lesion, ect, trials=8, **options) as first:
        first.run()
    with DistributedSearch(lesion, ect, trials=6, **options) as second:
        result = second.run()
    assert any("resumed study 'resumed' with 8 earlier trials" in n for n in result.notes)
    assert result.trials_run == 6 and result.trials_in_study == 14
    assert second.island is not None and second.island.handed_at_start == 8
    # Every island asked knowing the first search's trials.
    assert second.island.history_seen and min(second.island.history_seen.values()) >= 8


def test_islands_that_start_after_the_end_of_exploration_run_one_trial_each(
    ray_cluster, lesion, ect, monkeypatch
):
    # Exploration's share of the limit is over before the workers are up (as when they start
    # slowly), while the fine re-evaluation still has time.
    monkeypatch.setattr(driver, "exploration_deadline", lambda started, limit: started)
    search = DistributedSearch(lesion, ect, trials=None, time_limit_s=60, workers=2, seed=0,
                               islands=True, **QUICK)  # fmt: skip
    with search:
        result = search.run()
    assert result.stopped_by == "time"
    assert search.island is not None and dict(search.island.told_by) == {0: 1, 1: 1}
    assert result.trials_run == search.asked == 2


def test_islands_need_a_sampler_name_and_reproduce_with_one_worker_only(lesion, ect):
    with pytest.raises(SearchError, match="island exploration needs a sampler name"):
        DistributedSearch(lesion, ect, trials=5, islands=True,
                          sampler=optuna.samplers.RandomSampler())  # fmt: skip
    one = DistributedSearch(lesion, ect, trials=5, workers=1, islands=True)
    two = DistributedSearch(lesion, ect, trials=5, workers=2, islands=True)
    assert one.reproducible and not two.reproducible


def test_an_island_adopts_another_islands_solutions_and_learns_their_trials(
    ray_cluster, lesion, ect
):
    spec = CaseSpec(2.0, 2.0, LESION_MARGIN_MM)
    first, second = (EvaluatorWorker(lesion, ect, spec) for _ in range(2))
    space = search_space(first.coarse_case, first.fine_case, ect)
    settings = IslandSettings("niche-ga", 0, False, load_score_weights(), space.signature(),
                              share_units=True)  # fmt: skip
    seeds = geometric_seed_params(space)[:2]
    out = list(first.explore(settings, 0, 0, 2, seeds, (), (), None))
    trials = [x for x in out if isinstance(x, IslandTrial)]
    (bundle,) = [x for x in out if isinstance(x, SharedBundle)]  # last, after the trials
    assert out[-1] is bundle and [t.trial.system_attrs["fixed_params"] for t in trials] == seeds
    assert bundle.owner == (0, 0) and bundle.nbytes > 0
    assert set(bundle.keys) == {k for t in trials for k in space.decode(t.trial.params)
                                .pair_geometry_hashes()}  # fmt: skip
    # The other island, handed that bundle, evaluates the first seed from its solutions.
    (again, *rest) = second.explore(settings, 1, 0, 1, seeds[:1], (), [bundle], None)
    assert isinstance(again, IslandTrial) and again.solved_pairs == 0
    assert again.adopted_pairs == again.reused_pairs > 0
    assert again.record.score == trials[0].record.score
    assert not rest  # nothing solved: no bundle
    # Handed the first island's trials, its sampler sees them with its own.
    list(second.explore(settings, 1, 0, 0, (), [t.trial for t in trials], (), None))
    assert second._island is not None and len(second._island.study.trials) == 3
    # A call that starts past its end runs nothing and keeps none of its starting plans
    # (they stay the driver's, for another call).
    assert list(second.explore(settings, 1, 0, 2, seeds, (), (), StopAt(time.time() - 1, 60))) == []
    assert len(second._island.study.trials) == 3
    # Nor one whose seconds left have run out on its own clock, whatever the wall clock says
    # (a host whose clock lags the driver's), and one that has both left runs.
    assert list(second.explore(settings, 1, 0, 2, seeds, (), (), StopAt(time.time() + 60, 0))) == []
    ran = list(second.explore(settings, 1, 0, 1, seeds, (), (), StopAt(time.time() + 60, 60)))
    assert [type(x) for x in ran if not isinstance(x, SharedBundle)] == [IslandTrial]


def test_islands_on_one_host_take_each_others_solutions_from_the_folder_at_once(
    ray_cluster, lesion, ect
):
    spec = CaseSpec(2.0, 2.0, LESION_MARGIN_MM)
    first, second = (EvaluatorWorker(lesion, ect, spec) for _ in range(2))
    space = search_space(first.coarse_case, first.fine_case, ect)
    link = UnitFolderLink.create(max_bytes=1 << 30, islands=2)
    settings = IslandSettings("niche-ga", 0, False, load_score_weights(), space.signature(),
                              share_units=True, units=link)  # fmt: skip
    try:
        seeds = geometric_seed_params(space)[:1]
        (out,) = first.explore(settings, 0, 0, 1, seeds, (), (), None)  # no bundle after it
        assert isinstance(out, IslandTrial) and out.trial is not None and out.solved_pairs > 0
        assert out.adopted_pairs == 0 and len(os.listdir(link.path)) == out.solved_pairs
        (again,) = second.explore(settings, 1, 0, 1, seeds, (), (), None)
        assert isinstance(again, IslandTrial) and again.solved_pairs == 0
        assert again.adopted_pairs == again.reused_pairs == out.solved_pairs
        assert again.record.score == out.record.score
    finally:
        link.remove()


def test_an_island_that_cannot_see_the_folder_shares_in_bundles(ray_cluster, lesion, ect):
    worker = EvaluatorWorker(lesion, ect, CaseSpec(2.0, 2.0, LESION_MARGIN_MM))
    space = search_space(worker.coarse_case, worker.fine_case, ect)
    link = UnitFolderLink.create(max_bytes=1 << 30, islands=2)
    try:  # the same path, another folder: as on another filesystem with the driver's address
        elsewhere = dataclasses.replace(link, identity=(link.identity[0], link.identity[1] + 1))
        settings = IslandSettings("niche-ga", 0, False, load_score_weights(), space.signature(),
                                  share_units=True, units=elsewhere)  # fmt: skip
        seeds = geometric_seed_params(space)[:1]
        trial, bundle = worker.explore(settings, 1, 0, 1, seeds, (), (), None)
        assert isinstance(trial, IslandTrial) and trial.solved_pairs > 0
        assert isinstance(bundle, SharedBundle) and len(bundle.keys) == trial.solved_pairs
        assert os.listdir(link.path) == []
    finally:
        link.remove()


def test_no_folder_for_the_islands_is_a_note_and_bundles(ray_cluster, monkeypatch):
    def refused(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", "/tmp")

    search: Any = SimpleNamespace(share_units=True, workers=2, notes=[])
    monkeypatch.setattr(unit_folder_module.tempfile, "mkdtemp", refused)
    assert island_exploration.unit_folder(search) is None
    assert search.notes == [
        "the islands share pair solutions through Ray's object store: no folder could be made "
        "for them (PermissionError: [Errno 13] Permission denied: '/tmp')"
    ]
    search.workers = 1  # a lone island has no one to share with
    monkeypatch.undo()
    assert island_exploration.unit_folder(search) is None and len(search.notes) == 1


def test_an_islands_end_is_the_earlier_of_the_wall_clock_and_its_own_count(monkeypatch):
    clock = {"wall": 1000.0, "own": 50.0}  # the driver's wall clock; the actor's monotonic
    monkeypatch.setattr(island.time, "time", lambda: clock["wall"])
    monkeypatch.setattr(island.time, "monotonic", lambda: clock["own"])
    assert StopAt(999.0, 60).passed()()
    assert StopAt(1060.0, 0).passed()()
    queued = StopAt(1060.0, 20)
    clock["own"] += 30  # a call queued behind another: counted from its start, not its sending
    passed = queued.passed()
    assert not passed()
    clock["own"] += 19.9
    assert not passed()
    clock["own"] += 0.1  # its own count ran out first: this host's wall clock lags
    assert passed()
    lagging = StopAt(1010.0, 60).passed()
    clock["wall"] += 10  # the wall clock's end first: this host's clock runs ahead or on time
    assert lagging()


def test_an_island_refuses_another_search_space(lesion, ect):
    worker = EvaluatorWorker(lesion, ect, CaseSpec(2.0, 2.0, LESION_MARGIN_MM))
    settings = IslandSettings("random", 0, False, load_score_weights(), "another search")
    with pytest.raises(IslandError, match="worker 3 built another search space"):
        next(worker.explore(settings, 3, 0, 1, (), (), (), None))


@pytest.mark.parametrize("kind", ["memory", "journal"])
def test_an_island_that_stops_answering_is_stopped_after_the_grace(
    ray_cluster, lesion, ect, tmp_path, kind
):
    # With the journal shared, a stopped island may hold its lock: it is killed outright.
    url = None if kind == "memory" else storage_url(kind, tmp_path)
    search = DistributedSearch(lesion, ect, trials=None, time_limit_s=20, workers=2, seed=0,
                               islands=True, storage_url=url, **QUICK)  # fmt: skip
    search.stall_grace_s = 2.0
    stop = StopWhenBusy(search, slot=1, after=2)
    started = time.monotonic()
    try:
        with watchdog(120) as timed_out:
            result = search.run(on_progress=stop, cancel_event=timed_out)
        took = time.monotonic() - started
        assert search.pool is not None and search.pool.workers[1].retired
    finally:
        stop.kill()
        search.close()
    assert stop.stopped and not timed_out.is_set()
    assert took < 20 + 2 + 20  # the limit, the grace, slack for a busy machine
    assert result.stopped_by == "time" and result.refined  # island 0 went on, then refined
    assert any("worker(s) 1 stopped: the trial each was evaluating was told FAIL" in n
               for n in result.notes)  # fmt: skip
    failed = [t for t in search.study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[WORKER_ATTR] == 1
    assert "no answer within 2 s" in failed[0].user_attrs[ERROR_ATTR]
    assert search.island is not None and search.island.direct == (kind == "journal")


def test_without_a_time_limit_a_silent_island_is_replaced_and_the_budget_spent(
    ray_cluster, lesion, ect
):
    search = DistributedSearch(lesion, ect, trials=16, workers=2, seed=0, islands=True, **QUICK)
    search.stall_grace_s = 5.0  # several times a call's trial
    stop = StopWhenBusy(search, slot=1, after=2)
    try:
        with watchdog(120) as timed_out:  # waiting for ever was the old behaviour
            result = search.run(on_progress=stop, cancel_event=timed_out)
        assert search.pool is not None
        assert [(w.retired, w.deaths) for w in search.pool.workers] == [(False, 0), (False, 1)]
    finally:
        stop.kill()
        search.close()
    assert stop.stopped and not timed_out.is_set()
    # Island 1's unrun trials went back to the budget, which the islands spent.
    assert result.stopped_by == "trials" and result.refined
    assert any(
        "worker(s) 1 replaced: the trial each was evaluating was told FAIL" in n
        and "no answer within 5 s of holding a plan" in n
        for n in result.notes
    )
    stored = search.study.get_trials(deepcopy=False)
    failed = [t for t in stored if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[WORKER_ATTR] == 1
    assert sum(t.state == TrialState.COMPLETE for t in stored) == 15


@pytest.mark.parametrize("kind", STORAGES)
def test_the_last_island_dying_is_a_clear_error_that_keeps_the_told_trials(
    ray_cluster, lesion, ect, tmp_path, kind
):
    url = storage_url(kind, tmp_path)
    killed: list[int] = []

    def kill_after_three(p: SearchProgress) -> None:
        if p.trials_done >= 3 and not killed and search.pool is not None:
            pid = search.pool.workers[0].pid
            assert pid is not None
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    search = DistributedSearch(lesion, ect, trials=200, workers=1, seed=0, islands=True,
                               max_restarts=0, storage_url=url, study_name="last",
                               **QUICK)  # fmt: skip
    with search, pytest.raises(SearchError, match="all 1 workers died"):
        search.run(on_progress=kill_after_three)
    stored = stored_trials(url, "last")
    complete = [t for t in stored if t.state == TrialState.COMPLETE]
    assert killed and len(complete) >= 3
    assert [t.state for t in stored].count(TrialState.FAIL) == 1  # the one it was evaluating
