"""NIfTI and NRRD files -> (voxel array, VoxelGrid), with every failure named by file.

Arrays keep their on-disk voxel order: the affine carries the orientation, so nothing here
flips or reorients data (oblique, anisotropic grids stay exactly as stored).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import numpy.typing as npt
from nibabel.spatialimages import SpatialImage

from optimizer.anatomy.errors import GridError, UnreadableFileError
from optimizer.anatomy.grid import VoxelGrid

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES

# NRRD "space" values -> sign flips that turn that space into RAS+ (x, y, z).
_NRRD_SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
}

# What decompression and parsing raise on truncated or foreign files.
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, TypeError, KeyError, IndexError)


@dataclass(frozen=True)
class ImageHeader:
    """A file's grid, read without its voxel data, and anything worth telling the user."""

    path: Path
    grid: VoxelGrid
    warnings: tuple[str, ...] = ()


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> str:
    """File name without its image suffix ('a.nii.gz' -> 'a')."""
    lower = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _unreadable(path: Path, exc: BaseException) -> UnreadableFileError:
    return UnreadableFileError(
        f"{path}: cannot read this as a {'NIfTI' if _is_nifti(path) else 'NRRD'} image "
        f"({type(exc).__name__}: {exc}); check the file is complete (not truncated) and is an "
        "image, or remove it from the folder"
    )


def _make_grid(path: Path, shape: tuple[int, ...], affine: npt.ArrayLike) -> VoxelGrid:
    if len(shape) != 3:
        raise UnreadableFileError(
            f"{path}: expected a 3-D volume, got shape {shape}; save each structure as one 3-D mask"
        )
    try:
        return VoxelGrid((shape[0], shape[1], shape[2]), np.asarray(affine, dtype=np.float64))
    except GridError as exc:
        raise GridError(f"{path}: {exc}") from None


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    # Trailing singleton axes (a 4-D file with one volume) are harmless; anything else is not.
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        raise UnreadableFileError(f"{path}: a 2-D image {shape} is not a volume")
    return tuple(dims)


def _nifti_header(path: Path) -> tuple[SpatialImage, ImageHeader]:
    try:
        img = nib.load(str(path))
        if not isinstance(img, SpatialImage):
            raise ValueError(f"{type(img).__name__} is not a spatial image")
        shape = _spatial_shape(path, tuple(int(n) for n in img.shape))
        affine = img.affine
        # Only NIfTI headers say whether an orientation was stored.
        oriented = True
        if isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            oriented = bool(img.get_qform(coded=True)[1] or img.get_sform(coded=True)[1])
    except (nib.filebasedimages.ImageFileError, *_READ_ERRORS) as exc:
        raise _unreadable(path, exc) from None
    warnings: list[str] = []
    if not oriented:
        warnings.append(
            f"{path.name}: header has no orientation (qform and sform codes are 0); the affine "
            "uses voxel sizes only"
        )
    return img, ImageHeader(path, _make_grid(path, shape, affine), tuple(warnings))


def _nrrd_affine(path: Path, header: dict[str, Any]) -> tuple[npt.NDArray[np.float64], list[str]]:
    ndim = int(header.get("dimension", 0))
    if ndim != 3:
        raise UnreadableFileError(f"{path}: NRRD dimension {ndim}; expected a 3-D volume")
    directions = header.get("space directions")
    if directions is None:
        spacings = header.get("spacings")
        if spacings is None:
            raise GridError(
                f"{path}: NRRD header has neither 'space directions' nor 'spacings'; add the "
                "voxel geometry (e.g. re-save it from 3D Slicer)"
            )
        affine = np.diag([*np.asarray(spacings, dtype=np.float64), 1.0])
        return affine, [f"{path.name}: NRRD has no orientation ('spacings' only); assuming RAS"]
    space = str(header.get("space", "")).lower()
    if space not in _NRRD_SPACE_TO_RAS:
        known = ", ".join(k for k in _NRRD_SPACE_TO_RAS if "-" in k)
        raise UnreadableFileError(f"{path}: NRRD space {space!r} is not supported; use {known}")
    flip = np.asarray(_NRRD_SPACE_TO_RAS[space])
    affine = np.eye(4)
    # Each row of 'space directions' is one voxel axis; the affine takes them as columns.
    affine[:3, :3] = np.asarray(directions, dtype=np.float64).T * flip[:, None]
    origin = header.get("space origin")
    affine[:3, 3] = (np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)) * flip
    return affine, []


def _nrrd_header(path: Path) -> ImageHeader:
    try:
        header = nrrd.read_header(str(path))
        shape = tuple(int(n) for n in header["sizes"])
    except (nrrd.NRRDError, *_READ_ERRORS) as exc:
        raise _unreadable(path, exc) from None
    affine, warnings = _nrrd_affine(path, header)
    return ImageHeader(path, _make_grid(path, shape, affine), tuple(warnings))


def read_header(path: Path) -> ImageHeader:
    """The file's grid without reading its voxels."""
    if _is_nifti(path):
        return _nifti_header(path)[1]
    return _nrrd_header(path)


def read_image(path: Path) -> tuple[npt.NDArray[Any], ImageHeader]:
    """Voxel array (on-disk order, shape == grid.shape) and header."""
    if _is_nifti(path):
        img, header = _nifti_header(path)
        try:
            data = np.asanyarray(img.dataobj)
        except (nib.filebasedimages.ImageFileError, *_READ_ERRORS) as exc:
            raise _unreadable(path, exc) from None
    else:
        header = _nrrd_header(path)
        try:
            data, _ = nrrd.read(str(path))
        except (nrrd.NRRDError, *_READ_ERRORS) as exc:
            raise _unreadable(path, exc) from None
    data = np.asarray(data).reshape(header.grid.shape)
    return data, header
