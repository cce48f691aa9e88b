"""EvaluatePlan's evaluators: a small LRU of ``PlanEvaluator`` per (anatomy, protocol, grid).

A planning UI edits one needle and asks again; the evaluator it used last still holds every
pair's field solution, so only the pairs of the moved needle are solved (its cache is keyed by
pair geometry). Each evaluator is used by one call at a time (its own lock); different
anatomies evaluate in parallel up to the executor's width.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.evaluator import EvaluatedPlan, PlanEvaluator
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol
from services.front.searches import PLANNING_MARGIN_MM
from services.front.uploads import AnatomyStore

# Pair solutions kept per evaluator: ~30 pairs of a 1 mm prostate grid (12 bytes a voxel).
DEFAULT_EVALUATOR_BYTES = 400_000_000


@dataclass(frozen=True)
class EvaluatorKey:
    anatomy_id: str
    protocol_sha256: str
    spacing_mm: float
    nonlinear: bool
    target_scope: str = "auto"


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    evaluator: PlanEvaluator | None = None
    case: PreparedCase | None = None


def protocol_fingerprint(protocol: Protocol) -> str:
    return hashlib.sha256(protocol.model_dump_json().encode()).hexdigest()


class EvaluatorCache:
    def __init__(
        self,
        anatomies: AnatomyStore,
        *,
        capacity: int = 4,
        evaluator_bytes: int = DEFAULT_EVALUATOR_BYTES,
    ) -> None:
        self.anatomies = anatomies
        self.capacity = capacity
        self.evaluator_bytes = evaluator_bytes
        self._entries: OrderedDict[EvaluatorKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _entry(self, key: EvaluatorKey) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry()
                self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return entry

    def evaluate(
        self,
        anatomy_id: str,
        plan: Plan,
        protocol: Protocol,
        *,
        spacing_mm: float,
        nonlinear: bool,
        target_scope: str = "auto",
    ) -> tuple[EvaluatedPlan, PreparedCase]:
        key = EvaluatorKey(
            anatomy_id, protocol_fingerprint(protocol), spacing_mm, nonlinear, target_scope
        )
        entry = self._entry(key)
        with entry.lock:
            if entry.evaluator is None:
                anatomy = self.anatomies.load(anatomy_id)
                entry.case = prepare_case(
                    anatomy,
                    spacing_mm=spacing_mm,
                    margin_mm=PLANNING_MARGIN_MM,
                    target_scope=target_scope,
                )
                entry.evaluator = PlanEvaluator(
                    entry.case, protocol, nonlinear=nonlinear, cache_bytes=self.evaluator_bytes
                )
            assert entry.case is not None
            return entry.evaluator.evaluate_with_fields(plan), entry.case
