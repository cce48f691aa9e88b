"""The content-addressed anatomy store: streamed uploads checked, decoded, kept once on disk.

An upload is a header (grid, affine, structures, encoding, content hash) and raw bytes in
numbered chunks (see proto/ectplan/v1/anatomy.proto). The bytes go to a temporary file while
their sha256 is computed, so a 512^3 label map never sits in memory twice; then they are
decoded into an ``Anatomy`` once to prove they are usable (labels known, target present), and
stored as they came (``data.bin`` + ``header.json``), under the anatomy id
``sha256(canonical header JSON)``. Storing the raw bytes keeps uploads fast (no recompression)
and lets anyone re-derive the id. Loading decodes again; a small LRU keeps recent anatomies.

Nothing here stores or logs a patient identifier: an anatomy is named by its hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.errors import AnatomyError, GridError, MissingTargetError
from optimizer.anatomy.grid import MAX_VOXELS, VoxelGrid
from optimizer.anatomy.kinds import Role, structure_kinds
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.tissue.table import load_tissue_table
from services.front.errors import (
    FrontError,
    Violation,
    exhausted,
    invalid,
    invalid_many,
    not_found,
)
from services.front.gen.ectplan.v1 import anatomy_pb2

UPLOAD_FORMAT = "ectplan.anatomy-upload/1"
ANATOMY_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
STRUCTURE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+ -]{0,127}$")
SHA256_PATTERN = ANATOMY_ID_PATTERN
HEADER_FILE = "header.json"
DATA_FILE = "data.bin"
SUMMARY_FILE = "summary.json"

ENCODING_NAMES = {
    anatomy_pb2.LABEL_ENCODING_LABEL_MAP_UINT8: "label_map_uint8",
    anatomy_pb2.LABEL_ENCODING_LABEL_MAP_UINT16: "label_map_uint16",
    anatomy_pb2.LABEL_ENCODING_PACKED_MASKS: "packed_masks",
}
_LABEL_DTYPES: dict[str, np.dtype[Any]] = {
    "label_map_uint8": np.dtype("<u1"),
    "label_map_uint16": np.dtype("<u2"),
}


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold. The voxel cap is the project-wide MAX_VOXELS (512^3)."""

    max_header_bytes: int = 64 * 1024
    max_structures: int = 64
    max_voxels: int = MAX_VOXELS
    # 512^3 voxels x 64 packed structures would be 1 GiB; a label map of 512^3 uint16 256 MiB.
    max_content_bytes: int = 1 << 30


@dataclass(frozen=True)
class StructureSpec:
    name: str
    role: str
    tissue: str
    kind: str
    label: int
    modelled: bool

    def canonical(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "tissue": self.tissue,
            "kind": self.kind,
            "label": self.label,
            "modelled": self.modelled,
        }


@dataclass(frozen=True)
class HeaderSpec:
    """A validated upload header."""

    shape: tuple[int, int, int]
    affine: tuple[float, ...]
    encoding: str
    structures: tuple[StructureSpec, ...]
    content_sha256: str
    content_length: int

    @property
    def voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def canonical(self) -> dict[str, object]:
        return {
            "format": UPLOAD_FORMAT,
            "shape": list(self.shape),
            "affine": list(self.affine),
            "encoding": self.encoding,
            "structures": [s.canonical() for s in self.structures],
            "content_sha256": self.content_sha256,
            "content_length": self.content_length,
        }

    @classmethod
    def from_canonical(cls, data: dict[str, object]) -> HeaderSpec:
        structures = data["structures"]
        assert isinstance(structures, list)
        return cls(
            shape=tuple(int(n) for n in data["shape"]),  # type: ignore[arg-type,attr-defined]
            affine=tuple(float(v) for v in data["affine"]),  # type: ignore[attr-defined]
            encoding=str(data["encoding"]),
            structures=tuple(StructureSpec(**s) for s in structures),
            content_sha256=str(data["content_sha256"]),
            content_length=int(data["content_length"]),  # type: ignore[call-overload]
        )


