"""A DICOM image series (MR or CT slices) -> voxel array and RAS+ VoxelGrid.

Voxel (i, j, k) = (column, row, slice sorted along the slice normal), the order NIfTI
converters (dcm2niix, SimpleITK) keep, so grids match their files. DICOM patient coordinates
are LPS; RAS+ flips x and y.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from optimizer.anatomy.errors import GridError, UnreadableFileError
from optimizer.anatomy.grid import VoxelGrid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# Geometry tolerances: slices must agree on orientation to 1e-4 (direction cosines) and sit
# on an evenly spaced stack to within 1 % of the slice step (DS strings carry ~10 digits).
ORIENTATION_TOL = 1e-4
SLICE_POSITION_REL_TOL = 0.01


@dataclass(frozen=True)
class DicomSeries:
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_instance_uids: frozenset[str]
    grid: VoxelGrid
    image: npt.NDArray[np.float32]


def _floats(ds: Dataset, keyword: str, count: int, path: Path) -> npt.NDArray[np.float64]:
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.asarray([], dtype=np.float64)
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise GridError(
            f"{path}: {keyword} is missing or malformed ({value!r}); the series cannot be "
            "placed in patient space"
        )
    return out


def _slice_geometry(
    datasets: Sequence[tuple[Path, Dataset]],
) -> tuple[list[int], npt.NDArray[np.float64]]:
    """Order of slices along the normal, and the 4x4 RAS affine of the stack."""
    path0, ds0 = datasets[0]
    orientation = _floats(ds0, "ImageOrientationPatient", 6, path0)
    spacing = _floats(ds0, "PixelSpacing", 2, path0)  # [between rows, between columns]
    if np.any(spacing <= 0):
        raise GridError(f"{path0}: PixelSpacing {spacing.tolist()} must be positive")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = []
    for path, ds in datasets:
        other = _floats(ds, "ImageOrientationPatient", 6, path)
        if np.abs(other - orientation).max() > ORIENTATION_TOL:
            raise GridError(
                f"{path}: ImageOrientationPatient differs from {path0.name}; the series is not "
                "one stack (split it or remove the stray slices)"
            )
        positions.append(_floats(ds, "ImagePositionPatient", 3, path))
    pos = np.asarray(positions)
    order = sorted(range(len(pos)), key=lambda n: float(pos[n] @ normal))
    pos = pos[order]
    if len(pos) > 1:
        step = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        thickness = float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 0)
        if thickness <= 0:
            raise GridError(f"{path0}: a single slice without SliceThickness has no depth")
        step = normal * thickness
    step_mm = float(np.linalg.norm(step))
    if step_mm <= 1e-6:
        raise GridError(
            f"{path0.parent}: slices share one position (duplicates or several acquisitions in "
            "one series); keep one image per position"
        )
    expected = pos[0] + np.outer(np.arange(len(pos)), step)
    deviation = float(np.linalg.norm(pos - expected, axis=1).max())
    if deviation > SLICE_POSITION_REL_TOL * step_mm:
        raise GridError(
            f"{path0.parent}: slices are not evenly spaced (off by up to {deviation:.3g} mm for "
            f"a {step_mm:.3g} mm step); missing slices or a mixed series"
        )
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]  # i runs along a row: column index
    lps[:3, 1] = col_dir * spacing[0]  # j runs down a column: row index
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    ras = np.eye(4)
    ras[:3] = LPS_TO_RAS @ lps[:3]
    return order, ras


def _pixels(path: Path) -> npt.NDArray[np.float32]:
    try:
        ds = pydicom.dcmread(path)
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:  # pydicom raises many kinds for bad or compressed pixel data
        raise UnreadableFileError(
            f"{path}: cannot decode the pixel data ({type(exc).__name__}: {exc}); if it is "
            "compressed, install the matching pydicom pixel handler or decompress the series"
        ) from None
    if pixels.ndim != 2:
        raise UnreadableFileError(
            f"{path}: {pixels.ndim}-D pixel data (multi-frame or colour) is not supported; "
            "export the series as single-frame greyscale slices"
        )
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels * np.float32(slope) + np.float32(intercept)


def read_series(datasets: Sequence[tuple[Path, Dataset]]) -> DicomSeries:
    """Build one series from its (path, header) pairs; headers may be read without pixels."""
    path0, ds0 = datasets[0]
    shape2d = (int(ds0.get("Columns", 0)), int(ds0.get("Rows", 0)))
    for path, ds in datasets:
        if (int(ds.get("Columns", 0)), int(ds.get("Rows", 0))) != shape2d:
            raise GridError(f"{path}: slice size differs from {path0.name}; not one stack")
    order, affine = _slice_geometry(datasets)
    try:
        grid = VoxelGrid((shape2d[0], shape2d[1], len(datasets)), affine)
    except GridError as exc:
        raise GridError(f"{path0.parent}: {exc}") from None
    image = np.empty(grid.shape, dtype=np.float32)
    for k, n in enumerate(order):
        pixels = _pixels(datasets[n][0])
        if pixels.shape != (shape2d[1], shape2d[0]):
            raise UnreadableFileError(f"{datasets[n][0]}: pixel data shape {pixels.shape}")
        image[:, :, k] = pixels.T  # pixel_array is [row, column]; voxel i is the column
    return DicomSeries(
        series_uid=str(ds0.get("SeriesInstanceUID", "")),
        study_uid=str(ds0.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "")),
        modality=str(ds0.get("Modality", "")),
        sop_instance_uids=frozenset(str(ds.get("SOPInstanceUID", "")) for _, ds in datasets),
        grid=grid,
        image=image,
    )


def uid_list(values: Any) -> str:
    return ", ".join(sorted(str(v) for v in values)) or "(none)"
