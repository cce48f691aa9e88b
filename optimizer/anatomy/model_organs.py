"""Model organs at risk: analytic shapes placed around a segmented prostate gland.

No real case ships with rectum, bladder, urethra or neurovascular bundles, yet a plan must
keep them safe. This module places population-typical organs relative to the gland the case
does have, in patient RAS+ mm (+x = patient's right, +y = anterior, +z = superior):

* ``rectal_wall``: a straight elliptical tube along S, tilted like the gland's posterior
  surface, its anterior wall a gap behind the gland's most posterior points;
* ``bladder_wall`` and ``urine``: an ellipsoidal shell and its content, resting on the base;
* ``urethra``: the prostatic urethra, a tube from the apex to the bladder neck through the
  gland, anterior of each height's centre;
* ``sphincter``: the external urethral sphincter around the membranous urethra, a wider tube
  continuing the urethra's path below the apex;
* ``nvb_left`` / ``nvb_right``: tubes along the posterolateral surface at about 5 and 7
  o'clock (axial view from the feet: 5 o'clock is the patient's left);
* ``pubic_bone``: a rounded box anterior to the gland (symphysis and pubic bodies).

Each organ is an implicit shape (a signed distance, negative inside) in world mm, so the same
``ModelOrgans`` rasterises onto any grid, oblique or not; sizes and offsets come from
``data/model_organs.toml`` where each number has a range and a source. Use it on the planning
grid (1 mm): a 6 mm urethra on 3 mm input slices is two slices thick at best.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.errors import AnatomyError, MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.structures import Anatomy, BoolArray, Structure

FloatArray = npt.NDArray[np.float64]

DEFAULT_PARAMETER_FILE = "data/model_organs.toml"

# Organ name -> structure kind. Names are chosen so the kind table recognises them too.
ORGAN_KINDS: dict[str, str] = {
    "rectal_wall": "rectum",
    "bladder_wall": "bladder",
    "urine": "urine",
    "urethra": "urethra",
    "sphincter": "sphincter",
    "nvb_left": "nvb",
    "nvb_right": "nvb",
    "pubic_bone": "bone",
}
# Organs modelled together: a modelled urine must sit inside the bladder wall it came with, and
# one segmented bundle means the segmentation covered that region.
_GROUPS: dict[str, tuple[str, ...]] = {
    "rectum": ("rectal_wall",),
    "bladder": ("bladder_wall", "urine"),
    "urine": ("bladder_wall", "urine"),
    "urethra": ("urethra", "sphincter"),
    "sphincter": ("urethra", "sphincter"),
    "nvb": ("nvb_left", "nvb_right"),
    "bone": ("pubic_bone",),
}

# Gland measures: heights are sampled every _LEVEL_STEP_MM, each level taking the gland voxels
# within a window at least that wide (so neighbouring windows overlap and no voxel is missed).
_LEVEL_STEP_MM = 2.0
# Heights (fractions of the gland's S extent) where the urethra and the bundles are anchored.
_URETHRA_LEVELS = (0.15, 0.5, 0.85)
_NVB_LEVELS = tuple(n / 20 for n in range(21))
# The rectum is a straight tube tilted in the sagittal plane like the gland's posterior surface,
# by at most this much (the rectum runs roughly along S behind the prostate).
_MAX_RECTUM_TILT_DEG = 30.0


# ------------------------------------------------------------------------------------------
# Implicit shapes in world mm.


class Shape(Protocol):
    def sdf(self, points: FloatArray) -> FloatArray:
        """Signed distance (approximate away from the surface) for points (..., 3)."""
        ...

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        """World axis-aligned box (lo, hi) containing the shape."""
        ...


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    """Semi-axes along the columns of ``rotation`` (default: R, A, S)."""

    centre: FloatArray
    semi_axes: FloatArray
    rotation: FloatArray | None = None

    def _local(self, points: FloatArray) -> FloatArray:
        d = np.asarray(points) - self.centre
        return d if self.rotation is None else d @ self.rotation

    def sdf(self, points: FloatArray) -> FloatArray:
        # Scaled radial distance: exact sign, distance exact on a sphere, close elsewhere.
        q = self._local(points) / self.semi_axes
        return np.asarray((np.linalg.norm(q, axis=-1) - 1.0) * float(self.semi_axes.min()))

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        rot = np.eye(3) if self.rotation is None else self.rotation
        half = np.abs(rot) @ self.semi_axes
        return self.centre - half, self.centre + half

    def volume_ml(self) -> float:
        return float(4.0 / 3.0 * math.pi * np.prod(self.semi_axes) / 1000.0)


@dataclass(frozen=True, eq=False)
class Tube:
    """All points within ``radius`` of a polyline (capsules joined end to end)."""

    path: FloatArray
    radius: float

    def sdf(self, points: FloatArray) -> FloatArray:
        p = np.asarray(points)
        best = np.full(p.shape[:-1], np.inf)
        for a, b in zip(self.path[:-1], self.path[1:], strict=True):
            ab = b - a
            t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
            best = np.minimum(best, np.linalg.norm(p - a - t[..., None] * ab, axis=-1))
        return np.asarray(best - self.radius)

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        return self.path.min(axis=0) - self.radius, self.path.max(axis=0) + self.radius


@dataclass(frozen=True, eq=False)
class RoundedBox:
    centre: FloatArray
    half_size: FloatArray
    rounding: float

    def sdf(self, points: FloatArray) -> FloatArray:
        q = np.abs(np.asarray(points) - self.centre) - (self.half_size - self.rounding)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return np.asarray(outside + inside - self.rounding)

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        return self.centre - self.half_size, self.centre + self.half_size


@dataclass(frozen=True, eq=False)
class EllipticTrack:
    """An elliptical cylinder along S whose centre (x, y) follows a table of heights."""

    heights: FloatArray
    centre_x: FloatArray
    centre_y: FloatArray
    half_width: float
    half_depth: float
    z_range: tuple[float, float]

    def sdf(self, points: FloatArray) -> FloatArray:
        p = np.asarray(points)
        z = p[..., 2]
        dx = (p[..., 0] - np.interp(z, self.heights, self.centre_x)) / self.half_width
        dy = (p[..., 1] - np.interp(z, self.heights, self.centre_y)) / self.half_depth
        radial = (np.hypot(dx, dy) - 1.0) * min(self.half_width, self.half_depth)
        axial = np.maximum(self.z_range[0] - z, z - self.z_range[1])
        return np.asarray(np.maximum(radial, axial))

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        lo = np.array(
            [
                self.centre_x.min() - self.half_width,
                self.centre_y.min() - self.half_depth,
                self.z_range[0],
            ]
        )
        hi = np.array(
            [
                self.centre_x.max() + self.half_width,
                self.centre_y.max() + self.half_depth,
                self.z_range[1],
            ]
        )
        return lo, hi


@dataclass(frozen=True, eq=False)
class Shell:
    """Inside ``outer`` and outside ``inner``: an organ wall."""

    outer: Shape
    inner: Shape

    def sdf(self, points: FloatArray) -> FloatArray:
        return np.asarray(np.maximum(self.outer.sdf(points), -self.inner.sdf(points)))

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        return self.outer.bounds()


def rasterise_shape(shape: Shape, grid: VoxelGrid) -> BoolArray:
    """Voxels of ``grid`` whose centre lies inside ``shape``; only its bounding box is sampled."""
    mask = np.zeros(grid.shape, dtype=bool)
    lo, hi = shape.bounds()
    corners = np.array(
        [[(lo[a], hi[a])[b] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)]
    )
    idx = grid.world_to_index(corners)
    start = np.maximum(np.floor(idx.min(axis=0)), 0).astype(int)
    stop = np.minimum(np.ceil(idx.max(axis=0)) + 1, grid.shape).astype(int)
    if np.any(stop <= start):
        return mask
    axes = [np.arange(a, b) for a, b in zip(start, stop, strict=True)]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    window = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    mask[window] = shape.sdf(grid.index_to_world(ijk)) <= 0.0
    return mask


# ------------------------------------------------------------------------------------------
# Parameters.


@dataclass(frozen=True)
class Parameter:
    value: float
    low: float
    high: float
    source: str


@dataclass(frozen=True)
class ModelOrganParams:
    """A named parameter set: section -> name -> Parameter (see data/model_organs.toml)."""

    name: str
    version: str
    path: str
    sections: Mapping[str, Mapping[str, Parameter]]

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def __call__(self, section: str, key: str) -> float:
        try:
            return self.sections[section][key].value
        except KeyError:
            raise AnatomyError(
                f"model organ parameters {self.path}: missing [{section}.{key}]; add it with a "
                "value, range and source"
            ) from None

    def with_values(self, values: Mapping[str, float]) -> ModelOrganParams:
        """A copy with some values replaced, e.g. ``{"rectum.gap_to_gland_mm": 5.0}``.

        Replaced values keep their source and are named in the set's name.
        """
        sections = {s: dict(entries) for s, entries in self.sections.items()}
        for dotted, value in values.items():
            section, _, key = dotted.partition(".")
            if key not in sections.get(section, {}):
                raise AnatomyError(f"unknown model organ parameter {dotted!r}")
            sections[section][key] = replace(sections[section][key], value=float(value))
        changes = ", ".join(f"{k}={v:g}" for k, v in values.items())
        return replace(self, name=f"{self.name} ({changes})", sections=sections)


_REQUIRED: dict[str, tuple[str, ...]] = {
    "rectum": (
        "gap_to_gland_mm",
        "outer_half_width_mm",
        "outer_half_depth_mm",
        "wall_thickness_mm",
        "inferior_extent_mm",
        "superior_extent_mm",
    ),
    "bladder": (
        "gap_to_gland_mm",
        "half_width_mm",
        "half_depth_mm",
        "half_height_mm",
        "anterior_shift_mm",
        "wall_thickness_mm",
    ),
    "urethra": (
        "radius_mm",
        "anterior_offset_fraction",
        "inferior_extent_mm",
        "superior_extent_mm",
    ),
    "sphincter": ("radius_mm",),
    "nvb": (
        "radius_mm",
        "angle_from_posterior_midline_deg",
        "gap_to_gland_mm",
        "inferior_extent_mm",
        "superior_extent_mm",
    ),
    "pubic_bone": (
        "gap_to_gland_mm",
        "half_width_mm",
        "half_depth_mm",
        "half_height_mm",
        "rounding_mm",
        "inferior_border_above_apex_mm",
    ),
}


def _parameter(where: str, raw: object) -> Parameter:
    if not isinstance(raw, dict):
        raise AnatomyError(f"{where}: expected a table with value, range and source")
    value, bounds, source = raw.get("value"), raw.get("range"), raw.get("source")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnatomyError(f"{where}: 'value' must be a finite number, got {value!r}")
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise AnatomyError(f"{where}: 'range' must be [low, high], got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if not low <= value <= high:
        raise AnatomyError(f"{where}: value {value} lies outside its range [{low}, {high}]")
    if not (isinstance(source, str) and source.strip()):
        raise AnatomyError(f"{where}: every number needs a non-empty 'source'")
    return Parameter(float(value), low, high, source)


def load_model_organ_params(path: str | Path | None = None) -> ModelOrganParams:
    """Read a parameter file (default: the packaged data/model_organs.toml) and validate it."""
    if path is None:
        resource = resources.files("optimizer.anatomy").joinpath(DEFAULT_PARAMETER_FILE)
        text, where = resource.read_text(), f"optimizer/anatomy/{DEFAULT_PARAMETER_FILE}"
    else:
        try:
            text, where = Path(path).read_text(), str(path)
        except OSError as exc:
            raise AnatomyError(f"cannot read model organ parameters {path}: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AnatomyError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - set(_REQUIRED) - {"name", "version", "description"})
    if unknown:
        raise AnatomyError(
            f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(_REQUIRED)}"
        )
    sections: dict[str, dict[str, Parameter]] = {}
    for section, keys in _REQUIRED.items():
        table = raw.get(section)
        if not isinstance(table, dict):
            raise AnatomyError(f"{where}: missing section [{section}]")
        for key in keys:
            if key not in table:
                raise AnatomyError(f"{where}: missing [{section}.{key}] (value, range, source)")
        extra = sorted(set(table) - set(keys))
        if extra:
            raise AnatomyError(
                f"{where}: unknown parameter(s) {', '.join(f'[{section}.{k}]' for k in extra)}; "
                f"[{section}] takes {', '.join(keys)}"
            )
        sections[section] = {
            key: _parameter(f"{where} [{section}.{key}]", entry) for key, entry in table.items()
        }
    return ModelOrganParams(
        name=str(raw.get("name", Path(where).stem)),
        version=str(raw.get("version", "?")),
        path=where,
        sections=sections,
    )


# ------------------------------------------------------------------------------------------
# Gland measures and placement.


@dataclass(frozen=True, eq=False)
class GlandMeasures:
    """Where the gland is: voxel centres in world mm plus half a voxel's reach per axis."""

    points: FloatArray
    half_voxel: FloatArray

    @classmethod
    def from_mask(cls, mask: BoolArray, grid: VoxelGrid) -> GlandMeasures:
        if not mask.any():
            raise MissingTargetError("the gland mask is empty; model organs need a gland")
        points = grid.index_to_world(np.argwhere(mask))
        return cls(points, 0.5 * np.abs(grid.affine[:3, :3]).sum(axis=1))

    @cached_property
    def centroid(self) -> FloatArray:
        return np.asarray(self.points.mean(axis=0))

    @cached_property
    def lo(self) -> FloatArray:
        return np.asarray(self.points.min(axis=0) - self.half_voxel)

    @cached_property
    def hi(self) -> FloatArray:
        return np.asarray(self.points.max(axis=0) + self.half_voxel)

    def level(self, z: float) -> FloatArray:
        """Gland voxel centres in a window around height z (at least _LEVEL_STEP_MM each side)."""
        window = max(_LEVEL_STEP_MM, float(self.half_voxel[2]))
        return np.asarray(self.points[np.abs(self.points[:, 2] - z) <= window])

    def at_fraction(self, fraction: float) -> float:
        return float(self.lo[2] + fraction * (self.hi[2] - self.lo[2]))

    def posterior_surface(self) -> tuple[FloatArray, FloatArray]:
        """Heights and, per height, the most posterior gland y (minimum over a window)."""
        heights = np.arange(self.lo[2], self.hi[2] + _LEVEL_STEP_MM, _LEVEL_STEP_MM)
        surface = np.full(heights.shape, np.nan)
        for n, z in enumerate(heights):
            pts = self.level(float(z))
            if len(pts):
                surface[n] = pts[:, 1].min() - self.half_voxel[1]
        known = ~np.isnan(surface)
        return heights[known], surface[known]

    def posterior_tangent(self) -> tuple[float, float]:
        """(y at z = 0, dy/dz) of the line touching the posterior surface from behind at
        mid-height: the lower convex hull's edge there, its tilt capped at _MAX_RECTUM_TILT_DEG."""
        heights, surface = self.posterior_surface()
        hull: list[int] = []
        for n in range(len(heights)):
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                cross = (heights[b] - heights[a]) * (surface[n] - surface[a]) - (
                    surface[b] - surface[a]
                ) * (heights[n] - heights[a])
                if cross > 0:
                    break
                hull.pop()
            hull.append(n)
        if len(hull) < 2:
            slope = 0.0
        else:
            mid = (heights[0] + heights[-1]) / 2
            edge = min(int(np.searchsorted(heights[hull], mid)), len(hull) - 1)
            a, b = hull[max(edge - 1, 0)], hull[max(edge, 1)]
            slope = float((surface[b] - surface[a]) / (heights[b] - heights[a]))
        cap = math.tan(math.radians(_MAX_RECTUM_TILT_DEG))
        slope = min(max(slope, -cap), cap)
        return float(np.min(surface - slope * heights)), slope


