"""Pair solutions shared between islands on one host through a folder, as soon as solved.

Why: islands (``services.planner.island``) breed their plans from each other's trials, so an
island often needs a pair geometry the other just solved. Through Ray's object store
(``services.planner.unit_sharing``) a solution reaches the other island only after the call
that solved it ends and the driver hands its reference on with that island's next call: 4-8
trials late, when the child that needed it has mostly been evaluated already. Measured on
prostatex-0000 (ECT, 1200 trials, 2 islands on the 2-core machine): 0.37-0.54 solves per trial
that way (median 0.44; one island: 0.39), 0.30-0.44 through a folder (median 0.39), and Ray's
raylet spent ~4 % of a core storing the bundles (under 1 % without them).

How: when every Ray node is the driver's host, the driver creates a private folder (mode 0700;
in /dev/shm when it has room, so nothing reaches a disk) and removes it when exploration ends.
An island writes each pair it solved there as one file named by its geometry hash (written to
a temporary name and renamed into place, so a reader never sees half a file), and before it
evaluates a plan it reads the pairs its cache lacks that another island wrote. Each island
keeps at most its share of the byte budget in the folder, removing its oldest files first; each
file names its writer's slot, so that a replacement island (its worker died) takes over what its
predecessor wrote, and the folder stays within the budget however many workers die. A
file that is missing or unreadable only means that pair is solved again: sharing saves time,
it never decides a result (a shared solution is the one the writer computed for the same
geometry, exactly what the reader would have computed).

The files are raw arrays behind a small JSON header, not pickles: reading one runs no code.
A worker that cannot see the folder shares in bundles instead (``EvaluatorWorker``), and a
folder that cannot be made leaves the islands to bundles (``island_exploration.unit_folder``):
sharing never stops a search.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.evaluate.evaluator import CachedUnit, PlanEvaluator
from optimizer.field.solve import UnitSolution
from services.planner.host_files import Identity, identity, sees

_MAGIC = b"ECTUNIT1"
_LENGTH = struct.Struct("<I")
_ALIGN = 64  # the arrays start on a 64-byte boundary: aligned views, fast to read
_DTYPES: dict[str, np.dtype[Any]] = {"potential": np.dtype("<f8"), "field": np.dtype("<f4")}
_KEY = re.compile(r"[0-9a-f]{64}")  # Plan.pair_geometry_hash: a file name, never a path
_PREFIX = "ectplan-units-"
# /dev/shm is used when it has this many times the budget free (a container's is often 64 MB).
_SHM_HEADROOM = 4


class UnitFolderUnreachableError(RuntimeError):
    """An actor cannot see the driver's unit folder (it runs on another host)."""


