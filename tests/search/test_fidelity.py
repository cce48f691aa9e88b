"""Two fidelity levels: the best distinct coarse candidates, confirmed on the fine level."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer.evaluate.plan import PlanError
from optimizer.search.fidelity import Candidate, TwoFidelity, fine_results, plan_identity
from optimizer.search.objective import constraints, score, slack
from optimizer.search.seeding import geometric_seeds
from optimizer.search.space import SearchSpace

from .fine_levels import organ_limited, passing_only


@pytest.fixture(scope="module")
def candidates(phantom_case, ect, ect_coarse):
    space = SearchSpace(phantom_case, ect)
    out = []
    for i, plan in enumerate(geometric_seeds(space)[:4]):
        e = ect_coarse.evaluate(plan)
        out.append(Candidate(i, space.encode(plan), plan, score(e).total, e.passed, slack(e)))
    # The same plan again under another trial number: picked once.
    out.append(Candidate(99, out[0].params, out[0].plan, out[0].coarse_score, out[0].coarse_passed))
    return out


def test_pick_takes_the_best_distinct_plans(candidates, ect_coarse, ect_fine):
    levels = TwoFidelity(ect_coarse.evaluate, ect_fine.evaluate, top_k=3)
    picked = levels.pick(candidates)
    assert len(picked) == 3
    assert len({plan_identity(c.plan) for c in picked}) == 3
    best = sorted(c.key for c in candidates if c.trial_number != 99)
    assert [c.key for c in picked[:2]] == best[:2]
    # The last slot: the third best, or the passing plan with the most room if not in the top.
    safest = max((c for c in candidates if c.coarse_passed), key=lambda c: c.slack, default=None)
    assert picked[2].key == best[2] or picked[2] is safest


def test_the_last_slot_goes_to_the_passing_plan_with_the_most_slack(candidates, ect_coarse):
    # Passing plans that pass by a hair, and one ranked last by score with the most room.
    distinct = [
        dataclasses.replace(c, coarse_passed=True, slack=0.01)
        for c in candidates if c.trial_number != 99
    ]  # fmt: skip
    ranked = sorted(distinct, key=lambda c: c.key)
    safe = dataclasses.replace(ranked[-1], coarse_score=1e9, slack=0.5)
    pool = [*ranked[:-1], safe]
    picked = TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, top_k=2).pick(pool)
    assert picked == [ranked[0], safe]
    # With one slot only the best is refined.
    assert TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, top_k=1).pick(pool) == [ranked[0]]
    # No passing plan: plain ranking.
    failing = [dataclasses.replace(c, coarse_passed=False) for c in pool]
    picked = TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, top_k=2).pick(failing)
    assert picked == sorted(failing, key=lambda c: (c.key, c.trial_number))[:2]


def test_refine_returns_fine_evaluations_best_first(candidates, ect_coarse, ect_fine):
    levels = TwoFidelity(ect_coarse.evaluate, ect_fine.evaluate, top_k=2, max_rounds=1)
    refined = levels.refine(candidates)
    assert len(refined) == 2
    assert [r.key for r in refined] == sorted(r.key for r in refined)
    for r in refined:
        assert r.evaluation is not None and r.score is not None
        # The fine level is the nonlinear evaluator: its currents differ from the coarse ones.
        fine_current = r.evaluation.metrics["pairs"][0]["current_A"]
        coarse_current = ect_coarse.evaluate(r.candidate.plan).metrics["pairs"][0]["current_A"]
        assert fine_current > coarse_current


def test_after_the_deadline_only_the_first_candidate_is_refined(candidates, ect_coarse, ect_fine):
    levels = TwoFidelity(ect_coarse.evaluate, ect_fine.evaluate, top_k=3)
    assert len(levels.refine(candidates, deadline=0.0)) == 1
    assert len(levels.refine(candidates, should_stop=lambda: True)) == 1


def test_a_plan_the_fine_level_refuses_is_kept_with_its_error(candidates, ect_coarse):
    def refuse_first(plan):
        if plan_identity(plan) == plan_identity(candidates_sorted[0].plan):
            raise PlanError("needle 0 outside the fine grid")
        return ect_coarse.evaluate(plan)

    levels = TwoFidelity(ect_coarse.evaluate, refuse_first, top_k=2)
    candidates_sorted = levels.pick(candidates)
    refined = levels.refine(candidates)
    assert refined[0].evaluation is not None
    assert refined[-1].error == "needle 0 outside the fine grid"


def test_further_rounds_run_until_a_plan_passes(candidates, ect_coarse):
    distinct = [c for c in candidates if c.trial_number != 99]
    ranked = sorted(distinct, key=lambda c: (c.key, c.trial_number))
    # Only the last plan in coarse order passes on the fine level: round 1 (2 plans) fails,
    # round 2 refines the other two and finds it.
    last = plan_identity(ranked[-1].plan)
    levels = TwoFidelity(ect_coarse.evaluate, passing_only(ect_coarse.evaluate, {last}), top_k=2)
    refined = levels.refine(candidates)
    assert len(refined) == 4
    assert plan_identity(refined[0].candidate.plan) == last and refined[0].evaluation.passed
    # One round only: the best of the failing plans is returned.
    one = dataclasses.replace(levels, max_rounds=1).refine(candidates)
    assert len(one) == 2 and not any(r.evaluation.passed for r in one)


def test_no_further_round_once_a_plan_passes(candidates, ect_coarse):
    levels = TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, top_k=2)
    picked = levels.pick(candidates)
    failing = passing_only(ect_coarse.evaluate, set())
    done = {plan_identity(c.plan): failing(c.plan) for c in picked}
    following = levels.next_round(candidates, done, 1)
    assert following and not {plan_identity(c.plan) for c in following} & set(done)
    one_passes = ect_coarse.evaluate(picked[0].plan)
    one_passes = dataclasses.replace(
        one_passes,
        results=[dataclasses.replace(r, status="pass") for r in one_passes.results],
    )  # fmt: skip
    assert levels.next_round(candidates, {**done, "any plan": one_passes}, 1) == []
    assert levels.next_round(candidates, done, levels.max_rounds) == []
    # A stopped search refines no further round.
    fine = passing_only(ect_coarse.evaluate, set())
    stopped = TwoFidelity(ect_coarse.evaluate, fine, top_k=2).refine(candidates, deadline=0.0)
    assert len(stopped) == 1
    assert list(fine_results(stopped)) == [plan_identity(stopped[0].candidate.plan)]
    assert not fine_results(stopped)[plan_identity(stopped[0].candidate.plan)].passed


def _c(number: int, plan, score_: float, values: tuple[float, ...]) -> Candidate:
    return Candidate(number, {}, plan, score_, all(v <= 0 for v in values), -1.0, values)


def test_a_predicted_key_moves_the_constraints_by_the_shift(candidates):
    plan = candidates[0].plan
    c = _c(0, plan, 1.0, (0.1, -0.5))
    assert c.key == (1, 1.0)
    # Moved to (-0.1, -0.2): predicted to pass, without the 0.1 it failed by.
    assert c.predicted_key((-0.2, 0.3)) == pytest.approx((0, 0.9, 0.0))
    # Moved to (0.15, -0.1): predicted to fail by 0.15.
    assert c.predicted_key((0.05, 0.4)) == pytest.approx((1, 0.15, 0.0))
    # Exactly at a limit after the shift, up to rounding: met.
    assert _c(0, plan, 1.0, (0.3, -0.5)).predicted_key((-0.1 - 0.2, 0.0))[0] == 0
    # No shift known, or one of another protocol: the coarse key.
    assert c.predicted_key(()) == (*c.key, 0.0) == c.predicted_key((0.1, 0.2, 0.3))


def test_equal_predicted_failures_are_told_apart_by_field_headroom(candidates):
    plan = candidates[0].plan
    shift = (0.0, 0.03)  # every plan with no voxel over the organ's limit tips over
    hot = dataclasses.replace(_c(0, plan, 1.0, (-0.2, -0.01)), headroom=1.02)
    cool = dataclasses.replace(_c(1, plan, 3.0, (-0.3, -0.01)), headroom=1.3)
    unknown = _c(2, plan, 0.5, (-0.3, -0.01))
    assert sorted([hot, unknown, cool], key=lambda c: c.predicted_key(shift)) == [
        cool,
        hot,
        unknown,
    ]
    # A smaller predicted excess still comes first.
    closer = dataclasses.replace(_c(3, plan, 1.0, (-0.2, -0.015)), headroom=1.0)
    assert min([cool, closer], key=lambda c: c.predicted_key(shift)) is closer


def test_the_shift_is_the_mean_difference_between_fine_and_coarse_values(candidates, ect_coarse):
    plans = [c.plan for c in candidates if c.trial_number != 99][:2]
    real = [tuple(constraints(ect_coarse.evaluate(p))) for p in plans]
    # Coarse values below the fine ones by 0.2 and 0.4 on the first criterion, equal elsewhere.
    pool = [
        _c(i, p, 1.0, (r[0] - off, *r[1:])) for i, (p, r, off) in enumerate(
            zip(plans, real, (0.2, 0.4), strict=True))
    ]  # fmt: skip
    levels = TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate)
    fine = {plan_identity(p): ect_coarse.evaluate(p) for p in plans}
    shift = levels.coarse_to_fine_shift(pool, fine)
    assert shift[0] == pytest.approx(0.3)
    assert shift[1:] == pytest.approx([0.0] * (len(shift) - 1))
    # A plan with no fine evaluation, or no coarse values, does not count.
    assert levels.coarse_to_fine_shift(pool, {plan_identity(plans[0]): None}) == ()
    bare = [dataclasses.replace(c, constraints=()) for c in pool]
    assert levels.coarse_to_fine_shift(bare, fine) == ()


def test_the_next_round_takes_the_plan_predicted_best_on_the_fine_level(candidates, ect_coarse):
    """The coarse level was optimistic by the same amount for every plan (as the 2 mm grid is
    about a sliver of organ): once one round has shown it, the plan that is truly closest to
    passing is refined next, not the next one in coarse order."""
    plans = [c.plan for c in candidates if c.trial_number != 99]
    real = {plan_identity(p): tuple(constraints(ect_coarse.evaluate(p))) for p in plans}

    def excess(p) -> float:
        return sum(max(v, 0.0) for v in real[plan_identity(p)])

    # Every plan seemed to pass with room on the coarse level; coarse scores rank the plans
    # that truly fail most first (nearly equal scores: the excess decides).
    offset = [max(v[i] for v in real.values()) + 0.1 for i in range(len(next(iter(real.values()))))]
    worst_first = sorted(plans, key=excess, reverse=True)
    pool = [
        _c(i, p, 1.0 + 0.01 * i,
           tuple(v - o for v, o in zip(real[plan_identity(p)], offset, strict=True)))
        for i, p in enumerate(worst_first)
    ]  # fmt: skip
    levels = TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, top_k=1)
    assert levels.pick(pool) == [pool[0]]
    fine = {plan_identity(pool[0].plan): ect_coarse.evaluate(pool[0].plan)}
    assert not any(e.passed for e in fine.values())
    following = levels.next_round(pool, fine, 1)
    assert following == [pool[-1]]  # the smallest true excess; coarse order would take pool[1]


def test_top_k_and_rounds_must_be_positive(ect_coarse):
    with pytest.raises(ValueError, match="top_k"):
        TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, top_k=0)
    with pytest.raises(ValueError, match="max_rounds"):
        TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, max_rounds=0)


def test_a_plan_failing_an_organ_limit_is_returned_at_the_voltage_that_spares_it(
    candidates, ect_coarse
):
    one = candidates[0]
    top = max(p.voltage_V for p in one.plan.pairs)
    fine = organ_limited(ect_coarse.evaluate, 0.93 * top)
    levels = TwoFidelity(ect_coarse.evaluate, fine, top_k=1, voltage_step_V=10.0)
    refined = levels.refine([one])
    assert sorted(r.candidate.voltage_factor for r in refined if not r.evaluation.passed) == [
        0.95, 0.98, 1.0
    ]
    best = refined[0]
    assert best.evaluation.passed and best.candidate.voltage_factor in (0.92, 0.88)
    assert best.candidate.trial_number == one.trial_number
    assert max(p.voltage_V for p in best.candidate.plan.pairs) <= 0.93 * top
    # Without a voltage step there is no back-off round.
    plain = dataclasses.replace(levels, voltage_step_V=None).refine([one])
    assert len(plain) == 1 and not plain[0].evaluation.passed


def test_backoff_lowers_the_best_plan_that_fails_only_organ_or_heat_limits(
    candidates, ect_coarse
):
    distinct = [c for c in candidates if c.trial_number != 99]
    levels = TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, voltage_step_V=10.0)
    organ = organ_limited(ect_coarse.evaluate, 1.0)  # every plan fails the organ limit
    fine = {plan_identity(c.plan): organ(c.plan) for c in distinct}
    lowered = levels.backoff(distinct, fine)
    assert [c.voltage_factor for c in lowered] == list(levels.backoff_factors)
    def excess_then_score(c: Candidate) -> tuple[float, float, int]:
        e = fine[plan_identity(c.plan)]
        return sum(max(v, 0.0) for v in constraints(e)), score(e).total, c.trial_number

    # The plan over its limits by least is lowered, not the best scoring one.
    source = min(distinct, key=excess_then_score)
    assert source != min(distinct, key=lambda c: score(fine[plan_identity(c.plan)]).total)
    assert {c.trial_number for c in lowered} == {source.trial_number}
    # Nothing when a plan passes, when the failures include coverage, or when turned off.
    passing = passing_only(ect_coarse.evaluate, {plan_identity(distinct[0].plan)})
    assert levels.backoff(distinct, {**fine, "p": passing(distinct[0].plan)}) == []
    covered = passing_only(ect_coarse.evaluate, set())  # fails coverage among others
    uncovered = {plan_identity(c.plan): covered(c.plan) for c in distinct}
    assert levels.backoff(distinct, uncovered) == []
    assert dataclasses.replace(levels, voltage_step_V=None).backoff(distinct, fine) == []
