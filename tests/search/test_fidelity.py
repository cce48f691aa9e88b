"""Two fidelity levels: the best distinct coarse candidates, confirmed on the fine level."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer.evaluate.plan import PlanError
from optimizer.search.fidelity import Candidate, TwoFidelity, fine_passed, plan_identity
from optimizer.search.objective import score, slack
from optimizer.search.seeding import geometric_seeds
from optimizer.search.space import SearchSpace


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


def passing_only(evaluate, keep: set[str]):
    """A fine level on which exactly the plans in ``keep`` pass: the others fail a required
    criterion (as the coarse grid's misjudged heat or organ sliver can on the fine one)."""

    def fine(plan):
        e = evaluate(plan)
        status = "pass" if plan_identity(plan) in keep else "fail"
        results = [
            dataclasses.replace(r, status=status) if r.severity == "required" else r
            for r in e.results
        ]
        return dataclasses.replace(e, results=results)

    return fine


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
    done = {plan_identity(c.plan): False for c in picked}
    following = levels.next_round(candidates, done, 1)
    assert following and not {plan_identity(c.plan) for c in following} & set(done)
    assert levels.next_round(candidates, {**done, "any plan": True}, 1) == []
    assert levels.next_round(candidates, done, levels.max_rounds) == []
    # A stopped search refines no further round.
    fine = passing_only(ect_coarse.evaluate, set())
    stopped = TwoFidelity(ect_coarse.evaluate, fine, top_k=2).refine(candidates, deadline=0.0)
    assert len(stopped) == 1
    assert fine_passed(stopped) == {plan_identity(stopped[0].candidate.plan): False}


def test_top_k_and_rounds_must_be_positive(ect_coarse):
    with pytest.raises(ValueError, match="top_k"):
        TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, top_k=0)
    with pytest.raises(ValueError, match="max_rounds"):
        TwoFidelity(ect_coarse.evaluate, ect_coarse.evaluate, max_rounds=0)
