"""A small lesion case with known good and bad plans, shared by the evaluation tests.

A 46 ml gland (its role set to avoid, so the target is the lesion alone), a 5 mm-radius lesion
in its left lobe, model organs placed around the gland as for the real cases. The good plans
put four needles on a 12 mm square around the lesion; the bad one pushes the posterior pair
next to the rectal wall.
"""

from __future__ import annotations

import itertools

import numpy as np

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.plan import Plan, PlanNeedle, PulsedPair

LESION_CENTRE_MM = np.array([20.0, 6.0, 0.0])
LESION_RADIUS_MM = 4.0


def lesion_anatomy(spacing_mm: float = 1.0, size_mm: float = 110.0) -> Anatomy:
    n = round(size_mm / spacing_mm)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -spacing_mm * (n - 1) / 2.0
    grid = VoxelGrid((n, n, n), affine)
    xyz = grid.voxel_centres()
    gland = ((xyz / np.array([28.0, 18.0, 22.0])) ** 2).sum(-1) <= 1.0
    lesion = np.linalg.norm(xyz - LESION_CENTRE_MM, axis=-1) <= LESION_RADIUS_MM
    g, _ = Structure.from_name("prostate", gland, role=Role.AVOID)
    lz, _ = Structure.from_name("lesion", lesion)
    return Anatomy(grid, [g, lz], case_id="lesion-phantom", source="tests/evaluate/cases.py")


def lesion_case(spacing_mm: float = 1.0) -> PreparedCase:
    anatomy = lesion_anatomy()
    case = prepare_case(anatomy, spacing_mm=spacing_mm, margin_mm=25.0)
    # The gland stays an avoid structure: the lesion is the whole target.
    assert all(s.role is not Role.TARGET or s.kind.name == "lesion" for s in case.planning)
    return case


def square_plan(
    protocol: str,
    ratio_V_per_cm: float,
    pulses: int,
    half_side_mm: float = 6.0,
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    exposure_mm: float = 16.0,
) -> Plan:
    """Four needles along +S on a square around the lesion, all pairs pulsed."""
    centre = LESION_CENTRE_MM + np.asarray(shift_mm)
    corners = [(-1, -1), (1, -1), (-1, 1), (1, 1)]
    needles = []
    for sx, sy in corners:
        tip = centre + np.array([sx * half_side_mm, sy * half_side_mm, exposure_mm / 2.0])
        needles.append(PlanNeedle(tip_mm=tuple(tip), direction=(0.0, 0.0, 1.0),
                                  exposure_mm=exposure_mm))
    pairs = []
    for a, b in itertools.combinations(range(4), 2):
        d_cm = float(np.linalg.norm(np.subtract(needles[a].tip_mm, needles[b].tip_mm))) / 10
        pairs.append(PulsedPair(anode=a, cathode=b, voltage_V=round(ratio_V_per_cm * d_cm, -1),
                                pulses=pulses, pulse_length_us=100.0))
    return Plan(name=f"square {protocol}", protocol=protocol, needles=needles, pairs=pairs)


def move_needle(plan: Plan, index: int, offset_mm: tuple[float, float, float]) -> Plan:
    needles = list(plan.needles)
    n = needles[index]
    needles[index] = n.model_copy(update={"tip_mm": tuple(np.add(n.tip_mm, offset_mm))})
    return plan.model_copy(update={"needles": needles})
