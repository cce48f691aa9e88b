"""End to end on a phantom with the real evaluator: improvement, reproducibility, stops, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.fidelity import (
    REFINE_RESERVE_MAX_S,
    REFINE_SHARE,
    exploration_deadline,
    refine_reserve_s,
)
from optimizer.search.local import SearchError, run_search
from optimizer.search.objective import OBJECTIVE_NAMES, score
from optimizer.search.seeding import geometric_seeds
from optimizer.search.space import SearchSpace
from optimizer.search.study import SearchStudyError


@pytest.fixture(scope="module")
def search(phantom_case, ect, ect_coarse, ect_fine):
    """run_search on the phantom with the session's evaluators (2 mm, linear / nonlinear)."""

    def go(**kwargs):
        kwargs.setdefault("trials", 30)
        kwargs.setdefault("seed", 0)
        return run_search(
            phantom_case, phantom_case, kwargs.pop("protocol", ect),
            evaluate_coarse=kwargs.pop("evaluate_coarse", ect_coarse.evaluate),
            evaluate_fine=kwargs.pop("evaluate_fine", ect_fine.evaluate), **kwargs,
        )  # fmt: skip

    return go


def test_search_improves_on_its_first_trial_and_returns_a_fine_evaluation(search, ect_fine):
    events = []
    result = search(trials=30, geometric_seeds=False, on_progress=events.append)
    first = result.history[0].score
    best_coarse = min(h.score for h in result.history if h.error is None)
    assert best_coarse < first
    assert result.trials_run == 30 and result.stopped_by == "trials"
    # The returned evaluation is the fine level's, of the returned plan.
    assert result.evaluation == ect_fine.evaluate(result.plan)
    assert result.score.total >= 0
    assert [e.phase for e in events][-2:] == ["refine", "done"]
    assert events[-1].trials_done == 30 and events[-1].best_score == pytest.approx(best_coarse)
    assert all(h.seconds >= 0 for h in result.history)
    assert json.loads(json.dumps(result.to_dict()))["plan"]["needles"]


@pytest.mark.parametrize("sampler", ["ga", "tpe"])
def test_same_seed_same_best_plan(search, sampler):
    a = search(trials=25, seed=7, sampler=sampler)
    b = search(trials=25, seed=7, sampler=sampler)
    assert a.params == b.params
    assert [h.score for h in a.history] == [h.score for h in b.history]
    assert a.plan.model_dump(exclude={"name"}) == b.plan.model_dump(exclude={"name"})


def test_geometric_seeds_are_the_first_trials(search, phantom_case, ect, ect_coarse):
    space = SearchSpace(phantom_case, ect)
    seeds = geometric_seeds(space)
    result = search(trials=len(seeds) + 1)
    for record, plan in zip(result.history, seeds, strict=False):
        assert record.score == pytest.approx(score(ect_coarse.evaluate(plan)).total)


def test_time_limit_stops_cleanly_with_a_fine_plan(search):
    started = time.monotonic()
    result = search(trials=None, time_limit_s=1.5)
    assert result.stopped_by == "time"
    assert result.trials_run >= 1
    assert result.evaluation is not None
    assert time.monotonic() - started < 30.0  # exploration stopped; one fine evaluation after


def test_a_time_limit_keeps_its_last_share_for_the_fine_evaluation(search):
    limit = 6.0
    result = search(trials=None, time_limit_s=limit)
    told = [h.seconds for h in result.history]
    explore_until = exploration_deadline(0.0, limit)
    assert explore_until is not None and explore_until + 1.5 < limit - 0.5
    # The last trial started before exploration's share ran out (phantom trials: ~0.05 s; one
    # took 0.6 s on the CI machine), well before the limit itself.
    assert explore_until - 1.0 < max(told) < explore_until + 1.5
    assert result.evaluation is not None


def test_the_fine_reevaluation_keeps_a_share_of_the_limit_up_to_a_cap():
    assert refine_reserve_s(10.0) == pytest.approx(10.0 * REFINE_SHARE)
    assert refine_reserve_s(3600.0) == REFINE_RESERVE_MAX_S
    assert exploration_deadline(100.0, 3600.0) == pytest.approx(3700.0 - REFINE_RESERVE_MAX_S)
    assert exploration_deadline(100.0, None) is None


def test_a_time_limit_shorter_than_one_trial_still_returns_a_plan(search):
    result = search(trials=None, time_limit_s=1e-3)
    assert result.stopped_by == "time" and result.trials_run == 1
    assert result.evaluation is not None


def test_cancel_hook_is_checked_between_trials(search):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 4

    result = search(trials=50, should_stop=stop)
    assert result.stopped_by == "cancelled"
    assert result.trials_run == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"trials": 0}, "trials must be >= 1"),
     ({"trials": None, "time_limit_s": 0.0}, "time_limit_s"),
     ({"trials": None}, "trial budget"), ({"batch_size": 0}, "batch_size")],
)  # fmt: skip
def test_zero_budget_is_a_clear_error(search, kwargs, message):
    with pytest.raises(SearchError, match=message):
        search(**kwargs)


def test_conflicting_criteria_are_reported_with_their_margins(search, phantom_case, tmp_path):
    source = Path(__file__).resolve().parents[2] / "optimizer/evaluate/data/protocols/ect.toml"
    conflict = (
        source.read_text()
        + """
[[criterion]]
id = "target_spared"
kind = "volume_above_max"
structures = { role = ["target"] }
threshold = "e_rev"
limit = 0.01
unit = "ml"
description = "the target stays below E_rev (contradicts the coverage criterion)"
source = "test: a deliberately conflicting criterion"
"""
    )
    path = tmp_path / "conflict.toml"
    path.write_text(conflict)
    protocol = load_protocol(path)
    result = search(
        protocol=protocol, trials=12,
        evaluate_coarse=PlanEvaluator(phantom_case, protocol, nonlinear=False).evaluate,
        evaluate_fine=PlanEvaluator(phantom_case, protocol, nonlinear=False).evaluate,
    )  # fmt: skip
    assert not result.passed
    unmet = {u.id: u for u in result.unmet}
    assert {"target_reversible_coverage", "target_spared"} & set(unmet)
    for u in result.unmet:
        assert u.margin is not None and u.margin < 0
        assert u.id in result.summary()


def test_sqlite_storage_persists_and_resumes(search, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = search(trials=6, storage=url, study_name="phantom-ect")
    second = search(trials=4, storage=url, study_name="phantom-ect")
    assert first.trials_in_study == 6
    assert second.trials_in_study == 10 and second.trials_run == 4


def test_journal_storage_and_a_mismatched_study_is_refused(search, tmp_path, irect):
    path = tmp_path / "study.log"
    search(trials=3, storage=str(path), study_name="s")
    assert path.stat().st_size > 0
    with pytest.raises(SearchStudyError, match="another case, protocol or search space"):
        search(trials=3, storage=str(path), study_name="s", protocol=irect)


def test_multi_objective_search_returns_a_pareto_front(search):
    result = search(trials=16, multi_objective=True)
    assert result.sampler == "nsga2"
    front = result.pareto
    assert front
    for p in front:
        assert len(p.objectives) == len(OBJECTIVE_NAMES)
        assert not any(
            all(x <= y for x, y in zip(q.objectives, p.objectives, strict=True))
            and q.objectives != p.objectives
            for q in front
        )
