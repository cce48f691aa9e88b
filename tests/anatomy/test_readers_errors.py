"""Bad input: each case raises one AnatomyError subclass whose message names the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from optimizer.anatomy.errors import (
    GridError,
    GridMismatchError,
    LabelError,
    MissingTargetError,
    UnreadableFileError,
)
from optimizer.anatomy.readers import load_anatomy

AFFINE = np.array(
    [[-0.5, 0.0, 0.1, 30.0], [0.0, -0.48, 0.9, 60.0], [0.0, 0.15, 2.8, -20.0], [0, 0, 0, 1.0]]
)


def gland(shape: tuple[int, int, int] = (12, 10, 4)) -> np.ndarray:
    data = np.zeros(shape, dtype=np.uint8)
    data[3:9, 3:7, 1:3] = 1
    return data


def write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_header_edited(path: Path, edit: Callable[[nib.Nifti1Header], None]) -> Path:
    """A mask whose header was edited after the fact (what broken converters produce)."""
    img = nib.Nifti1Image(gland(), AFFINE)
    edit(img.header)
    nib.save(nib.Nifti1Image(gland(), None, header=img.header), path)
    return path


def test_masks_on_different_grids(tmp_path: Path) -> None:
    write(tmp_path / "prostate.nii.gz", gland())
    write(tmp_path / "lesion.nii.gz", gland((12, 10, 5)))
    with pytest.raises(GridMismatchError) as err:
        load_anatomy(tmp_path)
    message = str(err.value)
    assert "prostate.nii.gz" in message and "lesion.nii.gz" in message
    assert "12x10x4" in message and "12x10x5" in message and "resample" in message


def test_empty_target(tmp_path: Path) -> None:
    write(tmp_path / "prostate.nii.gz", np.zeros((12, 10, 4), np.uint8))
    write(tmp_path / "rectum.nii.gz", gland())
    with pytest.raises(MissingTargetError, match=r"'gland' \(prostate\.nii\.gz\) has no voxels"):
        load_anatomy(tmp_path)


def test_no_target_among_the_masks(tmp_path: Path) -> None:
    write(tmp_path / "rectum.nii.gz", gland())
    with pytest.raises(MissingTargetError, match=r"rectum\.nii\.gz: rectum \(organ_at_risk\)"):
        load_anatomy(tmp_path)


def test_nan_spacing(tmp_path: Path) -> None:
    def nan_spacing(header: nib.Nifti1Header) -> None:
        header.set_sform(None, code=0)
        header.set_qform(AFFINE, code=1)
        header["pixdim"][1] = np.nan

    write_header_edited(tmp_path / "prostate.nii.gz", nan_spacing)
    with pytest.raises(GridError, match=r"prostate\.nii\.gz: affine holds NaN"):
        load_anatomy(tmp_path)


def test_zero_spacing(tmp_path: Path) -> None:
    def zero_spacing(header: nib.Nifti1Header) -> None:
        affine = AFFINE.copy()
        affine[:3, 2] = 0.0
        header.set_sform(affine, code=1)

    write_header_edited(tmp_path / "prostate.nii.gz", zero_spacing)
    with pytest.raises(GridError, match=r"prostate\.nii\.gz: voxel spacing .* zero axis"):
        load_anatomy(tmp_path)


def test_non_invertible_affine(tmp_path: Path) -> None:
    def parallel_axes(header: nib.Nifti1Header) -> None:
        affine = AFFINE.copy()
        affine[:3, 1] = 2.0 * affine[:3, 0]
        header.set_sform(affine, code=1)

    write_header_edited(tmp_path / "prostate.nii.gz", parallel_axes)
    with pytest.raises(GridError, match=r"prostate\.nii\.gz: affine is not invertible"):
        load_anatomy(tmp_path)


def test_unknown_label_values(tmp_path: Path) -> None:
    data = gland()
    data[4, 4, 1] = 9
    write(tmp_path / "seg.nii.gz", data)
    (tmp_path / "seg.json").write_text(json.dumps({"1": "prostate"}))
    with pytest.raises(LabelError, match=r"seg\.nii\.gz: label value\(s\) 9 occur"):
        load_anatomy(tmp_path / "seg.nii.gz")


def test_truncated_nifti(tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).random((40, 40, 10)).astype(np.float32)
    full = write(tmp_path / "full.nii.gz", noisy).read_bytes()
    (tmp_path / "full.nii.gz").unlink()
    (tmp_path / "prostate.nii.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(UnreadableFileError, match=r"prostate\.nii\.gz: .*truncated"):
        load_anatomy(tmp_path)


def test_non_image_file_with_an_image_name(tmp_path: Path) -> None:
    write(tmp_path / "prostate.nii.gz", gland())
    (tmp_path / "rectum.nii").write_text("not an image\n")
    with pytest.raises(UnreadableFileError, match=r"rectum\.nii: cannot read this as a NIfTI"):
        load_anatomy(tmp_path)


def test_unsupported_file(tmp_path: Path) -> None:
    (tmp_path / "case.txt").write_text("prostate")
    with pytest.raises(UnreadableFileError, match=r"case\.txt: not a format"):
        load_anatomy(tmp_path / "case.txt")


def test_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "case.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UnreadableFileError, match=r"case\.npz: cannot read as a NumPy"):
        load_anatomy(tmp_path / "case.npz")


def test_invalid_anatomy_json(tmp_path: Path) -> None:
    write(tmp_path / "prostate.nii.gz", gland())
    (tmp_path / "anatomy.json").write_text('{"files": {"prostate.nii.gz": {"role": }}')
    with pytest.raises(UnreadableFileError, match=r"anatomy\.json: not valid JSON \(line 1"):
        load_anatomy(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match=rf"{tmp_path.name}: no mask files"):
        load_anatomy(tmp_path)


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match=r"no_such_case: does not exist"):
        load_anatomy(tmp_path / "no_such_case")
