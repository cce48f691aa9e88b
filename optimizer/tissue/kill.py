"""Peleg-Fermi cell kill versus field and pulse count, calibrated per tissue.

S(E, n) = 1 / (1 + exp((E - Ec(n)) / A(n))), Ec(n) = Ec0 exp(-k1 n), A(n) = A0 exp(-k2 n)
(Golberg & Rubinsky 2010, BioMed Eng OnLine 9:13). data/kill_models.toml says how each tissue's
model is calibrated from the tissue table (50 % kill on E_irr at 8 and at 90 pulses) and holds
the published in vitro set for comparison.

Several pairs: a voxel's survival is the product of its survivals under each pair's train (each
pair's field and pulse count), i.e. the trains are treated as independent kill events. This
ignores that pulses of different pairs add up in one cell (Peleg-Fermi of the summed pulse count
would kill more), so it under-states kill where pairs overlap; it is the common choice in
multi-pair planning studies and never credits a voxel with a field it did not see.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from optimizer.tissue.table import Tissue, TissueTable
from optimizer.tissue.thresholds import IRE_ANCHOR_PULSES

FloatArray = npt.NDArray[np.float64]


class KillModelError(ValueError):
    """A kill-model file is malformed, or a model was asked for that does not exist."""


@dataclass(frozen=True)
class PelegFermi:
    ec0_V_per_cm: float
    a0_V_per_cm: float
    k1_per_pulse: float
    k2_per_pulse: float
    source: str = ""

    def __post_init__(self) -> None:
        values = (self.ec0_V_per_cm, self.a0_V_per_cm, self.k1_per_pulse, self.k2_per_pulse)
        if not all(math.isfinite(v) for v in values):
            raise KillModelError(f"Peleg-Fermi parameters must be finite, got {values}")
        if self.ec0_V_per_cm <= 0 or self.a0_V_per_cm <= 0:
            raise KillModelError("Peleg-Fermi Ec0 and A0 must be > 0 V/cm")

    def critical_field_V_per_cm(self, pulses: float) -> float:
        """Ec(n): the field that kills half the cells after ``pulses`` pulses."""
        return self.ec0_V_per_cm * math.exp(-self.k1_per_pulse * pulses)

    def width_V_per_cm(self, pulses: float) -> float:
        """A(n): the logistic scale; kill goes from 10 % to 90 % over Ec +- A ln 9."""
        return self.a0_V_per_cm * math.exp(-self.k2_per_pulse * pulses)

    def survival(self, field_V_per_cm: npt.ArrayLike, pulses: float) -> FloatArray:
        """Surviving fraction at each field value after ``pulses`` pulses."""
        e = np.asarray(field_V_per_cm, dtype=np.float64)
        x = (e - self.critical_field_V_per_cm(pulses)) / self.width_V_per_cm(pulses)
        return np.asarray(np.exp(-np.logaddexp(0.0, x)))

    def field_for_kill_V_per_cm(self, kill: float, pulses: float) -> float:
        """The field that kills the fraction ``kill`` (0 < kill < 1) after ``pulses`` pulses."""
        if not 0 < kill < 1:
            raise KillModelError(f"kill fraction must lie strictly between 0 and 1, got {kill}")
        return self.critical_field_V_per_cm(pulses) + self.width_V_per_cm(pulses) * math.log(
            kill / (1.0 - kill)
        )


def calibrate_peleg_fermi(
    e_low_V_per_cm: float,
    low_pulses: int,
    e_high_V_per_cm: float,
    high_pulses: int,
    relative_width: float,
    source: str = "",
) -> PelegFermi:
    """The model with Ec(low_pulses) = e_low, Ec(high_pulses) = e_high and A = relative_width Ec."""
    if not (0 < e_high_V_per_cm <= e_low_V_per_cm and 0 < low_pulses < high_pulses):
        raise KillModelError(
            f"calibration needs 0 < e_high <= e_low and low < high pulses, got e_low "
            f"{e_low_V_per_cm} at {low_pulses}, e_high {e_high_V_per_cm} at {high_pulses}"
        )
    if not 0 < relative_width < 1:
        raise KillModelError(f"relative width must lie in (0, 1), got {relative_width}")
    k1 = math.log(e_low_V_per_cm / e_high_V_per_cm) / (high_pulses - low_pulses)
    ec0 = e_low_V_per_cm * math.exp(k1 * low_pulses)
    return PelegFermi(ec0, relative_width * ec0, k1, k1, source)


@dataclass(frozen=True)
class KillModels:
    """How tissue models are calibrated, plus named reference models."""

    lethal_threshold_mean_V_per_cm: float
    lethal_threshold_sd_V_per_cm: float
    calibration_source: str
    references: dict[str, PelegFermi] = field(default_factory=dict)
    path: str = ""

    @property
    def relative_width(self) -> float:
        """A(n)/Ec(n): the logistic scale whose SD matches the reported threshold spread."""
        sd_over_mean = self.lethal_threshold_sd_V_per_cm / self.lethal_threshold_mean_V_per_cm
        return math.sqrt(3.0) / math.pi * sd_over_mean

    def for_tissue(self, tissue: Tissue, reference_pulses: int) -> PelegFermi | None:
        """The calibrated model of ``tissue``; None when the tissue is not electroporable."""
        e_ref = tissue.e_irr_V_per_cm
        if e_ref is None:
            return None
        e_90 = tissue.e_irr_90_pulses_V_per_cm
        source = (
            f"calibrated on {tissue.name}'s E_irr ({e_ref:g} V/cm at {reference_pulses} pulses"
            + (f", {e_90:g} V/cm at {IRE_ANCHOR_PULSES}" if e_90 is not None else "")
            + f"); width {self.relative_width:.4f} Ec ({self.calibration_source})"
        )
        return calibrate_peleg_fermi(
            e_ref,
            reference_pulses,
            e_ref if e_90 is None else e_90,
            IRE_ANCHOR_PULSES,
            self.relative_width,
            source,
        )

    def for_table(self, table: TissueTable) -> dict[str, PelegFermi | None]:
        return {
            name: self.for_tissue(t, table.reference_pulses) for name, t in table.tissues.items()
        }

    def named(self, name: str) -> PelegFermi:
        try:
            return self.references[name]
        except KeyError:
            known = ", ".join(sorted(self.references)) or "none"
            raise KillModelError(
                f"no kill model {name!r} in {self.path}; known models: {known}"
            ) from None


def _positive(section: dict[str, object], key: str, where: str) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KillModelError(f"{where}: {key} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise KillModelError(f"{where}: {key} must be finite and >= 0, got {value}")
    return float(value)


def _source(section: dict[str, object], where: str) -> str:
    source = section.get("source")
    if not isinstance(source, str) or not source.strip():
        raise KillModelError(f"{where}: every entry needs a non-empty source")
    return source


def load_kill_models(path: str | Path | None = None) -> KillModels:
    """Read kill models; the packaged data/kill_models.toml when ``path`` is None."""
    if path is None:
        text = resources.files("optimizer.tissue").joinpath("data/kill_models.toml").read_text()
        where = "optimizer/tissue/data/kill_models.toml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KillModelError(f"cannot read kill models {where}: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KillModelError(f"{where} is not valid TOML: {exc}") from exc
    cal = raw.get("calibration")
    if not isinstance(cal, dict):
        raise KillModelError(f"{where}: missing [calibration] section")
    here = f"{where} [calibration]"
    mean = _positive(cal, "lethal_threshold_mean_V_per_cm", here)
    sd = _positive(cal, "lethal_threshold_sd_V_per_cm", here)
    if not 0 < sd < mean:
        raise KillModelError(f"{here}: need 0 < lethal_threshold_sd < lethal_threshold_mean")
    references: dict[str, PelegFermi] = {}
    for name, entry in raw.get("model", {}).items():
        here = f"{where} [model.{name}]"
        if not isinstance(entry, dict):
            raise KillModelError(f"{here}: must be a table")
        references[name] = PelegFermi(
            _positive(entry, "ec0_V_per_cm", here),
            _positive(entry, "a0_V_per_cm", here),
            _positive(entry, "k1_per_pulse", here),
            _positive(entry, "k2_per_pulse", here),
            _source(entry, here),
        )
    return KillModels(mean, sd, _source(cal, f"{where} [calibration]"), references, where)


def survival(
    field_V_per_cm: npt.NDArray[np.floating],
    tissue_index: npt.NDArray[np.integer],
    models: Sequence[PelegFermi | None],
    pulses: float,
) -> npt.NDArray[np.float32]:
    """S of each voxel under one pair's train; 1 where the voxel's tissue has no model.

    ``tissue_index`` indexes ``models`` per voxel (same shape as the field).
    """
    ec = np.array(
        [np.inf if m is None else m.critical_field_V_per_cm(pulses) for m in models], np.float32
    )
    inv_a = np.array(
        [1.0 if m is None else 1.0 / m.width_V_per_cm(pulses) for m in models], np.float32
    )
    x = np.subtract(field_V_per_cm, ec[tissue_index], dtype=np.float32)
    x *= inv_a[tissue_index]
    # exp overflows to inf for x > 88, giving S = 0 exactly: the intended limit.
    with np.errstate(over="ignore"):
        np.exp(x, out=x)
    x += np.float32(1.0)
    return np.asarray(np.reciprocal(x, out=x), dtype=np.float32)


def kill_probability(
    fields_V_per_cm: Sequence[npt.NDArray[np.floating]],
    pulses: Sequence[float],
    tissue_index: npt.NDArray[np.integer],
    models: Sequence[PelegFermi | None],
) -> npt.NDArray[np.float32]:
    """1 - prod over pairs of S(E_p, n_p): the kill probability of each voxel."""
    if len(fields_V_per_cm) != len(pulses):
        raise KillModelError(
            f"{len(fields_V_per_cm)} field arrays but {len(pulses)} pulse counts; give one per pair"
        )
    alive = np.ones(np.shape(tissue_index), dtype=np.float32)
    for e, n in zip(fields_V_per_cm, pulses, strict=True):
        alive *= survival(e, tissue_index, models, n)
    return np.asarray(1.0 - alive, dtype=np.float32)
