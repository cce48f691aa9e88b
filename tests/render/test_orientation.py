import numpy as np

from optimizer.anatomy.grid import VoxelGrid
from optimizer.render.orientation import view_axes


def lps_grid():
    # Axis codes L, P, S on disk, as the real cases: i -> left, j -> posterior, k -> superior.
    return VoxelGrid((10, 10, 10), np.diag([-0.5, -0.5, 3.0, 1.0]))


def test_axial_view_is_radiological_with_anterior_up():
    axes = view_axes(lps_grid(), "axial")
    assert axes.slice_axis == 2
    assert (axes.left_label, axes.right_label, axes.top_label) == ("R", "L", "A")
    # i runs to the patient's left, which radiological display puts on the right: no flip.
    assert not axes.across_flip
    # j runs posterior, but anterior must be up: flipped.
    assert axes.up_flip


def test_sagittal_and_coronal_have_superior_up():
    grid = lps_grid()
    for view in ("sagittal", "coronal"):
        axes = view_axes(grid, view)
        assert axes.top_label == "S" and axes.up_axis == 2 and not axes.up_flip
