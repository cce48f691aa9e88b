"""The benchmark's comparison with the baselines ranks plans as the search does; its runs
start in order, seeds outermost, in this process or in worker processes, and stop starting at
the time limit."""

from __future__ import annotations

import operator
import time

import pytest

from bench.search import (
    SCORE_TIE,
    Run,
    jobs_in_order,
    print_tables,
    run_in_order,
    versus_baselines,
)
from optimizer.search.samplers import DEFAULT_SAMPLER

OURS = DEFAULT_SAMPLER  # ectplan's search, compared by default


def _run(sampler: str, seed: int, score: float, passed: bool) -> Run:
    return Run(
        case="c", protocol="ect", sampler=sampler, seed=seed, evals_to_pass=None,
        seconds_to_pass=None, best_at={100: score}, best_met=0, best_applicable=0,
        fine_passed=passed, fine_score=score, fine_unmet=[], trials=100, seconds=1.0,
        explore_seconds=1.0, passed_at={100: passed},
    )  # fmt: skip


def test_a_passing_plan_beats_a_failing_one_with_a_lower_score():
    runs = [
        _run(OURS, 0, 0.5, True),
        _run("ga:unseeded", 0, 0.2, False),  # lower score, but fails a required criterion
        _run("random:unseeded", 0, 0.9, True),
    ]
    assert "@100 1/1 (1/1)" in versus_baselines(runs, [100])


def test_ties_count_as_no_worse_only_and_a_better_baseline_wins():
    runs = [
        _run(OURS, 0, 0.3, True), _run("ga:unseeded", 0, 0.3, True),  # tie
        _run(OURS, 1, 0.4, True), _run("random:unseeded", 1, 0.1, True),  # baseline better
        _run(OURS, 2, 0.1, True), _run("random:unseeded", 2, 0.2, True),  # ectplan better
    ]  # fmt: skip
    assert "@100 1/3 (2/3)" in versus_baselines(runs, [100])


def test_scores_within_the_tie_margin_are_ties_either_way():
    runs = [
        _run(OURS, 0, 0.020075, True), _run("ga:unseeded", 0, 0.020078, True),  # 0.3 J apart
        _run(OURS, 1, 0.020078, True), _run("random:unseeded", 1, 0.020075, True),
        _run(OURS, 2, 0.0200, True), _run("random:unseeded", 2, 0.0200 + 2 * SCORE_TIE, True),
    ]  # fmt: skip
    assert "@100 1/3 (3/3)" in versus_baselines(runs, [100])


def test_budgets_a_run_did_not_reach_are_left_out():
    short = _run("ga:unseeded", 0, 0.1, True)
    short.trials = 50
    assert "@100 0/0 (0/0)" in versus_baselines([_run(OURS, 0, 0.5, True), short], [100])


def test_runs_that_stopped_early_are_left_out_of_the_tables(capsys):
    stopped = _run("random:unseeded", 1, 0.1, True)
    stopped.stopped_early = True
    runs = [_run(OURS, 0, 0.5, True), _run("random:unseeded", 0, 0.9, True),
            _run(OURS, 1, 0.5, True), stopped]  # fmt: skip
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
