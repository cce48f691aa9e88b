"""ectplan's genetic sampler: the baseline GA with needle-count niches.

The score charges every needle (data/score.toml ``per_needle``), but a plan with one needle
less is rarely good the moment it is bred: it fails coverage, ranks below every passing plan
and never becomes a parent, so an elitist GA that found a passing 3-needle plan stays with 3
needles. Random search, which keeps sampling 2-needle plans, found passing ones the GA did not
(bench/search.py, prostatex-0000 ECT). Niching (speciation) keeps such lineages alive: with
probability ``niche_prob`` both parents of a child come from the elite of one needle count
below the best passing plan's, the only counts that can score lower with every criterion met.
While no plan passes, every child is bred from the whole study's elite: spreading the search
over other needle counts then slowed the way to a first passing plan (bench/search.py,
picai-10032 ECT: 0/5 seeds passing at 100 evaluations against 2/5).

The rest of the children are bred exactly as by ``GeneticSampler`` (the published GA, which
stays the benchmark's baseline unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna import Study
from optuna.trial import FrozenTrial

from optimizer.search.baselines import GeneticSampler, rank
from optimizer.search.space import SearchSpace

# Share of children bred inside a niche: enough to carry a fewer-needle lineage to a passing
# plan within a few hundred evaluations (bench/search.py), while most children still refine
# the best plan.
DEFAULT_NICHE_PROB = 0.3
# A niche needs this many evaluated plans before it breeds (two parents).
MIN_NICHE_SIZE = 2


class NichedGeneticSampler(GeneticSampler):
    """``GeneticSampler`` whose parents come, part of the time, from one needle count."""

    def __init__(
        self, space: SearchSpace, *, niche_prob: float = DEFAULT_NICHE_PROB, **kwargs: Any
    ) -> None:
        if not 0.0 <= niche_prob <= 1.0:
            raise ValueError(f"niche_prob must be in [0, 1], got {niche_prob}")
        super().__init__(space, **kwargs)
        self.niche_prob = niche_prob

    def _breeding_pool(self, study: Study, done: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        elite = super()._breeding_pool(study, done)
        if not elite[0].user_attrs.get("passed", False) or self._rng.rand() >= self.niche_prob:
            return elite
        by_count: dict[int, list[FrozenTrial]] = {}
        for t in done:
            by_count.setdefault(self._space.n_needles(t.params), []).append(t)
        best_count = self._space.n_needles(elite[0].params)
        niches = sorted(
            n
            for n, members in by_count.items()
            if n < best_count and len(members) >= MIN_NICHE_SIZE
        )
        if not niches:
            return elite
        chosen = niches[self._rng.randint(len(niches))]
        return sorted(by_count[chosen], key=rank)[: self.population_size]