@dataclass(frozen=True, eq=False)
class ModelOrgan:
    name: str
    kind: str
    shape: Shape


@dataclass(frozen=True, eq=False)
class ModelOrgans:
    """Organs placed for one gland; rasterise them onto any grid."""

    organs: tuple[ModelOrgan, ...]
    params: ModelOrganParams

    def names(self) -> list[str]:
        return [o.name for o in self.organs]

    def rasterise(self, grid: VoxelGrid) -> dict[str, BoolArray]:
        return {o.name: rasterise_shape(o.shape, grid) for o in self.organs}


def _rectal_wall(g: GlandMeasures, p: ModelOrganParams) -> Shape:
    half_w, half_d = p("rectum", "outer_half_width_mm"), p("rectum", "outer_half_depth_mm")
    thickness = p("rectum", "wall_thickness_mm")
    if thickness >= min(half_w, half_d):
        raise AnatomyError(
            f"model organs {p.label}: rectal wall thickness {thickness} mm must be less than the "
            f"rectum's half width and half depth ({half_w}, {half_d} mm)"
        )
    z_range = (
        float(g.lo[2] - p("rectum", "inferior_extent_mm")),
        float(g.hi[2] + p("rectum", "superior_extent_mm")),
    )
    # A straight tube behind the gland's posterior surface: following the surface height by
    # height would bend the rectum forwards under the apex and over the base, where the real
    # one runs on (or turns backwards).
    intercept, slope = g.posterior_tangent()
    heights = np.array(z_range)
    centre_y = intercept + slope * heights - p("rectum", "gap_to_gland_mm") - half_d
    centre_x = np.full(2, g.centroid[0])
    outer = EllipticTrack(heights, centre_x, centre_y, half_w, half_d, z_range)
    inner = replace(outer, half_width=half_w - thickness, half_depth=half_d - thickness)
    return Shell(outer, inner)


