"""DICOM: the real ProstateX T2W series plus an RTSTRUCT made here from the case's gland mask."""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import contourpy
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from optimizer.anatomy.errors import DicomReferenceError, MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.readers import load_anatomy, read_dicom_folder
from optimizer.anatomy.readers.rtstruct import Roi, rasterise

CASE = "prostatex-0000"
TAR = "t2w_axial_ProstateX-0000_original_DICOM.tar.xz"
RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
LPS = np.array([-1.0, -1.0, 1.0])
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyID",
    "OperatorsName",
)


def sorted_slices(folder: Path) -> list[Dataset]:
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(slices, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, float) @ normal))


def mask_contours(mask: np.ndarray, affine: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Per-slice closed contours (LPS mm) through the voxel-centre midpoints of a mask."""
    out = []
    for k in range(mask.shape[2]):
        if not mask[:, :, k].any():
            continue
        padded = np.pad(mask[:, :, k].astype(np.float64), 1)
        for line in contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5):
            ij = np.asarray(line)[:, ::-1] - 1.0  # contourpy gives (x=column, y=row) of z
            if np.allclose(ij[0], ij[-1]):
                ij = ij[:-1]
            ijk = np.column_stack([ij, np.full(len(ij), float(k))])
            out.append((k, (ijk @ affine[:3, :3].T + affine[:3, 3]) * LPS))
    return out


def box_mask(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[10:20, 12:30, 3] = True
    return mask


def write_rtstruct(
    path: Path,
    slices: list[Dataset],
    rois: list[tuple[str, str, list[tuple[int, np.ndarray]]]],
    series_uid: str | None = None,
    frame_uid: str | None = None,
) -> None:
    ref = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCT_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RT_STRUCT_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "StudyDate"):
        setattr(ds, keyword, ref.get(keyword, ""))
    # Identifiers a clinical export carries: they must never reach the Anatomy or the logs.
    ds.PatientBirthDate = "19480317"
    ds.InstitutionName = "Radboudumc Testkliniek"
    ds.OperatorsName = "Jansen^Pieter"
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    frame_uid = frame_uid or ref.FrameOfReferenceUID
    series_item = Dataset()
    series_item.SeriesInstanceUID = series_uid or ref.SeriesInstanceUID
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_item.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    ds.RTROIObservationsSequence = Sequence()
    for number, (name, interpreted, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [255, 0, 0]
        item.ContourSequence = Sequence()
        for k, points in contours:
            contour = Dataset()
            image = Dataset()
            image.ReferencedSOPClassUID = slices[k].SOPClassUID
            image.ReferencedSOPInstanceUID = slices[k].SOPInstanceUID
            contour.ContourImageSequence = Sequence([image])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.6f}" for v in points.ravel()]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = interpreted
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)


class DicomCase:
    def __init__(self, root: Path, case_dir: Path) -> None:
        with tarfile.open(case_dir / TAR) as tar:
            tar.extractall(root / "extracted", filter="data")
        (series_dir,) = (root / "extracted").iterdir()
        self.no_rtstruct = root / "no_rtstruct"
        shutil.copytree(series_dir, self.no_rtstruct)
        self.no_rtstruct_named = root / "ProstateX-0000_series"
        shutil.copytree(series_dir, self.no_rtstruct_named)
        self.wrong_series = root / "wrong_series"
        shutil.copytree(series_dir, self.wrong_series)
        self.wrong_frame = root / "wrong_frame"
        shutil.copytree(series_dir, self.wrong_frame)
        self.named_after_patient = root / "ProstateX-0000"
        self.folder = series_dir
        self.slices = sorted_slices(series_dir)
        gland_img = nib.load(case_dir / "whole_gland_AI_Bosma22b.nii.gz")
        self.gland = np.asanyarray(gland_img.dataobj) != 0
        self.gland_affine = gland_img.affine
        self.t2w_path = case_dir / "t2w_axial_ProstateX-0000.nii.gz"
        self.t2w_affine = nib.load(self.t2w_path).affine
        lesion = np.asanyarray(nib.load(case_dir / CASE_LESION).dataobj) != 0
        self.lesion = lesion
        rois = [
            ("Prostate", "ORGAN", mask_contours(self.gland, self.gland_affine)),
            ("Focus 1", "GTV", mask_contours(lesion, self.gland_affine)),
            ("Couch", "SUPPORT", mask_contours(box_mask(self.gland.shape), self.gland_affine)),
        ]
        write_rtstruct(series_dir / "rtstruct.dcm", self.slices, rois)
        shutil.copytree(series_dir, self.named_after_patient)
        write_rtstruct(
            self.wrong_series / "rtstruct.dcm",
            self.slices,
            rois[:1],
            series_uid=generate_uid(),
            frame_uid=generate_uid(),
        )
        self.other_frame_uid = generate_uid()
        write_rtstruct(
            self.wrong_frame / "rtstruct.dcm", self.slices, rois[:1], frame_uid=self.other_frame_uid
        )
        self.identifiers = _identifiers(series_dir)


CASE_LESION = "csPCa_lesions_ISUP_human_expert_resampled.nii.gz"


def _identifiers(folder: Path) -> list[str]:
    found: set[str] = set()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFYING:
            text = str(ds.get(keyword, "") or "")
            found.update(t for t in [text, *text.split("^")] if len(t) >= 4)
    return sorted(found)


@pytest.fixture(scope="module")
def dicom_case(
    tmp_path_factory: pytest.TempPathFactory, real_case_dir: Callable[[str], Path]
) -> DicomCase:
    return DicomCase(tmp_path_factory.mktemp("dicom"), real_case_dir(CASE))


def test_affine_and_image_match_the_nifti_conversion(dicom_case: DicomCase) -> None:
    anatomy = read_dicom_folder(dicom_case.folder)

    np.testing.assert_allclose(anatomy.grid.affine, dicom_case.t2w_affine, atol=1e-3, rtol=0)
    assert anatomy.grid.shape == dicom_case.gland.shape
    stored = np.asanyarray(nib.load(dicom_case.t2w_path).dataobj)
    assert anatomy.image is not None and np.array_equal(anatomy.image, stored)


def test_rtstruct_contours_rasterise_back_to_the_mask(dicom_case: DicomCase) -> None:
    anatomy = load_anatomy(dicom_case.folder)

    gland, lesion = anatomy["Prostate"], anatomy["Focus 1"]
    assert gland.kind.name == "gland" and gland.role == Role.TARGET
    assert lesion.kind.name == "lesion" and lesion.role == Role.TARGET
    assert "ROI 'Focus 1': kind lesion from its type GTV" in anatomy.notes
    assert anatomy["Couch"].role == Role.HELPER
    assert np.array_equal(anatomy["Couch"].mask, box_mask(anatomy.grid.shape))
    assert any("Couch" in n and "unrecognised" in n for n in anatomy.notes)
    nifti_ml = dicom_case.gland.sum() * anatomy.grid.voxel_volume_ml
    dicom_ml = gland.voxel_count() * anatomy.grid.voxel_volume_ml
    print(f"gland: DICOM {dicom_ml:.3f} ml, NIfTI {nifti_ml:.3f} ml")
    assert dicom_ml == pytest.approx(nifti_ml, rel=0.03)
    # Contours through voxel-edge midpoints fill back exactly the voxels they came from.
    assert np.array_equal(gland.mask, dicom_case.gland)
    assert np.array_equal(lesion.mask, dicom_case.lesion)


def test_no_patient_identifier_is_kept_or_logged(
    dicom_case: DicomCase, caplog: pytest.LogCaptureFixture
) -> None:
    assert "ProstateX-0000" in dicom_case.identifiers  # the test would be empty otherwise
    caplog.set_level(logging.DEBUG)
    plain = load_anatomy(dicom_case.folder)
    named = load_anatomy(dicom_case.named_after_patient)
    with pytest.raises(MissingTargetError) as err:
        load_anatomy(dicom_case.no_rtstruct_named)
    assert "[removed]_series: no RTSTRUCT" in str(err.value)

    assert plain.case_id == dicom_case.folder.name
    assert re.fullmatch(r"dicom-[0-9a-f]{10}", named.case_id)
    for anatomy in (plain, named):
        stored = [anatomy.case_id, anatomy.source, *anatomy.notes]
        stored += [f"{s.name} {s.source}" for s in anatomy]
        text = "\n".join(stored).lower()
        for identifier in dicom_case.identifiers:
            assert identifier.lower() not in text, identifier
            assert identifier.lower() not in str(err.value).lower(), identifier
            assert identifier.lower() not in caplog.text.lower(), identifier


def test_rtstruct_of_another_series_is_refused(dicom_case: DicomCase) -> None:
    series_uid = dicom_case.slices[0].SeriesInstanceUID
    with pytest.raises(DicomReferenceError) as err:
        load_anatomy(dicom_case.wrong_series)
    message = str(err.value)
    assert "rtstruct.dcm" in message and series_uid in message
    assert re.search(r"references image series [0-9.]+ ", message)


def test_rtstruct_in_another_frame_of_reference_is_refused(dicom_case: DicomCase) -> None:
    with pytest.raises(DicomReferenceError) as err:
        load_anatomy(dicom_case.wrong_frame)
    message = str(err.value)
    assert "rtstruct.dcm" in message and dicom_case.other_frame_uid in message
    assert dicom_case.slices[0].FrameOfReferenceUID in message


def test_series_without_rtstruct_has_no_target(dicom_case: DicomCase) -> None:
    with pytest.raises(MissingTargetError, match=r"no_rtstruct: no RTSTRUCT"):
        load_anatomy(dicom_case.no_rtstruct)


def test_contours_combine_even_odd_into_holes() -> None:
    affine = np.array(
        [[0.5, 0.0, 0.2, 10.0], [0.0, 0.45, 0.9, -5.0], [0.0, -0.15, 2.8, 3.0], [0, 0, 0, 1.0]]
    )
    grid = VoxelGrid((30, 30, 4), affine)

    def square(lo: float, hi: float, k: int) -> np.ndarray:
        ij = np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]])
        ijk = np.column_stack([ij, np.full(4, float(k))])
        return grid.index_to_world(ijk) * LPS

    contours = [square(4.5, 24.5, 2), square(9.5, 19.5, 2), square(4.5, 8.5, 1)]
    roi = Roi(1, "ring", "", contours=contours)

    mask, off_plane = rasterise(roi, grid)

    assert off_plane == 0
    assert np.count_nonzero(mask[:, :, 2]) == 20 * 20 - 10 * 10
    assert not mask[14, 14, 2] and mask[5, 5, 2]
    assert np.count_nonzero(mask[:, :, 1]) == 4 * 4 and not mask[:, :, [0, 3]].any()
