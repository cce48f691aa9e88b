"""Template, path check and voxelisation on a real oblique, anisotropic MRI grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.electrodes.paths import Obstacles, check_path, hole_reach
from optimizer.electrodes.template import Template
from optimizer.electrodes.voxelise import voxelise

pytestmark = pytest.mark.realdata


def test_holes_on_prostatex_0000(real_case_dir: Callable[[str], Path]) -> None:
    image = nib.load(real_case_dir("prostatex-0000") / "whole_gland_AI_Bosma22b.nii.gz")
    assert isinstance(image, nib.Nifti1Image)
    nx, ny, nz = image.shape
    grid = VoxelGrid((nx, ny, nz), image.affine)
    gland = np.asarray(image.dataobj) > 0
    # A modelled rectum: a slab 3-20 mm behind the gland, as wide as the gland.
    centres = grid.voxel_centres()
    g = centres[gland]
    y, x = centres[..., 1], centres[..., 0]
    rectum = (
        (y < g[:, 1].min() - 3)
        & (y > g[:, 1].min() - 20)
        & (x > g[:, 0].min())
        & (x < g[:, 0].max())
    )
    anatomy = Anatomy(
        grid,
        [
            Structure.from_name("whole gland", gland)[0],
            Structure.from_name("rectal wall", rectum, modelled=True)[0],
        ],
    )
    template = Template.for_anatomy(anatomy)
    obstacles = Obstacles.from_anatomy(anatomy)
    reach = hole_reach(template, obstacles, exposure_mm=10.0)
    admissible = [r for r in reach if r.admissible]
    assert len(admissible) >= 10
    assert any(r.blocked_by == "rectal wall" for r in reach)
    for r in admissible[:: max(len(admissible) // 8, 1)]:
        assert r.tip_depth_range_mm is not None
        needle = template.needle(r.label, r.tip_depth_range_mm[1], 10.0)
        assert check_path(needle, obstacles).ok
        vox = voxelise(needle, grid)
        axis = vox.indices[vox.on_axis]
        assert gland[axis[:, 0], axis[:, 1], axis[:, 2]].any()
        assert vox.exposed_length_inside_mm == pytest.approx(10.0, abs=1e-9)
