"""load_anatomy: one entry point that picks the reader from what the path is."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from optimizer.anatomy.errors import UnreadableFileError
from optimizer.anatomy.readers._image_io import IMAGE_SUFFIXES, is_image_file
from optimizer.anatomy.readers.dicom import read_dicom_folder
from optimizer.anatomy.readers.label_map import read_label_map
from optimizer.anatomy.readers.mask_folder import read_mask_folder
from optimizer.anatomy.readers.npz import read_npz
from optimizer.anatomy.structures import Anatomy

# How many files to sniff for the DICOM preamble before deciding a folder is not DICOM.
_DICOM_SNIFF_FILES = 200


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _looks_like_dicom(folder: Path) -> bool:
    files = (p for p in folder.rglob("*") if p.is_file())
    return any(_is_dicom_file(p) for p in islice(files, _DICOM_SNIFF_FILES))


def load_anatomy(path: str | Path, *, case_id: str | None = None) -> Anatomy:
    """Read an anatomy from any supported input, failing early and clearly on bad input.

    - a folder of NIfTI/NRRD masks (optionally with anatomy.json) -> read_mask_folder;
    - a folder of DICOM files (image series + RTSTRUCT) -> read_dicom_folder;
    - one NIfTI/NRRD label image with <stem>.json or <stem>.csv beside it -> read_label_map;
    - an .npz written by save_anatomy_npz -> read_npz.
    The result always has a non-empty target (MissingTargetError otherwise).
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(
            f"{path}: does not exist; give a folder of masks, a DICOM folder, a label image "
            "or an .npz"
        )
    if path.is_dir():
        has_masks = any(is_image_file(p) for p in path.iterdir())
        if not has_masks and _looks_like_dicom(path):
            return read_dicom_folder(path, case_id=case_id)
        return read_mask_folder(path, case_id=case_id)
    name = path.name.lower()
    if name.endswith(".npz"):
        return read_npz(path, case_id=case_id)
    if name.endswith(IMAGE_SUFFIXES):
        return read_label_map(path, case_id=case_id)
    raise UnreadableFileError(
        f"{path}: not a format ectplan reads; use .nii/.nii.gz/.nrrd/.nhdr (label map with a "
        "table beside it), .npz, or a folder (masks or DICOM)"
    )