def expected_length(shape: Sequence[int], encoding: str, structures: int) -> int:
    voxels = math.prod(shape)
    if encoding in _LABEL_DTYPES:
        return voxels * _LABEL_DTYPES[encoding].itemsize
    return structures * ((voxels + 7) // 8)


def anatomy_id_for(spec: HeaderSpec) -> str:
    """sha256 of the canonical header JSON (which includes the bytes' sha256)."""
    text = json.dumps(spec.canonical(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def validate_header(header: anatomy_pb2.AnatomyHeader, limits: UploadLimits) -> HeaderSpec:
    """Check every field, reporting all problems at once as field violations."""
    size = header.ByteSize()
    if size > limits.max_header_bytes:
        raise exhausted(
            "header",
            f"the upload header is {size} bytes, over the limit of {limits.max_header_bytes}; "
            "send structure names and tables only, voxel data go in chunks",
        )
    bad: list[Violation] = []
    shape = tuple(int(n) for n in header.shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        bad.append(Violation("header.shape", f"need three positive sizes (i, j, k), got {shape}"))
    elif math.prod(shape) > limits.max_voxels:
        raise exhausted(
            "header.shape",
            f"grid {shape} has {math.prod(shape)} voxels, over the limit of {limits.max_voxels} "
            "(512^3); crop to the pelvis or resample",
        )
    affine = tuple(float(v) for v in header.affine)
    if len(affine) != 16:
        bad.append(
            Violation("header.affine", f"need 16 numbers (4x4, row-major), got {len(affine)}")
        )
    elif not all(math.isfinite(v) for v in affine):
        bad.append(Violation("header.affine", "holds NaN or infinite values"))
    elif len(shape) == 3 and all(n >= 1 for n in shape):
        try:
            VoxelGrid((shape[0], shape[1], shape[2]), np.array(affine).reshape(4, 4))
        except GridError as exc:
            bad.append(Violation("header.affine", str(exc)))
    encoding = ENCODING_NAMES.get(header.encoding)
    if encoding is None:
        bad.append(
            Violation("header.encoding", "choose LABEL_MAP_UINT8, LABEL_MAP_UINT16 or PACKED_MASKS")
        )
    structures = _validate_structures(header.structures, encoding, limits, bad)
    sha = header.content_sha256
    if not SHA256_PATTERN.match(sha):
        bad.append(
            Violation(
                "header.content_sha256",
                "need 64 lowercase hex characters (sha256 of all chunk bytes)",
            )
        )
    if encoding is not None and len(shape) == 3 and structures is not None:
        want = expected_length(shape, encoding, len(structures))
        if header.content_length != want:
            bad.append(
                Violation(
                    "header.content_length",
                    f"{header.content_length} bytes do not match shape {shape} with {encoding} "
                    f"({want} bytes expected)",
                )
            )
        elif want > limits.max_content_bytes:
            raise exhausted(
                "header.content_length",
                f"{want} bytes is over the upload limit of {limits.max_content_bytes}",
            )
    if bad:
        raise invalid_many(bad, "malformed anatomy header")
    assert encoding is not None and structures is not None
    return HeaderSpec(
        shape=(shape[0], shape[1], shape[2]),
        affine=affine,
        encoding=encoding,
        structures=tuple(structures),
        content_sha256=sha,
        content_length=int(header.content_length),
    )


def _validate_structures(
    given: Sequence[anatomy_pb2.StructureInfo],
    encoding: str | None,
    limits: UploadLimits,
    bad: list[Violation],
) -> list[StructureSpec] | None:
    if not given:
        bad.append(Violation("header.structures", "list at least one structure (a target)"))
        return None
    if len(given) > limits.max_structures:
        raise exhausted(
            "header.structures",
            f"{len(given)} structures, over the limit of {limits.max_structures}",
        )
    roles = {r.value for r in Role}
    tissues = set(load_tissue_table().names())
    kinds = structure_kinds()
    max_label = 255 if encoding == "label_map_uint8" else 65535
    out: list[StructureSpec] = []
    seen_names: set[str] = set()
    seen_labels: set[int] = set()
    for i, s in enumerate(given):
        where = f"header.structures[{i}]"
        if not STRUCTURE_NAME_PATTERN.match(s.name):
            bad.append(
                Violation(
                    f"{where}.name",
                    f"{s.name[:40]!r} is not a structure name "
                    "(1-128 letters, digits, '_', '.', '+', '-', spaces)",
                )
            )
        elif s.name in seen_names:
            bad.append(Violation(f"{where}.name", f"{s.name!r} is repeated; names are unique"))
        seen_names.add(s.name)
        if s.role and s.role not in roles:
            bad.append(
                Violation(
                    f"{where}.role",
                    f"unknown role {s.role[:40]!r}; use one of {', '.join(sorted(roles))}",
                )
            )
        if s.tissue and s.tissue not in tissues:
            bad.append(
                Violation(
                    f"{where}.tissue",
                    f"unknown tissue {s.tissue[:40]!r}; use one of {', '.join(sorted(tissues))}",
                )
            )
        if s.kind and s.kind not in kinds:
            bad.append(
                Violation(
                    f"{where}.kind", f"unknown kind {s.kind[:40]!r}; use one of {', '.join(kinds)}"
                )
            )
        if encoding in _LABEL_DTYPES:
            if not 1 <= s.label <= max_label:
                bad.append(
                    Violation(
                        f"{where}.label", f"label {s.label} outside 1..{max_label} for {encoding}"
                    )
                )
            elif s.label in seen_labels:
                bad.append(Violation(f"{where}.label", f"label {s.label} is used twice"))
            seen_labels.add(s.label)
        out.append(StructureSpec(s.name, s.role, s.tissue, s.kind, int(s.label), bool(s.modelled)))
    return out


# ---- decoding -------------------------------------------------------------------------------


def decode_masks(spec: HeaderSpec, data: BinaryIO) -> list[npt.NDArray[np.bool_]]:
    """Per structure, its boolean mask on the header's grid."""
    if spec.encoding in _LABEL_DTYPES:
        dtype = _LABEL_DTYPES[spec.encoding]
        labels = np.frombuffer(data.read(), dtype=dtype).reshape(spec.shape)
        counts = np.bincount(labels.ravel(), minlength=int(labels.max(initial=0)) + 1)
        known = {s.label for s in spec.structures}
        stray = [int(v) for v in np.flatnonzero(counts) if v != 0 and v not in known]
        if stray:
            shown = ", ".join(str(v) for v in stray[:10])
            raise invalid(
                "header.structures",
                f"the label map holds values {shown} that no structure's label names; "
                "add them to the structure table or set those voxels to 0",
            )
        return [labels == s.label for s in spec.structures]
    per = (spec.voxels + 7) // 8
    masks = []
    for _ in spec.structures:
        packed = np.frombuffer(data.read(per), dtype=np.uint8)
        bits = np.unpackbits(packed, count=spec.voxels, bitorder="little")
        masks.append(bits.reshape(spec.shape).astype(bool))
    return masks


def build_anatomy(spec: HeaderSpec, anatomy_id: str, data: BinaryIO) -> Anatomy:
    """Decode and check the anatomy is plannable (known kinds, a non-empty target)."""
    grid = VoxelGrid(spec.shape, np.array(spec.affine).reshape(4, 4))
    masks = decode_masks(spec, data)
    structures: list[Structure] = []
    for i, (s, mask) in enumerate(zip(spec.structures, masks, strict=True)):
        try:
            structure, _ = Structure.from_name(
                s.name,
                mask,
                role=s.role or None,
                tissue=s.tissue or None,
                kind=s.kind or None,
                modelled=s.modelled,
                source="upload",
            )
        except AnatomyError as exc:
            raise invalid(f"header.structures[{i}]", str(exc)) from None
        structures.append(structure)
    anatomy = Anatomy(grid, structures, case_id=f"anatomy-{anatomy_id[:12]}", source="upload")
    try:
        anatomy.target_mask()
    except MissingTargetError as exc:
        raise invalid("header.structures", str(exc).replace(anatomy.case_id, "upload")) from None
    return anatomy


def summary_of(anatomy_id: str, spec: HeaderSpec, anatomy: Anatomy) -> anatomy_pb2.AnatomySummary:
    return anatomy_pb2.AnatomySummary(
        anatomy_id=anatomy_id,
        shape=list(spec.shape),
        affine=list(spec.affine),
        spacing_mm=[float(v) for v in anatomy.grid.spacing_mm],
        structures=[
            anatomy_pb2.StructureSummary(
                name=s.name,
                role=s.role.value,
                tissue=s.tissue,
                kind=s.kind.name,
                volume_ml=s.voxel_count() * anatomy.grid.voxel_volume_ml,
            )
            for s in anatomy.structures
        ],
        content_length=spec.content_length,
    )


# ---- the store ------------------------------------------------------------------------------


class UploadSession:
    """One upload in progress: chunks appended in order to a temporary file, hashed on the way."""

    def __init__(self, store: AnatomyStore, spec: HeaderSpec) -> None:
        self.store = store
        self.spec = spec
        self.anatomy_id = anatomy_id_for(spec)
        self._hash = hashlib.sha256()
        self._received = 0
        self._next_sequence = 0
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=store.tmp_dir)
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def add_chunk(self, sequence: int, data: bytes) -> None:
        if sequence != self._next_sequence:
            raise invalid(
                "chunk.sequence",
                f"expected chunk {self._next_sequence}, got "
                f"{sequence}; send chunks in order, numbered from 0",
            )
        if not data:
            raise invalid("chunk.data", f"chunk {sequence} is empty")
        if self._received + len(data) > self.spec.content_length:
            raise invalid(
                "chunk.data",
                f"more bytes than the header's content_length "
                f"{self.spec.content_length}; shape and bytes do not match",
            )
        self._next_sequence += 1
        self._received += len(data)
        self._hash.update(data)
        self._file.write(data)

    def finish(self) -> tuple[anatomy_pb2.AnatomySummary, bool]:
        """Verify, decode, store. Returns (summary, already stored)."""
        self._file.close()
        try:
            if self._received != self.spec.content_length:
                raise invalid(
                    "chunk.data",
                    f"received {self._received} bytes, the header "
                    f"announced {self.spec.content_length}; the upload is incomplete",
                )
            digest = self._hash.hexdigest()
            if digest != self.spec.content_sha256:
                raise invalid(
                    "header.content_sha256",
                    f"the bytes hash to {digest}, not the "
                    "announced content_sha256; the data were corrupted or mislabeled",
                )
            if self.store.has(self.anatomy_id):
                return self.store.summary(self.anatomy_id), True
            with self._path.open("rb") as fh:
                anatomy = build_anatomy(self.spec, self.anatomy_id, fh)
            summary = summary_of(self.anatomy_id, self.spec, anatomy)
            stored = self.store.commit(self.anatomy_id, self.spec, self._path, summary, anatomy)
            return summary, not stored
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class AnatomyStore:
    """Anatomies on disk under ``root/<id>/``; thread-safe; recent ones kept decoded."""

    def __init__(
        self, root: str | Path, *, limits: UploadLimits | None = None, keep_loaded: int = 4
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.root / ".tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        self.limits = limits or UploadLimits()
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Anatomy] = OrderedDict()
        self._keep_loaded = keep_loaded

    def _dir(self, anatomy_id: str) -> Path:
        if not ANATOMY_ID_PATTERN.match(anatomy_id):
            raise invalid(
                "anatomy_id", "an anatomy id is 64 lowercase hex characters (from UploadAnatomy)"
            )
        return self.root / anatomy_id

    def has(self, anatomy_id: str) -> bool:
        return (self._dir(anatomy_id) / SUMMARY_FILE).is_file()

    def begin(self, header: anatomy_pb2.AnatomyHeader) -> UploadSession:
        return UploadSession(self, validate_header(header, self.limits))

    def summary(self, anatomy_id: str) -> anatomy_pb2.AnatomySummary:
        path = self._dir(anatomy_id) / SUMMARY_FILE
        if not path.is_file():
            raise _anatomy_not_found(anatomy_id)
        msg = anatomy_pb2.AnatomySummary()
        msg.ParseFromString(path.read_bytes())
        return msg

    def commit(
        self,
        anatomy_id: str,
        spec: HeaderSpec,
        data: Path,
        summary: anatomy_pb2.AnatomySummary,
        anatomy: Anatomy,
    ) -> bool:
        """Move a verified upload into place; False when another upload stored it first."""
        staging = Path(tempfile.mkdtemp(prefix="commit-", dir=self.tmp_dir))
        try:
            shutil.move(str(data), staging / DATA_FILE)
            (staging / HEADER_FILE).write_text(json.dumps(spec.canonical(), indent=1))
            (staging / SUMMARY_FILE).write_bytes(summary.SerializeToString())
            try:
                os.rename(staging, self.root / anatomy_id)
            except OSError:
                if self.has(anatomy_id):
                    return False
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._remember(anatomy_id, anatomy)
        return True

    def load(self, anatomy_id: str) -> Anatomy:
        with self._lock:
            hit = self._loaded.get(anatomy_id)
            if hit is not None:
                self._loaded.move_to_end(anatomy_id)
                return hit
        folder = self._dir(anatomy_id)
        if not (folder / SUMMARY_FILE).is_file():
            raise _anatomy_not_found(anatomy_id)
        spec = HeaderSpec.from_canonical(json.loads((folder / HEADER_FILE).read_text()))
        with (folder / DATA_FILE).open("rb") as fh:
            anatomy = build_anatomy(spec, anatomy_id, fh)
        self._remember(anatomy_id, anatomy)
        return anatomy

    def _remember(self, anatomy_id: str, anatomy: Anatomy) -> None:
        with self._lock:
            self._loaded[anatomy_id] = anatomy
            self._loaded.move_to_end(anatomy_id)
            while len(self._loaded) > self._keep_loaded:
                self._loaded.popitem(last=False)


def _anatomy_not_found(anatomy_id: str) -> FrontError:
    return not_found("anatomy", anatomy_id, "upload it first with UploadAnatomy")


# ---- encoding (the client side) -------------------------------------------------------------


def encode_anatomy(
    anatomy: Anatomy, encoding: str = "auto"
) -> tuple[anatomy_pb2.AnatomyHeader, bytes]:
    """(header, raw bytes) of ``anatomy`` for UploadAnatomy.

    "auto" takes a uint8 label map when no two structures overlap (and there are < 256), else
    packed masks (one bit per voxel per structure).
    """
    structures = anatomy.structures
    if encoding == "auto":
        counts = np.zeros(anatomy.grid.shape, dtype=np.uint8)
        for s in structures:
            counts += s.mask
        overlap = bool((counts > 1).any())
        encoding = "packed_masks" if overlap or len(structures) > 255 else "label_map_uint8"
    codes = {name: code for code, name in ENCODING_NAMES.items()}
    if encoding not in codes:
        raise ValueError(f"unknown encoding {encoding!r}; use auto, {', '.join(codes)}")
    if encoding in _LABEL_DTYPES:
        labels = np.zeros(anatomy.grid.shape, dtype=_LABEL_DTYPES[encoding])
        for i, s in enumerate(structures, start=1):
            if (labels[s.mask] != 0).any():
                raise ValueError(f"structure {s.name!r} overlaps another; use packed_masks")
            labels[s.mask] = i
        data = labels.tobytes(order="C")
    else:
        data = b"".join(
            np.packbits(s.mask.ravel(order="C"), bitorder="little").tobytes() for s in structures
        )
    header = anatomy_pb2.AnatomyHeader(
        shape=list(anatomy.grid.shape),
        affine=[float(v) for v in np.asarray(anatomy.grid.affine).ravel()],
        encoding=codes[encoding],
        structures=[
            anatomy_pb2.StructureInfo(
                name=s.name,
                role=s.role.value,
                tissue=s.tissue,
                kind=s.kind.name,
                label=i if encoding in _LABEL_DTYPES else 0,
                modelled=s.modelled,
            )
            for i, s in enumerate(structures, start=1)
        ],
        content_sha256=hashlib.sha256(data).hexdigest(),
        content_length=len(data),
    )
    return header, data


def header_anatomy_id(header: anatomy_pb2.AnatomyHeader) -> str:
    """The id the server will give this upload (clients ask GetAnatomy before uploading)."""
    return anatomy_id_for(validate_header(header, UploadLimits()))
