"""The plan search space: fixed-name parameters that Optuna samples, decoded into a ``Plan``.

Parameters (names fixed for a given case and protocol, so TPE multivariate, NSGA-II, random
and the GA all see one flat space, and ask/tell works with ``fixed_distributions``):

- ``n_needles``: how many of the needle slots 0..S-1 are used (protocol/device range, <= 6);
- per slot k: ``hole_col_k`` and ``hole_row_k`` (integer template column and row; default
  "grid" encoding) or ``hole_k`` (categorical hole label, "categorical" encoding);
  ``tip_offset_k`` (tip depth in mm relative to the far end of the target along that hole's
  ray, clipped per hole and exposure to depths where the exposed part overlaps the target and
  the path is clear) and ``exposure_k`` (exposed length, mm);
- ``pairs``: which pairs are pulsed: "all" pairs within the device's spacing limits, or
  "adjacent" ones (each pair no longer than ``adjacent_factor`` times both needles'
  nearest-neighbour spacing);
- per pulse train t of the protocol: ``ratio_t`` (voltage-to-distance ratio, V/cm: each pair
  gets ratio x its spacing, rounded, clipped to the device maximum) or ``voltage_t`` (absolute
  mode), and ``pulses_t`` when the protocol allows more than one pulse count;
- protocols with two trains (IRECT: an IRE core and an ECT margin): ``core_k`` per slot; a pair
  of two core needles gets the first train, every other pair the second.

Why grid coordinates rather than a categorical hole: a needle moved by one hole (5 mm) changes
the field a little, so plan quality varies smoothly with (column, row); the GA's +-1 mutations
(the default sampler) and TPE's Parzen estimators over ordered integers can use that, while a
categorical of ~60 labels has no notion of neighbourhood and NSGA-II's mutation of it jumps
anywhere. The cost is that non-admissible grid cells snap to the nearest admissible hole, a
many-to-one plateau. Measured for TPE (data/sampler_choice.toml) neither encoding wins: grid
was slightly better for ECT, categorical better for IRECT at 300 evaluations. Both are
implemented (``hole_encoding``).

Only admissible holes are ever proposed: a hole is admissible when the target's reach check
(``optimizer.electrodes.hole_reach``) finds a clear path that reaches the target on the case
that defines the space, and on every other case given (the coarse grid the search explores on).
Two slots asking for one hole: the later slot takes the nearest free admissible hole
(deterministic, so the mapping from parameters to plan stays a function).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from optimizer.anatomy.kinds import Role
from optimizer.case import DEFAULT_REACH_EXPOSURE_MM, PreparedCase
from optimizer.electrodes import HoleReach, Obstacles, hole_reach
from optimizer.evaluate.device import segment_distance_mm
from optimizer.evaluate.plan import Plan, PlanNeedle, PulsedPair
from optimizer.evaluate.protocol import Protocol, PulseTrain
from optimizer.search.settings import RatioRange, SpaceSettings, load_space_settings

FloatArray = npt.NDArray[np.float64]
HoleEncoding = Literal["grid", "categorical"]
VoltageMode = Literal["ratio", "absolute"]

# The generator drives at most 6 electrodes (DESIGN.md section 1): the number of slots.
MAX_SLOTS = 6
PAIR_PATTERNS = ("all", "adjacent")
# The per-slot parameters' names before "_k": a pattern anchored on them cannot mistake a
# train's parameter (``ratio_<train>``, whose key may end in a digit) for a slot's.
SLOT_STEMS = "(?:hole_col|hole_row|hole|tip_offset|exposure|core)"
# Needles (and their exposed segments) a space remembers: a search decodes every proposal
# twice (the sampler's duplicate check, the plan) and its plans share most needles; decoding
# was a sixth of the driver's time per trial (cProfile), building a needle ~0.15 ms of it.
# A few kB each.
NEEDLE_MEMO_SIZE = 20000


class SearchSpaceError(ValueError):
    """The case or protocol leaves nothing to search, or parameters do not fit the space."""


@dataclass(frozen=True)
class HoleOption:
    """An admissible hole: template column/row, where its ray meets the target, how deep it
    may go (the shallowest limit over all cases), and the exposures that fit it."""

    index: int
    label: str
    column: int
    row: int
    position_mm: FloatArray
    target_near_mm: float
    target_far_mm: float
    max_tip_mm: float
    exposures_mm: tuple[float, ...]

    def tip_range_mm(self, exposure_mm: float) -> tuple[float, float] | None:
        """Tip depths where the exposed part overlaps the target, fits behind the tip and stays
        on the clear part of the path; None when there is none."""
        lo = max(self.target_near_mm, exposure_mm)
        hi = min(self.target_far_mm + exposure_mm, self.max_tip_mm)
        return (lo, hi) if lo <= hi else None


@dataclass(frozen=True)
class TrainOption:
    """A protocol pulse train as the space offers it."""

    key: str  # parameter-name suffix
    train: PulseTrain
    irreversible: bool
    ratio: RatioRange
    pulse_choices: tuple[int, ...]


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "train"


def _snap(value: float, lo: float, hi: float, step: float) -> float:
    k = round((min(max(value, lo), hi) - lo) / step)
    return float(min(lo + k * step, hi))


class SearchSpace:
    """Parameters <-> plans for one case (the fine planning grid) and one protocol."""

    @classmethod
    def for_levels(
        cls,
        coarse: PreparedCase,
        fine: PreparedCase,
        protocol: Protocol,
        *,
        hole_encoding: HoleEncoding = "grid",
        voltage_mode: VoltageMode = "ratio",
    ) -> SearchSpace:
        """The space of a search exploring on ``coarse`` and confirming on ``fine``: the fine
        case's holes, kept only where the needle path is also clear on the coarse grid."""
        return cls(
            fine,
            protocol,
            also_clear_on=[] if coarse is fine else [coarse.obstacles],
            hole_encoding=hole_encoding,
            voltage_mode=voltage_mode,
        )

    def __init__(
        self,
        case: PreparedCase,
        protocol: Protocol,
        settings: SpaceSettings | None = None,
        *,
        also_clear_on: Sequence[Obstacles] = (),
        hole_encoding: HoleEncoding = "grid",
        voltage_mode: VoltageMode = "ratio",
    ) -> None:
        if hole_encoding not in ("grid", "categorical"):
            raise SearchSpaceError(
                f"hole_encoding must be 'grid' or 'categorical', not {hole_encoding!r}"
            )
        if voltage_mode not in ("ratio", "absolute"):
            raise SearchSpaceError(
                f"voltage_mode must be 'ratio' or 'absolute', not {voltage_mode!r}"
            )
        self.case = case
        self.protocol = protocol
        self.settings = settings if settings is not None else load_space_settings()
        self.template = case.template
        self.hole_encoding: HoleEncoding = hole_encoding
        self.voltage_mode: VoltageMode = voltage_mode
        self.holes = self._admissible_holes(also_clear_on)
        device = protocol.device
        self.n_slots = min(MAX_SLOTS, device.needles_max, len(self.holes))
        self.n_min = max(2, device.needles_min)
        if self.n_slots < self.n_min:
            raise SearchSpaceError(
                f"case {case.case_id!r}: only {len(self.holes)} admissible template hole(s) but "
                f"protocol {protocol.name!r} needs at least {self.n_min} needles; tilt the "
                "template or widen the planning margin"
            )
        self.trains = self._train_options()
        self._columns = np.array([h.column for h in self.holes], dtype=np.float64)
        self._rows = np.array([h.row for h in self.holes], dtype=np.float64)
        self._by_label = {h.label: h for h in self.holes}
        self._memo_size = NEEDLE_MEMO_SIZE
        self._needle_memo: dict[tuple[str, float, float], PlanNeedle] = {}
        self._segment_memo: dict[PlanNeedle, tuple[npt.NDArray[np.float64], ...]] = {}
        self._distributions = self._make_distributions()

    # ---- construction ------------------------------------------------------------------

    def _admissible_holes(self, also_clear_on: Sequence[Obstacles]) -> list[HoleOption]:
        case = self.case
        reach = case.reach
        others = [
            # Only the clear depth matters there, which does not depend on the exposure.
            {
                r.label: r
                for r in hole_reach(self.template, obs, exposure_mm=DEFAULT_REACH_EXPOSURE_MM)
            }
            for obs in also_clear_on
        ]
        exposures = self.settings.exposures_mm
        holes: list[HoleOption] = []
        for r in reach:
            if not r.admissible or r.target_depth_mm is None:
                continue
            max_tip = r.max_tip_depth_mm
            for other in others:
                o = other.get(r.label)
                max_tip = min(max_tip, o.max_tip_depth_mm if o is not None else 0.0)
            hole = self.template.hole(r.label)
            a, b = r.target_depth_mm
            option = HoleOption(
                len(holes), r.label, hole.column, hole.row, hole.position_mm, a, b, max_tip, ()
            )
            fits = tuple(e for e in exposures if option.tip_range_mm(e) is not None)
            if fits:
                holes.append(
                    HoleOption(
                        len(holes),
                        r.label,
                        hole.column,
                        hole.row,
                        hole.position_mm,
                        a,
                        b,
                        max_tip,
                        fits,
                    )
                )
        if not holes:
            raise SearchSpaceError(_unreachable_message(case, reach))
        self._check_each_target_near(holes)
        return holes

    def _check_each_target_near(self, holes: Sequence[HoleOption]) -> None:
        """Every target structure must lie within half the longest pair spacing of an
        admissible hole's ray, or no pair of needles can bracket it."""
        reach_mm = 0.5 * self.protocol.device.pair_spacing_max_mm
        t = self.template
        hole_uv = np.array(
            [
                [
                    (h.position_mm - t.centre_mm) @ t.column_axis,
                    (h.position_mm - t.centre_mm) @ t.row_axis,
                ]
                for h in holes
            ]
        )
        grid = self.case.planning.grid
        for s in self.case.planning.with_role(Role.TARGET):
            idx = np.argwhere(s.mask)
            if len(idx) == 0:
                continue
            world = grid.index_to_world(idx.astype(np.float64)) - t.centre_mm
            uv = np.stack([world @ t.column_axis, world @ t.row_axis], axis=1)
            nearest = min(float(np.min(np.linalg.norm(uv - h, axis=1))) for h in hole_uv)
            if nearest > reach_mm:
                raise SearchSpaceError(
                    f"case {self.case.case_id!r}: target {s.name!r} lies {nearest:.1f} mm from "
                    f"the nearest admissible template hole, more than half the longest pair "
                    f"spacing ({reach_mm:g} mm), so no needle pair can reach it; every hole near "
                    "it is blocked on its way in: tilt the template, or treat it separately"
                )

    def _train_options(self) -> list[TrainOption]:
        rules = self.protocol.pulses
        s = self.settings
        options: list[TrainOption] = []
        # Two trains at most: the first is the core (IRE), the second the margin (ECT).
        for train in rules.trains[:2]:
            irreversible = train.pulses >= s.irreversible_from_pulses
            span = s.pulses_irreversible if irreversible else s.pulses_reversible
            choices = sorted(
                {
                    p
                    for p in range(span.min, span.max + 1, span.step)
                    if rules.pulses_min <= p <= rules.pulses_max
                }
                | {train.pulses}
            )
            key = _key(train.name)
            if any(o.key == key for o in options):
                key = f"{key}_{len(options)}"
            ratio = s.ratio_irreversible if irreversible else s.ratio_reversible
            options.append(TrainOption(key, train, irreversible, ratio, tuple(choices)))
        return options

    def _make_distributions(self) -> dict[str, BaseDistribution]:
        s = self.settings
        d: dict[str, BaseDistribution] = {}
        if self.n_slots > self.n_min:
            d["n_needles"] = IntDistribution(self.n_min, self.n_slots)
        labels = tuple(h.label for h in self.holes)
        for k in range(self.n_slots):
            if self.hole_encoding == "grid":
                d[f"hole_col_{k}"] = IntDistribution(
                    int(self._columns.min()), int(self._columns.max())
                )
                d[f"hole_row_{k}"] = IntDistribution(int(self._rows.min()), int(self._rows.max()))
            else:
                d[f"hole_{k}"] = CategoricalDistribution(labels)
            d[f"tip_offset_{k}"] = FloatDistribution(
                s.tip_offset_min_mm, s.tip_offset_max_mm, step=s.tip_step_mm
            )
            d[f"exposure_{k}"] = FloatDistribution(
                s.exposure_min_mm, s.exposure_max_mm, step=s.exposure_step_mm
            )
            if self.multi_train:
                d[f"core_{k}"] = CategoricalDistribution((False, True))
        d["pairs"] = CategoricalDistribution(PAIR_PATTERNS)
        vmax = self.protocol.device.voltage_max_V
        for t in self.trains:
            if self.voltage_mode == "ratio":
                d[f"ratio_{t.key}"] = FloatDistribution(
                    t.ratio.min_V_per_cm, t.ratio.max_V_per_cm, step=s.ratio_step_V_per_cm
                )
            else:
                top = s.voltage_min_V + math.floor((vmax - s.voltage_min_V) / s.voltage_step_V) * (
                    s.voltage_step_V
                )
                d[f"voltage_{t.key}"] = FloatDistribution(
                    s.voltage_min_V, top, step=s.voltage_step_V
                )
            if len(t.pulse_choices) > 1:
                d[f"pulses_{t.key}"] = CategoricalDistribution(t.pulse_choices)
        return d

    # ---- description -------------------------------------------------------------------

    @property
    def multi_train(self) -> bool:
        return len(self.trains) > 1

    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter and its distribution (a fresh dict: pass it to ``study.ask``)."""
        return dict(self._distributions)

    def slot_params(self, k: int) -> list[str]:
        """The parameters of needle slot ``k`` (the GA crosses them over as one block)."""
        return list(self._slots[k])

    def global_params(self) -> list[str]:
        slots = {n for names in self._slots for n in names}
        return [n for n in self._distributions if n not in slots]

    @functools.cached_property
    def _slots(self) -> tuple[tuple[str, ...], ...]:
        # Built once: the GA asks for them at every crossover and mutation.
        return tuple(
            tuple(n for n in self._distributions if re.fullmatch(rf"{SLOT_STEMS}_{k}", n))
            for k in range(self.n_slots)
        )

    def signature(self) -> str:
        """A hash of case, protocol and parameter space: a stored study must match it."""
        text = json.dumps(
            {
                "case": self.case.case_id,
                "protocol": self.protocol.name,
                "holes": [h.label for h in self.holes],
                "params": {n: distribution_to_json(d) for n, d in self._distributions.items()},
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def hole(self, label: str) -> HoleOption:
        try:
            return self._by_label[label.strip().upper()]
        except KeyError:
            raise SearchSpaceError(
                f"hole {label!r} is not admissible on case {self.case.case_id!r}; admissible: "
                f"{', '.join(self._by_label)}"
            ) from None

    # ---- holes -------------------------------------------------------------------------

    def _nearest_free(self, column: float, row: float, taken: set[int]) -> HoleOption:
        d2 = (self._columns - column) ** 2 + (self._rows - row) ** 2
        if taken:
            d2[list(taken)] = np.inf
        return self.holes[int(np.argmin(d2))]  # ties: the first in label order

    def grid_position(self, point_mm: npt.ArrayLike) -> tuple[float, float]:
        """Fractional (column, row) of a point projected along the insertion direction."""
        t = self.template
        rel = np.asarray(point_mm, dtype=np.float64) - t.centre_mm
        column = float(rel @ t.column_axis) / t.spacing_mm + (t.columns - 1) / 2
        row = float(rel @ t.row_axis) / t.spacing_mm + (t.rows - 1) / 2
        return column, row

    def resolve_holes(self, wanted: Iterable[tuple[float, float]]) -> list[HoleOption]:
        """Admissible holes for wanted (column, row) positions, in order, each the nearest one
        not already taken."""
        taken: set[int] = set()
        out = []
        for column, row in wanted:
            hole = self._nearest_free(column, row, taken)
            taken.add(hole.index)
            out.append(hole)
        return out

    # ---- decode ------------------------------------------------------------------------

    def _get(self, params: Mapping[str, Any], name: str) -> Any:
        if name in params:
            return params[name]
        dist = self._distributions.get(name)
        if dist is None:  # a fixed parameter (one choice only)
            return None
        raise SearchSpaceError(
            f"parameters lack {name!r}; the space has {', '.join(self._distributions)}"
        )

    def n_needles(self, params: Mapping[str, Any]) -> int:
        if "n_needles" not in self._distributions:
            return self.n_min
        n = int(self._get(params, "n_needles"))
        if not self.n_min <= n <= self.n_slots:
            raise SearchSpaceError(f"n_needles {n} is outside {self.n_min}..{self.n_slots}")
        return n

    def core_slots(self, params: Mapping[str, Any]) -> list[int]:
        """The used slots whose needle is in the core (IRE train); none in a one-train space."""
        if not self.multi_train:
            return []
        return [k for k in range(self.n_needles(params)) if bool(self._get(params, f"core_{k}"))]

    def without_needle(self, params: Mapping[str, Any], slot: int) -> dict[str, Any]:
        """``params`` with the needle of ``slot`` taken out and every other needle where it
        was: each used slot is first pinned to the hole it resolved to (a slot that asked for
        a taken hole got the nearest free one, and would get its wish back once the other
        needle is gone), then the later slots move down one place and ``n_needles`` drops by
        one. Global parameters (pairs, voltages, pulses) stay; the slot left unused keeps its
        old values, which no longer change the plan."""
        n = self.n_needles(params)
        if n <= self.n_min:
            raise SearchSpaceError(f"a plan of {n} needles is at the minimum of {self.n_min}")
        if not 0 <= slot < n:
            raise SearchSpaceError(f"slot {slot} is not used by a plan of {n} needles")
        pinned = dict(params)
        holes = self.resolve_holes(self._wanted_position(params, k) for k in range(n))
        for k, hole in enumerate(holes):
            pinned.update(self._hole_params(k, hole))
        out = dict(pinned)
        for k in range(slot, n - 1):
            for here, there in zip(self._slots[k], self._slots[k + 1], strict=True):
                out[here] = pinned[there]
        out["n_needles"] = n - 1
        return out

    def _hole_params(self, k: int, hole: HoleOption) -> dict[str, Any]:
        """The parameters that put slot ``k`` at ``hole`` in this space's hole encoding."""
        if self.hole_encoding == "grid":
            return {f"hole_col_{k}": hole.column, f"hole_row_{k}": hole.row}
        return {f"hole_{k}": hole.label}

    def _wanted_position(self, params: Mapping[str, Any], k: int) -> tuple[float, float]:
        if self.hole_encoding == "grid":
            return float(self._get(params, f"hole_col_{k}")), float(
                self._get(params, f"hole_row_{k}")
            )
        hole = self.hole(str(self._get(params, f"hole_{k}")))
        return float(hole.column), float(hole.row)

    def _needle(self, hole: HoleOption, offset_mm: float, exposure_mm: float) -> PlanNeedle:
        key = (hole.label, offset_mm, exposure_mm)
        needle = self._needle_memo.get(key)
        if needle is None:
            if len(self._needle_memo) >= self._memo_size:
                self._needle_memo.clear()
            needle = self._needle_memo[key] = self._build_needle(hole, offset_mm, exposure_mm)
        return needle

    def _build_needle(self, hole: HoleOption, offset_mm: float, exposure_mm: float) -> PlanNeedle:
        exposure = _fitting_exposure(hole, exposure_mm)
        span = hole.tip_range_mm(exposure)
        assert span is not None  # _fitting_exposure guarantees it
        depth = min(max(hole.target_far_mm + offset_mm, span[0]), span[1])
        n = self.template.needle(hole.label, depth, exposure)
        return PlanNeedle(
            tip_mm=_vec(n.tip_mm),
            direction=_vec(n.direction),
            exposure_mm=exposure,
            diameter_mm=n.diameter_mm,
            hole=hole.label,
            entry_mm=None if n.entry_mm is None else _vec(n.entry_mm),
        )

    def decode_needles(self, params: Mapping[str, Any]) -> list[PlanNeedle]:
        n = self.n_needles(params)
        holes = self.resolve_holes(self._wanted_position(params, k) for k in range(n))
        return [
            self._needle(
                hole,
                float(self._get(params, f"tip_offset_{k}")),
                float(self._get(params, f"exposure_{k}")),
            )
            for k, hole in enumerate(holes)
        ]

    def _exposed_segment(self, needle: PlanNeedle) -> tuple[npt.NDArray[np.float64], ...]:
        """The needle's exposed segment (start, tip), read-only: it is shared."""
        segment = self._segment_memo.get(needle)
        if segment is None:
            if len(self._segment_memo) >= self._memo_size:
                self._segment_memo.clear()
            ends = tuple(
                np.array(end, dtype=np.float64) for end in needle.to_needle().exposed_segment()
            )
            for end in ends:
                end.flags.writeable = False
            segment = self._segment_memo[needle] = ends
        return segment

    def candidate_pairs(
        self, needles: Sequence[PlanNeedle], pattern: str
    ) -> list[tuple[int, int, float]]:
        """(i, j, spacing mm) of the pairs a pattern pulses; spacing as the device check measures
        it (``device.pair_spacing_mm``: the exposed segments' shortest distance)."""
        if pattern not in PAIR_PATTERNS:
            raise SearchSpaceError(
                f"pairs pattern {pattern!r} is not one of {', '.join(PAIR_PATTERNS)}"
            )
        device = self.protocol.device
        segments = [self._exposed_segment(n) for n in needles]
        spacing = {
            (i, j): segment_distance_mm(*segments[i], *segments[j])
            for i in range(len(needles))
            for j in range(i + 1, len(needles))
        }
        within = {
            ij: d
            for ij, d in spacing.items()
            if device.pair_spacing_min_mm <= d <= device.pair_spacing_max_mm
        }
        if pattern == "adjacent" and within:
            nearest = [
                min((d for ij, d in within.items() if i in ij), default=math.inf)
                for i in range(len(needles))
            ]
            factor = self.settings.adjacent_factor
            within = {
                (i, j): d
                for (i, j), d in within.items()
                if d <= factor * nearest[i] and d <= factor * nearest[j]
            }
        if not within:
            # No pair fits the limits: pulse the closest two, so the plan is still evaluated
            # (the device spacing check then fails and the constraint says by how much).
            (i, j), d = min(spacing.items(), key=lambda item: item[1])
            return [(i, j, d)]
        return [(i, j, d) for (i, j), d in sorted(within.items())]

    def _train_for_pair(self, params: Mapping[str, Any], i: int, j: int) -> TrainOption:
        if not self.multi_train:
            return self.trains[0]
        core = bool(self._get(params, f"core_{i}")) and bool(self._get(params, f"core_{j}"))
        return self.trains[0] if core else self.trains[1]

    def _voltage(self, params: Mapping[str, Any], train: TrainOption, spacing_mm: float) -> float:
        vmax = self.protocol.device.voltage_max_V
        step = self.settings.voltage_step_V
        if self.voltage_mode == "absolute":
            v = float(self._get(params, f"voltage_{train.key}"))
        else:
            v = float(self._get(params, f"ratio_{train.key}")) * spacing_mm / 10.0
        return _round_voltage(v, step, vmax)

    def _pulses(self, params: Mapping[str, Any], train: TrainOption) -> int:
        if len(train.pulse_choices) == 1:
            return train.pulse_choices[0]
        return int(self._get(params, f"pulses_{train.key}"))

    def decode(self, params: Mapping[str, Any], name: str | None = None) -> Plan:
        """The plan these parameters describe (deterministic; only admissible holes)."""
        needles = self.decode_needles(params)
        pattern = str(self._get(params, "pairs"))
        pairs = []
        for i, j, spacing in self.candidate_pairs(needles, pattern):
            train = self._train_for_pair(params, i, j)
            pairs.append(
                PulsedPair(
                    anode=i,
                    cathode=j,
                    voltage_V=self._voltage(params, train, spacing),
                    pulses=self._pulses(params, train),
                    pulse_length_us=train.train.pulse_length_us,
                )
            )
        return Plan(
            name=name,
            protocol=self.protocol.name,
            needles=needles,
            pairs=pairs,
            notes=f"ectplan search on case {self.case.case_id}",
        )

    # ---- encode ------------------------------------------------------------------------

    def encode(self, plan: Plan) -> dict[str, Any]:
        """Parameters that decode to ``plan`` (exactly for plans this space decoded; otherwise
        the nearest plan the space can express: holes snapped to admissible ones, depths and
        exposures to their steps, one ratio per train). Unused slots are left out: a sampler
        fills them (they do not change the plan)."""
        n = len(plan.needles)
        if not self.n_min <= n <= self.n_slots:
            raise SearchSpaceError(
                f"plan {plan.name or ''!r} has {n} needles; this space holds {self.n_min}.."
                f"{self.n_slots} (protocol {self.protocol.name!r}, "
                f"{len(self.holes)} admissible holes)"
            )
        s = self.settings
        wanted = []
        for needle in plan.needles:
            label = (needle.hole or "").strip().upper()
            if label in self._by_label:
                h = self._by_label[label]
                wanted.append((float(h.column), float(h.row)))
            else:
                wanted.append(self.grid_position(needle.tip_mm))
        holes = self.resolve_holes(wanted)
        params: dict[str, Any] = {}
        if "n_needles" in self._distributions:
            params["n_needles"] = n
        for k, (needle, hole) in enumerate(zip(plan.needles, holes, strict=True)):
            params.update(self._hole_params(k, hole))
            exposure = _snap(
                needle.exposure_mm, s.exposure_min_mm, s.exposure_max_mm, s.exposure_step_mm
            )
            params[f"exposure_{k}"] = exposure
            depth = float(self.template.depth_of(np.asarray(needle.tip_mm)))
            params[f"tip_offset_{k}"] = self._offset_for(hole, exposure, depth)
        train_of_pair = [self._nearest_train(p.pulses) for p in plan.pairs]
        if self.multi_train:
            core = {
                i
                for p, t in zip(plan.pairs, train_of_pair, strict=True)
                if t == 0
                for i in (p.anode, p.cathode)
            }
            for k in range(n):
                params[f"core_{k}"] = k in core
        needles = self.decode_needles(params)
        wanted_pairs = {frozenset((p.anode, p.cathode)) for p in plan.pairs}
        params["pairs"] = max(
            PAIR_PATTERNS,
            key=lambda pattern: _jaccard(
                wanted_pairs,
                {frozenset((i, j)) for i, j, _ in self.candidate_pairs(needles, pattern)},
            ),
        )
        spacing = {frozenset((i, j)): d for i, j, d in self.candidate_pairs(needles, "all")}
        for t_index, train in enumerate(self.trains):
            mine = [p for p, t in zip(plan.pairs, train_of_pair, strict=True) if t == t_index]
            if len(train.pulse_choices) > 1:
                pulses = float(np.median([p.pulses for p in mine])) if mine else train.train.pulses
                params[f"pulses_{train.key}"] = min(
                    train.pulse_choices, key=lambda c: abs(c - pulses)
                )
            if self.voltage_mode == "ratio":
                spaced = [(p.voltage_V, _pair_spacing(needles, spacing, p)) for p in mine]
                params[f"ratio_{train.key}"] = self._ratio_for(train, spaced)
            else:
                dist = self._distributions[f"voltage_{train.key}"]
                assert isinstance(dist, FloatDistribution) and dist.step is not None
                value = float(np.median([p.voltage_V for p in mine])) if mine else dist.high
                params[f"voltage_{train.key}"] = _snap(value, dist.low, dist.high, dist.step)
        return params

    def _offset_for(self, hole: HoleOption, exposure_mm: float, depth_mm: float) -> float:
        """The tip offset that decodes to ``depth_mm``: a depth clipped to the hole's range
        needs the offset rounded towards the clipped side, not to the nearest step."""
        s = self.settings
        exposure = _fitting_exposure(hole, exposure_mm)
        span = hole.tip_range_mm(exposure)
        assert span is not None
        raw = (depth_mm - hole.target_far_mm - s.tip_offset_min_mm) / s.tip_step_mm
        candidates = [
            _snap(
                s.tip_offset_min_mm + k * s.tip_step_mm,
                s.tip_offset_min_mm,
                s.tip_offset_max_mm,
                s.tip_step_mm,
            )
            for k in (round(raw), math.floor(raw), math.ceil(raw))
        ]
        for offset in candidates:
            decoded = min(max(hole.target_far_mm + offset, span[0]), span[1])
            if abs(decoded - depth_mm) <= 1e-6:
                return offset
        return candidates[0]

    def _ratio_for(self, train: TrainOption, pairs: Sequence[tuple[float, float]]) -> float:
        """The ratio on the search grid that reproduces most of these (voltage, spacing mm)
        pairs after decoding's rounding; among equals the one nearest their median ratio."""
        s = self.settings
        lo, hi, step = train.ratio.min_V_per_cm, train.ratio.max_V_per_cm, s.ratio_step_V_per_cm
        if not pairs:
            return _snap(train.ratio.default_V_per_cm, lo, hi, step)
        raw = [v / (d / 10.0) for v, d in pairs]
        median = float(np.median(raw))
        candidates = {
            _snap(lo + k * step, lo, hi, step)
            for r in [*raw, median]
            for k in (math.floor((r - lo) / step), math.ceil((r - lo) / step))
        }
        vmax = self.protocol.device.voltage_max_V

        def matches(ratio: float) -> int:
            return sum(
                abs(_round_voltage(ratio * d / 10.0, s.voltage_step_V, vmax) - v) < 1e-6
                for v, d in pairs
            )

        return max(sorted(candidates), key=lambda r: (matches(r), -abs(r - median)))

    def _nearest_train(self, pulses: int) -> int:
        return min(range(len(self.trains)), key=lambda i: abs(self.trains[i].train.pulses - pulses))

    def complete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with every missing parameter set (unused slots copy slot 0's values)."""
        out = dict(params)
        for name, dist in self._distributions.items():
            if name in out:
                continue
            source = re.sub(r"_\d+$", "_0", name)
            if source in out and source != name:
                out[name] = out[source]
            elif isinstance(dist, CategoricalDistribution):
                out[name] = dist.choices[0]
            else:
                assert isinstance(dist, IntDistribution | FloatDistribution)
                out[name] = dist.low
        return out


def _round_voltage(voltage_V: float, step_V: float, max_V: float) -> float:
    """To the generator's step, within (0, max]."""
    v = round(voltage_V / step_V) * step_V
    return float(max(min(v, math.floor(max_V / step_V) * step_V), step_V))


def _vec(a: npt.ArrayLike) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in np.asarray(a, dtype=np.float64).reshape(3))
    return (x, y, z)


