"""The benchmark's comparison with the baselines ranks plans as the search does; its runs
start in order, seeds outermost, in this process or in worker processes, and stop starting at
the time limit."""

from __future__ import annotations

import operator
import time

import optuna
import pytest

from bench.search import (
    BASELINES,
    SCORE_TIE,
    Run,
    jobs_in_order,
    print_tables,
    returned_at,
    run_in_order,
    versus_baselines,
)
from optimizer.anatomy.phantom import make_phantom
from optimizer.case import prepare_case
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.local import SearchResult, run_search, search_levels
from optimizer.search.samplers import DEFAULT_SAMPLER
from optimizer.search.space import SearchSpace

OURS = DEFAULT_SAMPLER  # ectplan's search, compared by default


def _run(sampler: str, seed: int, score: float, passed: bool) -> Run:
    return Run(
        case="c", protocol="ect", sampler=sampler, seed=seed, evals_to_pass=None,
        seconds_to_pass=None, best_at={100: score}, best_met=0, best_applicable=0,
        fine_passed=passed, fine_score=score, fine_unmet=[], trials=100, seconds=1.0,
        explore_seconds=1.0, passed_at={100: passed},
    )  # fmt: skip


def _seed(seed: int, ours: float, ga: float, rand: float, passed: bool = True) -> list[Run]:
    """One seed's runs of ectplan's search and both baselines, all passing or all failing."""
    return [
        _run(OURS, seed, ours, passed),
        _run("ga:unseeded", seed, ga, passed),
        _run("random:unseeded", seed, rand, passed),
    ]


def test_a_passing_plan_beats_a_failing_one_with_a_lower_score():
    runs = [
        _run(OURS, 0, 0.5, True),
        _run("ga:unseeded", 0, 0.2, False),  # lower score, but fails a required criterion
        _run("random:unseeded", 0, 0.9, True),
    ]
    assert "@100 1/1 (1/1)" in versus_baselines(runs, [100])


def test_ties_count_as_no_worse_only_and_a_better_baseline_wins():
    runs = [
        *_seed(0, 0.3, 0.3, 0.9),  # a tie with the GA
        *_seed(1, 0.4, 0.9, 0.1),  # random search better
        *_seed(2, 0.1, 0.3, 0.2),  # ectplan better than both
    ]
    assert "@100 1/3 (2/3)" in versus_baselines(runs, [100])


def test_scores_within_the_tie_margin_are_ties_either_way():
    runs = [
        *_seed(0, 0.020075, 0.020078, 0.9),  # 0.3 J apart
        *_seed(1, 0.020078, 0.9, 0.020075),
        *_seed(2, 0.0200, 0.9, 0.0200 + 2 * SCORE_TIE),
    ]
    assert "@100 1/3 (3/3)" in versus_baselines(runs, [100])


def test_budgets_a_run_did_not_reach_are_left_out():
    runs = _seed(0, 0.5, 0.1, 0.9)
    runs[1].trials = 50
    assert "@100 0/0 (0/0)" in versus_baselines(runs, [100])


def test_a_seed_counts_only_where_both_baselines_ran():
    runs = [*_seed(0, 0.1, 0.5, 0.5), _run(OURS, 1, 0.1, True), _run("ga:unseeded", 1, 0.5, True)]
    assert "@100 1/1 (1/1)" in versus_baselines(runs, [100])


def test_other_samplers_are_compared_apart_from_the_baselines():
    # TPE beats ectplan here: that counts against it only in the comparison with every sampler.
    runs = [*_seed(0, 0.2, 0.5, 0.5), _run("tpe", 0, 0.1, True)]
    assert "@100 1/1 (1/1)" in versus_baselines(runs, [100])
    assert "@100 0/1 (0/1)" in versus_baselines(runs, [100], baselines=None)


