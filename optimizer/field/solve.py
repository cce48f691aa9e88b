"""Public API of the field solver: one pulsed needle pair on a conductivity map.

div(sigma grad phi) = 0 on a uniform isotropic grid, anode voxels at +V, cathode voxels at 0,
insulating outer boundary, other needles ignored (``operator``), sub-voxel needles corrected
(``wells``), solved by multigrid-preconditioned CG (``multigrid``, ``pcg``) on the CPU (Numba)
or a GPU (numba.cuda), chosen by ``backend``.

Outputs. ``potential_V`` on the grid (needle voxels at their potential). ``field_V_per_cm``:
|E| at each voxel centre, each component the mean of the field on the voxel's two faces along
that axis, where a face's field is its current density over its conductivity; away from the
needles that is the central difference (phi[i-1] - phi[i+1]) / 2h, at the insulating boundary
the outer face has zero field (half the one-sided difference), and on a face to a needle it
includes the well factor (the face-averaged field of the true thin needle rather than the
lattice's too-weak one). A needle voxel gets the largest face field on its faces to tissue
(the field at the needle surface, averaged over a face: a lower bound), or, when it has no
face to tissue (inside a thick needle), the largest of its electrode. Currents in A come from
the fluxes through the needle faces; anode and cathode currents agree up to the residual.

With constant conductivity the solution is linear in the voltage: ``FieldSolver.solve_unit``
returns a ``UnitSolution`` at 1 V whose ``at(voltage)`` scales it for free, and ``pair_key``
names a pair geometry for caching. Many pairs: ``solve_pairs`` runs them one after the other;
every kernel is already parallel over the grid (each thread a block of planes), so running
pairs side by side would only split the same cores and memory bandwidth (bench/solver.py
measures it).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from optimizer.field import cpu_kernels as ck
from optimizer.field.backend import make_engine, resolve_backend
from optimizer.field.errors import SolverError
from optimizer.field.multigrid import build_hierarchy
from optimizer.field.operator import (
    Faces,
    PairOperator,
    build_pair_operator,
    check_conductivity,
    check_needle_indices,
)
from optimizer.field.pcg import pcg
from optimizer.field.wells import WellFaces, no_well_faces, well_faces

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_TOLERANCE = 1e-6
DEFAULT_MAX_ITERATIONS = 200
# Needles whose well faces a solver remembers (a few kB each).
WELL_CACHE_SIZE = 1024
# Anode and cathode currents must agree this closely before a solve is accepted.
CURRENT_RTOL = 2e-4
_V_PER_M_TO_V_PER_CM = 0.01


class NeedleLike(Protocol):
    """Anything with voxel indices and a radius (e.g. ``electrodes.voxelise.NeedleVoxels``)."""

    @property
    def indices(self) -> npt.NDArray[np.integer]: ...

    @property
    def radius_mm(self) -> float: ...


@dataclass(frozen=True, eq=False)
class Electrode:
    """One needle as the solver sees it: its voxels (N, 3), radius, and optional axis.

    ``direction`` is the needle axis in voxel-index space; when None the principal axis of
    the voxels is used (it only picks the cross-section plane of the well correction).
    ``well_correction`` False treats the voxels as the conductor itself (a plate or a large
    cylinder electrode, as in the concentric-cylinder check), with no sub-voxel correction.
    """

    indices: IntArray
    radius_mm: float
    direction: F64 | None = None
    label: str = ""
    well_correction: bool = True

    @classmethod
    def of(cls, needle: Electrode | NeedleLike, label: str = "") -> Electrode:
        if isinstance(needle, Electrode):
            return needle
        return cls(
            indices=np.asarray(needle.indices, dtype=np.int64),
            radius_mm=float(needle.radius_mm),
            direction=getattr(needle, "direction", None),
            label=label or str(getattr(needle, "needle_label", "")),
        )


@dataclass(frozen=True, eq=False)
class PairSolution:
    """The field of one pulsed pair at ``voltage_V``."""

    potential_V: F64
    field_V_per_cm: F32
    voltage_V: float
    anode_current_A: float
    cathode_current_A: float
    iterations: int
    relative_residual: float
    backend: str
    picard_iterations: int = 0
    key: str = ""

    @property
    def current_A(self) -> float:
        """Mean of anode and cathode currents."""
        return 0.5 * (self.anode_current_A + self.cathode_current_A)

    @property
    def resistance_ohm(self) -> float:
        return self.voltage_V / self.current_A if self.current_A else float("inf")

    @property
    def current_mismatch(self) -> float:
        """|I_anode - I_cathode| / mean: conservation check (< 1e-3 expected)."""
        mean = abs(self.current_A)
        return abs(self.anode_current_A - self.cathode_current_A) / mean if mean else 0.0


@dataclass(frozen=True, eq=False)
class UnitSolution:
    """A linear (constant-sigma) pair solved at 1 V; ``at`` scales it to any voltage."""

    potential_V: F64
    field_V_per_cm: F32
    anode_current_A: float
    cathode_current_A: float
    iterations: int
    relative_residual: float
    backend: str
    key: str = ""

    def at(self, voltage_V: float) -> PairSolution:
        v = float(voltage_V)
        if not np.isfinite(v):
            raise SolverError(f"voltage must be finite, got {voltage_V!r}")
        return PairSolution(
            potential_V=self.potential_V * v,
            field_V_per_cm=self.field_V_per_cm * np.float32(abs(v)),
            voltage_V=v,
            anode_current_A=self.anode_current_A * v,
            cathode_current_A=self.cathode_current_A * v,
            iterations=self.iterations,
            relative_residual=self.relative_residual,
            backend=self.backend,
            key=self.key,
        )


def conductivity_fingerprint(sigma: npt.ArrayLike, spacing_mm: float) -> str:
    """Hash of a conductivity map and spacing (the part of a cache key shared by all pairs)."""
    arr = np.ascontiguousarray(sigma, dtype=np.float64)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((arr.shape, float(spacing_mm))).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def pair_key(
    fingerprint: str, anode: Electrode | NeedleLike, cathode: Electrode | NeedleLike
) -> str:
    """Cache key of a pair geometry on a conductivity map (from ``conductivity_fingerprint``)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(fingerprint.encode())
    for needle in (Electrode.of(anode), Electrode.of(cathode)):
        idx = np.unique(np.asarray(needle.indices, dtype=np.int64).reshape(-1, 3), axis=0)
        digest.update(idx.tobytes())
        digest.update(repr(round(needle.radius_mm, 9)).encode())
        if needle.direction is not None:
            digest.update(np.round(np.asarray(needle.direction, dtype=np.float64), 9).tobytes())
        digest.update(b"w" if needle.well_correction else b"-")
        digest.update(b"|")
    return digest.hexdigest()


