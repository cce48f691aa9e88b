"""Warm starts: describe a case, find similar planned cases, carry their plans over.

A plan library (services/planner/library.py) keeps, for every planned case, a *descriptor*
(target size, shape and position in the template frame) and a *portable plan*: the plan's
search parameters with each needle's hole replaced by its offset from the target's centre in
the template plane, in units of the target's in-plane radius. Depths (``tip_offset``) and
exposures are already relative to the target chord of each hole, voltages are ratios to the
pair spacing, so the rest carries over unchanged. A new case takes the portable plans of its
nearest library cases, scaled to its own target and snapped to its own admissible holes, as
the first trials of its search.

The template frame (u along the template's columns, v along its rows, w along the needles)
makes positions comparable between patients scanned at different angles.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.kinds import Role
from optimizer.case import PreparedCase
from optimizer.evaluate.plan import Plan
from optimizer.search.space import SearchSpace, SearchSpaceError

DESCRIPTOR_PREFIX = "desc_"
PORTABLE_FORMAT = "ectplan-portable-plan/1"
LESION_KIND = "lesion"
DATA_FILE = Path(__file__).with_name("data") / "warm_start.toml"
# Scaling a plan to a much larger or smaller target distorts it more than it helps.
RADIUS_RATIO_LIMITS = (0.5, 2.0)


class WarmStartError(ValueError):
    """A descriptor or portable plan that cannot be used, with what was wrong."""


def _template_coordinates(case: PreparedCase, mask: npt.NDArray[np.bool_]) -> npt.NDArray[Any]:
    t = case.template
    idx = np.argwhere(mask).astype(np.float64)
    world = case.planning.grid.index_to_world(idx) - t.centre_mm
    return np.stack([world @ t.column_axis, world @ t.row_axis, world @ t.direction], axis=1)


def case_descriptor(case: PreparedCase) -> dict[str, float]:
    """Target volume, lesion volume, centre, spread and in-plane radius in the template frame.

    Keys carry ``DESCRIPTOR_PREFIX`` so they can sit beside other columns of a library index.
    Spreads are the full width of a uniform slab with the same variance (2 sqrt(3) sd), mm.
    """
    target = case.planning.target_mask()
    if not target.any():
        raise WarmStartError(f"case {case.case_id!r} has no target voxels to describe")
    voxel_ml = case.planning.grid.voxel_volume_ml
    uvw = _template_coordinates(case, target)
    centre = uvw.mean(axis=0)
    spread = 2.0 * math.sqrt(3.0) * uvw.std(axis=0)
    radius = math.sqrt(2.0 * float(uvw[:, :2].var(axis=0).sum()))
    lesion = np.zeros_like(target)
    for s in case.planning.with_role(Role.TARGET):
        if s.kind.name == LESION_KIND:
            lesion |= s.mask
    offset = _template_coordinates(case, lesion).mean(axis=0) - centre if lesion.any() else None
    d = {
        "target_volume_ml": float(target.sum() * voxel_ml),
        "lesion_volume_ml": float(lesion.sum() * voxel_ml),
        "centre_u_mm": float(centre[0]),
        "centre_v_mm": float(centre[1]),
        "centre_w_mm": float(centre[2]),
        "extent_u_mm": float(spread[0]),
        "extent_v_mm": float(spread[1]),
        "extent_w_mm": float(spread[2]),
        "radius_mm": radius,
        "lesion_offset_u_mm": 0.0 if offset is None else float(offset[0]),
        "lesion_offset_v_mm": 0.0 if offset is None else float(offset[1]),
    }
    return {DESCRIPTOR_PREFIX + k: v for k, v in d.items()}


@dataclass(frozen=True)
class SimilarityScales:
    """How far apart two cases are per feature: distance = sqrt(sum((a - b) / scale)^2)."""

    scales: dict[str, float]
    source: str

    def distance(self, a: Mapping[str, float], b: Mapping[str, float]) -> float:
        total = 0.0
        for key, scale in self.scales.items():
            name = DESCRIPTOR_PREFIX + key
            if name not in a or name not in b:
                raise WarmStartError(f"descriptor lacks {name!r}; it has {sorted(a) or 'nothing'}")
            x, y = float(a[name]), float(b[name])
            if not (math.isfinite(x) and math.isfinite(y)):
                raise WarmStartError(f"descriptor value {name!r} is not finite ({x}, {y})")
            total += ((x - y) / scale) ** 2
        return math.sqrt(total)


def load_similarity_scales(path: str | Path | None = None) -> SimilarityScales:
    p = Path(path) if path is not None else DATA_FILE
    try:
        data = tomllib.loads(p.read_text())
        section = data["similarity"]
        scales = {str(k): float(v) for k, v in section["scales"].items()}
        source = str(section["source"])
    except (OSError, KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise WarmStartError(
            f"{p}: cannot read [similarity] scales and source ({exc}); see the packaged "
            f"{DATA_FILE.name} for the expected layout"
        ) from exc
    bad = [k for k, v in scales.items() if not (math.isfinite(v) and v > 0)]
    if bad or not scales:
        raise WarmStartError(f"{p}: similarity scales must be positive numbers (bad: {bad})")
    return SimilarityScales(scales, source)


def nearest(
    descriptor: Mapping[str, float],
    candidates: Sequence[Mapping[str, Any]],
    k: int,
    scales: SimilarityScales | None = None,
    exclude_case: str | None = None,
) -> list[tuple[float, Mapping[str, Any]]]:
    """The ``k`` candidate rows (each with descriptor keys and ``case_id``) nearest to
    ``descriptor``, nearest first; ties broken by case id so the order is reproducible."""
    s = scales if scales is not None else load_similarity_scales()
    ranked = [
        (s.distance(descriptor, row), row)
        for row in candidates
        if exclude_case is None or row.get("case_id") != exclude_case
    ]
    ranked.sort(key=lambda pair: (pair[0], str(pair[1].get("case_id", ""))))
    return ranked[: max(k, 0)]


def _target_centre_and_radius(space: SearchSpace) -> tuple[tuple[float, float], float]:
    # Imported here: seeding imports nothing of this module, keep it that way round.
    from optimizer.search.seeding import target_footprint

    fp = target_footprint(space)
    return fp.centre_mm, max(fp.radius_mm, space.template.spacing_mm)


def portable_plan(space: SearchSpace, plan: Plan) -> dict[str, Any]:
    """``plan`` as parameters that another case's space can take (see the module docstring)."""
    params = space.encode(plan)
    (cu, cv), radius = _target_centre_and_radius(space)
    t = space.template
    holes = []
    rest: dict[str, Any] = {}
    # The holes the parameters decode to (a clash between slots already resolved).
    slot_holes = [space.hole(str(n.hole)) for n in space.decode_needles(space.complete(params))]
    for hole in slot_holes:
        u = (hole.column - (t.columns - 1) / 2) * t.spacing_mm
        v = (hole.row - (t.rows - 1) / 2) * t.spacing_mm
        holes.append([(u - cu) / radius, (v - cv) / radius])
    for name, value in params.items():
        if name.startswith("hole_"):  # hole_k, hole_col_k, hole_row_k: replaced by offsets
            continue
        rest[name] = value.item() if isinstance(value, np.generic) else value
    return {
        "format": PORTABLE_FORMAT,
        "protocol": space.protocol.name,
        "needles": len(plan.needles),
        "hole_offsets": holes,
        "params": rest,
    }


