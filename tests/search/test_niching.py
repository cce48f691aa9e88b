"""ectplan's GA: parents from one needle count's niche part of the time."""

from __future__ import annotations

import optuna
import pytest

from optimizer.search.niching import NichedGeneticSampler
from optimizer.search.space import SearchSpace


@pytest.fixture(scope="module")
def space(phantom_case, ect):
    return SearchSpace(phantom_case, ect)


def study_with(space: SearchSpace, n: int, passes, seed: int = 0) -> optuna.Study:
    """``n`` random trials, told with score = needle count and ``passed`` from ``passes``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask(space.distributions())
        needles = space.n_needles(trial.params)
        trial.set_user_attr("passed", passes(needles))
        study.tell(trial, float(needles))
    return study


def pools(sampler: NichedGeneticSampler, study: optuna.Study, draws: int):
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [sampler._breeding_pool(study, done) for _ in range(draws)]


def test_a_passing_best_breeds_niches_of_fewer_needles(space):
    # Only plans of 4 or more needles pass: the best passing plan has 4, the niches are 2 and 3.
    study = study_with(space, 80, lambda n: n >= 4)
    sampler = NichedGeneticSampler(space, population_size=6, niche_prob=1.0, seed=0)
    counts = [{space.n_needles(t.params) for t in pool} for pool in pools(sampler, study, 40)]
    assert all(len(c) == 1 for c in counts), "a niche pool mixes needle counts"
    assert {next(iter(c)) for c in counts} == {2, 3}


def test_while_no_plan_passes_it_is_the_baseline_ga(space):
    study = study_with(space, 80, lambda n: False)
    sampler = NichedGeneticSampler(space, population_size=6, niche_prob=1.0, seed=0)
    elite = sorted(study.trials, key=lambda t: t.value)[:6]
    for pool in pools(sampler, study, 10):
        assert [t.value for t in pool] == [t.value for t in elite]


def test_without_niches_it_is_the_baseline_ga(space):
    study = study_with(space, 40, lambda n: n >= 4)
    sampler = NichedGeneticSampler(space, population_size=6, niche_prob=0.0, seed=0)
    done = study.get_trials(deepcopy=False)
    elite = sorted(done, key=lambda t: (not t.user_attrs["passed"], t.value))[:6]
    for pool in pools(sampler, study, 5):
        assert [t.number for t in pool] == [t.number for t in elite]


def test_same_seed_same_proposals(space):
    def proposals(seed: int) -> list[dict]:
        study = study_with(space, 30, lambda n: n >= 3)
        study.sampler = NichedGeneticSampler(space, population_size=8, seed=seed)
        out = []
        for _ in range(20):
            trial = study.ask(space.distributions())
            trial.set_user_attr("passed", True)
            study.tell(trial, float(space.n_needles(trial.params)))
            out.append(trial.params)
        return out

    assert proposals(5) == proposals(5)


def test_niche_probability_is_checked(space):
    with pytest.raises(ValueError, match="niche_prob"):
        NichedGeneticSampler(space, niche_prob=1.5)
