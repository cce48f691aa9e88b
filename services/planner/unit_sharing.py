"""Pair solutions shared between evaluator actors through Ray's object store.

Why: every actor caches the unit solutions of the needle-pair geometries it has solved, and
the driver sends each plan to the actor holding most of its pairs (``affinity``). Still, with
2 actors a 300-trial search on prostatex-0000 (ECT, seed 0, asynchronous) solved 333 pairs
against 267 with one: a plan goes to the actor that is free, and a child's pairs often sit on
the other one. A Poisson solve on the 2 mm grid costs ~19 ms of CPU; handing its result over
costs ~1 ms (storing 0.5 MB where it was solved) and ~0.2 ms (``ray.get`` where needed).
A first version had each actor ``ray.put`` its solutions and return the references, so every
solve lent a reference from actor to driver: measured asynchronously, the driver spent ~2 ms
more per trial and the search was no faster.

How:
- an actor that shares returns the unit solutions it solved as a second return value
  (``solved_bundle``), which stays in the object store, owned by the driver, unread;
- the driver (``SharedUnits``) keeps the most recently used bundles up to a byte budget, and
  with each plan it sends the references of the pairs the receiving actor does not hold;
- that actor (``adopt``) copies them into its cache before evaluating, so the plan's pairs are
  cache hits. A reference it cannot read (the object was lost, say with its node) is skipped:
  the pair is solved as before.

Islands (``services.planner.island``) share differently. When every actor runs on the
driver's host they write and read the pairs through a folder, at once
(``services.planner.unit_folder``). Otherwise each island ``ray.put``s the pairs it solved in a
call (it owns that object, which dies with it), the driver hands the reference on to the other
islands with their next call (``SharedBundle``), and each island keeps its own ``SharedUnits``
index of them, adopting what a plan needs as above.

A shared solution is the one its owner computed for the same pair geometry, exactly what that
actor's cache would have served. In reproducible order the driver registers references when
it tells a trial, in ask order, so which pairs an actor is handed depends on the trial order
only, never on timing.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayError

from optimizer.evaluate.evaluator import CachedUnit, PlanEvaluator

# The driver's references, most recently used kept: ~500 unit solutions of a prostate case's
# 2 mm grid (0.5 MB each on prostatex-0000). Objects it forgets are freed by Ray.
DEFAULT_SHARED_BYTES = 256 * 1024 * 1024
# A shared bundle is local or one transfer away; this bounds the wait for a lost one.
GET_TIMEOUT_S = 10.0


def solved_bundle(evaluator: PlanEvaluator, keys: Iterable[str]) -> dict[str, CachedUnit]:
    """The cached unit solutions of ``keys``: an actor's second return value, which Ray puts
    in the object store where the actor runs and the driver owns (so no reference crosses
    between actors and driver for every solve, only for those handed on)."""
    out = {}
    for key in keys:
        cached = evaluator.cached_unit(key)
        if cached is not None:  # not evicted again already
            out[key] = cached
    return out


def _own_copy(cached: CachedUnit) -> CachedUnit:
    """Heap copies of the arrays: ``ray.get`` returns read-only views that pin the object in
    the store for as long as they live, and the cache keeps entries long."""
    s = cached.solution
    solution = dataclasses.replace(
        s, potential_V=np.array(s.potential_V), field_V_per_cm=np.array(s.field_V_per_cm)
    )
    return CachedUnit(solution, cached.anode_geometry)


def adopt(
    evaluator: PlanEvaluator, shared: Mapping[str, ray.ObjectRef], timeout_s: float = GET_TIMEOUT_S
) -> int:
    """Copy the shared unit solutions this evaluator lacks into its cache; returns how many.
    ``shared``: pair geometry -> reference of a bundle (``solved_bundle``) that holds it."""
    wanted: dict[ray.ObjectRef, list[str]] = {}
    for key, ref in shared.items():
        if evaluator.cached_unit(key) is None:
            wanted.setdefault(ref, []).append(key)
    adopted = 0
    for ref, keys in wanted.items():
        try:
            bundle = ray.get(ref, timeout=timeout_s)
        except (RayError, GetTimeoutError):  # the object is lost: solve these pairs here
            continue
        for key in keys:
            cached = bundle.get(key) if isinstance(bundle, dict) else None
            if isinstance(cached, CachedUnit) and evaluator.adopt_unit(key, _own_copy(cached)):
                adopted += 1
    return adopted


@dataclass(frozen=True)
class SharedBundle:
    """A bundle an island put in the object store (``ray.put``: its actor owns it), with the
    pair geometries it holds: handed by the driver to the other islands."""

    owner: Hashable
    ref: ray.ObjectRef
    keys: tuple[str, ...]
    nbytes: int


@dataclass
class _Entry:
    ref: ray.ObjectRef  # the bundle holding this pair's solution
    nbytes: int
    owner: Hashable


class SharedUnits:
    """The driver's index of shared unit solutions: pair geometry -> reference."""

    def __init__(self, max_bytes: int = DEFAULT_SHARED_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.handed = 0  # references sent with plans
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, owner: Hashable, ref: ray.ObjectRef, keys: Sequence[str], nbytes: int) -> None:
        """The bundle ``ref`` that ``owner`` (an actor) solved, holding the pairs ``keys``
        (``nbytes`` in all); the first solution seen for a key is kept. The bundle is freed
        once none of its keys is kept."""
        each = nbytes // max(1, len(keys))
        for key in keys:
            if key in self._entries or each > self.max_bytes:
                continue
            self._entries[key] = _Entry(ref, each, owner)
            self.bytes += each
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes

    def for_keys(self, keys: Iterable[str]) -> dict[str, ray.ObjectRef]:
        """References for those of ``keys`` that some actor shared (each counts as a use)."""
        out = {}
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                out[key] = entry.ref
        self.handed += len(out)
        return out

    def forget_owner(self, owner: Hashable) -> None:
        """``owner`` died. Its bundles may well outlive it (the store keeps return values),
        but a node lost with it takes them along: not worth a failed fetch per pair."""
        for key in [k for k, e in self._entries.items() if e.owner == owner]:
            self.bytes -= self._entries.pop(key).nbytes