def _level_centre(g: GlandMeasures, fraction: float) -> tuple[FloatArray, float]:
    """(x, y, z) of a height's gland centre (y mid-way front to back) and its half depth."""
    z = g.at_fraction(fraction)
    pts = g.level(z)
    if not len(pts):
        pts = g.points
    y_lo, y_hi = pts[:, 1].min(), pts[:, 1].max()
    centre = np.array([pts[:, 0].mean(), (y_lo + y_hi) / 2, z])
    return centre, float((y_hi - y_lo) / 2 + g.half_voxel[1])


def _urethra_path(g: GlandMeasures, p: ModelOrganParams) -> FloatArray:
    anchors = []
    for fraction in _URETHRA_LEVELS:
        centre, half_depth = _level_centre(g, fraction)
        centre[1] += p("urethra", "anterior_offset_fraction") * half_depth
        anchors.append(centre)
    below = anchors[0].copy()
    below[2] = g.lo[2] - p("urethra", "inferior_extent_mm")
    above = anchors[-1].copy()
    above[2] = g.hi[2] + p("urethra", "superior_extent_mm")
    return np.array([below, *anchors, above])


def _below_apex(below: FloatArray, apex: FloatArray, radius: float) -> FloatArray:
    """The sphincter's axis: from ``below`` to one radius short of the apex, so that its rounded
    end touches the apex and the sphincter stays out of the gland."""
    axis = apex - below
    length = float(np.linalg.norm(axis))
    top = below + axis * max(length - radius, 0.0) / max(length, 1e-9)
    return np.array([below, top])


