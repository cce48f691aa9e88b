"""A DICOM folder: one MR/CT image series plus an RTSTRUCT drawn on it.

Patient identifiers are dropped on import: nothing from PatientName, PatientID, dates,
accession, institution or staff tags is stored or logged. The case id is the folder name, or a
short hash of the StudyInstanceUID when the folder name contains an identifier.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from optimizer.anatomy.errors import (
    AnatomyError,
    DicomReferenceError,
    MissingTargetError,
    UnreadableFileError,
)
from optimizer.anatomy.readers._assemble import assemble
from optimizer.anatomy.readers.dicom_series import DicomSeries, read_series, uid_list
from optimizer.anatomy.readers.rtstruct import (
    Roi,
    check_references,
    check_roi_images,
    rasterise,
    read_rois,
    referenced_series,
)
from optimizer.anatomy.structures import Anatomy, Structure

IMAGE_MODALITIES = frozenset({"MR", "CT"})

# Attributes that identify a patient or the people and places involved (DICOM PS3.15 E.1-1).
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
)

# ROI interpretation (RTROIInterpretedType) -> kind, for ROI names that match no kind.
_INTERPRETED_KIND = {"GTV": "lesion", "CTV": "lesion", "PTV": "lesion", "EXTERNAL": "body"}


def _identifiers(datasets: list[Dataset]) -> list[str]:
    """Identifier strings to keep out of anything stored, longest first.

    Whole values count from 3 characters; person-name components (family^given) from 4, so
    that short name parts cannot mangle ordinary words ("Urethra").
    """
    found: set[str] = set()
    for ds in datasets:
        for keyword in IDENTIFYING_KEYWORDS:
            value = ds.get(keyword)
            values = value if isinstance(value, list | tuple | MultiValue) else [value]
            for v in values:
                text = str(v or "").strip()
                if len(text) >= 3:
                    found.add(text)
                parts = (p.strip() for p in re.split(r"[\^=]+", text))
                found.update(p for p in parts if len(p) >= 4)
    return sorted(found, key=len, reverse=True)


def _scrub(text: str, identifiers: list[str]) -> str:
    for ident in identifiers:
        text = re.sub(re.escape(ident), "[removed]", text, flags=re.IGNORECASE)
    return text


def _short_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


def _scan(
    folder: Path,
) -> tuple[dict[str, list[tuple[Path, Dataset]]], list[tuple[Path, Dataset]], int]:
    """Image slices grouped by series, RTSTRUCTs, and how many files were not DICOM."""
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    structs: list[tuple[Path, Dataset]] = []
    other = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            other += 1
            continue
        except Exception as exc:  # truncated or corrupt files fail in many ways inside pydicom
            raise UnreadableFileError(
                f"{path}: cannot read as DICOM ({type(exc).__name__}: {exc}); remove or replace it"
            ) from None
        modality = str(ds.get("Modality", ""))
        if modality == "RTSTRUCT":
            structs.append((path, ds))
        elif modality in IMAGE_MODALITIES and "ImagePositionPatient" in ds:
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
        else:
            other += 1
    return series, structs, other


def _choose_series(
    folder: Path,
    series: dict[str, list[tuple[Path, Dataset]]],
    struct: tuple[Path, Dataset],
) -> list[tuple[Path, Dataset]]:
    if len(series) == 1:
        return next(iter(series.values()))
    wanted = referenced_series(struct[1])
    matches = [uid for uid in series if uid in wanted]
    if len(matches) != 1:
        raise DicomReferenceError(
            f"{struct[0]}: the RTSTRUCT references series {uid_list(wanted)} but {folder} holds "
            f"series {uid_list(series)}; keep only the series the RTSTRUCT was drawn on"
        )
    return series[matches[0]]


def _structure(
    roi: Roi, series: DicomSeries, taken: set[str], identifiers: list[str], notes: list[str]
) -> Structure:
    mask, off_plane = rasterise(roi, series.grid)
    name = _scrub(roi.name, identifiers) or f"ROI {roi.number}"
    if name in taken:
        name = f"{name} (ROI {roi.number})"
    taken.add(name)
    source = f"RTSTRUCT ROI {roi.number}"
    if off_plane:
        notes.append(f"ROI {name!r}: {off_plane} contour(s) off the image's slice planes skipped")
    if roi.skipped_types:
        notes.append(f"ROI {name!r}: skipped {', '.join(sorted(roi.skipped_types))} contours")
    structure, recognised = Structure.from_name(name, mask, source=source)
    if not recognised and roi.interpreted_type in _INTERPRETED_KIND:
        kind = _INTERPRETED_KIND[roi.interpreted_type]
        structure, recognised = Structure.from_name(name, mask, kind=kind, source=source)
        notes.append(f"ROI {name!r}: kind {kind} from its type {roi.interpreted_type}")
    if not recognised:
        notes.append(f"ROI {name!r}: unrecognised name, kept as soft tissue (helper)")
    return structure


def read_dicom_folder(folder: str | Path, *, case_id: str | None = None) -> Anatomy:
    """Read an MR/CT series and the RTSTRUCT drawn on it (searched recursively).

    Errors name files by path with any patient identifier in the path removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UnreadableFileError(f"{folder}: not a folder (or does not exist)")
    all_series, structs, other = _scan(folder)
    identifiers = _identifiers(
        [slices[0][1] for slices in all_series.values()] + [ds for _, ds in structs]
    )
    try:
        return _read(folder, all_series, structs, other, identifiers, case_id)
    except AnatomyError as exc:
        raise type(exc)(_scrub(str(exc), identifiers)) from None


