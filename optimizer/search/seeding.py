"""Starting plans: needles around the target at clinical spacing, enqueued before sampling.

Geometric seeds put 2 (pair), 4 (square or diamond) or 6 (hexagon ring, or a pentagon
around a centre needle, which also covers the middle) needles around the
target's centre in the template plane, at each spacing of data/space.toml ``seeding``
(15 and 20 mm: the probe spacings of prostate IRE and deep-seated ECT), snapped to admissible
holes. The patterns whose ring radius best matches the target's in-plane radius come first.
Each needle's exposure is the shortest offered one that spans the target along that hole's ray
(the longest when none does), centred on it; each pair's voltage is the protocol train's default
voltage-to-distance ratio times the pair's spacing. For a two-train protocol (IRECT) the needles
near the lesion form the core (IRE train), and lesion-centred squares with every pair in the
core are added. Each seed whose core has three needles or more is followed by the same needles
with one IRE pair: of the core pairs the seed pulses (within the device's spacing), the one
whose midpoint lies nearest the lesion centre; every other pair pulses the margin train. The IRE
pairs carry the heat (70-90 pulses against 8), and the best IRECT plans pulse few of them
(niching.py).

Sparing variants (data/space.toml ``seeding.sparing_*``): for the best-matching patterns, each
needle whose target chord ends near an organ at risk with a required E limit (the sphincter
below the apex, the rectal wall, the bladder neck) gets its exposure flush with the target on
that side, then pulled one inset inside it, the overhang going to the other side. A centred
exposure overhangs both ends, which is what puts an organ 5-10 mm from the target above E_irr.

Seeds are parameter dicts of the search space (``space.decode`` turns them into plans); plans
from elsewhere (a plan library) enter through ``space.encode``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from optimizer.anatomy.kinds import Role
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import CriterionKind
from optimizer.search.settings import SpaceSettings
from optimizer.search.space import HoleOption, SearchSpace, SearchSpaceError

FloatArray = npt.NDArray[np.float64]
LESION_KIND = "lesion"

# Unit offsets of each pattern (multiply by the spacing), and the ring radius per unit spacing.
_HEXAGON = [(math.cos(a), math.sin(a)) for a in np.deg2rad(np.arange(0, 360, 60))]
_DIAMOND = [
    (-math.sqrt(0.5), 0.0),
    (0.0, -math.sqrt(0.5)),
    (math.sqrt(0.5), 0.0),
    (0.0, math.sqrt(0.5)),
]
_PENTAGON_CENTRE = [(0.0, 0.0)] + [
    (math.cos(a), math.sin(a)) for a in np.deg2rad(np.arange(90, 450, 72))
]
PATTERNS: dict[str, tuple[list[tuple[float, float]], float]] = {
    "pentagon_centre": (_PENTAGON_CENTRE, 1.0),
    "hexagon": (_HEXAGON, 1.0),
    "square": ([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)], math.sqrt(0.5)),
    "diamond": (_DIAMOND, math.sqrt(0.5)),
    "pair": ([(-0.5, 0.0), (0.5, 0.0)], 0.5),
}


@dataclass(frozen=True)
class Footprint:
    """A structure seen along the needles: centre (u, v) in mm from the template centre along
    its column and row axes, and the radius of the disc with the same spread."""

    centre_mm: tuple[float, float]
    radius_mm: float


def _footprint(space: SearchSpace, mask: npt.NDArray[np.bool_]) -> Footprint | None:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    t = space.template
    world = space.case.planning.grid.index_to_world(idx.astype(np.float64)) - t.centre_mm
    uv = np.stack([world @ t.column_axis, world @ t.row_axis], axis=1)
    centre = uv.mean(axis=0)
    # A uniform disc of radius R has var(u) + var(v) = R^2 / 2.
    radius = math.sqrt(2.0 * float(uv.var(axis=0).sum()))
    return Footprint((float(centre[0]), float(centre[1])), radius)


def target_footprint(space: SearchSpace) -> Footprint:
    fp = _footprint(space, space.case.planning.target_mask())
    if fp is None:
        raise SearchSpaceError(f"case {space.case.case_id!r} has no target voxels to seed around")
    return fp


def lesion_footprint(space: SearchSpace) -> Footprint | None:
    lesions = [s for s in space.case.planning.with_role(Role.TARGET) if s.kind.name == LESION_KIND]
    if not lesions:
        return None
    mask = np.zeros(space.case.planning.grid.shape, dtype=bool)
    for s in lesions:
        mask |= s.mask
    return _footprint(space, mask)


def _grid_position(space: SearchSpace, u: float, v: float) -> tuple[float, float]:
    t = space.template
    return u / t.spacing_mm + (t.columns - 1) / 2, v / t.spacing_mm + (t.rows - 1) / 2


def _template_mm(space: SearchSpace, hole: HoleOption) -> tuple[float, float]:
    """A hole's (u, v) in mm from the template centre: the inverse of ``_grid_position``."""
    t = space.template
    return (hole.column - (t.columns - 1) / 2) * t.spacing_mm, (
        hole.row - (t.rows - 1) / 2
    ) * t.spacing_mm


