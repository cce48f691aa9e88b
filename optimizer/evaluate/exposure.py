"""What each voxel is exposed to: per-pair fields and pulse trains on the anatomy's grid.

The solver gives, per pulsed pair, |E| in V/cm on the planning grid and the pair's current.
`Exposure` holds those arrays with the anatomy, the tissue table and the kill models, and
answers the questions metrics and criteria ask of a region:

- the cumulative field: the maximum over pairs (what field-volume histograms and E98 use);
- whether a voxel is at or above a threshold: some pair p reaches the threshold of the voxel's
  tissue at p's own pulse count (E_p >= T(tissue, n_p)). Pulses of different pairs are not
  pooled: conservative where pairs overlap below their thresholds;
- pulses above a threshold: per voxel, the number of pulses delivered at or above the threshold,
  sum over pairs of n_p [E_p >= T(tissue, n_p)] (an ECT voxel wants >= 8 above E_rev);
- kill probability (Peleg-Fermi, product of per-pair survivals) and heat (heat.py).

Which tissue: a region built from structures uses each structure's own tissue (the organ's
thresholds apply to the whole organ, also where another structure wins the voxel); margin
voxels and the everywhere region use the tissue map. Heat always uses the tissue map (it is the
material's conductivity that heats). Voxels whose tissue has no named threshold (urine, blood,
bone) can never be at or above "e_rev"/"e_irr"; coverage leaves them out of its denominator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.electrodes.needle import Needle
from optimizer.evaluate.heat import (
    ConductivityLookup,
    HeatResult,
    PulseTrainHeat,
    ThermalModel,
    adiabatic_heating,
)
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import StructureSelector
from optimizer.tissue.kill import KillModels, PelegFermi, load_kill_models, survival
from optimizer.tissue.table import TissueTable, load_tissue_table
from optimizer.tissue.thresholds import ThresholdTable

BoolArray = npt.NDArray[np.bool_]
Float32Array = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.intp]
T = TypeVar("T", bound=np.generic)
# Kill is not computed more than this many logistic widths below the critical field.
KILL_TAIL_WIDTHS = 10.0


class ExposureError(ValueError):
    """Field arrays that do not fit the anatomy or the plan."""


@dataclass(frozen=True)
class PairExposure:
    """One pulsed pair: its |E| on the grid (V/cm) and its pulse train."""

    field_V_per_cm: Float32Array
    pulses: int
    pulse_length_us: float
    repetition_rate_Hz: float = 1.0
    voltage_V: float = math.nan
    current_A: float = math.nan
    anode: int = -1
    cathode: int = -1


@dataclass(frozen=True)
class Region:
    """Voxels (flat indices into the grid) and the tissue (table index) each one counts as."""

    name: str
    index: IndexArray | None  # None: every voxel of the grid, in flat order
    tissue: npt.NDArray[np.int16]
    voxel_volume_ml: float
    structures: tuple[str, ...] = ()
    single_tissue: int | None = None  # set when every voxel counts as one tissue

    @property
    def voxel_count(self) -> int:
        return int(self.tissue.size)

    @property
    def volume_ml(self) -> float:
        return self.voxel_count * self.voxel_volume_ml

    def take(self, array: npt.NDArray[T]) -> npt.NDArray[T]:
        """``array``'s values at the region's voxels (a view for the whole grid)."""
        flat = np.asarray(array).reshape(-1)
        return flat if self.index is None else flat[self.index]


def _segment_distance_grid(
    grid: VoxelGrid, needle: Needle, radius_mm: float
) -> tuple[tuple[slice, ...], BoolArray] | None:
    """Voxels within ``radius_mm`` of the needle's exposed segment, in a bounding box."""
    p0, p1 = needle.exposed_segment()
    ends = grid.world_to_index(np.stack([p0, p1]))
    inv = np.linalg.inv(grid.affine[:3, :3])
    pad = radius_mm * np.linalg.norm(inv, axis=1) + 1.0  # a ball's extent along each index axis
    lo = np.maximum(np.floor(ends.min(axis=0) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(ends.max(axis=0) + pad) + 1, grid.shape).astype(int)
    if np.any(hi <= lo):
        return None
    ii, jj, kk = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
    xyz = grid.index_to_world(np.stack([ii, jj, kk], axis=-1))
    d = p1 - p0
    t = np.clip(((xyz - p0) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    dist = np.linalg.norm(xyz - p0 - t[..., None] * d, axis=-1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return box, dist <= radius_mm


class Exposure:
    """Per-pair fields and trains on one anatomy, with the tables that interpret them."""

    def __init__(
        self,
        anatomy: Anatomy,
        pairs: Sequence[PairExposure],
        *,
        table: TissueTable | None = None,
        kill_models: KillModels | None = None,
        needles: Sequence[Needle] = (),
        plan: Plan | None = None,
    ) -> None:
        self.anatomy = anatomy
        self.table = table if table is not None else load_tissue_table()
        self.kill_models = kill_models if kill_models is not None else load_kill_models()
        self.needles = list(needles)
        self.plan = plan
        self.pairs = [self._checked(i, p) for i, p in enumerate(pairs)]
        self.thresholds = ThresholdTable(self.table)
        self.tissue_names = self.table.names()
        self._near_needles: dict[float, BoolArray] = {}

    def _checked(self, i: int, pair: PairExposure) -> PairExposure:
        e = pair.field_V_per_cm
        if e.shape != self.anatomy.grid.shape:
            raise ExposureError(
                f"pair {i}: field shape {e.shape} differs from the anatomy grid "
                f"{self.anatomy.grid.shape}; solve on the planning grid of this anatomy"
            )
        if e.dtype != np.float32 or not e.flags.c_contiguous:
            e = np.ascontiguousarray(e, dtype=np.float32)
        if not np.isfinite(e).all() or float(e.min(initial=0.0)) < 0:
            raise ExposureError(f"pair {i}: |E| must be finite and >= 0 V/cm everywhere")
        if pair.pulses < 1 or not (pair.pulse_length_us > 0 and pair.repetition_rate_Hz > 0):
            raise ExposureError(
                f"pair {i}: pulses ({pair.pulses}), pulse_length_us ({pair.pulse_length_us}) and "
                f"repetition_rate_Hz ({pair.repetition_rate_Hz}) must be positive"
            )
        return PairExposure(
            e, pair.pulses, pair.pulse_length_us, pair.repetition_rate_Hz, pair.voltage_V,
            pair.current_A, pair.anode, pair.cathode,
        )  # fmt: skip

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        anatomy: Anatomy,
        fields_V_per_cm: Sequence[Float32Array],
        currents_A: Sequence[float] | None = None,
        *,
        repetition_rates_Hz: Sequence[float] | None = None,
        table: TissueTable | None = None,
        kill_models: KillModels | None = None,
    ) -> Exposure:
        """Fields (and currents) in the order of ``plan.pairs``."""
        n = len(plan.pairs)
        for what, seq in (("field arrays", fields_V_per_cm), ("currents", currents_A),
                          ("repetition rates", repetition_rates_Hz)):  # fmt: skip
            if seq is not None and len(seq) != n:
                raise ExposureError(f"{len(seq)} {what} for {n} pairs; give one per pair")
        pairs = [
            PairExposure(
                field_V_per_cm=fields_V_per_cm[i],
                pulses=p.pulses,
                pulse_length_us=p.pulse_length_us,
                repetition_rate_Hz=1.0 if repetition_rates_Hz is None else repetition_rates_Hz[i],
                voltage_V=p.voltage_V,
                current_A=math.nan if currents_A is None else float(currents_A[i]),
                anode=p.anode,
                cathode=p.cathode,
            )
            for i, p in enumerate(plan.pairs)
        ]
        return cls(
            anatomy, pairs, table=table, kill_models=kill_models, needles=plan.to_needles(),
            plan=plan,
        )  # fmt: skip

    # ---- grid-wide maps ----------------------------------------------------------------

    @property
    def grid(self) -> VoxelGrid:
        return self.anatomy.grid

    @property
    def voxel_volume_ml(self) -> float:
        return self.grid.voxel_volume_ml

    @cached_property
    def tissue_index(self) -> npt.NDArray[np.int16]:
        return self.anatomy.tissue_map(self.tissue_names)

    @cached_property
    def max_field_V_per_cm(self) -> Float32Array:
        """The cumulative field: per voxel the largest |E| of any pair."""
        out = np.zeros(self.grid.shape, dtype=np.float32)
        for p in self.pairs:
            np.maximum(out, p.field_V_per_cm, out=out)
        return out

    @cached_property
    def kill_model_per_tissue(self) -> list[PelegFermi | None]:
        return [
            self.kill_models.for_tissue(self.table[n], self.table.reference_pulses)
            for n in self.tissue_names
        ]

    @cached_property
    def heat(self) -> HeatResult:
        trains = [
            PulseTrainHeat(p.field_V_per_cm, p.pulses, p.pulse_length_us, p.repetition_rate_Hz)
            for p in self.pairs
        ]
        return adiabatic_heating(
            trains,
            self.tissue_index,
            ConductivityLookup.from_table(self.table, self.tissue_names),
            ThermalModel.from_table(self.table),
        )

    @property
    def temperature_C(self) -> Float32Array:
        """Final adiabatic temperature (body temperature + rise), degC."""
        return np.asarray(self.heat.temperature_rise_K + self.table.body_temperature_C, np.float32)

    def near_needles(self, radius_mm: float) -> BoolArray:
        """Voxels within ``radius_mm`` of any needle's exposed segment (read-only, cached)."""
        if radius_mm in self._near_needles:
            return self._near_needles[radius_mm]
        mask = np.zeros(self.grid.shape, dtype=bool)
        for needle in self.needles if radius_mm > 0 else []:
            hit = _segment_distance_grid(self.grid, needle, radius_mm)
            if hit is not None:
                box, near = hit
                mask[box] |= near
        mask.setflags(write=False)
        self._near_needles[radius_mm] = mask
        return mask

    # ---- regions -----------------------------------------------------------------------

    def _tissue_id(self, name: str) -> int:
        try:
            return self.tissue_names.index(name)
        except ValueError:
            raise ExposureError(
                f"tissue {name!r} is not in table {self.table.label}; known: "
                f"{', '.join(self.tissue_names)}"
            ) from None

    def structure_region(self, structure: Structure) -> Region:
        index = np.flatnonzero(structure.mask)
        tissue_id = self._tissue_id(structure.tissue)
        tissue = np.full(index.size, tissue_id, dtype=np.int16)
        return Region(
            structure.name, index, tissue, self.voxel_volume_ml, (structure.name,), tissue_id
        )

    def everywhere(self) -> Region:
        return Region("everywhere", None, self.tissue_index.reshape(-1), self.voxel_volume_ml)

    def select(self, selector: StructureSelector) -> Region:
        """The union of the structures ``selector`` matches, grown by its margin."""
        if selector.everywhere:
            return self.everywhere()
        chosen = [s for s in self.anatomy if selector.matches(s)]
        names = tuple(s.name for s in chosen)
        label = " + ".join(names) or selector.describe()
        if not chosen:
            return Region(label, np.zeros(0, np.intp), np.zeros(0, np.int16), self.voxel_volume_ml)
        union = np.zeros(self.grid.shape, dtype=bool)
        for s in chosen:
            union |= s.mask
        if selector.margin_mm > 0:
            union = self._grow(union, selector.margin_mm)
            label += f" + {selector.margin_mm:g} mm"
        tissue = self.tissue_index.copy()
        for s in sorted(chosen, key=lambda s: s.priority):  # the highest priority is written last
            tissue[s.mask] = self._tissue_id(s.tissue)
        index = np.flatnonzero(union)
        return Region(label, index, tissue.reshape(-1)[index], self.voxel_volume_ml, names)

    def _grow(self, mask: BoolArray, margin_mm: float) -> BoolArray:
        """``mask`` grown by ``margin_mm`` (Euclidean, in mm), computed in a cropped box."""
        if not mask.any():
            return mask
        spacing = self.grid.spacing_mm
        pad = np.ceil(margin_mm / spacing).astype(int) + 1
        nz = np.nonzero(mask)
        lo = [max(int(a.min()) - p, 0) for a, p in zip(nz, pad, strict=True)]
        shape = self.grid.shape
        hi = [min(int(a.max()) + p + 1, n) for a, p, n in zip(nz, pad, shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        distance = ndimage.distance_transform_edt(~mask[box], sampling=spacing)
        grown = mask.copy()
        grown[box] = distance <= margin_mm + 1e-6
        return grown

    # ---- questions about a region ------------------------------------------------------

    def max_field_in(self, region: Region) -> Float32Array:
        return np.asarray(region.take(self.max_field_V_per_cm), np.float32)

    def pair_thresholds(
        self, region: Region, threshold: str | float, pair: int
    ) -> Float32Array | np.float32:
        """Threshold of each region voxel for pair ``pair`` (its pulse count); inf where none.

        A scalar when the region is one tissue (compares without a gather).
        """
        return self._thresholds_at(region, threshold, self.pairs[pair].pulses)

    def _thresholds_at(
        self, region: Region, threshold: str | float, pulses: int
    ) -> Float32Array | np.float32:
        lut = self.thresholds.lookup(self.tissue_names, threshold, pulses).astype(np.float32)
        if region.single_tissue is not None:
            return lut[region.single_tissue]
        return lut[region.tissue]

    def treatable(self, region: Region, threshold: str | float) -> BoolArray:
        """Voxels that have a finite threshold (every voxel, for a number in V/cm)."""
        lut = self.thresholds.lookup(self.tissue_names, threshold, 1)
        return np.isfinite(lut)[region.tissue]

    def threshold_range(self, region: Region, threshold: str | float) -> tuple[float, float] | None:
        """Smallest and largest finite threshold over the region's tissues and the pairs."""
        present = np.bincount(region.tissue, minlength=len(self.tissue_names)) > 0
        values = [
            v
            for p in self.pairs
            for v in self.thresholds.lookup(self.tissue_names, threshold, p.pulses)[present]
            if math.isfinite(v)
        ]
        return (min(values), max(values)) if values else None

    def at_or_above(self, region: Region, threshold: str | float) -> BoolArray:
        """Voxels where some pair reaches the threshold at its own pulse count."""
        return self.pulses_above(region, threshold) > 0

    def pulses_above(self, region: Region, threshold: str | float) -> npt.NDArray[np.int32]:
        """Per voxel, the pulses delivered at or above its threshold, summed over pairs."""
        count = np.zeros(region.voxel_count, dtype=np.int32)
        levels: dict[int, Float32Array | np.float32] = {}
        for p in self.pairs:
            if p.pulses not in levels:
                levels[p.pulses] = self._thresholds_at(region, threshold, p.pulses)
            above = region.take(p.field_V_per_cm) >= levels[p.pulses]
            np.add(count, np.int32(p.pulses), out=count, where=above)
        return count

    def kill_probability(self, region: Region) -> Float32Array:
        """Peleg-Fermi kill, 1 - prod_p S(E_p, n_p), with the region's tissues.

        Voxels whose largest field lies more than 10 widths below every critical field are
        skipped (kill 0): the logistic tail there is below 4.5e-5 per pair.
        """
        kill = np.zeros(region.voxel_count, dtype=np.float32)
        models = self.kill_model_per_tissue
        present = np.bincount(region.tissue, minlength=len(models)) > 0
        floors = [
            m.critical_field_V_per_cm(p.pulses) - KILL_TAIL_WIDTHS * m.width_V_per_cm(p.pulses)
            for m, here in zip(models, present, strict=True)
            if m is not None and here
            for p in self.pairs
        ]
        if not floors:
            return kill
        candidates = np.flatnonzero(self.max_field_in(region) >= max(min(floors), 0.0))
        if candidates.size == 0:
            return kill
        tissue = region.tissue[candidates]
        alive = np.ones(candidates.size, dtype=np.float32)
        for p in self.pairs:
            alive *= survival(region.take(p.field_V_per_cm)[candidates], tissue, models, p.pulses)
        kill[candidates] = 1.0 - alive
        return kill
