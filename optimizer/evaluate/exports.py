"""NIfTI exports of fields: on the planning grid, and mapped back onto the input image grid.

The input-grid file carries the input image's own affine, so it overlays on the MR in 3D Slicer
or ITK-SNAP without any registration.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.planning import PlanningAnatomy


def write_nifti(values: npt.NDArray[np.floating], grid: VoxelGrid, path: str | Path,
                description: str) -> Path:
    """Write float32 ``values`` on ``grid`` (the affine is written as both qform and sform)."""
    if values.shape != grid.shape:
        raise ValueError(f"values of shape {values.shape} do not fit grid {grid.shape}")
    image = nib.Nifti1Image(np.asarray(values, dtype=np.float32), np.asarray(grid.affine))
    image.set_qform(np.asarray(grid.affine), code=1)
    image.set_sform(np.asarray(grid.affine), code=1)
    # descrip holds 80 bytes: say what it is and that it is research output.
    image.header["descrip"] = f"ectplan {description}; research use only"[:79].encode()
    image.header.set_xyzt_units("mm")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, out)
    return out


def write_field_exports(
    field_V_per_cm: npt.NDArray[np.floating],
    planning: PlanningAnatomy,
    out_dir: str | Path,
    stem: str = "field_max_V_per_cm",
) -> dict[str, Path]:
    """The field on the planning grid and, trilinearly mapped back, on the input grid."""
    out = Path(out_dir)
    on_input = np.asarray(
        planning.map_to_input(np.asarray(field_V_per_cm, dtype=np.float32), order="linear",
                              fill=0.0),
        dtype=np.float32,
    )
    return {
        "planning": write_nifti(field_V_per_cm, planning.grid, out / f"{stem}_planning.nii.gz",
                                "|E| V/cm planning grid"),
        "input": write_nifti(on_input, planning.parent_grid, out / f"{stem}.nii.gz",
                             "|E| V/cm input grid"),
    }

