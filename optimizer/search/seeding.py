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
core are added.

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

from optimizer.anatomy.kinds import Role
from optimizer.evaluate.plan import Plan
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


def _needle_params(space: SearchSpace, k: int, hole: HoleOption) -> dict[str, Any]:
    s = space.settings
    chord = hole.target_far_mm - hole.target_near_mm
    spanning = [e for e in hole.exposures_mm if e >= chord]
    exposure = min(spanning) if spanning else max(hole.exposures_mm)
    # Centre the exposed part on the target chord: tip (e - chord) / 2 beyond its far end.
    offset = (exposure - chord) / 2
    steps = round(
        (min(max(offset, s.tip_offset_min_mm), s.tip_offset_max_mm) - s.tip_offset_min_mm)
        / s.tip_step_mm
    )
    params: dict[str, Any] = {
        f"exposure_{k}": exposure,
        f"tip_offset_{k}": s.tip_offset_min_mm + steps * s.tip_step_mm,
    }
    if space.hole_encoding == "grid":
        params[f"hole_col_{k}"] = hole.column
        params[f"hole_row_{k}"] = hole.row
    else:
        params[f"hole_{k}"] = hole.label
    return params


def _pattern_params(
    space: SearchSpace,
    centre: tuple[float, float],
    offsets: Sequence[tuple[float, float]],
    spacing_mm: float,
    core_near: Footprint | None,
    all_core: bool,
) -> dict[str, Any]:
    points = [(centre[0] + spacing_mm * du, centre[1] + spacing_mm * dv) for du, dv in offsets]
    holes = space.resolve_holes(_grid_position(space, u, v) for u, v in points)
    params: dict[str, Any] = {"pairs": "all"}
    if "n_needles" in space.distributions():
        params["n_needles"] = len(holes)
    for k, hole in enumerate(holes):
        params |= _needle_params(space, k, hole)
        if space.multi_train:
            near = core_near is None or math.dist(points[k], core_near.centre_mm) <= (
                core_near.radius_mm + 0.75 * spacing_mm
            )
            params[f"core_{k}"] = all_core or near
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
    seeds = [
        _pattern_params(space, target.centre_mm, offsets, s, lesion, all_core=False)
        for _, _, s, offsets in options
    ]
    if lesion is not None:
        for name in ("square", "diamond"):
            offsets, _ = PATTERNS[name]
            if space.n_min <= len(offsets) <= space.n_slots:
                s = min(spacings, key=lambda x: abs(x * math.sqrt(0.5) - lesion.radius_mm))
                seeds.append(
                    _pattern_params(space, lesion.centre_mm, offsets, s, lesion, all_core=True)
                )
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
