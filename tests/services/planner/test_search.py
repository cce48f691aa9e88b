"""Distributed searches on the lesion phantom with real Ray actors: result, order, limits."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.search.fidelity import exploration_deadline
from optimizer.search.local import SearchError
from services.planner.driver import (
    PIPELINE_DEPTH,
    WORKER_ATTR,
    WORKER_PID_ATTR,
    DistributedSearch,
    crowded_note,
    plan_distributed,
)
from services.planner.progress import ClusterProgress
from tests.services.planner.conftest import QUICK


def test_two_workers_find_a_plan_passing_every_required_criterion(ray_cluster, lesion, ect):
    seen: list[ClusterProgress] = []
    with DistributedSearch(lesion, ect, trials=20, workers=2, seed=0, **QUICK) as search:
        result = search.run(on_progress=lambda p: seen.append(p))
        fields = search.evaluate_with_fields(result.plan)
    assert result.passed, result.summary()
    assert result.stopped_by == "trials" and result.trials_run == 20
    assert result.refined and result.refined[0].evaluation is result.evaluation
    assert all(r.seconds > 0.01 for r in result.refined)  # the workers' fine solves
    # Both workers evaluated trials, each with its next plan queued (two batches out).
    trials = search.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 20
    assert {t.user_attrs[WORKER_ATTR] for t in trials} == {0, 1}
    assert len({t.user_attrs[WORKER_PID_ATTR] for t in trials}) == 2
    assert max(len(p.in_flight) for p in seen) == 2 * PIPELINE_DEPTH
    assert all(p.workers_alive == 2 for p in seen if p.phase == "explore")
    assert seen[-1].phase == "done" and seen[-1].trials_done == 20
    # The fields come from the worker's cache and give the same evaluation.
    assert fields.evaluation.passed and len(fields.solutions) == len(result.plan.pairs)
    assert fields.evaluation.to_dict()["criteria"] == result.evaluation.to_dict()["criteria"]


@pytest.mark.parametrize("workers", [1, 2])
def test_same_seed_and_workers_give_the_same_trials_and_plan(ray_cluster, lesion, ect, workers):
    kwargs = {"trials": 12, "workers": workers, "refine_top_k": 1, **QUICK}
    a, b = (plan_distributed(lesion, ect, seed=3, **kwargs) for _ in range(2))
    assert [(r.number, r.score, r.passed) for r in a.history] == [
        (r.number, r.score, r.passed) for r in b.history
    ]
    assert a.params == b.params and a.score.total == b.score.total
    assert a.plan.model_dump() == b.plan.model_dump()
    if workers == 2:  # and the comparison can fail: another seed explores other plans
        c = plan_distributed(lesion, ect, seed=4, **kwargs)
        assert [r.score for r in c.history] != [r.score for r in a.history]


def test_time_limit_stops_cleanly_and_sqlite_keeps_every_trial(
    ray_cluster, lesion, ect, tmp_path, monkeypatch
):
    # Any start-up counts as slow here, so the note on it must appear.
    monkeypatch.setattr("services.planner.slow_start.SLOW_START_SHARE", 0.0)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    limit = 10.0
    started = time.monotonic()
    with DistributedSearch(
        lesion, ect, trials=None, time_limit_s=limit, workers=2, seed=0, storage_url=url,
        study_name="time-limited", **QUICK,
    ) as search:  # fmt: skip
        result = search.run()
    took = time.monotonic() - started
    assert result.stopped_by == "time"
    assert result.trials_run >= 2
    # Exploration leaves the end of the limit to the fine re-evaluation (the trials in flight
    # then finish: 0.1 s in all here, against the 4 s kept) ...
    explore_until = exploration_deadline(0.0, limit)
    assert explore_until is not None and explore_until < limit - 1.5
    explored = search.stats.startup_s + search.stats.explore_s
    assert explore_until <= explored < explore_until + 1.5
    # ... whose rounds stop at the limit, but for the fine evaluation running then.
    assert took < limit + 10.0
    assert result.refined and result.evaluation is result.refined[0].evaluation
    stored = optuna.load_study(study_name="time-limited", storage=url)
    states = [t.state for t in stored.trials]
    assert len(states) == result.trials_run == len(result.history)
    assert states.count(TrialState.COMPLETE) == sum(r.error is None for r in result.history)
    assert TrialState.RUNNING not in states
    best = stored.trials[result.trial_number]
    assert best.user_attrs["score"] == pytest.approx(result.coarse_score)
    assert best.params == result.params
    # A start-up that took much of the limit (a cold Numba cache) is told with its figures.
    (slow,) = [n for n in result.notes if n.startswith("start-up took")]
    assert f"of the {limit:g} s time limit" in slow
    assert f"to explore {result.trials_run} trials" in slow


def test_a_slow_start_is_not_told_when_the_trial_budget_ended_the_search(
    ray_cluster, lesion, ect, monkeypatch
):
    monkeypatch.setattr("services.planner.slow_start.SLOW_START_SHARE", 0.0)
    result = plan_distributed(lesion, ect, trials=3, time_limit_s=600.0, workers=1,
                              refine_top_k=1, **QUICK)  # fmt: skip
    assert result.stopped_by == "trials"
    assert not any(n.startswith("start-up took") for n in result.notes)


def test_workers_not_ready_within_the_time_limit_is_a_clear_error(ray_cluster, lesion, ect):
    search = DistributedSearch(lesion, ect, trials=None, time_limit_s=0.01, workers=1, **QUICK)
    late = r"workers were not ready within the 0.01 s time limit"
    with search, pytest.raises(SearchError, match=late):
        search.run()
    assert search.stats.startup_s >= 0.01


def test_a_stored_study_resumes_without_reseeding(ray_cluster, lesion, ect, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = plan_distributed(lesion, ect, trials=4, workers=2, storage_url=url, refine_top_k=1,
                             **QUICK)  # fmt: skip
    second = plan_distributed(lesion, ect, trials=3, workers=2, storage_url=url,
                              refine_top_k=1, **QUICK)  # fmt: skip
    assert second.trials_run == 3 and second.trials_in_study == 7
    assert [r.number for r in second.history] == [4, 5, 6]
    assert any("resumed study" in n for n in second.notes)
    assert first.study_name == second.study_name == "ectplan-lesion-phantom-ect-seed0-focal"


def test_zero_or_missing_budget_is_refused_before_any_work(lesion, ect):
    with pytest.raises(SearchError, match="trials must be >= 1"):
        DistributedSearch(lesion, ect, trials=0)
    with pytest.raises(SearchError, match="time_limit_s must be > 0"):
        DistributedSearch(lesion, ect, trials=None, time_limit_s=0.0)
    with pytest.raises(SearchError, match="give a trial budget"):
        DistributedSearch(lesion, ect, trials=None, time_limit_s=None)
    with pytest.raises(SearchError, match="workers must be >= 1"):
        DistributedSearch(lesion, ect, trials=5, workers=0)


def test_asynchronous_order_keeps_every_worker_busy_and_tells_every_trial(
    ray_cluster, lesion, ect
):
    busy: list[int] = []
    with DistributedSearch(lesion, ect, trials=8, workers=2, reproducible=False,
                           refine_top_k=1, **QUICK) as search:  # fmt: skip
        result = search.run(on_progress=lambda p: busy.append(len(p.in_flight)))
    assert result.trials_run == 8 and len(search.study.trials) == 8
    assert all(t.state == TrialState.COMPLETE for t in search.study.trials)
    assert max(busy) == 2 * PIPELINE_DEPTH  # one evaluating and one queued per worker


def test_two_workers_hand_pair_solutions_to_each_other(ray_cluster, lesion, ect):
    with DistributedSearch(lesion, ect, trials=30, workers=2, seed=0, refine_top_k=1,
                           **QUICK) as search:  # fmt: skip
        search.run()
    stats = search.stats
    assert search.share_units and stats.pairs_adopted > 0
    assert stats.pairs_solved + stats.pairs_reused >= stats.trials_told


def test_more_local_workers_than_cpus_are_noted():
    assert crowded_note(2, 2) is None and crowded_note(1, 16) is None
    note = crowded_note(8, 2)
    assert note is not None
    assert "8 workers on this machine's 2 CPUs" in note and "--workers 2 or fewer" in note
