"""Small hand-made anatomies, plans and field arrays for the evaluation tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.evaluate.plan import Plan, PlanNeedle, PulsedPair

BoolArray = npt.NDArray[np.bool_]


def box_grid(shape: tuple[int, int, int], spacing_mm: float = 1.0) -> VoxelGrid:
    """Axis-aligned grid with voxel (0, 0, 0) at the RAS origin."""
    return VoxelGrid(shape, np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0]))


def box_mask(shape: tuple[int, int, int], lo: Sequence[int], hi: Sequence[int]) -> BoolArray:
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return mask


def anatomy(grid: VoxelGrid, masks: dict[str, BoolArray], **kinds: str) -> Anatomy:
    """Structures named by their kind synonyms ("gland", "rectum"...); kinds overrides."""
    structures = [Structure.from_name(n, m, kind=kinds.get(n))[0] for n, m in masks.items()]
    return Anatomy(grid, structures, case_id="test")


def two_needle_plan(
    spacing_mm: float = 10.0,
    voltage_V: float = 1500.0,
    pulses: int = 90,
    protocol: str = "ire",
    exposure_mm: float = 10.0,
    tip_z_mm: float = 15.0,
    centre_mm: Sequence[float] = (10.0, 10.0),
) -> Plan:
    """Two parallel needles along +S (insertion towards superior), one pair."""
    cx, cy = centre_mm
    needles = [
        PlanNeedle(
            tip_mm=(cx + dx, cy, tip_z_mm), direction=(0, 0, 1), exposure_mm=exposure_mm,
            hole=hole,
        )
        for dx, hole in ((-spacing_mm / 2, "C3"), (spacing_mm / 2, "E3"))
    ]  # fmt: skip
    pair = PulsedPair(anode=0, cathode=1, voltage_V=voltage_V, pulses=pulses, pulse_length_us=100)
    return Plan(protocol=protocol, needles=needles, pairs=[pair], name="test plan")


def constant(shape: tuple[int, int, int], value: float) -> npt.NDArray[np.float32]:
    return np.full(shape, value, dtype=np.float32)
