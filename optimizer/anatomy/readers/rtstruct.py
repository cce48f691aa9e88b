"""RTSTRUCT: check it belongs to the image series, and rasterise its ROI contours exactly.

A voxel is inside an ROI when its centre lies inside the ROI's contours on that slice, with
contours combined even-odd (XOR), so a contour inside another is a hole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.path import Path as Polygon
from pydicom.dataset import Dataset

from optimizer.anatomy.errors import DicomReferenceError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.readers.dicom_series import LPS_TO_RAS, DicomSeries, uid_list

_FIX = "put the RTSTRUCT drawn on this series in the folder (or the series it was drawn on)"

# A contour belongs to a slice when its points lie within this fraction of the slice step of
# the slice plane; further off, it was drawn on another geometry and cannot be placed exactly.
OFF_PLANE_TOL_SLICES = 0.25


@dataclass
class Roi:
    number: int
    name: str
    interpreted_type: str
    frame_uid: str = ""  # the frame of reference its contours are in ("" if not given)
    contours: list[npt.NDArray[np.float64]] = field(default_factory=list)  # (N, 3) LPS mm
    image_uids: set[str] = field(default_factory=set)  # SOP instances the contours name
    skipped_types: set[str] = field(default_factory=set)


def referenced_series(ds: Dataset) -> set[str]:
    out = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series.get("SeriesInstanceUID"):
                    out.add(str(series.SeriesInstanceUID))
    return out


def _referenced_frames(ds: Dataset) -> set[str]:
    frames = {
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if f.get("FrameOfReferenceUID")
    }
    frames |= {
        str(r.ReferencedFrameOfReferenceUID)
        for r in ds.get("StructureSetROISequence", [])
        if r.get("ReferencedFrameOfReferenceUID")
    }
    return frames


def check_references(ds: Dataset, path: Path, series: DicomSeries) -> None:
    """DicomReferenceError unless the RTSTRUCT points at this series and frame of reference."""
    wanted = referenced_series(ds)
    if wanted and series.series_uid not in wanted:
        raise DicomReferenceError(
            f"{path}: the RTSTRUCT references image series {uid_list(wanted)} but the folder's "
            f"{series.modality} series is {series.series_uid}; {_FIX}"
        )
    frames = _referenced_frames(ds)
    if frames and series.frame_of_reference_uid not in frames:
        raise DicomReferenceError(
            f"{path}: the RTSTRUCT uses frame of reference {uid_list(frames)} but the image "
            f"series has {series.frame_of_reference_uid}; {_FIX}"
        )


def check_roi_images(roi: Roi, path: Path, series: DicomSeries) -> None:
    """An ROI in the series' frame must be drawn on the series' own images."""
    foreign = roi.image_uids - series.sop_instance_uids
    if foreign:
        raise DicomReferenceError(
            f"{path}: ROI {roi.number} has contours on images that are not in series "
            f"{series.series_uid} (e.g. {sorted(foreign)[0]}); {_FIX}"
        )


def read_rois(ds: Dataset) -> list[Roi]:
    interpreted = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
        for o in ds.get("RTROIObservationsSequence", [])
        if o.get("ReferencedROINumber") is not None
    }
    rois = {
        int(r.ROINumber): Roi(
            int(r.ROINumber),
            str(r.get("ROIName", "") or f"ROI {r.ROINumber}").strip(),
            interpreted.get(int(r.ROINumber), ""),
            str(r.get("ReferencedFrameOfReferenceUID", "") or ""),
        )
        for r in ds.get("StructureSetROISequence", [])
    }
    for item in ds.get("ROIContourSequence", []):
        roi = rois.get(int(item.ReferencedROINumber))
        if roi is None:
            continue
        for contour in item.get("ContourSequence", []):
            roi.image_uids.update(
                str(image.ReferencedSOPInstanceUID)
                for image in contour.get("ContourImageSequence", [])
                if image.get("ReferencedSOPInstanceUID")
            )
            kind = str(contour.get("ContourGeometricType", ""))
            if kind != "CLOSED_PLANAR":
                roi.skipped_types.add(kind or "untyped")
                continue
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
            if points.size >= 9 and points.size % 3 == 0:
                roi.contours.append(points.reshape(-1, 3))
    return list(rois.values())


def rasterise(roi: Roi, grid: VoxelGrid) -> tuple[npt.NDArray[np.bool_], int]:
    """The ROI's mask on ``grid`` and how many contours lay off the slice planes (skipped)."""
    mask = np.zeros(grid.shape, dtype=bool)
    off_plane = 0
    for contour in roi.contours:
        ijk = grid.world_to_index(contour @ LPS_TO_RAS.T)
        k = round(float(ijk[:, 2].mean()))
        if np.abs(ijk[:, 2] - k).max() > OFF_PLANE_TOL_SLICES or not 0 <= k < grid.shape[2]:
            off_plane += 1
            continue
        lo = np.maximum(np.floor(ijk[:, :2].min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(ijk[:, :2].max(axis=0)).astype(int), np.asarray(grid.shape[:2]) - 1)
        if np.any(hi < lo):
            continue
        ii, jj = np.meshgrid(
            np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij"
        )
        centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(np.float64)
        inside = Polygon(ijk[:, :2], closed=False).contains_points(centres).reshape(ii.shape)
        # Even-odd: a contour inside another on the same slice cuts a hole.
        mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, k] ^= inside
    return mask, off_plane
