"""The search's clinical ranges and score weights, read from data/space.toml and data/score.toml.

Both files keep a ``source`` beside every number; this module only types and checks them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

SEARCH_PACKAGE = "optimizer.search"


class SearchSettingsError(ValueError):
    """A search data file is missing a key or holds an impossible value."""


def _read(name: str, path: str | Path | None) -> tuple[dict[str, Any], str]:
    if path is None:
        where = f"optimizer/search/data/{name}"
        text = resources.files(SEARCH_PACKAGE).joinpath(f"data/{name}").read_text()
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SearchSettingsError(f"cannot read search settings {where}: {exc}") from exc
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as exc:
        raise SearchSettingsError(f"{where} is not valid TOML: {exc}") from exc


def _number(data: dict[str, Any], where: str, *keys: str) -> float:
    node: Any = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise SearchSettingsError(f"{where}: missing key {'.'.join(keys)}")
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise SearchSettingsError(f"{where}: {'.'.join(keys)} must be a number, got {node!r}")
    return float(node)


def _range(lo: float, hi: float, step: float, where: str, what: str) -> None:
    if not (step > 0 and lo <= hi):
        raise SearchSettingsError(f"{where}: {what} needs min <= max and step > 0")
    count = (hi - lo) / step
    if abs(count - round(count)) > 1e-9:
        raise SearchSettingsError(
            f"{where}: {what} range {lo}..{hi} is not a whole number of steps"
        )


@dataclass(frozen=True)
class RatioRange:
    """Voltage-to-distance ratio of one class of pulse train, V/cm."""

    min_V_per_cm: float
    max_V_per_cm: float
    default_V_per_cm: float


@dataclass(frozen=True)
class PulseRange:
    min: int
    max: int
    step: int


@dataclass(frozen=True)
class SpaceSettings:
    """Clinical ranges of the search space (data/space.toml)."""

    exposure_min_mm: float
    exposure_max_mm: float
    exposure_step_mm: float
    tip_offset_min_mm: float
    tip_offset_max_mm: float
    tip_step_mm: float
    ratio_reversible: RatioRange
    ratio_irreversible: RatioRange
    ratio_step_V_per_cm: float
    voltage_min_V: float
    voltage_step_V: float
    pulses_reversible: PulseRange
    pulses_irreversible: PulseRange
    irreversible_from_pulses: int
    adjacent_factor: float
    seed_spacings_mm: tuple[float, ...]
    sparing_reach_mm: float
    sparing_inset_mm: float
    sparing_patterns: int

    @property
    def exposures_mm(self) -> tuple[float, ...]:
        n = round((self.exposure_max_mm - self.exposure_min_mm) / self.exposure_step_mm)
        return tuple(self.exposure_min_mm + i * self.exposure_step_mm for i in range(n + 1))


def load_space_settings(path: str | Path | None = None) -> SpaceSettings:
    data, where = _read("space.toml", path)

    def num(*keys: str) -> float:
        return _number(data, where, *keys)

    def ratio(kind: str) -> RatioRange:
        r = RatioRange(
            num("ratio", kind, "min_V_per_cm"),
            num("ratio", kind, "max_V_per_cm"),
            num("ratio", kind, "default_V_per_cm"),
        )
        if not 0 < r.min_V_per_cm <= r.default_V_per_cm <= r.max_V_per_cm:
            raise SearchSettingsError(f"{where}: ratio.{kind} needs 0 < min <= default <= max")
        return r

    def pulses(kind: str) -> PulseRange:
        p = PulseRange(
            int(num("pulses", kind, "min")),
            int(num("pulses", kind, "max")),
            int(num("pulses", kind, "step")),
        )
        _range(p.min, p.max, p.step, where, f"pulses.{kind}")
        return p

    settings = SpaceSettings(
        exposure_min_mm=num("exposure", "min_mm"),
        exposure_max_mm=num("exposure", "max_mm"),
        exposure_step_mm=num("exposure", "step_mm"),
        tip_offset_min_mm=num("tip", "offset_min_mm"),
        tip_offset_max_mm=num("tip", "offset_max_mm"),
        tip_step_mm=num("tip", "step_mm"),
        ratio_reversible=ratio("reversible"),
        ratio_irreversible=ratio("irreversible"),
        ratio_step_V_per_cm=num("ratio", "step_V_per_cm"),
        voltage_min_V=num("voltage", "min_V"),
        voltage_step_V=num("voltage", "step_V"),
        pulses_reversible=pulses("reversible"),
        pulses_irreversible=pulses("irreversible"),
        irreversible_from_pulses=int(num("pulses", "irreversible_from")),
        adjacent_factor=num("pairs", "adjacent_factor"),
        seed_spacings_mm=tuple(float(s) for s in data.get("seeding", {}).get("spacings_mm", [])),
        sparing_reach_mm=num("seeding", "sparing_reach_mm"),
        sparing_inset_mm=num("seeding", "sparing_inset_mm"),
        sparing_patterns=int(num("seeding", "sparing_patterns")),
    )
    _range(
        settings.exposure_min_mm,
        settings.exposure_max_mm,
        settings.exposure_step_mm,
        where,
        "exposure",
    )
    _range(
        settings.tip_offset_min_mm,
        settings.tip_offset_max_mm,
        settings.tip_step_mm,
        where,
        "tip offset",
    )
    if settings.exposure_min_mm <= 0:
        raise SearchSettingsError(f"{where}: exposure.min_mm must be > 0")
    for r in (settings.ratio_reversible, settings.ratio_irreversible):
        _range(r.min_V_per_cm, r.max_V_per_cm, settings.ratio_step_V_per_cm, where, "ratio")
    if settings.adjacent_factor < 1:
        raise SearchSettingsError(f"{where}: pairs.adjacent_factor must be >= 1")
    if not settings.seed_spacings_mm or min(settings.seed_spacings_mm) <= 0:
        raise SearchSettingsError(f"{where}: seeding.spacings_mm must list positive spacings")
    if settings.sparing_reach_mm < 0 or settings.sparing_inset_mm < 0:
        raise SearchSettingsError(f"{where}: seeding.sparing_reach_mm and _inset_mm must be >= 0")
    if settings.sparing_patterns < 0:
        raise SearchSettingsError(f"{where}: seeding.sparing_patterns must be >= 0")
    return settings


@dataclass(frozen=True)
class ScoreWeights:
    """Weights and normalising scales of the single-objective score (data/score.toml)."""

    coverage: float
    organ_at_risk: float
    heat: float
    limits: float
    advisory_factor: float
    per_needle: float
    per_kJ: float
    scales: dict[str, float]
    default_scale: float

    def scale(self, unit: str) -> float:
        return self.scales.get(unit, self.default_scale)


def load_score_weights(path: str | Path | None = None) -> ScoreWeights:
    data, where = _read("score.toml", path)

    def num(*keys: str) -> float:
        return _number(data, where, *keys)

    scales_raw = data.get("scale")
    if not isinstance(scales_raw, dict):
        raise SearchSettingsError(f"{where}: missing table [scale]")
    scales = {
        unit: _number(scales_raw, where, unit)
        for unit in scales_raw
        if unit not in ("source", "default")
    }
    weights = ScoreWeights(
        coverage=num("weight", "coverage"),
        organ_at_risk=num("weight", "organ_at_risk"),
        heat=num("weight", "heat"),
        limits=num("weight", "limits"),
        advisory_factor=num("weight", "advisory_factor"),
        per_needle=num("weight", "per_needle"),
        per_kJ=num("weight", "per_kJ"),
        scales=scales,
        default_scale=_number(scales_raw, where, "default"),
    )
    for name in (
        "coverage",
        "organ_at_risk",
        "heat",
        "limits",
        "advisory_factor",
        "per_needle",
        "per_kJ",
    ):
        if getattr(weights, name) < 0:
            raise SearchSettingsError(f"{where}: weight.{name} must be >= 0")
    for unit, value in [*scales.items(), ("default", weights.default_scale)]:
        if value <= 0:
            raise SearchSettingsError(f"{where}: scale.{unit} must be > 0")
    return weights