@dataclass
class _Solved:
    potential: F64
    field: F32
    anode_current: float
    cathode_current: float
    iterations: int
    residual: float


class WellFaceCache:
    """Well faces per needle (voxels, radius, axis) on one grid, for the last
    ``WELL_CACHE_SIZE`` needles. A needle takes part in many pairs, and its faces took ~2 ms
    on the 2 mm grid (14 % of a search's evaluation time); they depend on the geometry only,
    so the solvers of one grid's successive conductivity maps (sigma(E)) share them too."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self._faces: OrderedDict[tuple[bytes, float, bytes | None], WellFaces] = OrderedDict()

    def get(
        self, indices: npt.NDArray[np.int64], radius_over_h: float, direction: F64 | None
    ) -> WellFaces:
        axis = None if direction is None else np.asarray(direction, dtype=np.float64).tobytes()
        key = (np.ascontiguousarray(indices, dtype=np.int64).tobytes(), radius_over_h, axis)
        hit = self._faces.get(key)
        if hit is not None:
            self._faces.move_to_end(key)
            return hit
        faces = well_faces(indices, radius_over_h, direction, self.shape)
        self._faces[key] = faces
        if len(self._faces) > WELL_CACHE_SIZE:
            self._faces.popitem(last=False)
        return faces


class FieldSolver:
    """Solves pairs on one conductivity map; the face conductances are computed once."""

    def __init__(
        self,
        sigma: npt.ArrayLike,
        spacing_mm: float,
        *,
        backend: str = "auto",
        tol: float = DEFAULT_TOLERANCE,
        max_iter: int = DEFAULT_MAX_ITERATIONS,
        well_cache: WellFaceCache | None = None,
    ) -> None:
        """``well_cache``: the needles' well faces from another solver of this grid (they
        depend on the geometry only), e.g. the previous conductivity map of a sigma(E) solve."""
        if not (np.isfinite(spacing_mm) and spacing_mm > 0):
            raise SolverError(f"grid spacing must be a positive number of mm, got {spacing_mm!r}")
        if not (0.0 < tol < 1.0):
            raise SolverError(f"tolerance must be in (0, 1), got {tol!r}")
        self.sigma = check_conductivity(sigma)
        self.shape: tuple[int, int, int] = self.sigma.shape
        self.spacing_mm = float(spacing_mm)
        self.backend = resolve_backend(backend)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.faces = Faces.from_sigma(self.sigma, self.spacing_mm * 1e-3)
        self._fingerprint: str | None = None
        if well_cache is None:
            well_cache = WellFaceCache(self.shape)
        elif well_cache.shape != self.shape:
            raise SolverError(
                f"the well-face cache is for a {well_cache.shape} grid, the conductivity map "
                f"is {self.shape}; share a cache only between solvers of one grid"
            )
        self.well_cache = well_cache

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = conductivity_fingerprint(self.sigma, self.spacing_mm)
        return self._fingerprint

    def key(self, anode: Electrode | NeedleLike, cathode: Electrode | NeedleLike) -> str:
        return pair_key(self.fingerprint, anode, cathode)

    def operator(
        self, anode: Electrode | NeedleLike, cathode: Electrode | NeedleLike
    ) -> PairOperator:
        a, c = Electrode.of(anode), Electrode.of(cathode)
        h = self.spacing_mm
        a_idx = check_needle_indices(a.indices, self.shape, "anode")
        c_idx = check_needle_indices(c.indices, self.shape, "cathode")
        for name, needle in (("anode", a), ("cathode", c)):
            if not (np.isfinite(needle.radius_mm) and needle.radius_mm > 0):
                raise SolverError(f"{name} radius must be > 0 mm, got {needle.radius_mm!r}")
        wells = [
            self.well_cache.get(idx, e.radius_mm / h, e.direction)
            if e.well_correction
            else no_well_faces()
            for idx, e in ((a_idx, a), (c_idx, c))
        ]
        return build_pair_operator(self.faces, a_idx, c_idx, wells[0], wells[1])

    def _solve(self, op: PairOperator, voltage: float, x0: npt.ArrayLike | None) -> _Solved:
        b = op.rhs(voltage)
        start: F64 | None = None
        if x0 is not None:
            guess = np.asarray(x0, dtype=np.float64)
            if guess.shape != self.shape:
                raise SolverError(
                    f"warm start x0 has shape {guess.shape}, the grid is {self.shape}"
                )
            if not np.all(np.isfinite(guess)):
                raise SolverError("warm start x0 contains NaN or infinite values")
            start = np.zeros_like(b)
            start[1:-1, 1:-1, 1:-1] = guess
            flat = start.reshape(-1)
            flat[op.anode_flat] = 0.0
            flat[op.cathode_flat] = 0.0
        hierarchy = build_hierarchy(op)
        engine = make_engine(self.backend, hierarchy, b, start)

        def currents_agree() -> bool:
            i_a, i_c = _currents(
                op, voltage, engine.gather(op.anode.free), engine.gather(op.cathode.free)
            )
            return abs(i_a - i_c) <= CURRENT_RTOL * max(abs(i_a), abs(i_c))

        result = pcg(engine, self.tol, self.max_iter, currents_agree)
        x = engine.solution()
        x.reshape(-1)[op.anode_flat] = voltage
        x.reshape(-1)[op.cathode_flat] = 0.0
        xf = x.reshape(-1)
        i_anode, i_cathode = _currents(op, voltage, xf[op.anode.free], xf[op.cathode.free])
        field = field_magnitude(op, x)
        return _Solved(
            potential=np.ascontiguousarray(x[1:-1, 1:-1, 1:-1]),
            field=field,
            anode_current=i_anode,
            cathode_current=i_cathode,
            iterations=result.iterations,
            residual=result.relative_residual,
        )

    def solve(
        self,
        anode: Electrode | NeedleLike,
        cathode: Electrode | NeedleLike,
        voltage_V: float,
        *,
        x0: npt.ArrayLike | None = None,
    ) -> PairSolution:
        """Solve the pair at ``voltage_V`` (warm-started from potential ``x0`` if given)."""
        v = float(voltage_V)
        if not np.isfinite(v):
            raise SolverError(f"voltage must be finite, got {voltage_V!r}")
        s = self._solve(self.operator(anode, cathode), v, x0)
        return PairSolution(
            potential_V=s.potential,
            field_V_per_cm=s.field,
            voltage_V=v,
            anode_current_A=s.anode_current,
            cathode_current_A=s.cathode_current,
            iterations=s.iterations,
            relative_residual=s.residual,
            backend=self.backend,
        )

    def solve_unit(
        self,
        anode: Electrode | NeedleLike,
        cathode: Electrode | NeedleLike,
        *,
        x0: npt.ArrayLike | None = None,
    ) -> UnitSolution:
        """The pair at 1 V, to scale to any voltage with ``UnitSolution.at``."""
        s = self._solve(self.operator(anode, cathode), 1.0, x0)
        return UnitSolution(
            potential_V=s.potential,
            field_V_per_cm=s.field,
            anode_current_A=s.anode_current,
            cathode_current_A=s.cathode_current,
            iterations=s.iterations,
            relative_residual=s.residual,
            backend=self.backend,
            key=self.key(anode, cathode),
        )


def _currents(
    op: PairOperator, voltage: float, at_anode: F64, at_cathode: F64
) -> tuple[float, float]:
    """Current out of the anode and into the cathode (A), from the potentials at their ties."""
    direct = op.direct_conductance * voltage
    i_anode = float(np.sum(op.anode.conductance * (voltage - at_anode))) + direct
    i_cathode = float(np.sum(op.cathode.conductance * at_cathode)) + direct
    return i_anode, i_cathode


def field_magnitude(op: PairOperator, x: F64) -> F32:
    """|E| in V/cm from the padded potential x (needle voxels already at their potential)."""
    h = op.spacing_m
    phi = x.copy()
    # Ghosts mirror their neighbour: zero normal field on the insulating boundary.
    phi[0], phi[-1] = phi[1], phi[-2]
    phi[:, 0], phi[:, -1] = phi[:, 1], phi[:, -2]
    phi[:, :, 0], phi[:, :, -1] = phi[:, :, 1], phi[:, :, -2]
    out = np.empty(op.shape, dtype=np.float32)
    ck.field_magnitude(phi, h, out)
    out *= np.float32(_V_PER_M_TO_V_PER_CM)
    flat = phi.reshape(-1)
    dims = phi.shape
    strides = np.asarray([dims[1] * dims[2], dims[2], 1])
    ties = [op.anode, op.cathode]
    free = np.unique(np.concatenate([t.free for t in ties]))
    # Faces of needle-adjacent cells: factor on the minus / plus side of each axis.
    f_minus = np.ones((free.size, 3))
    f_plus = np.ones((free.size, 3))
    for t in ties:
        row = np.searchsorted(free, t.free)
        axis = t.step // 2
        from_below = t.step % 2 == 1  # needle voxel at -1 along the axis
        f_minus[row[from_below], axis[from_below]] = t.factor[from_below]
        f_plus[row[~from_below], axis[~from_below]] = t.factor[~from_below]
    components = np.zeros((free.size, 3))
    for ax in range(3):
        s = strides[ax]
        lower = (flat[free - s] - flat[free]) / h * f_minus[:, ax]
        upper = (flat[free] - flat[free + s]) / h * f_plus[:, ax]
        components[:, ax] = 0.5 * (lower + upper)
    interior = np.unravel_index(free, dims)
    out[tuple(i - 1 for i in interior)] = (
        np.sqrt((components**2).sum(axis=1)) * _V_PER_M_TO_V_PER_CM
    )
    for t, cells in ((op.anode, op.anode_flat), (op.cathode, op.cathode_flat)):
        face = np.abs(t.factor * (flat[t.fixed] - flat[t.free]) / h) * _V_PER_M_TO_V_PER_CM
        best = np.zeros(cells.size)
        np.maximum.at(best, np.searchsorted(cells, t.fixed), face)
        best[best == 0.0] = best.max(initial=0.0)
        out[tuple(i - 1 for i in np.unravel_index(cells, dims))] = best
    return out


def solve_pair(
    sigma: npt.ArrayLike,
    spacing_mm: float,
    anode: Electrode | NeedleLike,
    cathode: Electrode | NeedleLike,
    voltage_V: float,
    *,
    backend: str = "auto",
    tol: float = DEFAULT_TOLERANCE,
    max_iter: int = DEFAULT_MAX_ITERATIONS,
    x0: npt.ArrayLike | None = None,
) -> PairSolution:
    """One pair on a constant-in-time conductivity map (S/m), grid spacing in mm."""
    solver = FieldSolver(sigma, spacing_mm, backend=backend, tol=tol, max_iter=max_iter)
    return solver.solve(anode, cathode, voltage_V, x0=x0)


def solve_pairs(
    sigma: npt.ArrayLike,
    spacing_mm: float,
    needles: Sequence[Electrode | NeedleLike],
    pairs: Sequence[tuple[int, int, float]],
    *,
    backend: str = "auto",
    tol: float = DEFAULT_TOLERANCE,
    max_iter: int = DEFAULT_MAX_ITERATIONS,
) -> list[PairSolution]:
    """Each (anode index, cathode index, voltage) of a plan, in order.

    Sequential on purpose: each solve already uses every core (the kernels are parallel over
    blocks of planes) and is memory-bound, so side-by-side pairs would only share the same
    bandwidth. The face conductances are computed once for all pairs.
    """
    solver = FieldSolver(sigma, spacing_mm, backend=backend, tol=tol, max_iter=max_iter)
    out: list[PairSolution] = []
    for number, (i, j, voltage) in enumerate(pairs):
        for which, k in (("anode", i), ("cathode", j)):
            if not 0 <= int(k) < len(needles):
                raise SolverError(
                    f"pair {number}: {which} index {k} is not one of the {len(needles)} needles"
                )
        if int(i) == int(j):
            raise SolverError(f"pair {number}: anode and cathode are the same needle ({i})")
        out.append(solver.solve(needles[int(i)], needles[int(j)], voltage))
    return out
