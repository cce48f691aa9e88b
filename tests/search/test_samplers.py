"""The sampler factory: names, defaults, and clear refusals."""

from __future__ import annotations

import pytest
from optuna.samplers import NSGAIISampler, QMCSampler, RandomSampler, TPESampler

from optimizer.search.baselines import GeneticSampler
from optimizer.search.niching import NichedGeneticSampler
from optimizer.search.samplers import (
    DEFAULT_MULTI_OBJECTIVE_SAMPLER,
    DEFAULT_SAMPLER,
    SAMPLERS,
    make_sampler,
)
from optimizer.search.space import SearchSpace


@pytest.mark.parametrize(
    ("name", "kind"),
    [("tpe", TPESampler), ("nsga2", NSGAIISampler), ("random", RandomSampler),
     ("qmc", QMCSampler), ("ga", GeneticSampler), ("niche-ga", NichedGeneticSampler)],
)  # fmt: skip
def test_each_name_makes_its_sampler(phantom_case, ect, name, kind):
    space = SearchSpace(phantom_case, ect)
    # type, not isinstance: the niched GA is a GeneticSampler, the baseline must not be niched.
    assert type(make_sampler(name, seed=0, space=space)) is kind


def test_defaults_are_known_samplers(phantom_case, ect):
    assert DEFAULT_SAMPLER in SAMPLERS and DEFAULT_MULTI_OBJECTIVE_SAMPLER in SAMPLERS
    space = SearchSpace(phantom_case, ect)
    default = make_sampler(None, 0, space=space)
    assert type(default) is type(make_sampler(DEFAULT_SAMPLER, 0, space=space))
    assert isinstance(make_sampler(None, 0, True), NSGAIISampler)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="tpe, nsga2"):
        make_sampler("cmaes", seed=0)


@pytest.mark.parametrize("name", ["ga", "niche-ga"])
def test_ga_needs_the_space_and_one_objective(phantom_case, ect, name):
    with pytest.raises(ValueError, match="needs the search space"):
        make_sampler(name, seed=0)
    with pytest.raises(ValueError, match="single-objective"):
        make_sampler(name, seed=0, multi_objective=True, space=SearchSpace(phantom_case, ect))
