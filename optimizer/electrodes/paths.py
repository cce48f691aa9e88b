"""Insertion-path checks: a needle must not cross rectum, bladder, urine, urethra or bone.

A structure is the union of its voxels (parallelepipeds in world space). A needle hits it when
any point of its axis, up to the tip, comes within the needle radius of one of those voxels:
the insulated shaft and the exposed tip both count.

The path is the whole straight line inside the grid up to the tip, including any part of the
grid behind the template plane: the plane is a depth reference placed near the target, while
the real perineum lies further caudal, so a real needle crosses whatever the grid holds there.
Beyond the grid the planner knows no anatomy and checks nothing.

The axis is sampled on a depth lattice (``t = n * step`` from the entry, ``step`` a fraction of
the smallest voxel spacing, plus the tip itself) and each sample is tested against the exact
point-to-voxel distance of the blocking voxels around it. Between samples the distance can dip
by at most ``step / 2``, so the test uses ``radius + step / 2``: no true hit is missed, and a
needle is only wrongly rejected when it passes within ``step / 2`` of grazing. A padded,
dilated "near a blocking voxel" map makes the common case (far from everything) one lookup a
sample, so all holes of a template are scanned at once.

Distances are exact on orthogonal grids (any rotation, any spacing); on sheared grids the voxel
is treated as a box along its axes, an approximation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from optimizer.anatomy.errors import MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.structures import Anatomy
from optimizer.electrodes.needle import NEEDLE_19G_DIAMETER_MM, Needle, NeedleError
from optimizer.electrodes.template import Template

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
T = TypeVar("T", bound=np.generic)

# Sampling step as a fraction of the smallest voxel spacing (0.25 mm on a 1 mm grid, so a
# needle is wrongly rejected only when it passes within 0.125 mm of grazing).
DEFAULT_STEP_FRACTION = 0.25


class NeedlePathError(ValueError):
    """A needle's insertion path crosses a structure needles must not cross."""