@dataclass(frozen=True)
class Sparing:
    """Distances (mm) to the organs at risk a required E limit protects, for sparing seeds."""

    distance_mm: npt.NDArray[np.float64]
    reach_mm: float

    def side(self, space: SearchSpace, hole: HoleOption) -> str | None:
        """Which end of the hole's target chord ("near" or "far") is within reach of a
        protected organ, the closer one; None when neither is."""
        t, grid = space.template, space.case.planning.grid
        ends = [hole.position_mm + depth * t.direction
                for depth in (hole.target_near_mm, hole.target_far_mm)]  # fmt: skip
        index = np.rint(grid.world_to_index(np.stack(ends))).astype(int)
        index = np.clip(index, 0, np.array(grid.shape) - 1)
        near, far = (float(self.distance_mm[tuple(i)]) for i in index)
        if min(near, far) > self.reach_mm:
            return None
        return "near" if near <= far else "far"


def protected_sparing(space: SearchSpace) -> Sparing | None:
    """The organs at risk of the protocol's required E limits (volume above a threshold), as a
    distance map; None when the case has none."""
    selectors = [
        c.structures
        for c in space.protocol.criteria
        if c.severity == "required" and c.kind == CriterionKind.VOLUME_ABOVE_MAX
        and not c.structures.everywhere
    ]  # fmt: skip
    planning = space.case.planning
    mask = np.zeros(planning.grid.shape, dtype=bool)
    for structure in planning.structures:
        if structure.role != Role.TARGET and any(sel.matches(structure) for sel in selectors):
            mask |= structure.mask
    if not mask.any():
        return None
    distance = ndimage.distance_transform_edt(~mask, sampling=planning.grid.spacing_mm)
    return Sparing(np.asarray(distance, dtype=np.float64), space.settings.sparing_reach_mm)


def _needle_params(
    space: SearchSpace,
    k: int,
    hole: HoleOption,
    side: str | None = None,
    inset_mm: float = 0.0,
) -> dict[str, Any]:
    """One needle's parameters: the exposure centred on the hole's target chord, or, with a
    ``side``, flush with (``inset_mm`` inside) that end of the chord."""
    s = space.settings
    chord = hole.target_far_mm - hole.target_near_mm
    offered = hole.exposures_mm
    wanted = chord - inset_mm if side is not None else chord
    spanning = [e for e in offered if e >= wanted]
    exposure = min(spanning) if spanning else max(offered)
    if side is None:
        # Centre the exposed part on the target chord: tip (e - chord) / 2 beyond its far end.
        offset = (exposure - chord) / 2
        steps = round((_clip_offset(s, offset) - s.tip_offset_min_mm) / s.tip_step_mm)
    elif side == "near":
        # The exposed part starts inset_mm above the chord's near end: the tip goes beyond its
        # far end by the rest; shorter exposures when that is deeper than the tip may go.
        fitting = [e for e in offered if e - chord + inset_mm <= s.tip_offset_max_mm]
        exposure = min(exposure, max(fitting)) if fitting else min(offered)
        offset = exposure - chord + inset_mm
        steps = math.ceil((_clip_offset(s, offset) - s.tip_offset_min_mm) / s.tip_step_mm - 1e-9)
    else:
        offset = -inset_mm  # the tip inset_mm short of the far end; overhang toward the near
        steps = math.floor((_clip_offset(s, offset) - s.tip_offset_min_mm) / s.tip_step_mm + 1e-9)
    params: dict[str, Any] = {
        f"exposure_{k}": exposure,
        f"tip_offset_{k}": _clip_offset(s, s.tip_offset_min_mm + steps * s.tip_step_mm),
    }
    if space.hole_encoding == "grid":
        params[f"hole_col_{k}"] = hole.column
        params[f"hole_row_{k}"] = hole.row
    else:
        params[f"hole_{k}"] = hole.label
    return params


def _clip_offset(s: SpaceSettings, offset: float) -> float:
    return float(min(max(offset, s.tip_offset_min_mm), s.tip_offset_max_mm))


@dataclass(frozen=True)
class _Layout:
    """A pattern placed on the template: where, how wide, and which needles form the core."""

    centre: tuple[float, float]
    offsets: Sequence[tuple[float, float]]
    spacing_mm: float
    all_core: bool


def _pattern_params(
    space: SearchSpace,
    layout: _Layout,
    core_near: Footprint | None,
    sparing: Sparing | None = None,
    inset_mm: float = 0.0,
) -> dict[str, Any]:
    spacing_mm = layout.spacing_mm
    points = [
        (layout.centre[0] + spacing_mm * du, layout.centre[1] + spacing_mm * dv)
        for du, dv in layout.offsets
    ]
    holes = space.resolve_holes(_grid_position(space, u, v) for u, v in points)
    params: dict[str, Any] = {"pairs": "all"}
    if "n_needles" in space.distributions():
        params["n_needles"] = len(holes)
    for k, hole in enumerate(holes):
        side = sparing.side(space, hole) if sparing is not None else None
        params |= _needle_params(space, k, hole, side, inset_mm)
        if space.multi_train:
            near = core_near is None or math.dist(points[k], core_near.centre_mm) <= (
                core_near.radius_mm + 0.75 * spacing_mm
            )
            params[f"core_{k}"] = layout.all_core or near
    for t in space.trains:
        if space.voltage_mode == "ratio":
            params[f"ratio_{t.key}"] = t.ratio.default_V_per_cm
        else:
            params[f"voltage_{t.key}"] = _snapped_voltage(
                space, t.ratio.default_V_per_cm, spacing_mm
            )
        if len(t.pulse_choices) > 1:
            params[f"pulses_{t.key}"] = t.train.pulses
    return params