@dataclass(frozen=True)
class UnitFolderLink:
    """The folder of one search: its path, its identity (device and inode, so that another
    folder at the same path on another host is not taken for it) and each island's share of
    the byte budget."""

    path: str
    identity: Identity
    max_bytes_each: int

    @classmethod
    def create(cls, max_bytes: int, islands: int, root: str | None = None) -> UnitFolderLink:
        """A new private folder for ``islands`` islands sharing ``max_bytes`` in all (OSError
        when none can be made). Its name carries this process's pid, so that the folders of a
        driver that was killed before it could remove them are removed by the next one."""
        root = root or _fast_root(max_bytes) or tempfile.gettempdir()
        _remove_stale(root)
        path = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root)
        return cls(path, identity(path), max(1, max_bytes // max(1, islands)))

    def remove(self) -> None:
        """Delete the folder and what is in it (an island still writing then fails quietly)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_stale(root: str) -> None:
    """Remove the unit folders in ``root`` of drivers that are gone (killed: their pid is no
    process now). Another user's folder cannot be removed (mode 0700) and is left alone."""
    try:
        names = [n for n in os.listdir(root) if n.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        pid_text = name[len(_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _process_exists(int(pid_text)):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _fast_root(max_bytes: int) -> str | None:
    """/dev/shm when it is writable and has room for the budget several times over, else the
    system's temporary folder (None)."""
    shm = "/dev/shm"
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and stat.f_bavail * stat.f_frsize >= _SHM_HEADROOM * max_bytes:
        return shm
    return None


def write_unit(path: Path, key: str, cached: CachedUnit, *, writer: int, order: int) -> int:
    """Write one unit solution (atomically: a temporary name, then renamed), the ``order``-th
    file of island slot ``writer``; its bytes."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not a pair geometry hash")
    s = cached.solution
    potential = np.ascontiguousarray(s.potential_V, dtype=_DTYPES["potential"])
    field = np.ascontiguousarray(s.field_V_per_cm, dtype=_DTYPES["field"])
    header = json.dumps(
        {
            "key": key,
            "writer": writer,
            "order": order,
            "anode_geometry": cached.anode_geometry,
            "anode_current_A": s.anode_current_A,
            "cathode_current_A": s.cathode_current_A,
            "iterations": s.iterations,
            "relative_residual": s.relative_residual,
            "backend": s.backend,
            "solution_key": s.key,
            "potential": [potential.dtype.str, list(potential.shape)],
            "field": [field.dtype.str, list(field.shape)],
        }
    ).encode()
    header += b" " * (-(len(_MAGIC) + _LENGTH.size + len(header)) % _ALIGN)
    temporary = path / f".{key}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            f.write(_MAGIC + _LENGTH.pack(len(header)) + header)
            f.write(potential.data)
            f.write(field.data)
        os.replace(temporary, path / key)
    except BaseException:  # a full disk, say: no half-written file stays behind
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return len(_MAGIC) + _LENGTH.size + len(header) + potential.nbytes + field.nbytes


def _header(data: bytes | bytearray, file: Path) -> tuple[dict[str, Any], int]:
    """A unit file's JSON header and where its arrays start (ValueError: not a unit file)."""
    start = len(_MAGIC) + _LENGTH.size
    if data[: len(_MAGIC)] != _MAGIC or len(data) < start:
        raise ValueError(f"{file} is not a unit solution")
    (length,) = _LENGTH.unpack_from(data, len(_MAGIC))
    header = json.loads(data[start : start + length])
    if not isinstance(header, dict):
        raise ValueError(f"{file} is not a unit solution")
    return header, start + length


def writer_of(file: Path) -> tuple[int, int] | None:
    """The island slot that wrote a unit file and the file's place in its writing order, from
    its header alone (None: not a unit file, or one without them)."""
    try:
        with open(file, "rb") as f:
            head = f.read(len(_MAGIC) + _LENGTH.size)
            if len(head) < len(_MAGIC) + _LENGTH.size:
                return None
            (length,) = _LENGTH.unpack_from(head, len(_MAGIC))
            header, _ = _header(head + f.read(length), file)
    except (OSError, ValueError, struct.error):
        return None
    writer, order = header.get("writer"), header.get("order")
    if isinstance(writer, int) and isinstance(order, int):
        return writer, order
    return None


def read_unit(file: Path, key: str, grid_shape: tuple[int, ...]) -> CachedUnit:
    """Read one unit solution; ValueError when the file is not one for ``key`` on a grid of
    ``grid_shape`` (OSError when it cannot be read)."""
    data = bytearray(file.read_bytes())  # writable: the arrays below are views of it
    header, offset = _header(data, file)
    if header.get("key") != key:
        raise ValueError(f"{file} does not hold pair {key!r}")
    arrays = []
    for name, dtype in _DTYPES.items():
        dtype_str, shape = header[name]
        if np.dtype(dtype_str) != dtype or tuple(shape) != tuple(grid_shape):
            raise ValueError(
                f"{file}: {name} is {dtype_str} on a {tuple(shape)} grid, not {dtype.str} on "
                f"{tuple(grid_shape)}"
            )
        count = int(np.prod(shape))
        if offset + count * dtype.itemsize > len(data):
            raise ValueError(f"{file} is shorter than its header says")
        arrays.append(np.frombuffer(data, dtype, count, offset).reshape(shape))
        offset += count * dtype.itemsize
    potential, field = arrays
    solution = UnitSolution(
        potential_V=potential,
        field_V_per_cm=field,
        anode_current_A=float(header["anode_current_A"]),
        cathode_current_A=float(header["cathode_current_A"]),
        iterations=int(header["iterations"]),
        relative_residual=float(header["relative_residual"]),
        backend=str(header["backend"]),
        key=str(header["solution_key"]),
    )
    return CachedUnit(solution, str(header["anode_geometry"]))


class UnitFolder:
    """One island's use of the search's unit folder."""

    def __init__(self, link: UnitFolderLink, slot: int) -> None:
        if not sees(link.path, link.identity):
            raise UnitFolderUnreachableError(
                f"worker {slot} cannot see the driver's unit folder {link.path} (it runs on "
                "another host than the driver); islands share pair solutions through a folder "
                "only where every worker runs on the driver's host"
            )
        self.link = link
        self.path = Path(link.path)
        self.slot = slot
        self.own: OrderedDict[str, int] = OrderedDict()  # files this island wrote: bytes
        self.own_bytes = 0
        self.write_errors = 0
        self.written = 0  # files this slot's islands wrote: the next one's order
        self._take_over()

    def _take_over(self) -> None:
        """Count as this island's the files an earlier island of its slot wrote (a worker that
        died, this one its replacement), oldest first, so that they share its budget."""
        found: list[tuple[int, str, int]] = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path):
                written = writer_of(Path(entry.path)) if _KEY.fullmatch(entry.name) else None
                if written is not None and written[0] == self.slot:
                    with contextlib.suppress(OSError):
                        found.append((written[1], entry.name, entry.stat().st_size))
        for order, key, nbytes in sorted(found):
            self.own[key] = nbytes
            self.own_bytes += nbytes
            self.written = order + 1
        self._trim()

    def take(self, evaluator: PlanEvaluator, keys: Iterable[str]) -> int:
        """Adopt the pairs of ``keys`` the evaluator's cache lacks that another island wrote;
        returns how many."""
        shape = evaluator.anatomy.grid.shape
        taken = 0
        for key in keys:
            if evaluator.cached_unit(key) is not None:
                continue
            if not _KEY.fullmatch(key):
                continue
            try:
                cached = read_unit(self.path / key, key, shape)
            except (OSError, ValueError, KeyError, TypeError):  # not there, or unreadable
                continue
            if evaluator.adopt_unit(key, cached):
                taken += 1
        return taken

    def publish(self, evaluator: PlanEvaluator, keys: Iterable[str]) -> None:
        """Write the pairs of ``keys`` this island solved (still in its cache), then remove its
        oldest files beyond its share of the budget. A failed write (the folder removed at the
        end of exploration, a full disk) only leaves that pair unshared."""
        for key in keys:
            cached = evaluator.cached_unit(key)
            if cached is None or key in self.own:
                continue
            try:
                nbytes = write_unit(self.path, key, cached, writer=self.slot, order=self.written)
            except (OSError, ValueError):
                self.write_errors += 1
                continue
            self.own[key] = nbytes
            self.own_bytes += nbytes
            self.written += 1
        self._trim()

    def _trim(self) -> None:
        """Remove this island's oldest files beyond its share of the budget."""
        while self.own_bytes > self.link.max_bytes_each and self.own:
            old, nbytes = self.own.popitem(last=False)
            self.own_bytes -= nbytes
            with contextlib.suppress(OSError):  # already gone: the end of exploration
                os.unlink(self.path / old)
