"""A treatment plan: needles, pulsed pairs and the protocol they follow; JSON on disk."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from optimizer import __version__
from optimizer.electrodes.needle import NEEDLE_19G_DIAMETER_MM, Needle

PLAN_FORMAT = "ectplan.plan/1"
# Bump when the geometry key changes, so stale cached pair solutions are never reused.
PAIR_HASH_VERSION = "ectplan.pair-geometry/1"

Vector3 = tuple[float, float, float]


class PlanError(ValueError):
    """A plan cannot be read or is inconsistent; the message names the file and the field."""


def field_path(loc: tuple[int | str, ...]) -> str:
    """('pairs', 2, 'anode') -> 'pairs[2].anode' (the JSON path of the bad field)."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def describe_validation_error(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {field_path(tuple(err['loc']))}: {msg}")
    return "\n".join(lines)


def _fixed(value: float, decimals: int) -> str:
    # "+ 0.0" folds -0.0 into 0.0 so that mirrored geometry hashes alike.
    return f"{round(value, decimals) + 0.0:.{decimals}f}"


class PlanNeedle(BaseModel):
    """One needle: the tip in RAS mm and the unit insertion direction (skin towards tip)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tip_mm: Vector3
    direction: Vector3
    exposure_mm: Annotated[float, Field(gt=0, le=100)]
    diameter_mm: Annotated[float, Field(gt=0, lt=5)] = NEEDLE_19G_DIAMETER_MM
    hole: str | None = None
    entry_mm: Vector3 | None = None

    @field_validator("direction")
    @classmethod
    def _unit_direction(cls, v: Vector3) -> Vector3:
        norm = math.sqrt(sum(c * c for c in v))
        if norm < 1e-9:
            raise ValueError(
                "direction has zero length; give the insertion direction from skin towards tip"
            )
        if abs(norm - 1.0) < 1e-12:  # already unit: keep the exact numbers (stable round trip)
            return v
        return (v[0] / norm, v[1] / norm, v[2] / norm)

    def to_needle(self) -> Needle:
        return Needle(
            tip_mm=np.array(self.tip_mm, dtype=np.float64),
            direction=np.array(self.direction, dtype=np.float64),
            exposure_mm=self.exposure_mm,
            diameter_mm=self.diameter_mm,
            hole=self.hole,
            entry_mm=None if self.entry_mm is None else np.array(self.entry_mm, dtype=np.float64),
        )

    def geometry_key(self) -> str:
        """What the field depends on (tip, direction, exposure, diameter), at fixed precision.

        0.1 um for lengths and 1e-9 for the direction: far below any grid, above float noise.
        The hole label and entry point are left out: they do not change the field.
        """
        parts = [_fixed(c, 4) for c in self.tip_mm]
        parts += [_fixed(c, 9) for c in self.direction]
        parts += [_fixed(self.exposure_mm, 4), _fixed(self.diameter_mm, 4)]
        return ",".join(parts)


class PulsedPair(BaseModel):
    """Two needles pulsed together: the anode at +voltage_V, the cathode at 0 V."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    anode: Annotated[int, Field(ge=0)]
    cathode: Annotated[int, Field(ge=0)]
    voltage_V: Annotated[float, Field(gt=0)]
    pulses: Annotated[int, Field(ge=1)]
    pulse_length_us: Annotated[float, Field(gt=0)]


class Plan(BaseModel):
    """Needles, pulsed pairs, and what the plan was made with.

    A plan beyond device or protocol limits is still a valid plan: evaluation flags it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format: Literal["ectplan.plan/1"] = "ectplan.plan/1"
    name: str | None = None
    notes: str | None = None
    protocol: str
    tissue_table: str | None = None
    software_version: str = __version__
    needles: list[PlanNeedle]
    pairs: list[PulsedPair]

    @field_validator("pairs")
    @classmethod
    def _pairs_name_existing_needles(cls, pairs: list[PulsedPair], info: ValidationInfo) -> Any:
        needles = info.data.get("needles")
        if needles is None:  # the needles failed validation; that error is reported already
            return pairs
        count = len(needles)
        for i, pair in enumerate(pairs):
            for role in ("anode", "cathode"):
                index = getattr(pair, role)
                if index >= count:
                    valid = f"indices 0..{count - 1}" if count else "no needles"
                    raise ValueError(
                        f"pair {i} names needle {index} as {role} but the plan has {count} "
                        f"needle(s) ({valid})"
                    )
            if pair.anode == pair.cathode:
                raise ValueError(
                    f"pair {i} uses needle {pair.anode} as both anode and cathode; a pair needs "
                    "two different needles"
                )
        return pairs

    # ---- disk --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str, where: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(
                f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PlanError(describe_validation_error(exc, where)) from None

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PlanError(f"cannot read plan file {path}: {exc}") from exc
        return cls.from_json(text, str(path))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    # ---- use ---------------------------------------------------------------------------

    def to_needles(self) -> list[Needle]:
        return [n.to_needle() for n in self.needles]

    def pair_needles(self, index: int) -> tuple[PlanNeedle, PlanNeedle]:
        pair = self.pairs[index]
        return self.needles[pair.anode], self.needles[pair.cathode]

    def pair_geometry_hash(self, index: int) -> str:
        """A stable key for caching pair ``index``'s field solution.

        Depends only on the two needles' geometry, not on voltage, pulses or needle order in the
        plan; swapping anode and cathode gives the same key because |E| and |I| do not change
        sign with polarity (phi -> V - phi).
        """
        if not 0 <= index < len(self.pairs):
            raise PlanError(f"no pair {index}; the plan has {len(self.pairs)} pair(s)")
        a, b = self.pair_needles(index)
        keys = sorted((a.geometry_key(), b.geometry_key()))
        text = "|".join([PAIR_HASH_VERSION, *keys])
        return hashlib.sha256(text.encode()).hexdigest()

    def pair_geometry_hashes(self) -> list[str]:
        return [self.pair_geometry_hash(i) for i in range(len(self.pairs))]
