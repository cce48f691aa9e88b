"""Orthogonal slice pictures: image, structure contours, an optional field, needles, holes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from optimizer import RESEARCH_USE_NOTICE
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy
from optimizer.render.orientation import ViewAxes, view_axes

# One colour per structure kind, stable across every picture ectplan draws.
KIND_COLOURS = {
    "lesion": "#e41a1c",
    "gland": "#ff9f1c",
    "urethra": "#f781bf",
    "rectum": "#8c564b",
    "bladder": "#1f78b4",
    "urine": "#a6cee3",
    "nvb": "#ffd92f",
    "bone": "#dddddd",
    "vessel": "#b2182b",
    "zone": "#fdbf6f",
    "soft_tissue": "#bbbbbb",
    "body": "#999999",
}

VIEWS = ("axial", "coronal", "sagittal")


@dataclass
class Marker:
    """A labelled point in RAS mm (a template hole, say), drawn where it projects."""

    position_mm: npt.NDArray[np.float64]
    label: str = ""
    colour: str = "#2ca02c"


@dataclass
class Segment:
    """A line in RAS mm (an exposed needle tip, an insulated shaft), projected onto views."""

    start_mm: npt.NDArray[np.float64]
    end_mm: npt.NDArray[np.float64]
    colour: str = "#00ffff"
    width: float = 2.0
    label: str = ""
    views: tuple[str, ...] = ("axial", "coronal", "sagittal")


@dataclass
class FieldOverlay:
    """A scalar on the anatomy's grid drawn as colour wash plus isolines at given levels."""

    values: npt.NDArray[np.floating]
    label: str
    levels: Sequence[float] = ()
    level_names: Sequence[str] = ()
    vmax: float | None = None
    cmap: str = "inferno"


@dataclass
class SliceFigure:
    title: str
    anatomy: Anatomy
    centre_mm: npt.NDArray[np.float64] | None = None
    markers: list[Marker] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    overlay: FieldOverlay | None = None
    footer: str = ""


def _plane(volume: npt.NDArray[Any], axes: ViewAxes, index: int) -> npt.NDArray[Any]:
    """The 2-D slice at ``index`` laid out as [up, across] with screen orientation applied."""
    plane = np.take(volume, index, axis=axes.slice_axis)
    remaining = [a for a in range(3) if a != axes.slice_axis]
    if remaining.index(axes.up_axis) != 0:
        plane = plane.T  # now [up, across]
    if axes.up_flip:
        plane = plane[::-1, :]
    if axes.across_flip:
        plane = plane[:, ::-1]
    return plane


def _project(grid: VoxelGrid, axes: ViewAxes, points_mm: npt.NDArray[np.float64]) -> tuple[
    npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]
]:
    """(across, up, slice) fractional voxel coordinates on screen for RAS points."""
    ijk = grid.world_to_index(np.atleast_2d(points_mm))
    across = ijk[:, axes.across_axis]
    up = ijk[:, axes.up_axis]
    if axes.across_flip:
        across = grid.shape[axes.across_axis] - 1 - across
    if axes.up_flip:
        up = grid.shape[axes.up_axis] - 1 - up
    return across, up, ijk[:, axes.slice_axis]


def render_slices(fig_spec: SliceFigure, path: str | Path, dpi: int = 110) -> Path:
    """Write a three-panel PNG (axial, coronal, sagittal through the centre) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    anatomy = fig_spec.anatomy
    grid = anatomy.grid
    centre = fig_spec.centre_mm
    if centre is None:
        target = anatomy.target_mask()
        centre = grid.index_to_world(np.argwhere(target).mean(axis=0))
    centre_ijk = np.clip(
        np.rint(grid.world_to_index(centre)).astype(int), 0, np.asarray(grid.shape) - 1
    )
    h = grid.spacing_mm
    fig, panels = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    legend: dict[str, str] = {}
    for ax, view in zip(panels, VIEWS, strict=True):
        axes = view_axes(grid, view)
        index = int(centre_ijk[axes.slice_axis])
        extent = (
            -0.5 * h[axes.across_axis],
            (grid.shape[axes.across_axis] - 0.5) * h[axes.across_axis],
            -0.5 * h[axes.up_axis],
            (grid.shape[axes.up_axis] - 0.5) * h[axes.up_axis],
        )
        ax.set_facecolor("black")
        if anatomy.image is not None:
            img = _plane(anatomy.image, axes, index)
            lo, hi = np.percentile(anatomy.image, [1, 99.5])
            ax.imshow(img, cmap="gray", origin="lower", extent=extent, vmin=lo, vmax=hi)
        overlay = fig_spec.overlay
        if overlay is not None:
            values = _plane(overlay.values, axes, index)
            vmax = overlay.vmax or float(np.nanmax(overlay.values)) or 1.0
            shown = np.ma.masked_less_equal(values, 0.02 * vmax)
            im = ax.imshow(shown, cmap=overlay.cmap, origin="lower", extent=extent,
                           vmin=0.0, vmax=vmax, alpha=0.65)
            if overlay.levels:
                ax.contour(values, levels=sorted(overlay.levels), origin="lower",
                           extent=extent, colors="white", linewidths=1.0, linestyles="--")
            if view == VIEWS[-1]:
                fig.colorbar(im, ax=ax, shrink=0.8, label=overlay.label)
        # Zones and alternative delineations would clutter the outline, but a focal plan's
        # gland (a helper there, listed before any alternative delineation) is the landmark a
        # reader looks for: draw the first gland helper when no gland is a target.
        landmark = None
        if not any(s.kind.name == "gland" and s.role.value == "target" for s in anatomy):
            landmark = next(
                (s.name for s in anatomy if s.kind.name == "gland" and s.role.value == "helper"),
                None,
            )
        for s in anatomy.structures:
            if s.role.value == "helper" and s.name != landmark:
                continue
            plane = _plane(s.mask, axes, index)
            if not plane.any():
                continue
            colour = KIND_COLOURS.get(s.kind.name, "#ffffff")
            ax.contour(plane.astype(np.float32), levels=[0.5], origin="lower", extent=extent,
                       colors=colour, linewidths=1.3)
            tag = s.name + (" (modelled)" if s.modelled else "")
            legend[tag] = colour
        for seg in (seg for seg in fig_spec.segments if view in seg.views):
            a, u, _ = _project(grid, axes, np.stack([seg.start_mm, seg.end_mm]))
            ax.plot(a * h[axes.across_axis], u * h[axes.up_axis], color=seg.colour,
                    linewidth=seg.width, solid_capstyle="round")
        if fig_spec.markers and view == "axial":
            pts = np.stack([m.position_mm for m in fig_spec.markers])
            a, u, _ = _project(grid, axes, pts)
            for m, x, y in zip(fig_spec.markers, a, u, strict=True):
                ax.plot(x * h[axes.across_axis], y * h[axes.up_axis], "o", ms=3.2,
                        color=m.colour, markeredgewidth=0)
        ax.set_title(f"{view} (grid slice {index} of {grid.shape[axes.slice_axis]})")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xlabel(f"{axes.left_label}  <-  mm  ->  {axes.right_label}")
        ax.set_ylabel(f"{axes.bottom_label}  <-  mm  ->  {axes.top_label}")
        ax.set_aspect("equal")
    handles = [Line2D([0], [0], color=c, lw=2, label=n) for n, c in legend.items()]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(fig_spec.title, fontsize=11)
    footer = fig_spec.footer + ("\n" if fig_spec.footer else "") + RESEARCH_USE_NOTICE
    fig.text(0.5, -0.13, footer, ha="center", fontsize=7, wrap=True)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out
