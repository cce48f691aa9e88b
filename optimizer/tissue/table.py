"""The tissue table: one data file holds every tissue number with its source."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class TissueTableError(ValueError):
    """A tissue table file is malformed or lacks a number or its source."""


@dataclass(frozen=True)
class Tissue:
    name: str
    sigma0_S_per_m: float
    sigma1_S_per_m: float
    e_rev_V_per_cm: float | None
    e_irr_V_per_cm: float | None
    source: str
    e_irr_90_pulses_V_per_cm: float | None = None

    @property
    def electroporable(self) -> bool:
        return self.e_rev_V_per_cm is not None and self.e_irr_V_per_cm is not None


@dataclass(frozen=True)
class TissueTable:
    name: str
    version: str
    tissues: dict[str, Tissue]
    reference_pulses: int
    reference_pulse_length_us: float
    body_temperature_C: float
    rho_c_J_per_m3K: float
    arrhenius_frequency_factor_per_s: float
    arrhenius_activation_energy_J_per_mol: float
    path: str

    @property
    def label(self) -> str:
        """How outputs name the table they used."""
        return f"{self.name} {self.version}"

    def __getitem__(self, name: str) -> Tissue:
        try:
            return self.tissues[name]
        except KeyError:
            known = ", ".join(sorted(self.tissues))
            raise TissueTableError(
                f"tissue {name!r} is not in table {self.label}; known tissues: {known}"
            ) from None

    def names(self) -> list[str]:
        return list(self.tissues)


def _number(entry: dict[str, object], key: str, where: str, required: bool) -> float | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise TissueTableError(f"{where}: missing {key}")
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TissueTableError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def load_tissue_table(path: str | Path | None = None) -> TissueTable:
    """Read a tissue table; the packaged default when ``path`` is None."""
    if path is None:
        text = resources.files("optimizer.tissue").joinpath("data/tissues.toml").read_text()
        where = "optimizer/tissue/data/tissues.toml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise TissueTableError(f"cannot read tissue table {where}: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TissueTableError(f"{where} is not valid TOML: {exc}") from exc
    head = raw.get("table")
    if not isinstance(head, dict):
        raise TissueTableError(f"{where}: missing [table] section")
    arrhenius = head.get("arrhenius", {})
    tissues: dict[str, Tissue] = {}
    for name, entry in raw.get("tissue", {}).items():
        here = f"{where} [tissue.{name}]"
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise TissueTableError(f"{here}: every tissue needs a source")
        sigma0 = _number(entry, "sigma0_S_per_m", here, True)
        sigma1 = _number(entry, "sigma1_S_per_m", here, True)
        assert sigma0 is not None and sigma1 is not None
        if sigma0 <= 0 or sigma1 <= 0:
            raise TissueTableError(f"{here}: conductivities must be positive")
        e_rev = _number(entry, "e_rev_V_per_cm", here, False)
        e_irr = _number(entry, "e_irr_V_per_cm", here, False)
        if (e_rev is None) != (e_irr is None) or (
            e_rev is not None and e_irr is not None and not 0 < e_rev < e_irr
        ):
            raise TissueTableError(f"{here}: need 0 < e_rev_V_per_cm < e_irr_V_per_cm, or neither")
        tissues[name] = Tissue(
            name=name,
            sigma0_S_per_m=sigma0,
            sigma1_S_per_m=sigma1,
            e_rev_V_per_cm=e_rev,
            e_irr_V_per_cm=e_irr,
            e_irr_90_pulses_V_per_cm=_number(entry, "e_irr_90_pulses_V_per_cm", here, False),
            source=source,
        )
    if not tissues:
        raise TissueTableError(f"{where}: no [tissue.*] entries")

    def req(section: dict[str, object], key: str) -> float:
        value = _number(section, key, f"{where} [table]", True)
        assert value is not None
        return value

    return TissueTable(
        name=str(head.get("name", "unnamed")),
        version=str(head.get("version", "0")),
        tissues=tissues,
        reference_pulses=int(req(head, "reference_pulses")),
        reference_pulse_length_us=req(head, "reference_pulse_length_us"),
        body_temperature_C=req(head, "body_temperature_C"),
        rho_c_J_per_m3K=req(head, "rho_c_J_per_m3K"),
        arrhenius_frequency_factor_per_s=req(arrhenius, "frequency_factor_per_s"),
        arrhenius_activation_energy_J_per_mol=req(arrhenius, "activation_energy_J_per_mol"),
        path=where,
    )