def _bladder(g: GlandMeasures, p: ModelOrganParams, neck: FloatArray) -> tuple[Shape, Shape]:
    semi = np.array(
        [
            p("bladder", "half_width_mm"),
            p("bladder", "half_depth_mm"),
            p("bladder", "half_height_mm"),
        ]
    )
    thickness = p("bladder", "wall_thickness_mm")
    if thickness >= semi.min():
        raise AnatomyError(
            f"model organs {p.label}: bladder wall thickness {thickness} mm exceeds its semi-axes"
        )
    centre = np.array(
        [
            neck[0],
            neck[1] + p("bladder", "anterior_shift_mm"),
            g.hi[2] + p("bladder", "gap_to_gland_mm") + semi[2],
        ]
    )
    outer = Ellipsoid(centre, semi)
    inner = Ellipsoid(centre, semi - thickness)
    return Shell(outer, inner), inner


def _nvb_path(g: GlandMeasures, p: ModelOrganParams, side: float) -> FloatArray:
    """side = -1 for the patient's left (5 o'clock), +1 for the right (7 o'clock).

    Per height the bundle's centre moves out from the gland's axis (its centroid's x, y) along
    the clock direction until the whole bundle clears that height's gland voxels by the gap.
    """
    angle = math.radians(p("nvb", "angle_from_posterior_midline_deg"))
    direction = np.array([side * math.sin(angle), -math.cos(angle)])
    radius = p("nvb", "radius_mm")
    clearance = p("nvb", "gap_to_gland_mm") + radius + float(np.hypot(*g.half_voxel[:2]))
    axis = g.centroid[:2]
    heights = np.array([g.at_fraction(f) for f in _NVB_LEVELS])
    reach = np.zeros(heights.shape)
    for n, z in enumerate(heights):
        rel = g.level(float(z))[:, :2] - axis
        along = rel @ direction
        across = np.abs(rel @ np.array([-direction[1], direction[0]]))
        near = across < clearance
        # How far out along the direction every voxel of this height is clearance away.
        if near.any():
            reach[n] = max(
                float((along[near] + np.sqrt(clearance**2 - across[near] ** 2)).max()), 0
            )
    # All anchors lie on one ray from the axis, so the furthest reach so far (from the apex up)
    # keeps the straight pieces between anchors clear of both heights' voxels, and the bundles
    # close in towards the apex but stay lateral over the narrower base, as they do.
    reach = np.maximum.accumulate(np.maximum(reach, np.append(reach[1:], reach[-1])))
    anchors = np.column_stack([axis + np.outer(reach, direction), heights])
    path = np.array(anchors)
    below, above = path[0].copy(), path[-1].copy()
    below[2] = g.lo[2] - p("nvb", "inferior_extent_mm")
    above[2] = g.hi[2] + p("nvb", "superior_extent_mm")
    return np.vstack([below, path, above])


