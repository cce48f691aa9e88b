"""The benchmark's comparison with the baselines ranks plans as the search does."""

from __future__ import annotations

from bench.search import Run, versus_baselines


def _run(sampler: str, seed: int, score: float, passed: bool) -> Run:
    return Run(
        case="c", protocol="ect", sampler=sampler, seed=seed, evals_to_pass=None,
        seconds_to_pass=None, best_at={100: score}, best_met=0, best_applicable=0,
        fine_passed=passed, fine_score=score, fine_unmet=[], trials=100, seconds=1.0,
        explore_seconds=1.0, passed_at={100: passed},
    )  # fmt: skip


def test_a_passing_plan_beats_a_failing_one_with_a_lower_score():
    runs = [
        _run("ga", 0, 0.5, True),
        _run("ga:unseeded", 0, 0.2, False),  # lower score, but fails a required criterion
        _run("random:unseeded", 0, 0.9, True),
    ]
    assert "@100 1/1 (1/1)" in versus_baselines(runs, [100])


def test_ties_count_as_no_worse_only_and_a_better_baseline_wins():
    runs = [
        _run("ga", 0, 0.3, True), _run("ga:unseeded", 0, 0.3, True),  # tie
        _run("ga", 1, 0.4, True), _run("random:unseeded", 1, 0.1, True),  # baseline better
        _run("ga", 2, 0.1, True), _run("random:unseeded", 2, 0.2, True),  # ectplan better
    ]  # fmt: skip
    assert "@100 1/3 (2/3)" in versus_baselines(runs, [100])


def test_budgets_a_run_did_not_reach_are_left_out():
    short = _run("ga:unseeded", 0, 0.1, True)
    short.trials = 50
    assert "@100 0/0 (0/0)" in versus_baselines([_run("ga", 0, 0.5, True), short], [100])
