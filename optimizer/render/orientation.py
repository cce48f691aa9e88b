"""Which grid axis shows which anatomical view, and which way is up on screen.

Planning grids follow the image's (possibly oblique) axes, so a view is the grid slice whose
normal is closest to the anatomical normal; the figure labels its edges with the patient
directions they point to, so an oblique slice is never mistaken for a true one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimizer.anatomy.grid import VoxelGrid

# RAS+: +x towards the patient's right, +y anterior, +z superior (nibabel's convention).
_LETTERS = {0: ("L", "R"), 1: ("P", "A"), 2: ("I", "S")}  # (negative end, positive end)

VIEW_NORMAL = {"axial": 2, "coronal": 1, "sagittal": 0}
# What points up on screen for each view, and what points right (radiological convention:
# the patient's right on the viewer's left in axial and coronal views).
VIEW_UP = {"axial": (1, +1), "coronal": (2, +1), "sagittal": (2, +1)}
VIEW_RIGHT = {"axial": (0, -1), "coronal": (0, -1), "sagittal": (1, -1)}


@dataclass(frozen=True)
class ViewAxes:
    """Grid axes of a view: the slice axis, and the grid axes shown across and up."""

    view: str
    slice_axis: int
    across_axis: int
    across_flip: bool
    up_axis: int
    up_flip: bool
    left_label: str
    right_label: str
    bottom_label: str
    top_label: str


def _grid_axis_for(grid: VoxelGrid, world_axis: int, exclude: set[int]) -> tuple[int, int]:
    """(grid axis most aligned with a world axis, sign of that alignment)."""
    dirs = grid.directions
    best = max((a for a in range(3) if a not in exclude), key=lambda a: abs(dirs[world_axis, a]))
    return best, int(np.sign(dirs[world_axis, best]) or 1)


def view_axes(grid: VoxelGrid, view: str) -> ViewAxes:
    normal_world = VIEW_NORMAL[view]
    slice_axis, _ = _grid_axis_for(grid, normal_world, set())
    up_world, up_sign_want = VIEW_UP[view]
    up_axis, up_sign = _grid_axis_for(grid, up_world, {slice_axis})
    right_world, right_sign_want = VIEW_RIGHT[view]
    across_axis = ({0, 1, 2} - {slice_axis, up_axis}).pop()
    across_sign = int(np.sign(grid.directions[right_world, across_axis]) or 1)
    # imshow draws increasing column index to the right and, with origin="lower", increasing
    # row index upwards; flip a grid axis when it runs the other way.
    across_flip = across_sign != right_sign_want
    up_flip = up_sign != up_sign_want
    neg_r, pos_r = _LETTERS[right_world]
    neg_u, pos_u = _LETTERS[up_world]
    right_label = pos_r if right_sign_want > 0 else neg_r
    left_label = neg_r if right_sign_want > 0 else pos_r
    return ViewAxes(
        view=view,
        slice_axis=slice_axis,
        across_axis=across_axis,
        across_flip=across_flip,
        up_axis=up_axis,
        up_flip=up_flip,
        left_label=left_label,
        right_label=right_label,
        bottom_label=neg_u,
        top_label=pos_u,
    )