def _pubic_bone(g: GlandMeasures, p: ModelOrganParams) -> Shape:
    half = np.array(
        [
            p("pubic_bone", "half_width_mm"),
            p("pubic_bone", "half_depth_mm"),
            p("pubic_bone", "half_height_mm"),
        ]
    )
    centre = np.array(
        [
            g.centroid[0],
            g.hi[1] + p("pubic_bone", "gap_to_gland_mm") + half[1],
            g.lo[2] + p("pubic_bone", "inferior_border_above_apex_mm") + half[2],
        ]
    )
    rounding = min(p("pubic_bone", "rounding_mm"), float(half.min()))
    return RoundedBox(centre, half, rounding)


def place_model_organs(
    gland: BoolArray,
    grid: VoxelGrid,
    params: ModelOrganParams | None = None,
    names: Iterable[str] | None = None,
) -> ModelOrgans:
    """Place the organs ``names`` (default: all of ORGAN_KINDS) around a gland mask on grid."""
    p = params or load_model_organ_params()
    wanted = list(ORGAN_KINDS) if names is None else list(names)
    unknown = [n for n in wanted if n not in ORGAN_KINDS]
    if unknown:
        raise AnatomyError(
            f"unknown model organ(s) {', '.join(unknown)}; known: {', '.join(ORGAN_KINDS)}"
        )
    g = GlandMeasures.from_mask(np.asarray(gland, dtype=bool), grid)
    urethra_path = _urethra_path(g, p)
    # Split the path where it crosses the apex: the membranous part below is the sphincter's.
    below, first = urethra_path[0], urethra_path[1]
    t = (g.lo[2] - below[2]) / (first[2] - below[2])
    apex = below + t * (first - below)
    sphincter_r = p("sphincter", "radius_mm")
    bladder_wall, urine = _bladder(g, p, urethra_path[-2])
    shapes: dict[str, Shape] = {
        "rectal_wall": _rectal_wall(g, p),
        "bladder_wall": bladder_wall,
        "urine": urine,
        "urethra": Tube(np.vstack([apex, urethra_path[1:]]), p("urethra", "radius_mm")),
        "sphincter": Tube(_below_apex(below, apex, sphincter_r), sphincter_r),
        "nvb_left": Tube(_nvb_path(g, p, -1.0), p("nvb", "radius_mm")),
        "nvb_right": Tube(_nvb_path(g, p, +1.0), p("nvb", "radius_mm")),
        "pubic_bone": _pubic_bone(g, p),
    }
    organs = tuple(ModelOrgan(n, ORGAN_KINDS[n], shapes[n]) for n in wanted)
    return ModelOrgans(organs, p)


