"""Send each plan to the worker that already holds its needle pairs' solutions.

Every actor keeps its own cache of pair solutions (the field of one needle pair's geometry at
unit voltage): a plan whose pairs an actor has solved before costs a superposition (~9 ms on
prostatex-0000's 2 mm grid), a fresh pair a Poisson solve (~25 ms more each). The GA's children
share most pairs with their parents, but with proposals dealt out in ask order a child's
pairs sit on the other worker about half the time: with 2 workers a 300-trial search solved a
third more pairs than with one, which cost more than the second worker gained.

``PairAffinity`` remembers which pair geometries each actor has been sent (what its cache
holds, up to its size) and assigns a batch of plans one to one to free workers, each plan to
the worker holding most of its pairs. The choice depends only on what was sent before, never
on timing, so a reproducible search stays reproducible. What it cannot place (the plan's
pairs sit on a busy actor) the receiving actor gets from the other's cache
(``services.planner.unit_sharing``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from optimizer.evaluate.plan import Plan

# Pair geometries remembered per actor (oldest forgotten first, as the actor's LRU cache
# does): about what a 1.5 GB cache holds of 2 mm unit solutions on a prostate case.
DEFAULT_REMEMBERED = 2048


def pair_keys(plan: Plan) -> list[str]:
    return plan.pair_geometry_hashes()


class PairAffinity:
    """Which pair geometries each actor holds, and the assignment that reuses most of them."""

    def __init__(self, warm_plan: Plan | None = None, remembered: int = DEFAULT_REMEMBERED) -> None:
        self.remembered = remembered
        # Every actor evaluates the warm-up plan when it starts, so it holds those pairs.
        self._warm = [] if warm_plan is None else pair_keys(warm_plan)
        self._held: dict[Hashable, OrderedDict[str, None]] = {}

    def held(self, actor: Hashable) -> OrderedDict[str, None]:
        if actor not in self._held:
            self._held[actor] = OrderedDict.fromkeys(self._warm)
        return self._held[actor]

    def sent(self, actor: Hashable, plan: Plan) -> None:
        """``plan`` goes to ``actor``: its pairs will be in that actor's cache."""
        held = self.held(actor)
        for key in pair_keys(plan):
            held[key] = None
            held.move_to_end(key)
        while len(held) > self.remembered:
            held.popitem(last=False)

    def forget(self, actor: Hashable) -> None:
        """The actor is gone (its replacement starts with an empty cache)."""
        self._held.pop(actor, None)

    def hits(self, actor: Hashable, plan: Plan) -> int:
        held = self.held(actor)
        return sum(key in held for key in pair_keys(plan))

    def assign(self, plans: Sequence[Plan], actors: Sequence[Hashable]) -> list[int]:
        """For each plan, the index of a distinct actor (``len(plans) <= len(actors)``).

        Greedy over (plan, actor) pairs, most pairs held first: the plan that would reuse
        most is placed first. Ties go to the earlier plan and the earlier actor, so a batch
        with no reuse is dealt out in order, plan i to actor i.
        """
        if len(plans) > len(actors):
            raise ValueError(f"{len(plans)} plans for {len(actors)} actors")
        options = sorted(
            ((-self.hits(actor, plan), p, a) for p, plan in enumerate(plans)
             for a, actor in enumerate(actors)),
        )  # fmt: skip
        chosen: dict[int, int] = {}
        taken: set[int] = set()
        for _, p, a in options:
            if p not in chosen and a not in taken:
                chosen[p] = a
                taken.add(a)
        return [chosen[p] for p in range(len(plans))]
