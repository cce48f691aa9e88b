"""Evaluate plans on one prepared case: solve each pulsed pair, cache, score.

The evaluator owns the conductivity map of a planning grid and a cache of pair solutions:
- linear conductivity: one unit (1 V) solution per pair geometry, scaled to any voltage for
  free (the field is linear in the voltage), so a search that only changes voltages never
  solves again;
- nonlinear conductivity (sigma(E), the clinical-quality evaluation): one solution per pair
  geometry and voltage, warm-started from the scaled unit solution.
Re-evaluating a plan after one needle moved therefore solves only the pairs that include it.
An exploration evaluator (``metrics_detail="search"``) computes only the metrics a search ranks
plans by (``optimizer.evaluate.metrics``); its criteria are the same.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.case import PreparedCase
from optimizer.electrodes import Needle, NeedleVoxels, PathCheck, check_path, voxelise
from optimizer.evaluate.criteria import CriterionResult
from optimizer.evaluate.evaluation import PlanEvaluation, evaluate_plan
from optimizer.evaluate.metrics import METRICS_DETAILS
from optimizer.evaluate.plan import Plan, PlanError, PlanNeedle
from optimizer.evaluate.protocol import Protocol
from optimizer.field import Electrode, FieldSolver, PairSolution, UnitSolution
from optimizer.field.nonlinear import solve_pair_nonlinear
from optimizer.tissue.conductivity import ConductivityModel
from optimizer.tissue.table import TissueTable, load_tissue_table

# Unit solutions hold a float64 potential and a float32 field: 12 bytes a voxel. 1.5 GB keeps
# ~100 pairs of a 1 mm prostate grid, or every pair a search visits on the 2 mm grid.
DEFAULT_CACHE_BYTES = 1_500_000_000
# Needles whose voxels and insertion-path check an evaluator remembers (a few kB each).
NEEDLE_CACHE_SIZE = 4096


@dataclass
class CachedUnit:
    """A pair geometry's unit solution, as the cache holds it (and as actors share it)."""

    solution: UnitSolution
    anode_geometry: str  # which needle was at +1 V, to warm-start either polarity correctly

    @property
    def nbytes(self) -> int:
        return self.solution.potential_V.nbytes + self.solution.field_V_per_cm.nbytes


@dataclass
class EvaluatedPlan:
    evaluation: PlanEvaluation
    solutions: list[PairSolution]
    seconds: float
    solved_pairs: int
    reused_pairs: int
    # Pair geometries whose unit solution this evaluation solved (linear evaluators only):
    # what an actor can offer the others.
    solved_units: tuple[str, ...] = ()

    @property
    def field_max_V_per_cm(self) -> np.ndarray:
        """The cumulative field: the maximum over pairs."""
        out = np.zeros_like(self.solutions[0].field_V_per_cm)
        for s in self.solutions:
            np.maximum(out, s.field_V_per_cm, out=out)
        return out


@dataclass
class CacheStats:
    solves: int = 0
    reused: int = 0
    entries: int = 0
    bytes: int = 0
    evictions: int = 0
    adopted: int = 0  # unit solutions handed in from elsewhere (another actor's solve)
    solve_seconds: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