def _fitting_exposure(hole: HoleOption, exposure_mm: float) -> float:
    """The wanted exposure if it fits the hole, else the nearest that does (shorter first)."""
    if exposure_mm in hole.exposures_mm:
        return exposure_mm
    return min(hole.exposures_mm, key=lambda e: (abs(e - exposure_mm), e))


def _jaccard(a: set[frozenset[int]], b: set[frozenset[int]]) -> float:
    return len(a & b) / max(len(a | b), 1)


def _pair_spacing(
    needles: Sequence[PlanNeedle], known: Mapping[frozenset[int], float], pair: PulsedPair
) -> float:
    key = frozenset((pair.anode, pair.cathode))
    if key in known:
        return known[key]
    a, b = (needles[i].to_needle().exposed_segment() for i in (pair.anode, pair.cathode))
    return segment_distance_mm(*a, *b)


def _unreachable_message(case: PreparedCase, reach: Sequence[HoleReach]) -> str:
    targets = [s.name for s in case.planning.with_role(Role.TARGET)]
    blocked: dict[str, int] = {}
    for r in reach:
        if r.blocked_by is not None and not r.admissible:
            blocked[r.blocked_by] = blocked.get(r.blocked_by, 0) + 1
    why = ", ".join(f"{n} hole(s) by {name!r}" for name, n in sorted(blocked.items()))
    return (
        f"case {case.case_id!r}: no template hole reaches the target "
        f"({', '.join(repr(t) for t in targets) or 'none marked'}) on a clear path"
        + (f" (blocked: {why})" if why else "")
        + "; check the target's segmentation and the needle-blocking structures, or tilt the "
        "template"
    )
