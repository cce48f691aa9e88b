"""ectplan's genetic sampler: the baseline GA with niches of fewer needles (and fewer core needles)
and a one-needle-less move.

The score charges every needle (data/score.toml ``per_needle``), but a plan with one needle
less is rarely good the moment it is bred: it fails coverage, ranks below every passing plan
and never becomes a parent, so an elitist GA that found a passing 3-needle plan stays with 3
needles. Random search, which keeps sampling 2-needle plans, found passing ones the GA did not
(bench/search.py, prostatex-0000 ECT). Niching (speciation) keeps such lineages alive: with
probability ``niche_prob`` both parents of a child come from the elite of one needle count
below the best passing plan's, as only fewer needles were expected to score lower with every
criterion met. Where heat dominates the score that fails: on picai-10032 IRECT the unseeded
GA's best plan at 100 evaluations had 5 needles and heat 1.38 against niche-ga's 3 needles and
1.74, more needles spreading the dose. Niches above the best count as well were tried and left
out (data/sampler_choice.toml); niches of fewer core needles (below) address it. While no plan
passes, every child is bred from the whole study's elite: spreading the search over other
needle counts then slowed the way to a first passing plan (bench/search.py, picai-10032 ECT: 0/5
seeds passing at 100 evaluations against 2/5).

Random start interleaved with the seeds' refinement, while no plan passes: the baseline GA
breeds once ``population_size`` plans are evaluated, and the 15-17 geometric seeds ectplan
enqueues (ECT; IRECT 15-28 with the one-IRE-pair seeds below) filled most of that first
generation. Where no seed's basin holds a passing plan, the search stayed in them (picai-10043
ECT, no plan passes on the 2 mm grid: best score at 1000 evaluations 0.39 against 0.16 for the
unseeded GA, seed 2). A whole random generation before any breeding cost the early budget
instead (picai-10032 ECT at 100 evaluations: 0.28 against 0.15, seed 0). So after the first
``population_size`` plans, every odd-numbered trial stays random until ``2 * population_size``
plans of its own (not enqueued) are evaluated or a plan passes: the seeds are refined from the
start, a random generation of the published GA's size joins the elite beside them, and once a
plan passes the niches take over the exploring.
bench/search.py, seeds 0-4 x 6 case/protocol pairs x budgets 100/300/1000: better than both
baselines in 71 of 90 (seed, budget) cells against 66, 14 of 18 case/protocol/budget cells at
4 of 5 seeds or more against 11; picai-10043 ECT median best score 0.27 and 0.14 at 300 and
1000 evaluations against 0.42 and 0.39; picai-10032 ECT median at 100 evaluations 0.24
against 0.08 (still ahead of the baselines on 4 of 5 seeds).

Niches of fewer core needles (two-train protocols, IRECT): the IRE pairs carry the heat, and
where heat dominates the score the best plans pulse few of them. picai-10032 IRECT, seed 0 at
300 evaluations: niche-ga's best plans had 3 needles, all in the core (3 IRE pairs at 70 pulses,
heat 1.34 of a score of 1.47), the unseeded GA's 5 needles with one IRE pair and nine margin
pairs at 8 pulses (heat 0.68 of 0.85). A plan with fewer core needles that nearly passes (such
as a seed's one-IRE-pair variant, optimizer/search/seeding.py) ranks below every passing plan,
so the GA never breeds from it. So the niches are those of each needle count below the best
passing plan's and, for two trains, of each count of core needles below its own, two at least;
a niche child draws one of them uniformly. With the one-IRE-pair seeds, 20 seeds (ad hoc
harness, bench/search.py's exploration): picai-10032 IRECT median best at 100 / 300 / 1000
evaluations 1.39 / 0.94 / 0.58 against 2.07 / 0.96 / 0.60 (better on 16, 11, 8 seeds, worse on
4, 9, 9); picai-10043 IRECT 4.78 / 2.87 / 1.99 against 4.32 / 2.73 / 1.97 (better on 6, 10,
10, worse on 11, 10, 10: its 28 seeds take more of the first 100 evaluations);
prostatex-0000 IRECT (8 seeds) 0.47 / 0.26 / 0.23 against 0.47 / 0.31 / 0.23. Each part alone
was measured only with a first version of the seeds (data/sampler_choice.toml). One-train
protocols draw the same niches as before.

One needle less: once a plan passes with more needles than the protocol's minimum, up to a
share ``drop_prob`` of the children are one of the best such plans (tournament) with one needle
taken out, the other needles in their holes and the voltage-to-distance ratio kept
(``SearchSpace.without_needle``), as a planner tries the same layout with one needle less;
never a plan evaluated before (the GA breeds the child instead). Breeding reaches such a plan
only through a niche of the lower count, which has to be filled first: prostatex-0000 ECT still
had a 3-needle plan at 100 evaluations on 2 of 5 seeds where a 2-needle one passes (with the
move: none). bench/search.py's exploration on seeds 0-4 (ad hoc harness against the recorded
baselines): 73 of 90 cells ahead of both baselines against 71 (one lost: picai-10032 IRECT at
300 evaluations; 69 once scores within 1e-4 count as ties, data/sampler_choice.toml); median
best prostatex-0000 IRECT 0.31 against 0.32 at 300 evaluations, picai-10043 IRECT 2.55
against 2.92 at 300, picai-10032 IRECT 0.57 against 0.70 at 1000 but 1.11 against 0.98 at 300.
Held-out seeds 5-7: 44 of 54 cells against 43. The move draws no random number until a passing
plan has more than the minimum of needles, so the search until then is the one above.
Tried and left out: a second move, a passing plan with one train's ratio a step (10 V/cm)
lower. Its one extra cell was an energy tie in the fifth decimal (prostatex-0000 ECT), and it
made the IRECT searches worse (median best at 1000 evaluations on picai-10043 2.47 against
1.84 with the needle move alone).

The rest of the children are bred exactly as by ``GeneticSampler`` (the published GA, which
stays the benchmark's baseline unchanged).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from optuna import Study
from optuna.trial import FrozenTrial

from optimizer.search.baselines import MAX_DUPLICATE_RETRIES, GeneticSampler
from optimizer.search.ranked import RankedTrials
from optimizer.search.space import SearchSpace

# Share of children bred inside a niche: enough to carry a fewer-needle lineage to a passing
# plan within a few hundred evaluations (bench/search.py), while most children still refine
# the best plan.
DEFAULT_NICHE_PROB = 0.3
# Share of children, once a passing plan has more needles than the protocol's minimum, that are
# such a plan with one needle taken out (bench/search.py; see the module docstring).
DEFAULT_DROP_PROB = 0.15
# A niche needs this many evaluated plans before it breeds (two parents).
MIN_NICHE_SIZE = 2
# Niches of fewer needles, then (two-train protocols) of fewer core needles, in this order.
NICHE_KINDS = ("needles", "cores")
# Fewer than two core needles pulse no IRE pair, which no passing IRECT plan lacks.
MIN_CORE_NEEDLES = 2
# Optuna's system attribute of a trial asked from ``Study.enqueue_trial``.
ENQUEUED_ATTR = "fixed_params"
# Groups of the ranking besides the niches: passing plans, passing plans that could lose a
# needle, and the plans the sampler proposed itself (not enqueued).
_PASSED = ("passed",)
_DROPPABLE = ("droppable",)
_OWN = ("own",)


class NichedGeneticSampler(GeneticSampler):
    """``GeneticSampler`` whose parents come, part of the time, from one niche: plans of one
    needle count, or of one count of core needles."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        niche_prob: float = DEFAULT_NICHE_PROB,
        drop_prob: float = DEFAULT_DROP_PROB,
        **kwargs: Any,
    ) -> None:
        for name, p in (("niche_prob", niche_prob), ("drop_prob", drop_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        super().__init__(space, **kwargs)
        self.niche_prob = niche_prob
        self.drop_prob = drop_prob

    def _groups_of(self, trial: FrozenTrial) -> Iterable[Hashable]:
        """A trial's needle count and core needle count (its niches once they are below the
        best passing plan's), whether it could lose a needle, passed, and was not enqueued."""
        space = self._space
        needles = space.n_needles(trial.params)
        cores = len(space.core_slots(trial.params))
        groups: list[Hashable] = [("needles", needles), ("cores", cores)]
        if trial.user_attrs.get("passed", False):
            groups.append(_PASSED)
            if needles > space.n_min:
                groups.append(_DROPPABLE)
        if ENQUEUED_ATTR not in trial.system_attrs:
            groups.append(_OWN)
        return groups

    def _random_now(
        self, trial: FrozenTrial, done: Sequence[FrozenTrial], ranked: RankedTrials
    ) -> bool:
        if len(done) < self.population_size:
            return True
        if trial.number % 2 == 0 or ranked.size(_PASSED) > 0:
            return False
        return ranked.size(_OWN) < 2 * self.population_size

    def _child(
        self, study: Study, done: Sequence[FrozenTrial], seen: set[str]
    ) -> dict[str, Any]:
        """With probability ``drop_prob`` once a passing plan could lose a needle: one of the
        best such plans (tournament) with one needle taken out, not evaluated before (``seen``);
        otherwise, or when no such plan turns up, a child bred as by the GA."""
        droppable = self._ranking(study, done).best(self.population_size, _DROPPABLE)
        if droppable and self.drop_prob > 0.0 and self._rng.rand() < self.drop_prob:
            for _ in range(MAX_DUPLICATE_RETRIES):
                parent = self._tournament(droppable)
                slot = self._rng.randint(self._space.n_needles(parent.params))
                child = self._space.without_needle(parent.params, int(slot))
                if self._identity(child) not in seen:
                    return child
        return super()._child(study, done, seen)

    def _breeding_pool(self, study: Study, done: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        elite = super()._breeding_pool(study, done)
        if not elite[0].user_attrs.get("passed", False) or self._rng.rand() >= self.niche_prob:
            return elite
        space = self._space
        best_needles = space.n_needles(elite[0].params)
        best_cores = len(space.core_slots(elite[0].params))
        ranked = self._ranking(study, done)
        niches: list[tuple[str, int]] = []
        for key in ranked.groups():
            if not (isinstance(key, tuple) and len(key) == 2 and key[0] in NICHE_KINDS):
                continue
            kind, count = key
            if kind == "needles":
                below_best = count < best_needles
            else:
                below_best = MIN_CORE_NEEDLES <= count < best_cores
            if below_best and ranked.size(key) >= MIN_NICHE_SIZE:
                niches.append((kind, count))
        niches.sort(key=lambda key: (NICHE_KINDS.index(key[0]), key[1]))
        if not niches:
            return elite
        chosen = niches[self._rng.randint(len(niches))]
        return ranked.best(self.population_size, chosen)