def _check_portable(portable: Mapping[str, Any]) -> None:
    if portable.get("format") != PORTABLE_FORMAT:
        raise WarmStartError(
            f"not a portable plan of format {PORTABLE_FORMAT!r} (got {portable.get('format')!r})"
        )
    offsets = portable.get("hole_offsets")
    if not isinstance(offsets, list) or len(offsets) != portable.get("needles"):
        raise WarmStartError("portable plan: hole_offsets must list one [u, v] per needle")


def plan_from_portable(space: SearchSpace, portable: Mapping[str, Any], name: str) -> Plan:
    """The portable plan on this space's case: offsets scaled to its target, holes snapped to
    its admissible ones, then decoded (values the space cannot hold are clipped by decode)."""
    _check_portable(portable)
    if portable.get("protocol") != space.protocol.name:
        raise WarmStartError(
            f"portable plan is for protocol {portable.get('protocol')!r}, the search is "
            f"{space.protocol.name!r}"
        )
    (cu, cv), radius = _target_centre_and_radius(space)
    t = space.template
    wanted = [
        (
            (cu + du * radius) / t.spacing_mm + (t.columns - 1) / 2,
            (cv + dv * radius) / t.spacing_mm + (t.rows - 1) / 2,
        )
        for du, dv in portable["hole_offsets"]
    ]
    n = len(wanted)
    if not space.n_min <= n <= space.n_slots:
        raise WarmStartError(f"portable plan has {n} needles; this space holds {space.n_min}.."
                             f"{space.n_slots}")  # fmt: skip
    params: dict[str, Any] = dict(portable["params"])
    for k, hole in enumerate(space.resolve_holes(wanted)):
        if space.hole_encoding == "grid":
            params[f"hole_col_{k}"] = hole.column
            params[f"hole_row_{k}"] = hole.row
        else:
            params[f"hole_{k}"] = hole.label
    known = space.distributions()
    params = {k: v for k, v in params.items() if k in known}
    try:
        return space.decode(space.complete(params), name=name)
    except (SearchSpaceError, ValueError, KeyError) as exc:
        raise WarmStartError(f"portable plan does not fit this case: {exc}") from exc


def warm_start_plans(
    space: SearchSpace,
    library_rows: Sequence[Mapping[str, Any]],
    k: int = 3,
    scales: SimilarityScales | None = None,
) -> tuple[list[Plan], list[str]]:
    """Seed plans for ``space``'s case from the ``k`` most similar library rows of the same
    protocol (each row: ``case_id``, descriptor columns, ``portable_plan`` as JSON text or a
    dict), nearest first, and a note per row used or skipped."""
    me = case_descriptor(space.case)
    rows = [r for r in library_rows if _row_protocol(r) == space.protocol.name]
    plans: list[Plan] = []
    notes: list[str] = []
    for distance, row in nearest(me, rows, k, scales, exclude_case=space.case.case_id):
        case_id = str(row.get("case_id"))
        try:
            portable = _row_portable(row)
            plans.append(plan_from_portable(space, portable, name=f"warm start from {case_id}"))
            notes.append(f"warm start from library case {case_id!r} (distance {distance:.2f})")
        except WarmStartError as exc:
            notes.append(f"library case {case_id!r} skipped as a warm start: {exc}")
    return plans, notes


def _row_protocol(row: Mapping[str, Any]) -> str | None:
    try:
        return str(_row_portable(row).get("protocol"))
    except WarmStartError:
        return None


def _row_portable(row: Mapping[str, Any]) -> Mapping[str, Any]:
    value = row.get("portable_plan")
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise WarmStartError(f"portable_plan is not valid JSON ({exc})") from exc
        if isinstance(parsed, dict):
            return parsed
    raise WarmStartError("the row has no portable plan (was the case planned?)")
