"""Completed trials kept in number and rank order across asks, and the samplers that use them."""

from __future__ import annotations

import random

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from optimizer.search.baselines import GeneticSampler
from optimizer.search.niching import NichedGeneticSampler
from optimizer.search.ranked import CompletedTrials, RankedTrials, rank
from optimizer.search.space import SearchSpace

X = FloatDistribution(0.0, 1.0)


def told_in_order(
    outcomes: list[tuple[float | None, bool]], order: list[int]
) -> list[list[FrozenTrial]]:
    """A study whose trial ``i`` scores ``outcomes[i]`` (None: fails), told in ``order``, a
    new trial asked after each tell: every trial of the study after each tell."""
    study = optuna.create_study()
    asked = [study.ask({"x": X}) for _ in outcomes]
    snapshots = []
    for i in order:
        value, passed = outcomes[i]
        asked[i].set_user_attr("passed", passed)
        if value is None:
            study.tell(asked[i], state=TrialState.FAIL)
        else:
            study.tell(asked[i], value)
        study.ask({"x": X})  # never told: stays running
        snapshots.append(study.get_trials(deepcopy=False))
    return snapshots


def complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


# Few distinct scores, so that equal ranks (ties broken by trial number) are common.
outcome_lists = st.lists(
    st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, None]), st.booleans()), min_size=1, max_size=30
)


@settings(max_examples=60, deadline=None)
@given(outcomes=outcome_lists, shuffle_seed=st.integers(0, 1000))
def test_the_ranking_is_a_stable_sort_whatever_the_completion_order(outcomes, shuffle_seed):
    order = list(range(len(outcomes)))
    random.Random(shuffle_seed).shuffle(order)
    record = CompletedTrials(optuna.storages.InMemoryStorage(), {"x"})
    filed: list[FrozenTrial] = []
    for every_trial in told_in_order(outcomes, order):
        new = record.update(every_trial)
        assert new is not None
        filed += new
        done = complete(every_trial)
        assert record.trials == done
        assert sorted(filed, key=lambda t: t.number) == done  # each returned once
        assert record.ranked.best(len(done)) == sorted(done, key=rank)
        assert record.ranked.best(3) == sorted(done, key=rank)[:3]


def test_each_trial_is_returned_once_and_only_those_with_every_parameter():
    study = optuna.create_study()
    both = [study.ask({"x": X, "y": X}) for _ in range(4)]
    only_x = [study.ask({"x": X}) for _ in range(2)]
    record = CompletedTrials(study._storage, {"x", "y"})
    seen: list[int] = []
    for trial in [both[2], only_x[0], both[0], only_x[1], both[3], both[1]]:
        study.tell(trial, 1.0)
        new = record.update(study.get_trials(deepcopy=False))
        assert new is not None
        seen += [t.number for t in new]
    assert sorted(seen) == [0, 1, 2, 3]  # once each, the trials without "y" never
    assert [t.number for t in record.trials] == [0, 1, 2, 3]


def test_a_list_not_indexed_by_trial_number_files_nothing():
    study = optuna.create_study()
    for value in (1.0, 2.0, 3.0):
        study.tell(study.ask({"x": X}), value)
    record = CompletedTrials(study._storage, {"x"})
    assert record.update(study.get_trials(deepcopy=False)[1:]) is None
    assert record.trials == [] and len(record.ranked) == 0
    assert [t.number for t in record.update(study.get_trials(deepcopy=False)) or []] == [0, 1, 2]


def test_groups_hold_their_members_in_rank_order():
    study = optuna.create_study()
    for value in [3.0, 1.0, 2.0, 1.0, 0.5]:
        trial = study.ask({"x": X})
        trial.set_user_attr("passed", value < 2.5)
        study.tell(trial, value)
    trials = study.get_trials(deepcopy=False)
    ranked = RankedTrials.of(trials, lambda t: [("even", t.number % 2 == 0)])
    assert [t.number for t in ranked.best(2, ("even", True))] == [4, 2]
    assert [t.number for t in ranked.best(5, ("even", False))] == [1, 3]
    assert ranked.size(("even", True)) == 3 and ranked.size(("missing",)) == 0
    assert ranked.best(1, ("missing",)) == []


def test_a_record_follows_one_storage_only():
    a, b = optuna.create_study(), optuna.create_study()
    record = CompletedTrials(a._storage, {"x"})
    assert record.follows(a._storage, [])
    assert not record.follows(b._storage, [])  # same study id 0, another storage


class ForgetfulSampler(NichedGeneticSampler):
    """Re-sorts and re-decodes every completed trial at every ask, as before the record."""

    def _record(self, study, done):
        return None

    def _completed(self, study, search_space):
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [t for t in done if search_space.keys() <= t.params.keys()]


def asynchronous_run(
    sampler: GeneticSampler, space: SearchSpace, n: int, min_passing: int
) -> tuple[list[dict], list[int]]:
    """``n`` trials, three in flight, told out of order; scores and passes (with at least
    ``min_passing`` needles) from the plan. Returns the proposals and the needle counts of
    the passing plans."""
    study = optuna.create_study(sampler=sampler)
    order = random.Random(7)
    flying: list[optuna.trial.Trial] = []
    proposals = []
    passing = []
    while len(proposals) < n or flying:
        while len(flying) < 3 and len(proposals) < n:
            flying.append(study.ask(space.distributions()))
            proposals.append(flying[-1].params)
        trial = flying.pop(order.randrange(len(flying)))
        needles = space.n_needles(trial.params)
        ratio = next(v for k, v in trial.params.items() if k.startswith("ratio"))
        passed = needles >= min_passing and ratio > 1000.0
        trial.set_user_attr("passed", passed)
        study.tell(trial, needles + abs(ratio - 1200.0) / 100.0)
        passing += [needles] if passed else []
    return proposals, passing


@pytest.mark.parametrize("protocol", ["ect", "irect"])
@pytest.mark.parametrize("above_minimum", [0, 1])
def test_the_sampler_proposes_what_it_did_when_it_re_sorted_every_ask(
    phantom_case, protocol, above_minimum, request
):
    space = SearchSpace(phantom_case, request.getfixturevalue(protocol))
    least = space.n_min + above_minimum
    kept = NichedGeneticSampler(space, population_size=6, niche_prob=0.5, seed=11)
    forgetful = ForgetfulSampler(space, population_size=6, niche_prob=0.5, seed=11)
    proposals, passing = asynchronous_run(kept, space, 90, least)
    assert (proposals, passing) == asynchronous_run(forgetful, space, 90, least)
    # Plans of the minimum of needles pass or not; those above it pass, so niches and the
    # one-needle-less move breed.
    assert any(n > space.n_min for n in passing)
    assert (space.n_min in passing) == (above_minimum == 0)