@pytest.mark.parametrize(
    ("wins_at_300", "met"), [(5, "target met"), (4, "target met"), (3, "target not met")]
)
def test_the_target_needs_4_of_5_seeds_at_every_budget(wins_at_300: int, met: str) -> None:
    runs = []
    for seed in range(5):
        runs += _seed(seed, 0.1, 0.5, 0.5)
        score_at_300 = 0.05 if seed < wins_at_300 else 0.4
        for r in runs[-3:]:
            r.trials, r.best_at[300], r.passed_at[300] = 300, r.best_at[100], True
        runs[-3].best_at[300] = score_at_300
        runs[-2].best_at[300] = 0.2  # the GA
    text = versus_baselines(runs, [100, 300])
    assert f"@100 5/5 (5/5)  @300 {wins_at_300}/5 ({wins_at_300}/5)  {met}" in text
    assert text.endswith(f"met on {int(met == 'target met')} of 1 case/protocol pairs measured")


@pytest.mark.parametrize(("ga_on_two_seeds", "only_ties"), [(0.1, True), (0.05, False)])
def test_a_target_missed_through_ties_alone_says_so(ga_on_two_seeds: float, only_ties: bool):
    # Strictly better on 3 seeds; on the other 2 the GA found as good a plan (0.1, a tie) or a
    # better one (0.05).
    runs = [
        r for seed in range(5) for r in _seed(seed, 0.1, 0.5 if seed < 3 else ga_on_two_seeds, 0.5)
    ]
    text = versus_baselines(runs, [100])
    assert "target not met" in text
    assert ("only ties" in text) is only_ties


def test_without_baseline_runs_the_target_is_not_measured():
    text = versus_baselines([_run(OURS, 0, 0.1, True), _run("tpe", 0, 0.5, True)], [100])
    assert "target not measured" in text
    assert text.endswith("met on 0 of 0 case/protocol pairs measured (1 not measured: a budget "
                         "without 5 seeds compared)")  # fmt: skip
    assert BASELINES == ("ga:unseeded", "random:unseeded")


def test_fewer_than_five_seeds_or_a_budget_no_run_reached_do_not_judge_the_target():
    four_seeds = [run for seed in range(4) for run in _seed(seed, 0.1, 0.5, 0.5)]
    assert "@100 4/4 (4/4)  target not measured" in versus_baselines(four_seeds, [100])
    five_seeds = [run for seed in range(5) for run in _seed(seed, 0.1, 0.5, 0.5)]
    assert "@100 5/5 (5/5)  target met" in versus_baselines(five_seeds, [100])
    # Runs of 100 trials say nothing at 300: the target is not judged on the budget alone.
    text = versus_baselines(five_seeds, [100, 300])
    assert "@100 5/5 (5/5)  @300 0/0 (0/0)  target not measured" in text


def test_ectplans_sampler_is_never_its_own_baseline():
    runs = [*_seed(0, 0.1, 0.5, 0.5)]
    text = versus_baselines(runs, [100], ours="ga:unseeded")
    assert text.startswith("coarse level: seeds on which 'ga:unseeded' beat random:unseeded ")
    assert "@100 0/1 (1/1)" in text  # the GA's 0.5 against random search's 0.5: a tie


def test_runs_that_stopped_early_are_left_out_of_the_tables(capsys):
    runs = _seed(0, 0.5, 0.9, 0.9) + _seed(1, 0.5, 0.9, 0.1)
    runs[-1].stopped_early = True  # random search's better run of seed 1
    print_tables(runs, [100])
    out = capsys.readouterr().out
    assert "@100 1/1 (1/1)" in out
    assert "(1 runs stopped by the hard limit left out)" in out


def test_jobs_cover_whole_seeds_first():
    jobs = jobs_in_order(range(2), ["a", "b"], ["ect", "irect"], ["ga", "random:unseeded"])
    assert len(jobs) == 16
    assert {j.seed for j in jobs[:8]} == {0} and {j.seed for j in jobs[8:]} == {1}
    assert [(j.case, j.protocol, j.sampler) for j in jobs[:8]] == [
        (j.case, j.protocol, j.sampler) for j in jobs[8:]
    ]
    assert (jobs[0].case, jobs[1].sampler, jobs[2].protocol) == ("a", "random:unseeded", "irect")


