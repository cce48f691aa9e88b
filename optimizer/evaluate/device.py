"""Generator and electrode limits, checked per pair: flags, never exceptions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from optimizer.evaluate.plan import Plan

FloatArray = npt.NDArray[np.float64]


class DeviceLimits(BaseModel):
    """What the generator and electrode set allow (a protocol's ``[device]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    voltage_max_V: Annotated[float, Field(gt=0)]
    current_max_A: Annotated[float, Field(gt=0)]
    needles_min: Annotated[int, Field(ge=1)]
    needles_max: Annotated[int, Field(ge=1)]
    pair_spacing_min_mm: Annotated[float, Field(ge=0)]
    pair_spacing_max_mm: Annotated[float, Field(gt=0)]
    source: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _ordered(self) -> DeviceLimits:
        if self.needles_min > self.needles_max:
            raise ValueError(f"needles_min {self.needles_min} > needles_max {self.needles_max}")
        if self.pair_spacing_min_mm > self.pair_spacing_max_mm:
            raise ValueError(
                f"pair_spacing_min_mm {self.pair_spacing_min_mm} > pair_spacing_max_mm "
                f"{self.pair_spacing_max_mm}"
            )
        return self


@dataclass(frozen=True)
class LimitCheck:
    """One limit on one quantity; ``margin`` is signed in ``unit``, positive = within limits."""

    name: str
    pair: int | None
    value: float
    limit: float
    unit: str
    is_maximum: bool
    description: str

    @property
    def margin(self) -> float:
        return self.limit - self.value if self.is_maximum else self.value - self.limit

    @property
    def passed(self) -> bool:
        # NaN (e.g. an unknown current) never passes.
        return bool(self.margin >= 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pair": self.pair,
            "value": self.value,
            "limit": self.limit,
            "unit": self.unit,
            "margin": self.margin,
            "passed": self.passed,
            "description": self.description,
        }


def segment_distance_mm(p0: FloatArray, p1: FloatArray, q0: FloatArray, q1: FloatArray) -> float:
    """Shortest distance between segments p0-p1 and q0-q1 (Ericson, Real-Time Collision
    Detection, 2005, section 5.1.9)."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e, f = float(d1 @ d1), float(d2 @ d2), float(d2 @ r)
    eps = 1e-12
    if a <= eps and e <= eps:
        return float(np.linalg.norm(r))
    if a <= eps:
        s, t = 0.0, min(max(f / e, 0.0), 1.0)
    else:
        c = float(d1 @ r)
        if e <= eps:
            s, t = min(max(-c / a, 0.0), 1.0), 0.0
        else:
            b = float(d1 @ d2)
            denom = a * e - b * b
            s = min(max((b * f - c * e) / denom, 0.0), 1.0) if denom > eps else 0.0
            t = (b * s + f) / e
            if t < 0.0:
                s, t = min(max(-c / a, 0.0), 1.0), 0.0
            elif t > 1.0:
                s, t = min(max((b - c) / a, 0.0), 1.0), 1.0
    return float(np.linalg.norm((p0 + d1 * s) - (q0 + d2 * t)))


def pair_spacing_mm(plan: Plan, index: int) -> float:
    """Shortest distance between the two exposed segments of pair ``index`` (for parallel
    needles of equal depth: the centre-to-centre distance)."""
    a, b = (n.to_needle() for n in plan.pair_needles(index))
    return segment_distance_mm(*a.exposed_segment(), *b.exposed_segment())


def check_device(
    plan: Plan, limits: DeviceLimits, currents_A: Sequence[float] | None = None
) -> list[LimitCheck]:
    """Every device limit of ``plan``; currents (one per pair, A) from the field solution.

    Without currents the current checks are left out (they need a solved field).
    """
    if currents_A is not None and len(currents_A) != len(plan.pairs):
        raise ValueError(
            f"{len(currents_A)} currents for {len(plan.pairs)} pairs; give one current per pair"
        )
    n = len(plan.needles)
    checks = [
        LimitCheck(
            "needles_min", None, n, limits.needles_min, "needles", False,
            f"{n} needle(s); at least {limits.needles_min}",
        ),
        LimitCheck(
            "needles_max", None, n, limits.needles_max, "needles", True,
            f"{n} needle(s); the generator drives at most {limits.needles_max}",
        ),
    ]  # fmt: skip
    for i, pair in enumerate(plan.pairs):
        label = f"pair {i} ({pair.anode}-{pair.cathode})"
        spacing = pair_spacing_mm(plan, i)
        checks += [
            LimitCheck(
                "voltage_max", i, pair.voltage_V, limits.voltage_max_V, "V", True,
                f"{label}: {pair.voltage_V:g} V; at most {limits.voltage_max_V:g} V",
            ),
            LimitCheck(
                "pair_spacing_min", i, spacing, limits.pair_spacing_min_mm, "mm", False,
                f"{label}: needles {spacing:.1f} mm apart; at least "
                f"{limits.pair_spacing_min_mm:g} mm",
            ),
            LimitCheck(
                "pair_spacing_max", i, spacing, limits.pair_spacing_max_mm, "mm", True,
                f"{label}: needles {spacing:.1f} mm apart; at most "
                f"{limits.pair_spacing_max_mm:g} mm",
            ),
        ]  # fmt: skip
        if currents_A is not None:
            current = float(currents_A[i])
            text = f"{current:.1f} A" if math.isfinite(current) else "current unknown"
            checks.append(
                LimitCheck(
                    "current_max", i, current, limits.current_max_A, "A", True,
                    f"{label}: {text}; at most {limits.current_max_A:g} A",
                )
            )  # fmt: skip
    return checks