def missing_organs(anatomy: Anatomy) -> list[str]:
    """Model organ names whose kind (or group partner's kind) the anatomy lacks."""
    present = {s.kind.name for s in anatomy}
    skip = {name for kind in present for name in _GROUPS.get(kind, ())}
    return [n for n in ORGAN_KINDS if n not in skip]


def add_model_organs(
    anatomy: Anatomy,
    params: ModelOrganParams | None = None,
    *,
    reference: Anatomy | None = None,
) -> Anatomy:
    """A copy of ``anatomy`` with model organs for every organ kind it lacks.

    Placed around the union of the anatomy's target gland structures and rasterised on its grid (use
    the planning grid). Bladder and urine, and the two bundles, are modelled as pairs: if
    either is segmented neither is modelled. New structures are ``modelled=True`` with
    ``source="model: <parameter set>"``, and a note names them. The copy keeps the input's
    class (a PlanningAnatomy stays one).
    """
    # The gland(s) being planned on; alternative delineations kept as helpers only if none is.
    # The gland is measured on ``reference`` when given (the whole input anatomy): a planning
    # grid cropped around a lesion may cut the gland, which would shift every organ.
    measured = reference if reference is not None else anatomy
    glands = [s for s in measured.of_kind("gland") if s.role == Role.TARGET]
    glands = glands or measured.of_kind("gland")
    if not glands:
        raise MissingTargetError(
            f"case {anatomy.case_id!r}: model organs are placed relative to the prostate gland, "
            "but no structure is of kind 'gland'; add a gland (or prostate) mask, or segment "
            "the organs at risk"
        )
    gland = np.zeros(measured.grid.shape, dtype=bool)
    for s in glands:
        gland |= s.mask
    if not gland.any():
        raise MissingTargetError(
            f"case {anatomy.case_id!r}: the gland structure(s) "
            f"{', '.join(s.name for s in glands)} are empty; model organs need a gland"
        )
    names = missing_organs(anatomy)
    if not names:
        return replace(anatomy, structures=list(anatomy.structures), notes=list(anatomy.notes))
    p = params or load_model_organ_params()
    organs = place_model_organs(gland, measured.grid, p, names)
    taken = set(anatomy.names())
    added: list[Structure] = []
    empty: list[str] = []
    for organ, mask in zip(organs.organs, organs.rasterise(anatomy.grid).values(), strict=True):
        name = organ.name if organ.name not in taken else f"{organ.name}_model"
        structure, _ = Structure.from_name(
            name, mask, kind=organ.kind, modelled=True, source=f"model: {p.label}"
        )
        added.append(structure)
        if not mask.any():
            empty.append(name)
    notes = list(anatomy.notes)
    notes.append(
        f"modelled organs at risk (not segmented; placed relative to the gland with parameter "
        f"set {p.label} from {p.path}): {', '.join(s.name for s in added)}"
    )
    if empty:
        notes.append(
            f"modelled organ(s) {', '.join(empty)} fall outside this grid; enlarge the margin"
        )
    return replace(anatomy, structures=[*anatomy.structures, *added], notes=notes)
