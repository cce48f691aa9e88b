"""Completed trials of one study kept in number and rank order, updated at each ask.

Why: the genetic samplers re-sorted every completed trial at every ask (the elite, each
niche, the plans that could lose a needle) and re-read every trial's needle counts: with the
study's other per-trial work that was most of the driver's CPU per trial in a long search,
and on a 2-core machine the driver's CPU comes out of the evaluations (bench/workers.py).

``CompletedTrials`` finds the trials completed since the last ask by reading only those in
flight then and those asked since (a finished trial stays as it is), and ``RankedTrials``
files each of them once into the whole ranking and into the groups ``group_keys`` names for
it (such as "plans of 3 needles"). A ranking is ``sorted(trials, key=rank)`` with the trials
in number order, as a stable sort gives it: equal ranks stay in number order, so the
samplers draw exactly the parents they drew before.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Callable, Hashable, Iterable, Sequence, Set

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from optimizer.search.objective import ranking_key

GroupKeys = Callable[[FrozenTrial], Iterable[Hashable]]
_Entry = tuple[tuple[int, float], int, FrozenTrial]


def rank(trial: FrozenTrial) -> tuple[int, float]:
    """A completed trial's place in the search's order: passing plans first, then score."""
    value = trial.values[0] if trial.values else math.inf
    return ranking_key(bool(trial.user_attrs.get("passed", False)), value)


class RankedTrials:
    """Completed trials in rank order, as a whole and per group."""

    def __init__(self, group_keys: GroupKeys | None = None) -> None:
        self._group_keys = group_keys
        self._all: list[_Entry] = []
        self._groups: dict[Hashable, list[_Entry]] = {}

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial], group_keys: GroupKeys | None = None) -> RankedTrials:
        ranked = cls(group_keys)
        for trial in trials:
            ranked.add(trial)
        return ranked

    def __len__(self) -> int:
        return len(self._all)

    def add(self, trial: FrozenTrial) -> None:
        """File a trial not filed before."""
        # The number breaks ties, as a stable sort of trials in number order does.
        entry = (rank(trial), trial.number, trial)
        insort(self._all, entry)
        if self._group_keys is not None:
            for key in self._group_keys(trial):
                insort(self._groups.setdefault(key, []), entry)

    def best(self, n: int, group: Hashable | None = None) -> list[FrozenTrial]:
        """The first ``n`` in rank order, of all trials or of one group."""
        entries = self._all if group is None else self._groups.get(group, [])
        return [trial for _, _, trial in entries[:n]]

    def size(self, group: Hashable) -> int:
        return len(self._groups.get(group, ()))

    def groups(self) -> list[Hashable]:
        return list(self._groups)


class CompletedTrials:
    """The completed trials of one study that carry every parameter of a search space, in
    number order (``trials``) and in rank order (``ranked``), with the plan identities a
    sampler keeps for them (``identities``)."""

    def __init__(
        self, storage: BaseStorage, names: Set[str], group_keys: GroupKeys | None = None
    ) -> None:
        # The study's storage: a second study of the same id elsewhere gets its own record.
        self.storage = storage
        self._names = names
        self._looked = 0  # trials 0 .. _looked - 1 were looked at
        self._unfinished: list[int] = []  # of those, the ones not finished then
        self.trials: list[FrozenTrial] = []
        self.ranked = RankedTrials(group_keys)
        self.identities: set[str] = set()

    def follows(self, storage: BaseStorage, every_trial: Sequence[FrozenTrial]) -> bool:
        """Whether ``every_trial`` (the study's trials) can update this record."""
        return storage is self.storage and len(every_trial) >= self._looked

    def update(self, every_trial: Sequence[FrozenTrial]) -> list[FrozenTrial] | None:
        """File the trials completed since the last update, from ``every_trial`` (every
        trial of the study in any state, trial number ``k`` at index ``k`` as Optuna's
        storages list them); returns those that carry every parameter, or None, filing
        nothing, when the list is not indexed by number."""
        # Only the trials unfinished at the last update and the ones created since can have
        # completed: a finished trial stays as it is. So an update reads the trials in
        # flight, not the whole study.
        looking = [*self._unfinished, *range(self._looked, len(every_trial))]
        if any(every_trial[k].number != k for k in looking):
            return None
        self._looked = len(every_trial)
        self._unfinished = []
        new: list[FrozenTrial] = []
        for k in looking:
            trial = every_trial[k]
            if trial.state == TrialState.COMPLETE:
                if self._names <= trial.params.keys():
                    new.append(trial)
            elif not trial.state.is_finished():
                self._unfinished.append(k)
        for trial in new:  # in number order
            if self.trials and trial.number < self.trials[-1].number:
                insort(self.trials, trial, key=_number)
            else:
                self.trials.append(trial)
            self.ranked.add(trial)
        return new


def _number(trial: FrozenTrial) -> int:
    return trial.number
