"""A NumPy .npz anatomy: exact, quick to load, used for caching and round trips.

Keys (docs/anatomy_input.md):
- ``affine``: float64 (4, 4), voxel index -> RAS+ mm;
- ``mask__<name>``: one bool (or integer, non-zero = inside) 3-D array per structure;
- ``image`` (optional): the scan on the same grid;
- ``meta`` (optional): a JSON string with case_id, source, notes and, per structure, kind,
  role, tissue, modelled and source. Without it names decide kinds as for mask files.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.anatomy.errors import GridError, LabelError, UnreadableFileError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.readers._assemble import assemble
from optimizer.anatomy.structures import Anatomy, Structure

MASK_PREFIX = "mask__"
NPZ_FORMAT = "ectplan-anatomy"
NPZ_VERSION = 1


def save_anatomy_npz(anatomy: Anatomy, path: str | Path) -> Path:
    """Write ``anatomy`` so that read_npz gives it back exactly (compressed)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    meta = {
        "format": NPZ_FORMAT,
        "version": NPZ_VERSION,
        "case_id": anatomy.case_id,
        "source": anatomy.source,
        "notes": list(anatomy.notes),
        "structures": [
            {
                "name": s.name,
                "kind": s.kind.name,
                "role": s.role.value,
                "tissue": s.tissue,
                "modelled": s.modelled,
                "source": s.source,
            }
            for s in anatomy.structures
        ],
    }
    arrays: dict[str, Any] = {
        "affine": np.asarray(anatomy.grid.affine, dtype=np.float64),
        "meta": np.asarray(json.dumps(meta)),
    }
    for s in anatomy.structures:
        arrays[MASK_PREFIX + s.name] = s.mask
    if anatomy.image is not None:
        arrays["image"] = anatomy.image
    np.savez_compressed(path, **arrays)
    return path


def _shape3(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise UnreadableFileError(f"{path}: masks must be 3-D, got shape {shape}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _meta(raw: Any, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(str(raw[()]))
    except (json.JSONDecodeError, TypeError, ValueError, IndexError) as exc:
        raise UnreadableFileError(f"{path}: 'meta' is not a JSON string ({exc})") from None
    if not isinstance(meta, dict):
        raise UnreadableFileError(f"{path}: 'meta' must be a JSON object")
    return meta


def read_npz(path: str | Path, *, case_id: str | None = None) -> Anatomy:
    """Read an .npz written by save_anatomy_npz (or by hand in the same layout)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UnreadableFileError(
            f"{path}: cannot read as a NumPy .npz ({type(exc).__name__}: {exc})"
        ) from None
    if "affine" not in contents:
        raise UnreadableFileError(f"{path}: no 'affine' array; see docs/anatomy_input.md")
    masks = {k[len(MASK_PREFIX) :]: v for k, v in contents.items() if k.startswith(MASK_PREFIX)}
    if not masks:
        raise UnreadableFileError(f"{path}: no '{MASK_PREFIX}<name>' arrays")
    first = next(iter(masks.values()))
    try:
        grid = VoxelGrid(_shape3(first.shape, path), contents["affine"])
    except GridError as exc:
        raise GridError(f"{path}: {exc}") from None
    meta = _meta(contents["meta"], path) if "meta" in contents else {}
    described = {str(d.get("name")): d for d in meta.get("structures", [])}
    order = [n for n in described if n in masks] + [n for n in masks if n not in described]
    structures: list[Structure] = []
    for name in order:
        mask = masks[name]
        if mask.shape != grid.shape:
            raise LabelError(
                f"{path}: mask {name!r} has shape {mask.shape}, others {grid.shape}; all masks "
                "must share one grid"
            )
        d = described.get(name, {})
        structure, _ = Structure.from_name(
            name,
            mask != 0,
            role=d.get("role"),
            tissue=d.get("tissue"),
            kind=d.get("kind"),
            modelled=bool(d.get("modelled", False)),
            source=str(d.get("source", path.name)),
        )
        structures.append(structure)
    image = contents.get("image")
    if image is not None and image.shape != grid.shape:
        raise LabelError(f"{path}: 'image' has shape {image.shape}, the masks {grid.shape}")
    return assemble(
        grid,
        structures,
        where=str(path),
        case_id=case_id or str(meta.get("case_id") or path.stem),
        source=str(meta.get("source") or path),
        image=None if image is None else np.asarray(image, dtype=np.float32),
        notes=[str(n) for n in meta.get("notes", [])],
    )