@dataclass(frozen=True, eq=False)
class Obstacles:
    """What the path check needs from an anatomy, computed once and reused in a search loop
    (rebuild it when the anatomy's masks change).

    ``label``: per voxel the index into ``names`` of the blocking structure there (the highest
    priority one where several overlap), -1 where none.
    """

    grid: VoxelGrid
    names: tuple[str, ...]
    label: npt.NDArray[np.int16] = field(repr=False)
    target: BoolArray | None = field(repr=False)
    case_id: str = "case"
    _near: dict[tuple[int, ...], BoolArray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_anatomy(cls, anatomy: Anatomy, needle_zone_mm: float = 0.0) -> Obstacles:
        """``needle_zone_mm`` > 0 grows the target a needle must reach by that much (mm): needles
        may then also stand just outside the target and bracket it, as ECT arrays do."""
        blocking = [s for s in anatomy if s.blocks_needles]
        label = np.full(anatomy.grid.shape, -1, dtype=np.int16)
        # Paint low priority first so the higher one keeps an overlap; among equals the one
        # listed first wins, as in Anatomy.winner_map.
        order = sorted(range(len(blocking)), key=lambda i: (blocking[i].priority, -i))
        for i in order:
            label[blocking[i].mask] = i
        names = tuple(s.name for s in blocking)
        target = anatomy.target_mask() if anatomy.with_role(Role.TARGET) else None
        if target is not None and needle_zone_mm > 0:
            outside_mm = ndimage.distance_transform_edt(~target, sampling=anatomy.grid.spacing_mm)
            target = outside_mm <= needle_zone_mm
        return cls(anatomy.grid, names, label, target, anatomy.case_id)

    def neighbourhood(self, distance_mm: float) -> IntArray:
        """Half-widths (3,) in voxels: a point within ``distance_mm`` of a voxel's box has its
        nearest voxel centre within floor(distance * |row i of the inverse affine|) + 1 voxels
        of that voxel along axis i."""
        inverse_rows = np.linalg.norm(np.linalg.inv(self.grid.affine[:3, :3]), axis=1)
        return (np.floor(distance_mm * inverse_rows) + 1).astype(np.int64)

    def near_map(self, half_widths: IntArray) -> BoolArray:
        """True within ``half_widths`` voxels of a blocking voxel, padded by half_widths + 1
        all-False voxels on every side (cached: a search asks for the same one each time)."""
        key = tuple(int(n) for n in half_widths)
        if key not in self._near:
            near = ndimage.maximum_filter(
                (self.label >= 0).view(np.uint8),
                size=tuple(2 * n + 1 for n in key),
                mode="constant",
            ).astype(bool)
            self._near[key] = np.pad(near, [(n + 1, n + 1) for n in key])
        return self._near[key]


@dataclass(frozen=True, eq=False)
class PathCheck:
    """Outcome of one needle's path check.

    ``depth_mm``: where the first blocked sample lies, measured along the needle from its
    entry (the template hole; negative behind it). For a free needle (no entry) it is measured
    from the tip, so it is negative. ``behind_tip_mm`` is the same place seen from the tip.
    """

    needle_label: str
    ok: bool
    structure: str | None = None
    depth_mm: float | None = None
    point_mm: FloatArray | None = field(default=None, repr=False)
    behind_tip_mm: float | None = None
    part: str | None = None  # "insulated shaft" or "exposed tip"
    from_entry: bool = True

    @property
    def message(self) -> str:
        if self.ok:
            return f"needle {self.needle_label}: insertion path is clear"
        assert self.point_mm is not None and self.behind_tip_mm is not None
        assert self.depth_mm is not None
        point = ", ".join(f"{v:.1f}" for v in self.point_mm)
        where = f"{self.behind_tip_mm:.1f} mm behind the tip"
        if self.from_entry and self.depth_mm >= 0:
            where = f"depth {self.depth_mm:.1f} mm from the entry ({where})"
        elif self.from_entry:
            where = f"{-self.depth_mm:.1f} mm caudal to the template plane, on its way in"
        return (
            f"needle {self.needle_label}: its {self.part} crosses {self.structure!r} at "
            f"{where}, RAS ({point}) mm; needles must not pass through it - choose another "
            "hole, a shallower depth or another direction"
        )


@dataclass(frozen=True, eq=False)
class HoleReach:
    """How deep a needle through one hole may go, and where it meets the target.

    Depths are from the template plane. ``max_tip_depth_mm``: deepest clear tip inside the
    grid (0 when the ray is blocked before the plane or misses the grid). ``block_depth_mm``:
    the first blocked sample (negative when it lies in the grid behind the plane).
    ``target_depth_mm``: first and last depth at which the axis is inside the target before
    the block. ``tip_depth_range_mm``: tip depths for which the exposed part overlaps the
    target, the path is clear and the exposure fits behind the tip (an envelope: with several
    target pieces along the ray a short exposure may fall in a gap between them).
    """

    label: str
    position_mm: FloatArray = field(repr=False)
    max_tip_depth_mm: float
    blocked_by: str | None
    block_depth_mm: float | None
    reaches_target: bool
    target_depth_mm: tuple[float, float] | None
    tip_depth_range_mm: tuple[float, float] | None

    @property
    def admissible(self) -> bool:
        return self.reaches_target and self.tip_depth_range_mm is not None


@dataclass(frozen=True)
class _Scan:
    """Per ray: first blocked sample (-1: none), its structure index, last sample in grid."""

    first_hit: IntArray
    hit_label: IntArray
    last_inside: IntArray
    target: BoolArray | None


def _as_obstacles(anatomy: Anatomy | Obstacles) -> Obstacles:
    return anatomy if isinstance(anatomy, Obstacles) else Obstacles.from_anatomy(anatomy)


def _step_mm(grid: VoxelGrid, step_fraction: float) -> float:
    if not (0 < step_fraction <= 1):
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    return step_fraction * float(np.min(grid.spacing_mm))


def _grid_interval(
    grid: VoxelGrid, margin_voxels: IntArray, start_idx: FloatArray, dir_idx: FloatArray
) -> FloatArray:
    """Per ray the depth interval [enter, exit] (H, 2) in the grid's box grown by a margin
    (slab method); samples beyond it cannot come near a blocking voxel."""
    margin = margin_voxels.astype(np.float64)
    lower = -0.5 - margin - start_idx
    upper = np.asarray(grid.shape, dtype=np.float64) - 0.5 + margin - start_idx
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lower / dir_idx, upper / dir_idx
    parallel = dir_idx == 0
    inside_slab = (lower <= 0) & (upper >= 0)
    t_lo = np.where(parallel, np.where(inside_slab, -np.inf, np.inf), np.minimum(t1, t2))
    t_hi = np.where(parallel, np.where(inside_slab, np.inf, -np.inf), np.maximum(t1, t2))
    return np.stack([t_lo.max(axis=-1), t_hi.min(axis=-1)], axis=-1)


def _lookup(volume: npt.NDArray[T], index: IntArray) -> npt.NDArray[T]:
    return volume[index[..., 0], index[..., 1], index[..., 2]]


def _scan(
    obstacles: Obstacles,
    start_idx: FloatArray,
    dir_idx: FloatArray,
    depths: FloatArray,
    threshold_mm: float,
    with_target: bool,
) -> _Scan:
    """Test rays ``start_idx + depth * dir_idx`` (H rays, S depths) against the obstacles."""
    grid = obstacles.grid
    shape = np.asarray(grid.shape)
    half_widths = obstacles.neighbourhood(threshold_mm)
    near = obstacles.near_map(half_widths)
    points = start_idx[:, None, :] + depths[None, :, None] * dir_idx[:, None, :]
    nearest = np.rint(points).astype(np.int64)
    inside = np.all((nearest >= 0) & (nearest < shape), axis=-1)
    safe_nearest = np.where(inside[..., None], nearest, 0)
    # A sample inside a blocking voxel is a certain hit: nothing deeper on its ray matters.
    certain = inside & (_lookup(obstacles.label, safe_nearest) >= 0)
    n_rays, n_depths = inside.shape
    last_needed = np.where(certain.any(axis=1), np.argmax(certain, axis=1), n_depths - 1)
    padded = np.clip(nearest + half_widths + 1, 0, np.asarray(near.shape) - 1)
    flagged = _lookup(near, padded) & (np.arange(n_depths) <= last_needed[:, None])
    h_idx, s_idx = np.nonzero(flagged)

    first_hit = np.full(n_rays, -1, dtype=np.int64)
    hit_label = np.full(n_rays, -1, dtype=np.int64)
    if len(h_idx):
        offsets = np.stack(
            np.meshgrid(*(np.arange(-n, n + 1) for n in half_widths), indexing="ij"), axis=-1
        ).reshape(-1, 3)
        candidates = nearest[h_idx, s_idx][:, None, :] + offsets[None, :, :]
        valid = np.all((candidates >= 0) & (candidates < shape), axis=-1)
        labels = np.where(
            valid, _lookup(obstacles.label, np.where(valid[..., None], candidates, 0)), -1
        )
        # Point-to-box distance in mm, along the grid's (orthogonal) axes.
        spacing = grid.spacing_mm
        gap = np.abs(points[h_idx, s_idx][:, None, :] - candidates) * spacing - spacing / 2
        distance = np.sqrt(np.sum(np.maximum(gap, 0.0) ** 2, axis=-1))
        distance = np.where(labels >= 0, distance, np.inf)
        closest = np.argmin(distance, axis=1)
        hit = distance[np.arange(len(closest)), closest] <= threshold_mm
        # np.nonzero returns samples ordered by ray then depth: the first per ray comes first.
        rays, first = np.unique(h_idx[hit], return_index=True)
        first_hit[rays] = s_idx[hit][first]
        hit_label[rays] = labels[hit][first, closest[hit][first]]

    last_inside = np.where(
        inside.any(axis=1), n_depths - 1 - np.argmax(inside[:, ::-1], axis=1), -1
    )
    target = None
    if with_target:
        if obstacles.target is None:
            raise MissingTargetError(
                f"case {obstacles.case_id!r} has no target structure, so no hole can reach one"
            )
        target = inside & _lookup(obstacles.target, safe_nearest)
    return _Scan(first_hit, hit_label, last_inside, target)


def _index_direction(grid: VoxelGrid, direction: FloatArray) -> FloatArray:
    """Index-space displacement per mm along a world direction."""
    return np.asarray(np.linalg.solve(grid.affine[:3, :3], direction))


def check_path(
    needle: Needle,
    anatomy: Anatomy | Obstacles,
    step_fraction: float = DEFAULT_STEP_FRACTION,
) -> PathCheck:
    """Check the straight path through the grid up to the needle's tip, with its radius."""
    obstacles = _as_obstacles(anatomy)
    grid = obstacles.grid
    step = _step_mm(grid, step_fraction)
    threshold = needle.radius_mm + step / 2
    d = needle.direction
    if needle.entry_mm is not None:
        start = np.asarray(needle.entry_mm)
        length = float((needle.tip_mm - start) @ d)
        off_axis = float(np.linalg.norm(needle.tip_mm - start - length * d))
        if length <= 0 or off_axis > 1e-6 * max(length, 1.0):
            raise NeedleError(
                f"needle {needle.label}: entry_mm is not behind the tip along the needle's "
                "direction; rebuild it from its template hole"
            )
    else:
        start, length = np.asarray(needle.tip_mm), 0.0
    start_idx = grid.world_to_index(start)[None, :]
    dir_idx = _index_direction(grid, d)[None, :]
    margin = obstacles.neighbourhood(threshold) + 1
    enter, leave = _grid_interval(grid, margin, start_idx, dir_idx)[0]
    if enter > min(leave, length):
        return PathCheck(needle.label, True)  # never near the grid before the tip
    first = int(np.floor(enter / step)) - 1
    last = int(np.floor(min(leave, length) / step))
    lattice = np.arange(first, last + 1, dtype=np.float64) * step
    depths = np.concatenate([lattice[lattice < length], [length]])
    scan = _scan(obstacles, start_idx, dir_idx, depths, threshold, with_target=False)
    hit = int(scan.first_hit[0])
    if hit < 0:
        return PathCheck(needle.label, True)
    depth = float(depths[hit])
    exposed = depth >= length - needle.exposure_mm
    return PathCheck(
        needle_label=needle.label,
        ok=False,
        structure=obstacles.names[int(scan.hit_label[0])],
        depth_mm=depth,
        point_mm=start + depth * d,
        behind_tip_mm=length - depth,
        part="exposed tip" if exposed else "insulated shaft",
        from_entry=needle.entry_mm is not None,
    )


def require_clear_path(
    needle: Needle,
    anatomy: Anatomy | Obstacles,
    step_fraction: float = DEFAULT_STEP_FRACTION,
) -> None:
    """Raise NeedlePathError (naming the structure, depth and point) unless the path is clear."""
    result = check_path(needle, anatomy, step_fraction)
    if not result.ok:
        raise NeedlePathError(result.message)


def hole_reach(
    template: Template,
    anatomy: Anatomy | Obstacles,
    *,
    exposure_mm: float,
    diameter_mm: float = NEEDLE_19G_DIAMETER_MM,
    step_fraction: float = DEFAULT_STEP_FRACTION,
) -> list[HoleReach]:
    """For every hole of the template at once: how deep it may go and where it meets the target.

    Pass an ``Obstacles`` built once when calling this in a loop.
    """
    if not (np.isfinite(exposure_mm) and exposure_mm > 0):
        raise ValueError(f"exposure_mm must be > 0, got {exposure_mm}")
    if not (np.isfinite(diameter_mm) and diameter_mm > 0):
        raise ValueError(f"diameter_mm must be > 0, got {diameter_mm}")
    obstacles = _as_obstacles(anatomy)
    grid = obstacles.grid
    step = _step_mm(grid, step_fraction)
    threshold = diameter_mm / 2 + step / 2
    holes = template.holes()
    entries = template.positions_mm()
    start_idx = grid.world_to_index(entries)
    dir_idx = np.broadcast_to(_index_direction(grid, template.direction), start_idx.shape)
    interval = _grid_interval(grid, obstacles.neighbourhood(threshold) + 1, start_idx, dir_idx)
    enters = interval[:, 0] <= interval[:, 1]
    if not enters.any():
        return [
            HoleReach(h.label, h.position_mm, 0.0, None, None, False, None, None) for h in holes
        ]
    # One lattice for all rays, from the earliest grid entry (possibly behind the plane).
    first = int(np.floor(float(interval[enters, 0].min()) / step)) - 1
    last = max(int(np.floor(float(interval[enters, 1].max()) / step)) + 1, first)
    depths = np.arange(first, last + 1, dtype=np.float64) * step
    scan = _scan(obstacles, start_idx, dir_idx, depths, threshold, with_target=True)
    assert scan.target is not None
    beyond_plane = depths > 0
    reach: list[HoleReach] = []
    for h, hole in enumerate(holes):
        hit = int(scan.first_hit[h])
        # Samples a clear needle may occupy: before the first hit, and inside the grid.
        end = min(hit if hit >= 0 else len(depths), int(scan.last_inside[h]) + 1)
        max_tip = max(float(depths[end - 1]), 0.0) if end > 0 else 0.0
        blocked_by = obstacles.names[int(scan.hit_label[h])] if hit >= 0 else None
        block_depth = float(depths[hit]) if hit >= 0 else None
        in_target = np.flatnonzero(scan.target[h, :end] & beyond_plane[:end])
        if len(in_target) == 0:
            reach.append(
                HoleReach(
                    hole.label,
                    hole.position_mm,
                    max_tip,
                    blocked_by,
                    block_depth,
                    False,
                    None,
                    None,
                )
            )
            continue
        a, b = float(depths[in_target[0]]), float(depths[in_target[-1]])
        lo, hi = max(a, exposure_mm), min(b + exposure_mm, max_tip)
        reach.append(
            HoleReach(
                hole.label,
                hole.position_mm,
                max_tip,
                blocked_by,
                block_depth,
                True,
                (a, b),
                (lo, hi) if lo <= hi else None,
            )
        )
    return reach


def admissible_holes(
    template: Template,
    anatomy: Anatomy | Obstacles,
    *,
    exposure_mm: float,
    diameter_mm: float = NEEDLE_19G_DIAMETER_MM,
    step_fraction: float = DEFAULT_STEP_FRACTION,
) -> list[HoleReach]:
    """The holes through which a needle of this exposure can reach the target on a clear path."""
    return [
        r
        for r in hole_reach(
            template,
            anatomy,
            exposure_mm=exposure_mm,
            diameter_mm=diameter_mm,
            step_fraction=step_fraction,
        )
        if r.admissible
    ]