class PlanEvaluator:
    """Scores plans on ``case.planning`` against ``protocol``; see the module docstring."""

    def __init__(
        self,
        case: PreparedCase,
        protocol: Protocol,
        *,
        nonlinear: bool = True,
        backend: str = "auto",
        table: TissueTable | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        metrics_detail: str = "full",
    ) -> None:
        if metrics_detail not in METRICS_DETAILS:
            raise ValueError(
                f"metrics_detail must be one of {METRICS_DETAILS}, not {metrics_detail!r}"
            )
        self.case = case
        self.metrics_detail = metrics_detail
        self.anatomy = case.planning
        self.protocol = protocol
        self.nonlinear = nonlinear
        self.backend = backend
        self.table = table or load_tissue_table()
        names = self.table.names()
        self.labels = self.anatomy.tissue_map(names)
        self.model = ConductivityModel.from_table(names, self.table)
        spacing = self.anatomy.grid.spacing_mm
        if not self.anatomy.grid.is_isotropic:
            raise PlanError(f"the field solver needs an isotropic planning grid, got {spacing}")
        self.spacing_mm = float(spacing[0])
        self.solver = FieldSolver(self.model.baseline(self.labels), self.spacing_mm,
                                  backend=backend)
        self.cache_bytes = int(cache_bytes)
        self._units: OrderedDict[str, CachedUnit] = OrderedDict()
        self._fields: OrderedDict[tuple[str, str, float], PairSolution] = OrderedDict()
        # Per needle (a frozen PlanNeedle: tip, direction, exposure, diameter, hole, entry).
        self._needles: dict[PlanNeedle, tuple[Needle, NeedleVoxels, np.ndarray]] = {}
        self._paths: dict[PlanNeedle, PathCheck] = {}
        self.stats = CacheStats()

    # ---- geometry ----------------------------------------------------------------------

    def _voxels(self, spec: PlanNeedle) -> tuple[Needle, NeedleVoxels, np.ndarray]:
        """The needle, its voxels and its axis in voxel-index space, remembered per needle:
        a search's plans share most needles, and voxelising one took ~1.4 ms."""
        hit = self._needles.get(spec)
        if hit is not None:
            return hit
        needle = spec.to_needle()
        voxels = voxelise(needle, self.anatomy.grid)
        # The needle axis in voxel-index space picks the well-correction cross-section.
        direction = np.linalg.solve(self.anatomy.grid.affine[:3, :3], needle.direction)
        entry = (needle, voxels, direction / np.linalg.norm(direction))
        self._needles[spec] = entry
        if len(self._needles) > NEEDLE_CACHE_SIZE:
            self._needles.pop(next(iter(self._needles)))  # the oldest
        return entry

    def _electrode(self, plan: Plan, index: int) -> tuple[Electrode, NeedleVoxels]:
        needle, voxels, direction = self._voxels(plan.needles[index])
        if voxels.entirely_outside:
            raise PlanError(
                f"needle {index} ({needle.label}) has its exposed part entirely outside the "
                f"planning grid of case {self.anatomy.case_id!r} "
                f"({self.anatomy.grid.describe()}); move its tip towards the target"
            )
        electrode = Electrode(
            indices=np.asarray(voxels.indices, dtype=np.int64),
            radius_mm=voxels.radius_mm,
            direction=direction,
            label=f"needle {index}",
        )
        return electrode, voxels

    def path_results(self, plan: Plan) -> list[CriterionResult]:
        """Insertion paths as a required criterion: a needle through an organ fails it."""
        blocked = []
        for i, n in enumerate(plan.needles):
            check = self._paths.get(n)
            if check is None:
                known = self._needles.get(n)  # a needle in no pair was never voxelised
                needle = known[0] if known is not None else n.to_needle()
                check = check_path(needle, self.case.obstacles)
                self._paths[n] = check
                if len(self._paths) > NEEDLE_CACHE_SIZE:
                    self._paths.pop(next(iter(self._paths)))
            if not check.ok:
                blocked.append(f"needle {i}: {check.message}")
        return [
            CriterionResult(
                id="insertion_paths",
                kind="insertion_path",
                severity="required",
                status="fail" if blocked else "pass",
                value=float(len(blocked)),
                limit=0.0,
                margin=-float(len(blocked)),
                unit="needles",
                description=(
                    "no needle path crosses rectum, bladder, urine, urethra or bone"
                    + ("; " + "; ".join(blocked) if blocked else "")
                ),
                structures=tuple(sorted({s.name for s in self.anatomy if s.blocks_needles})),
                modelled=tuple(s.name for s in self.anatomy if s.blocks_needles and s.modelled),
            )
        ]

    # ---- solving -----------------------------------------------------------------------

    def _remember(
        self, cache: OrderedDict[Any, Any], key: object, value: object, nbytes: int
    ) -> None:
        cache[key] = value
        self.stats.bytes += nbytes
        while self.stats.bytes > self.cache_bytes and (self._units or self._fields):
            victim = self._fields if self._fields else self._units
            _, old = victim.popitem(last=False)
            sol = old.solution if isinstance(old, CachedUnit) else old
            self.stats.bytes -= sol.potential_V.nbytes + sol.field_V_per_cm.nbytes
            self.stats.evictions += 1
        self.stats.entries = len(self._units) + len(self._fields)

    def _unit(self, plan: Plan, index: int, anode: Electrode, cathode: Electrode) -> CachedUnit:
        key = plan.pair_geometry_hash(index)
        hit = self._units.get(key)
        if hit is not None:
            self._units.move_to_end(key)
            self.stats.reused += 1
            return hit
        started = time.perf_counter()
        unit = self.solver.solve_unit(anode, cathode)
        self.stats.solve_seconds += time.perf_counter() - started
        self.stats.solves += 1
        anode_key = plan.needles[plan.pairs[index].anode].geometry_key()
        cached = CachedUnit(unit, anode_key)
        self._remember(self._units, key, cached, cached.nbytes)
        return cached

    def cached_unit(self, key: str) -> CachedUnit | None:
        """The unit solution of pair geometry ``key`` if the cache holds it (not a use)."""
        return self._units.get(key)

    def adopt_unit(self, key: str, cached: CachedUnit) -> bool:
        """Take a unit solution solved elsewhere for pair geometry ``key``; False when this
        cache holds one already (kept: it may be in use)."""
        if key in self._units:
            return False
        self.stats.adopted += 1
        self._remember(self._units, key, cached, cached.nbytes)
        return True

    def pair_solution(self, plan: Plan, index: int) -> tuple[PairSolution, bool]:
        """(solution of pair ``index`` at its voltage, whether it was solved just now)."""
        pair = plan.pairs[index]
        anode, _ = self._electrode(plan, pair.anode)
        cathode, _ = self._electrode(plan, pair.cathode)
        solves_before = self.stats.solves
        unit = self._unit(plan, index, anode, cathode)
        if not self.nonlinear:
            return unit.solution.at(pair.voltage_V), self.stats.solves > solves_before
        anode_key = plan.needles[pair.anode].geometry_key()
        key = (plan.pair_geometry_hash(index), anode_key, round(pair.voltage_V, 1))
        hit = self._fields.get(key)
        if hit is not None:
            self._fields.move_to_end(key)
            self.stats.reused += 1
            return hit, False
        v = pair.voltage_V
        phi = unit.solution.potential_V
        # Warm start from the linear field at this voltage, in this pair's polarity.
        x0 = v * phi if unit.anode_geometry == anode_key else v * (1.0 - phi)
        started = time.perf_counter()
        solution = solve_pair_nonlinear(
            self.labels, self.model, self.spacing_mm, anode, cathode, v,
            backend=self.backend, x0=x0, well_cache=self.solver.well_cache,
        )
        self.stats.solve_seconds += time.perf_counter() - started
        self.stats.solves += 1
        self._remember(self._fields, key, solution,
                       solution.potential_V.nbytes + solution.field_V_per_cm.nbytes)
        return solution, True

    def evaluate_with_fields(self, plan: Plan) -> EvaluatedPlan:
        if not plan.pairs:
            raise PlanError("the plan pulses no pair of needles; add at least one pair")
        started = time.perf_counter()
        solutions: list[PairSolution] = []
        fresh_units: list[str] = []
        solved = 0
        for i in range(len(plan.pairs)):
            solution, fresh = self.pair_solution(plan, i)
            solutions.append(solution)
            solved += int(fresh)
            if fresh and not self.nonlinear:
                fresh_units.append(plan.pair_geometry_hash(i))
        evaluation = evaluate_plan(
            plan, self.protocol, self.anatomy,
            [s.field_V_per_cm for s in solutions], [s.current_A for s in solutions],
            table=self.table, metrics_detail=self.metrics_detail,
        )
        evaluation = dataclasses.replace(
            evaluation, results=[*self.path_results(plan), *evaluation.results]
        )
        return EvaluatedPlan(evaluation, solutions, time.perf_counter() - started, solved,
                             len(solutions) - solved, tuple(dict.fromkeys(fresh_units)))

    def evaluate(self, plan: Plan) -> PlanEvaluation:
        return self.evaluate_with_fields(plan).evaluation

    def cache_info(self) -> dict[str, int]:
        return {
            "solves": self.stats.solves,
            "reused": self.stats.reused,
            "entries": self.stats.entries,
            "bytes": self.stats.bytes,
            "evictions": self.stats.evictions,
            "adopted": self.stats.adopted,
        }