def _one_core_pair(
    space: SearchSpace, params: dict[str, Any], lesion: Footprint
) -> dict[str, Any] | None:
    """``params`` with only two core needles left in the core: of the pairs the plan pulses
    (within the device's spacing), the one between core needles whose midpoint lies nearest the
    lesion centre. One IRE pair then ablates the lesion and every other pair pulses the margin
    train. None when the core has fewer than three needles or pulses no pair."""
    cores = space.core_slots(params)
    if len(cores) < 3:
        return None
    needles = space.decode_needles(params)
    pulsed = [
        (i, j)
        for i, j, _ in space.candidate_pairs(needles, str(params["pairs"]))
        if i in cores and j in cores
    ]
    if not pulsed:
        return None
    at = {k: _template_mm(space, space.hole(str(needles[k].hole))) for k in cores}

    def off_centre(pair: tuple[int, int]) -> float:
        (ui, vi), (uj, vj) = at[pair[0]], at[pair[1]]
        return math.dist(((ui + uj) / 2, (vi + vj) / 2), lesion.centre_mm)

    kept = min(pulsed, key=off_centre)
    return params | {f"core_{k}": k in kept for k in cores}


def _snapped_voltage(space: SearchSpace, ratio_V_per_cm: float, spacing_mm: float) -> float:
    s = space.settings
    top = space.protocol.device.voltage_max_V
    v = min(max(ratio_V_per_cm * spacing_mm / 10.0, s.voltage_min_V), top)
    return s.voltage_min_V + math.floor((v - s.voltage_min_V) / s.voltage_step_V) * s.voltage_step_V


def geometric_seed_params(
    space: SearchSpace, spacings_mm: Iterable[float] | None = None
) -> list[dict[str, Any]]:
    """Parameter dicts of the geometric starting plans, best guess first, duplicates removed."""
    spacings = tuple(spacings_mm) if spacings_mm is not None else space.settings.seed_spacings_mm
    target = target_footprint(space)
    lesion = lesion_footprint(space) if space.multi_train else None
    options = []
    for name, (offsets, ring) in PATTERNS.items():
        if not space.n_min <= len(offsets) <= space.n_slots:
            continue
        for s in spacings:
            options.append((abs(ring * s - target.radius_mm), name, s, offsets))
    options.sort(key=lambda o: (o[0], o[1], o[2]))
    layouts = [_Layout(target.centre_mm, offsets, s, False) for _, _, s, offsets in options]
    spare_first = min(len(layouts), space.settings.sparing_patterns)
    if lesion is not None:
        for name in ("square", "diamond"):
            offsets, _ = PATTERNS[name]
            if space.n_min <= len(offsets) <= space.n_slots:
                s = min(spacings, key=lambda x: abs(x * math.sqrt(0.5) - lesion.radius_mm))
                layouts.append(_Layout(lesion.centre_mm, offsets, s, True))
    sparing = protected_sparing(space) if space.settings.sparing_patterns else None
    seeds: list[dict[str, Any]] = []
    for i, layout in enumerate(layouts):
        seeds.append(_pattern_params(space, layout, lesion))
        if sparing is not None and (i < spare_first or layout.all_core):
            for inset in (0.0, space.settings.sparing_inset_mm):
                seeds.append(_pattern_params(space, layout, lesion, sparing, inset))
    if lesion is not None:
        seeds = [q for p in seeds for q in (p, _one_core_pair(space, p, lesion)) if q is not None]
    unique: list[dict[str, Any]] = []
    seen: set[str] = set()
    for p in seeds:
        key = space.decode(p).model_dump_json(exclude={"name", "notes"})
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def geometric_seeds(space: SearchSpace, spacings_mm: Iterable[float] | None = None) -> list[Plan]:
    """The geometric starting plans as plans."""
    return [
        space.decode(p, name=f"seed {i}")
        for i, p in enumerate(geometric_seed_params(space, spacings_mm))
    ]


def seed_params_from_plans(
    space: SearchSpace, plans: Sequence[Plan]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Parameters for plans from elsewhere, and a note for each plan the space cannot hold."""
    params: list[dict[str, Any]] = []
    notes: list[str] = []
    for i, plan in enumerate(plans):
        try:
            params.append(space.encode(plan))
        except SearchSpaceError as exc:
            notes.append(f"seed plan {i} ({plan.name or 'unnamed'}) skipped: {exc}")
    return params, notes
