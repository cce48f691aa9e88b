"""Treatment protocols as data: pulse trains, target and organ-at-risk criteria, device limits.

A protocol is a TOML file (data/protocols/<name>.toml, or any path), read into typed models the
way radiotherapy planners keep clinical goals as data. Each criterion is one typed entry:

    [[criterion]]
    id = "rectum_irreversible"
    kind = "volume_above_max"          # see CriterionKind
    structures = { kind = ["rectum"] } # selector: role / kind / name, or everywhere = true
    threshold = "e_irr"                # "e_rev", "e_irr" (at each pair's pulse count) or V/cm
    limit = 0.01
    unit = "ml"
    source = "..."
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from optimizer.anatomy.kinds import Role, structure_kinds
from optimizer.anatomy.structures import Structure
from optimizer.evaluate.device import DeviceLimits
from optimizer.evaluate.plan import field_path
from optimizer.tissue.thresholds import THRESHOLD_NAMES

PROTOCOL_PACKAGE = "optimizer.evaluate"
PROTOCOL_FOLDER = "data/protocols"


class ProtocolError(ValueError):
    """A protocol cannot be found or read; the message names the file and the key."""


class Modality(StrEnum):
    ECT = "ECT"
    IRE = "IRE"
    IRECT = "IRECT"


class CriterionKind(StrEnum):
    COVERAGE_MIN = "coverage_min"  # % of the region at or above the threshold, at least limit
    VOLUME_ABOVE_MAX = "volume_above_max"  # ml or % of the region at/above threshold, at most
    PEAK_FIELD_MAX = "peak_field_max"  # V/cm: max field, or the field the hottest ml receives
    PEAK_TEMPERATURE_MAX = "peak_temperature_max"  # degC, optionally away from the needles
    THERMAL_DAMAGE_VOLUME_MAX = "thermal_damage_volume_max"  # ml with Arrhenius Omega >= 1


# The units each kind accepts; the first is the one the kind reports in by default.
KIND_UNITS: dict[CriterionKind, tuple[str, ...]] = {
    CriterionKind.COVERAGE_MIN: ("percent",),
    CriterionKind.VOLUME_ABOVE_MAX: ("ml", "percent"),
    CriterionKind.PEAK_FIELD_MAX: ("V/cm",),
    CriterionKind.PEAK_TEMPERATURE_MAX: ("degC",),
    CriterionKind.THERMAL_DAMAGE_VOLUME_MAX: ("ml",),
}
THRESHOLD_KINDS = (CriterionKind.COVERAGE_MIN, CriterionKind.VOLUME_ABOVE_MAX)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StructureSelector(_Strict):
    """Which structures a criterion applies to: any listed role, kind or name matches.

    ``everywhere`` selects the whole planning grid. ``margin_mm`` grows the selected union by
    that distance (e.g. target + margin for ECT); margin voxels keep their own tissue.
    """

    role: list[Role] = Field(default_factory=list)
    kind: list[str] = Field(default_factory=list)
    name: list[str] = Field(default_factory=list)
    everywhere: bool = False
    margin_mm: Annotated[float, Field(ge=0, le=50)] = 0.0

    @field_validator("role", "kind", "name", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("kind")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        known = structure_kinds()
        for k in kinds:
            if k not in known:
                raise ValueError(f"unknown structure kind {k!r}; use one of {', '.join(known)}")
        return kinds

    @model_validator(mode="after")
    def _selects_something(self) -> StructureSelector:
        if not (self.everywhere or self.role or self.kind or self.name):
            raise ValueError("select structures by role, kind or name, or set everywhere = true")
        if self.everywhere and (self.role or self.kind or self.name or self.margin_mm):
            raise ValueError("everywhere = true cannot be combined with role/kind/name/margin")
        return self

    def matches(self, structure: Structure) -> bool:
        return (
            self.everywhere
            or structure.role in self.role
            or structure.kind.name in self.kind
            or structure.name in self.name
        )

    def describe(self) -> str:
        if self.everywhere:
            return "everywhere"
        parts = [f"role {r.value}" for r in self.role]
        parts += [f"kind {k}" for k in self.kind] + [repr(n) for n in self.name]
        text = " or ".join(parts)
        return text + (f" + {self.margin_mm:g} mm margin" if self.margin_mm else "")


class Criterion(_Strict):
    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: CriterionKind
    structures: StructureSelector
    threshold: str | Annotated[float, Field(gt=0)] | None = None
    limit: float
    unit: str
    # peak_field_max: report the field the hottest ``hottest_ml`` ml receives (D_v), not the max.
    hottest_ml: Annotated[float, Field(gt=0)] | None = None
    # peak_temperature_max / thermal damage: ignore voxels this close to an exposed needle axis.
    exclude_needle_vicinity_mm: Annotated[float, Field(ge=0, le=20)] = 0.0
    severity: Literal["required", "advisory"] = "required"
    description: str = ""
    source: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> Criterion:
        units = KIND_UNITS[self.kind]
        if self.unit not in units:
            raise ValueError(
                f"kind {self.kind.value} takes unit {' or '.join(units)}, not {self.unit!r}"
            )
        if self.kind in THRESHOLD_KINDS:
            if self.threshold is None:
                raise ValueError(f"kind {self.kind.value} needs a threshold (e_rev, e_irr or V/cm)")
            if isinstance(self.threshold, str) and self.threshold not in THRESHOLD_NAMES:
                raise ValueError(
                    f"threshold {self.threshold!r} is not one of {', '.join(THRESHOLD_NAMES)} "
                    "or a number in V/cm"
                )
        elif self.threshold is not None:
            raise ValueError(f"kind {self.kind.value} takes no threshold")
        if self.hottest_ml is not None and self.kind != CriterionKind.PEAK_FIELD_MAX:
            raise ValueError("hottest_ml applies to peak_field_max only")
        if self.unit == "percent" and not 0 <= self.limit <= 100:
            raise ValueError(f"a percent limit must lie in [0, 100], got {self.limit}")
        volume_kinds = (CriterionKind.VOLUME_ABOVE_MAX, CriterionKind.THERMAL_DAMAGE_VOLUME_MAX)
        if self.kind in volume_kinds and self.limit < 0:
            raise ValueError(f"a volume limit must be >= 0, got {self.limit}")
        return self

    @property
    def is_minimum(self) -> bool:
        return self.kind == CriterionKind.COVERAGE_MIN


class PulseTrain(_Strict):
    """A default pulse train; IRECT has two (the IRE core and the ECT margin)."""

    name: Annotated[str, Field(min_length=1)]
    purpose: str = ""
    pulses: Annotated[int, Field(ge=1)]
    pulse_length_us: Annotated[float, Field(gt=0)]
    repetition_rate_Hz: Annotated[float, Field(gt=0)]
    source: Annotated[str, Field(min_length=1)]


class PulseRules(_Strict):
    pulses_min: Annotated[int, Field(ge=1)]
    pulses_max: Annotated[int, Field(ge=1)]
    trains: Annotated[list[PulseTrain], Field(min_length=1)]
    source: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _defaults_allowed(self) -> PulseRules:
        if self.pulses_min > self.pulses_max:
            raise ValueError(f"pulses_min {self.pulses_min} > pulses_max {self.pulses_max}")
        for t in self.trains:
            if not self.pulses_min <= t.pulses <= self.pulses_max:
                raise ValueError(
                    f"train {t.name!r} has {t.pulses} pulses, outside the allowed "
                    f"{self.pulses_min}..{self.pulses_max}"
                )
        return self

    @property
    def default(self) -> PulseTrain:
        return self.trains[0]

    def train_for(self, pulses: int) -> PulseTrain:
        """The default train closest in pulse count (its repetition rate applies)."""
        return min(self.trains, key=lambda t: abs(t.pulses - pulses))


class Protocol(_Strict):
    name: Annotated[str, Field(min_length=1)]
    title: str
    modality: Modality
    description: str = ""
    sources: Annotated[list[str], Field(min_length=1)]
    pulses: PulseRules
    device: DeviceLimits
    criteria: Annotated[list[Criterion], Field(alias="criterion", min_length=1)]

    @model_validator(mode="after")
    def _unique_ids(self) -> Protocol:
        ids = [c.id for c in self.criteria]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"criterion ids must be unique; repeated: {', '.join(dupes)}")
        return self


def shipped_protocols() -> list[str]:
    folder = resources.files(PROTOCOL_PACKAGE).joinpath(PROTOCOL_FOLDER)
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def parse_protocol(text: str, where: str) -> Protocol:
    """Validate protocol TOML ``text``; errors name ``where`` and the key path."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{where} is not valid TOML: {exc}") from exc
    try:
        return Protocol.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{where}: {exc.error_count()} problem(s):"]
        for err in exc.errors():
            loc = tuple(err["loc"])
            path = field_path(loc)
            if len(loc) > 1 and loc[0] == "criterion" and isinstance(loc[1], int):
                entries = raw.get("criterion")
                entry = entries[loc[1]] if isinstance(entries, list) else None
                if isinstance(entry, dict) and "id" in entry:
                    path += f" (criterion {entry['id']!r})"
            lines.append(f"  {path}: {str(err['msg']).removeprefix('Value error, ')}")
        raise ProtocolError("\n".join(lines)) from None


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A shipped protocol by name ("ect", "ire", "irect") or a protocol file by path."""
    text_name = str(name_or_path)
    looks_like_path = (
        isinstance(name_or_path, Path) or text_name.endswith(".toml") or ("/" in text_name)
    )
    if looks_like_path:
        path = Path(name_or_path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ProtocolError(f"cannot read protocol file {path}: {exc}") from exc
        return parse_protocol(text, str(path))
    key = text_name.lower()
    if key not in shipped_protocols():
        raise ProtocolError(
            f"unknown protocol {text_name!r}; shipped protocols: {', '.join(shipped_protocols())} "
            "(or give the path of a .toml protocol file)"
        )
    resource = resources.files(PROTOCOL_PACKAGE).joinpath(f"{PROTOCOL_FOLDER}/{key}.toml")
    return parse_protocol(resource.read_text(), f"optimizer/evaluate/{PROTOCOL_FOLDER}/{key}.toml")
