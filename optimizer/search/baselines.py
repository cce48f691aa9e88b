"""Baselines for the benchmark: random search and a simple genetic algorithm.

The GA follows the approach published for electroporation planning (Zupanic, Kos and
Miklavcic 2012, Phys Med Biol 57:5425: a genetic algorithm over electrode positions and
voltages): tournament selection, crossover that swaps whole needles (a slot's hole, depth,
exposure and core flag travel together), mutation of hole (+-1 template column/row), depth,
exposure, voltage ratio and pulse count (each gene that changes the plan with probability 1/L,
at least one per child; a child that repeats an evaluated plan is bred again). It is
steady-state and elitist: parents come from the
best ``population_size`` completed trials (plans that pass every required criterion first,
then by score), which keeps it stateless, so it works with ask/tell in batches and with a
persistent study exactly like the Optuna samplers. The first ``population_size`` trials are
random (``_random_now``; ectplan's own GA changes that rule, optimizer.search.niching).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from optuna import Study
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from optimizer.search.ranked import CompletedTrials, RankedTrials, rank
from optimizer.search.space import SearchSpace

DEFAULT_POPULATION = 20
DEFAULT_TOURNAMENT = 3
DEFAULT_CROSSOVER_PROB = 0.9
# A child identical to an evaluated plan is bred again, at most this many times.
MAX_DUPLICATE_RETRIES = 10
# Plan identities remembered by parameter set (1-3 kB each with its key), then all forgotten.
IDENTITY_MEMO_SIZE = 5_000
# Gaussian mutation width of a numeric gene, as a fraction of its range.
MUTATION_SIGMA_FRACTION = 0.15


def random_search(seed: int | None = None) -> RandomSampler:
    """Random search: every parameter independently uniform (Optuna's RandomSampler)."""
    return RandomSampler(seed=seed)


class GeneticSampler(BaseSampler):
    """A steady-state elitist GA over the plan search space (single objective)."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        population_size: int = DEFAULT_POPULATION,
        tournament_size: int = DEFAULT_TOURNAMENT,
        crossover_prob: float = DEFAULT_CROSSOVER_PROB,
        mutation_rate: float | None = None,
        seed: int | None = None,
    ) -> None:
        if population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {population_size}")
        if tournament_size < 1:
            raise ValueError(f"tournament_size must be >= 1, got {tournament_size}")
        if not 0.0 <= crossover_prob <= 1.0:
            raise ValueError(f"crossover_prob must be in [0, 1], got {crossover_prob}")
        self._space = space
        self._distributions = space.distributions()
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover_prob = crossover_prob
        # None: one mutation per child on average over the genes that matter (the 1/L rate).
        self.mutation_rate = mutation_rate
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)
        # Per study: the completed trials in number and rank order, and their plans'
        # identities, updated with the trials completed since the last ask: decoding,
        # filtering and sorting every evaluated plan at every ask made a long search quadratic.
        self._completed_trials: dict[int, CompletedTrials] = {}
        # Plan identities by parameters, at most IDENTITY_MEMO_SIZE: decoding a plan is most
        # of the sampler's time per trial, each child's identity is wanted again once it is
        # evaluated, and half the children bred again (a plan evaluated before) repeat a
        # parameter set seen before (prostatex-0000 ECT, 800 trials: 1180 of 2372).
        self._identities: dict[tuple[tuple[str, Any], ...], str] = {}

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        if len(study.directions) > 1:
            raise ValueError("the genetic baseline is single-objective; use nsga2 for several")
        done = self._completed(study, search_space)
        if self._random_now(trial, done, self._ranking(study, done)):
            return {}  # sample_independent fills every parameter
        child = self._child(study, done, self._seen(study, done))
        return {name: child[name] for name in search_space}

    def _completed(
        self, study: Study, search_space: dict[str, BaseDistribution]
    ) -> list[FrozenTrial]:
        """The completed trials that carry every parameter of ``search_space``, in number
        order: the study's ``CompletedTrials`` record, brought up to date."""
        names = search_space.keys()
        every_trial = study._storage.get_all_trials(study._study_id, deepcopy=False)
        if names == self._distributions.keys():
            record = self._completed_trials.get(study._study_id)
            if record is None or not record.follows(study._storage, every_trial):
                record = CompletedTrials(study._storage, names, self._groups_of)
                self._completed_trials[study._study_id] = record
            new = record.update(every_trial)
            if new is not None:
                for t in new:
                    record.identities.add(self._identity(t.params))
                return record.trials
        return [
            t for t in every_trial if t.state == TrialState.COMPLETE and names <= t.params.keys()
        ]

    def _record(self, study: Study, done: Sequence[FrozenTrial]) -> CompletedTrials | None:
        """The study's record when ``done`` is its list of trials (not a caller's own)."""
        record = self._completed_trials.get(study._study_id)
        return record if record is not None and done is record.trials else None

    def _ranking(self, study: Study, done: Sequence[FrozenTrial]) -> RankedTrials:
        """``done`` in rank order, with the groups ``_groups_of`` names."""
        record = self._record(study, done)
        return record.ranked if record is not None else RankedTrials.of(done, self._groups_of)

    def _groups_of(self, trial: FrozenTrial) -> Iterable[Hashable]:
        """The groups a completed trial is ranked in besides the whole study: none here."""
        return ()

    def _child(self, study: Study, done: Sequence[FrozenTrial], seen: set[str]) -> dict[str, Any]:
        """A child's parameters: two tournament parents crossed over and mutated, bred again
        while it repeats an evaluated plan (``seen``)."""
        population = self._breeding_pool(study, done)
        for _ in range(MAX_DUPLICATE_RETRIES):
            mother = self._tournament(population)
            father = self._tournament(population)
            child = self._mutate(self._crossover(mother.params, father.params))
            if self._identity(child) not in seen:
                break
        return child

    def _random_now(
        self, trial: FrozenTrial, done: Sequence[FrozenTrial], ranked: RankedTrials
    ) -> bool:
        """Whether ``trial`` is a random plan: the first generation."""
        return len(done) < self.population_size

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    # ---- operators ---------------------------------------------------------------------

    def _breeding_pool(self, study: Study, done: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        """The trials parents are drawn from: the best ``population_size`` (elitism)."""
        return self._ranking(study, done).best(self.population_size)

    def _tournament(self, population: Sequence[FrozenTrial]) -> FrozenTrial:
        picks = self._rng.choice(len(population), size=self.tournament_size, replace=True)
        return min((population[int(i)] for i in picks), key=rank)

    def _crossover(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        child = dict(a)
        if self._rng.rand() >= self.crossover_prob:
            return child
        for k in range(self._space.n_slots):
            if self._rng.rand() < 0.5:
                for name in self._space.slot_params(k):
                    child[name] = b[name]
        for name in self._space.global_params():
            if self._rng.rand() < 0.5:
                child[name] = b[name]
        return child

    def _active(self, params: dict[str, Any]) -> list[str]:
        """Genes that change the plan: the global ones and those of the used slots."""
        used = self._space.n_needles(params)
        return self._space.global_params() + [
            name for k in range(used) for name in self._space.slot_params(k)
        ]

    def _mutate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Each active gene mutates with probability ``mutation_rate`` (default 1 / active
        genes), and at least one does, so no child is a copy of a parent."""
        out = dict(params)
        active = self._active(out)
        rate = self.mutation_rate if self.mutation_rate is not None else 1.0 / len(active)
        chosen = [name for name in active if self._rng.rand() < rate]
        if not chosen and self.mutation_rate != 0.0:
            chosen = [active[self._rng.randint(len(active))]]
        for name in chosen:
            out[name] = self._mutate_gene(out[name], self._distributions[name])
        return out

    def _identity(self, params: dict[str, Any]) -> str:
        key = _params_key(params)
        identity = self._identities.get(key)
        if identity is None:
            if len(self._identities) >= IDENTITY_MEMO_SIZE:
                self._identities.clear()
            identity = self._space.decode(params).model_dump_json(exclude={"name", "notes"})
            self._identities[key] = identity
        return identity

    def _seen(self, study: Study, done: Sequence[FrozenTrial]) -> set[str]:
        """Identities of the plans in ``done``."""
        record = self._record(study, done)
        if record is not None:
            return record.identities
        return {self._identity(t.params) for t in done}

    def _mutate_gene(self, value: Any, dist: BaseDistribution) -> Any:
        if isinstance(dist, CategoricalDistribution):
            others = [c for c in dist.choices if c != value]
            return others[self._rng.randint(len(others))] if others else value
        if isinstance(dist, IntDistribution):
            # Holes and needle count move by one step: the neighbourhood the field varies over.
            step = dist.step if self._rng.rand() < 0.5 else -dist.step
            return int(min(max(int(value) + step, dist.low), dist.high))
        assert isinstance(dist, FloatDistribution)
        width = MUTATION_SIGMA_FRACTION * (dist.high - dist.low)
        moved = float(value) + self._rng.normal(0.0, width)
        if dist.step is None:
            return float(min(max(moved, dist.low), dist.high))
        k = round((moved - dist.low) / dist.step)
        if math.isclose(dist.low + k * dist.step, float(value)):
            k += 1 if self._rng.rand() < 0.5 else -1  # always move at least one step
        top = round((dist.high - dist.low) / dist.step)
        return float(dist.low + min(max(k, 0), top) * dist.step)


def _params_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))
