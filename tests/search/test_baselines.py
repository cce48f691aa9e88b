"""The genetic baseline: reproducible, whole-needle crossover, and it improves on random."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from optimizer.search import baselines
from optimizer.search.baselines import GeneticSampler, random_search
from optimizer.search.space import SearchSpace


def hole_distance(space: SearchSpace, params: dict[str, Any]) -> float:
    """A cheap objective on the decoded plan: needles near one chosen hole, ratio near 1150."""
    goal = space.holes[len(space.holes) // 3]
    holes = [space.hole(n.hole or "") for n in space.decode(params).needles]
    spread = sum(math.hypot(h.column - goal.column, h.row - goal.row) for h in holes)
    return spread + abs(float(params["ratio_ect"]) - 1150.0) / 100.0


def run(sampler: optuna.samplers.BaseSampler, space: SearchSpace, n: int) -> optuna.Study:
    study = optuna.create_study(sampler=sampler)
    for _ in range(n):
        trial = study.ask(space.distributions())
        study.tell(trial, hole_distance(space, trial.params))
    return study


@pytest.fixture(scope="module")
def space(phantom_case, ect):
    return SearchSpace(phantom_case, ect)


def test_same_seed_same_proposals(space):
    a = run(GeneticSampler(space, population_size=8, seed=3), space, 30)
    b = run(GeneticSampler(space, population_size=8, seed=3), space, 30)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_crossover_moves_whole_needles(space):
    sampler = GeneticSampler(space, population_size=8, crossover_prob=1.0, mutation_rate=0.0,
                             seed=1)  # fmt: skip
    study = run(sampler, space, 30)
    population = study.trials[:8]
    for child in study.trials[8:]:
        for k in range(space.n_slots):
            block = {name: child.params[name] for name in space.slot_params(k)}
            assert any(
                block == {name: t.params[name] for name in space.slot_params(k)}
                for t in study.trials[: child.number]
            ), f"slot {k} of trial {child.number} mixes parents"
    assert population  # the first generation is random


def test_children_stay_inside_the_space(space):
    study = run(GeneticSampler(space, population_size=6, mutation_rate=0.5, seed=2), space, 40)
    dists = space.distributions()
    for t in study.trials:
        for name, value in t.params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(value))


def test_ga_beats_random_search_on_a_simple_objective(space):
    ga = [run(GeneticSampler(space, population_size=10, seed=s), space, 120) for s in range(4)]
    rnd = [run(random_search(seed=s), space, 120) for s in range(4)]
    assert sum(g.best_value for g in ga) < sum(r.best_value for r in rnd)
    for g in ga:  # every run improves on its random first generation
        assert g.best_value < min(t.value for t in g.trials[:10])


def test_ga_refuses_several_objectives(space):
    study = optuna.create_study(
        sampler=GeneticSampler(space, population_size=2, seed=0), directions=["minimize"] * 2
    )
    with pytest.raises(ValueError, match="single-objective"):
        study.ask(space.distributions())


@pytest.mark.parametrize("memo_size", [5_000, 7])
def test_remembered_identities_equal_those_decoded_afresh(space, memo_size, monkeypatch):
    monkeypatch.setattr(baselines, "IDENTITY_MEMO_SIZE", memo_size)
    sampler = GeneticSampler(space, population_size=6, seed=5)
    study = run(sampler, space, 30)
    assert 0 < len(sampler._identities) <= memo_size
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    fresh = {GeneticSampler(space, seed=0)._identity(t.params) for t in done}
    assert sampler._seen(study, done) == fresh
    for t in done:  # what it remembers (bred children, evaluated plans) is what decodes
        remembered = sampler._identity(t.params)
        assert remembered == space.decode(t.params).model_dump_json(exclude={"name", "notes"})