def _read(
    folder: Path,
    all_series: dict[str, list[tuple[Path, Dataset]]],
    structs: list[tuple[Path, Dataset]],
    other: int,
    identifiers: list[str],
    case_id: str | None,
) -> Anatomy:
    if not all_series:
        raise UnreadableFileError(
            f"{folder}: no MR or CT image slices found ({other} other files); a DICOM anatomy "
            "needs the image series and its RTSTRUCT"
        )
    if not structs:
        raise MissingTargetError(
            f"{folder}: no RTSTRUCT among the DICOM files, so no target; export the structure "
            "set (with the prostate or lesion contoured) into this folder"
        )
    struct_path, struct_ds = structs[0]
    series = read_series(_choose_series(folder, all_series, structs[0]))
    check_references(struct_ds, struct_path, series)

    struct_uid = str(struct_ds.get("SOPInstanceUID", ""))
    notes = [
        f"DICOM {series.modality} series {_short_hash(series.series_uid)} "
        f"({series.grid.shape[2]} slices), RTSTRUCT {_short_hash(struct_uid)}; "
        "patient identifiers dropped",
    ]
    if len(structs) > 1:
        notes.append(f"{len(structs) - 1} further RTSTRUCT file(s) ignored")
    if len(all_series) > 1:
        notes.append(f"{len(all_series) - 1} other image series ignored")
    if other:
        notes.append(f"{other} non-image DICOM or other files ignored")
    taken: set[str] = set()
    structures = []
    for roi in read_rois(struct_ds):
        if roi.frame_uid and roi.frame_uid != series.frame_of_reference_uid:
            notes.append(f"ROI {roi.number}: drawn in another frame of reference; skipped")
            continue
        check_roi_images(roi, struct_path, series)
        structures.append(_structure(roi, series, taken, identifiers, notes))
    name = folder.resolve().name
    default_id = (
        name if _scrub(name, identifiers) == name else f"dicom-{_short_hash(series.study_uid)}"
    )
    return assemble(
        series.grid,
        structures,
        where=str(folder),
        case_id=case_id or default_id,
        source=_scrub(str(folder), identifiers),
        image=series.image,
        notes=notes,
    )