@pytest.mark.parametrize("workers", [1, 2])
def test_every_item_runs_and_results_keep_their_index(workers: int) -> None:
    seen: list[int] = []
    results, not_started = run_in_order(
        [3, 1, 2], operator.neg, workers=workers, on_result=lambda i, _: seen.append(i)
    )
    assert results == {0: -3, 1: -1, 2: -2}
    assert not_started == 0 and sorted(seen) == [0, 1, 2]


@pytest.mark.parametrize("workers", [1, 2])
def test_no_item_starts_after_the_time_limit_but_running_ones_finish(workers):
    # The first `workers` items start at once and outlast the limit; none after them starts.
    started = time.monotonic()
    results, not_started = run_in_order(
        [0.4] * (workers + 2), time.sleep, workers=workers, time_limit_s=0.2
    )
    assert sorted(results) == list(range(workers)) and not_started == 2
    assert time.monotonic() - started >= 0.4


def test_nothing_starts_with_a_limit_of_zero():
    assert run_in_order([1, 2], operator.neg, workers=2, time_limit_s=0) == ({}, 2)


def _fine(run: Run, score: float, passed: bool) -> Run:
    run.fine_at, run.fine_passed_at = {100: score}, {100: passed}
    return run


def test_the_fine_level_ranks_the_returned_plans_not_the_explored_ones():
    # Coarse: ectplan's best explored plan fails where both baselines' pass. Fine: the plan
    # its search returns passes with the lowest score.
    runs = [
        _fine(_run(OURS, 0, 0.1, False), 0.2, True),
        _fine(_run("ga:unseeded", 0, 0.3, True), 0.4, True),
        _fine(_run("random:unseeded", 0, 0.5, True), 0.1, False),
    ]
    assert "@100 0/1 (0/1)" in versus_baselines(runs, [100])
    assert "@100 1/1 (1/1)" in versus_baselines(runs, [100], level="fine")


def test_runs_without_a_fine_plan_at_a_budget_are_left_out_of_the_fine_level(capsys):
    runs = [_fine(r, r.best_at[100], True) for r in _seed(0, 0.1, 0.2, 0.3)]
    runs += _seed(1, 0.1, 0.2, 0.3)  # --coarse-only runs: no fine plan per budget
    assert "@100 1/1 (1/1)" in versus_baselines(runs, [100], level="fine")
    assert "@100 2/2 (2/2)" in versus_baselines(runs, [100])
    print_tables(runs, [100])
    out = capsys.readouterr().out
    assert "fine level: seeds on which" in out and "1/1 pass 0.100" in out


def test_without_fine_plans_per_budget_only_the_coarse_level_is_printed(capsys):
    print_tables(_seed(0, 0.1, 0.2, 0.3), [100])
    out = capsys.readouterr().out
    assert "coarse level: seeds on which" in out and "fine level" not in out


def test_the_fine_plan_at_a_budget_is_the_one_a_search_of_that_budget_returns():
    case = prepare_case(make_phantom(seed=0), spacing_mm=2.0)
    ect = load_protocol("ect")
    coarse = PlanEvaluator(case, ect, nonlinear=False).evaluate
    fine = PlanEvaluator(case, ect, nonlinear=True).evaluate  # sigma(E) on the same grid

    def search(trials: int, storage: optuna.storages.BaseStorage | None = None) -> SearchResult:
        return run_search(
            case, case, ect, trials=trials, seed=3, storage=storage, study_name="bench",
            evaluate_coarse=coarse, evaluate_fine=fine, refine_top_k=1,
        )  # fmt: skip

    storage = optuna.storages.InMemoryStorage()
    search(16, storage)
    space = SearchSpace.for_levels(case, case, ect)
    study = optuna.load_study(study_name="bench", storage=storage)
    at = returned_at(study, space, search_levels(space, coarse, fine, top_k=1), [8])
    alone = search(8)  # on this phantom its refinement ends in the lower-voltage round
    assert at[8] == pytest.approx((alone.score.total, alone.passed))
