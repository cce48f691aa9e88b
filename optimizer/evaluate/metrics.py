"""The metrics of an exposure as one JSON-ready dict; every number's unit is in its key.

Layout (``METRICS_SCHEMA``)::

    schema, research_use_notice, tissue_table, modelled_structures
    grid:    shape, spacing_mm, voxel_volume_ml
    settings: body_temperature_C, covered_percents, hottest_volume_ml, kill_level,
              needle_vicinity_mm, thermal_time_course
    pairs[]: index, anode, cathode, voltage_V, pulses, pulse_length_us, repetition_rate_Hz,
             current_A, resistance_ohm, energy_J, peak_field_V_per_cm
    totals:  pulses, energy_J, delivery_time_s, peak_field_V_per_cm, peak_temperature_C,
             peak_temperature_away_from_needles_C
    field_volume_histogram_axis_V_per_cm: [...]
    structures: {name: {
        kind, role, tissue, modelled, volume_ml,
        field: max_V_per_cm, mean_V_per_cm, e98_V_per_cm, e95_V_per_cm, e50_V_per_cm,
               hottest_0p1ml_V_per_cm,
        thresholds: {e_rev | e_irr: threshold_min_V_per_cm, threshold_max_V_per_cm,
                     coverage_fraction, volume_ml, treatable_volume_ml,
                     min_pulses_above, mean_pulses_above},
        kill: mean_kill_probability, kill_at_least_0p9_fraction, kill_at_least_0p9_volume_ml,
        heat: peak_temperature_C, peak_temperature_away_from_needles_C,
              mean_temperature_rise_K, peak_arrhenius_omega, damaged_volume_ml,
        field_volume_histogram_fraction: [...]}}

Fractions are 0..1 (criteria report percent). Values that do not exist (an empty structure, a
tissue without thresholds, an unknown current) are None.

``detail="search"`` (``METRICS_DETAILS``) keeps only what ranking a plan reads besides its
criteria: the totals, the pairs and, per structure, kind, role, tissue, volume, peak and mean
field and each threshold's range; no histograms, percentiles, kill or heat per structure, no
coverage figures (the criteria carry those). Why: with cached pairs a coarse evaluation took
17.5 ms with the full set and 11.0 ms with this one (prostatex-0000's geometric seeds, one
thread, both in one process), and an exploration trial's metrics are never shown or written;
the plan a search returns is evaluated again in full. Such a dict says ``"detail": "search"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from optimizer import RESEARCH_USE_NOTICE
from optimizer.evaluate.exposure import Exposure, Region
from optimizer.evaluate.histograms import (
    covered_levels,
    cumulative_fraction,
    field_axis_V_per_cm,
    hottest_volume_level,
)
from optimizer.tissue.thresholds import THRESHOLD_NAMES

METRICS_SCHEMA = "ectplan.metrics/1"
METRICS_DETAILS = ("full", "search")
DEFAULT_COVERED_PERCENTS = (98, 95, 50)
# The robust peak: the field the hottest 0.1 ml receives (brachytherapy's D0.1cc convention).
DEFAULT_HOTTEST_ML = 0.1
DEFAULT_KILL_LEVEL = 0.9
# Within this distance of an exposed needle the grid does not resolve the field singularity.
DEFAULT_NEEDLE_VICINITY_MM = 2.0
THERMAL_TIME_COURSE = (
    "adiabatic (no conduction or perfusion); pairs in plan order, each pulse's temperature held "
    "for one period of its train; Arrhenius damage in excess of the body-temperature rate"
)


def _num(x: float) -> float | None:
    """JSON-safe number: NaN/inf become None."""
    return float(x) if math.isfinite(x) else None


def _key_number(value: float) -> str:
    """0.1 -> "0p1": keys stay plain identifiers (no dots) for every consumer."""
    return f"{value:g}".replace(".", "p")


def threshold_summary(exposure: Exposure, region: Region, threshold: str | float) -> dict[str, Any]:
    """Coverage of ``region`` at ``threshold`` (each voxel's tissue, each pair's pulses)."""
    treatable = exposure.treatable(region, threshold)
    n_treat = int(np.count_nonzero(treatable))
    ml = region.voxel_volume_ml
    summary: dict[str, Any] = {
        "threshold_min_V_per_cm": None,
        "threshold_max_V_per_cm": None,
        "coverage_fraction": None,
        "volume_ml": 0.0,
        "treatable_volume_ml": n_treat * ml,
        "min_pulses_above": None,
        "mean_pulses_above": None,
    }
    if n_treat == 0:
        return summary
    span = exposure.threshold_range(region, threshold)
    if span is not None:
        summary["threshold_min_V_per_cm"], summary["threshold_max_V_per_cm"] = span
    pulses = exposure.pulses_above(region, threshold)[treatable]
    n_above = int(np.count_nonzero(pulses))
    summary |= {
        "coverage_fraction": n_above / n_treat,
        "volume_ml": n_above * ml,
        "min_pulses_above": int(pulses.min()),
        "mean_pulses_above": float(pulses.mean(dtype=np.float64)),
    }
    return summary


def structure_metrics(
    exposure: Exposure,
    region: Region,
    axis: np.ndarray,
    *,
    covered_percents: Sequence[int],
    hottest_ml: float,
    kill_level: float,
    away_from_needles: np.ndarray,
) -> dict[str, Any]:
    e = exposure.max_field_in(region)
    empty = region.voxel_count == 0
    levels = covered_levels(e, list(covered_percents))
    field: dict[str, Any] = {
        "max_V_per_cm": None if empty else float(e.max()),
        "mean_V_per_cm": None if empty else float(e.mean(dtype=np.float64)),
    }
    for p, level in zip(covered_percents, levels, strict=True):
        field[f"e{p}_V_per_cm"] = _num(level)
    field[f"hottest_{_key_number(hottest_ml)}ml_V_per_cm"] = _num(
        hottest_volume_level(e, hottest_ml, region.voxel_volume_ml)
    )

    kill = exposure.kill_probability(region)
    killed = int(np.count_nonzero(kill >= kill_level))
    lvl = _key_number(kill_level)
    rise = region.take(exposure.heat.temperature_rise_K)
    omega = region.take(exposure.heat.arrhenius_omega)
    away = region.take(away_from_needles).astype(bool)
    body = exposure.table.body_temperature_C
    return {
        "volume_ml": region.volume_ml,
        "field": field,
        "thresholds": {name: threshold_summary(exposure, region, name) for name in THRESHOLD_NAMES},
        "kill": {
            "mean_kill_probability": None if empty else float(kill.mean(dtype=np.float64)),
            f"kill_at_least_{lvl}_fraction": None if empty else killed / region.voxel_count,
            f"kill_at_least_{lvl}_volume_ml": killed * region.voxel_volume_ml,
        },
        "heat": {
            "peak_temperature_C": None if empty else body + float(rise.max()),
            "peak_temperature_away_from_needles_C": (
                body + float(rise[away].max()) if away.any() else None
            ),
            "mean_temperature_rise_K": None if empty else float(rise.mean(dtype=np.float64)),
            "peak_arrhenius_omega": None if empty else _num(float(omega.max())),
            "damaged_volume_ml": int(np.count_nonzero(omega >= 1.0)) * region.voxel_volume_ml,
        },
        "field_volume_histogram_fraction": [_num(x) for x in cumulative_fraction(e, axis)],
    }


def search_structure_metrics(exposure: Exposure, region: Region) -> dict[str, Any]:
    """A structure's volume, peak and mean field and threshold ranges (``detail="search"``)."""
    e = exposure.max_field_in(region)
    empty = region.voxel_count == 0
    thresholds: dict[str, Any] = {}
    for name in THRESHOLD_NAMES:
        span = None if empty else exposure.threshold_range(region, name)
        thresholds[name] = {
            "threshold_min_V_per_cm": None if span is None else span[0],
            "threshold_max_V_per_cm": None if span is None else span[1],
        }
    return {
        "volume_ml": region.volume_ml,
        "field": {
            "max_V_per_cm": None if empty else float(e.max()),
            "mean_V_per_cm": None if empty else float(e.mean(dtype=np.float64)),
        },
        "thresholds": thresholds,
    }


def pair_metrics(exposure: Exposure) -> list[dict[str, Any]]:
    rows = []
    for i, p in enumerate(exposure.pairs):
        current = _num(p.current_A)
        voltage = _num(p.voltage_V)
        rows.append(
            {
                "index": i,
                "anode": p.anode,
                "cathode": p.cathode,
                "voltage_V": voltage,
                "pulses": p.pulses,
                "pulse_length_us": p.pulse_length_us,
                "repetition_rate_Hz": p.repetition_rate_Hz,
                "current_A": current,
                "resistance_ohm": (voltage / current if voltage is not None and current else None),
                "energy_J": (
                    voltage * current * p.pulses * p.pulse_length_us * 1e-6
                    if voltage is not None and current is not None
                    else None
                ),
                "peak_field_V_per_cm": float(p.field_V_per_cm.max()),
            }
        )
    return rows


def compute_metrics(
    exposure: Exposure,
    *,
    axis_V_per_cm: np.ndarray | None = None,
    covered_percents: Sequence[int] = DEFAULT_COVERED_PERCENTS,
    hottest_ml: float = DEFAULT_HOTTEST_ML,
    kill_level: float = DEFAULT_KILL_LEVEL,
    needle_vicinity_mm: float = DEFAULT_NEEDLE_VICINITY_MM,
    detail: str = "full",
) -> dict[str, Any]:
    """Every structure's field, threshold, kill and heat figures, plus pair and plan totals
    (``detail="search"``: the subset a search ranks plans by; see the module docstring)."""
    if detail not in METRICS_DETAILS:
        raise ValueError(f"metrics detail must be one of {METRICS_DETAILS}, not {detail!r}")
    axis = field_axis_V_per_cm() if axis_V_per_cm is None else np.asarray(axis_V_per_cm, float)
    away = ~exposure.near_needles(needle_vicinity_mm)
    rise = exposure.heat.temperature_rise_K
    body = exposure.table.body_temperature_C
    structures: dict[str, Any] = {}
    for s in exposure.anatomy:
        region = exposure.structure_region(s)
        structures[s.name] = {
            "kind": s.kind.name,
            "role": s.role.value,
            "tissue": s.tissue,
            "modelled": s.modelled,
        } | (
            structure_metrics(
                exposure, region, axis, covered_percents=covered_percents,
                hottest_ml=hottest_ml, kill_level=kill_level, away_from_needles=away,
            )
            if detail == "full"
            else search_structure_metrics(exposure, region)
        )  # fmt: skip
    pairs = pair_metrics(exposure)
    energies = [p["energy_J"] for p in pairs]
    total_pulses = sum(p.pulses for p in exposure.pairs)
    grid = exposure.grid
    out: dict[str, Any] = {
        "schema": METRICS_SCHEMA,
        "research_use_notice": RESEARCH_USE_NOTICE,
        "tissue_table": exposure.table.label,
        "modelled_structures": exposure.anatomy.modelled_structures,
        "grid": {
            "shape": list(grid.shape),
            "spacing_mm": [float(x) for x in grid.spacing_mm],
            "voxel_volume_ml": grid.voxel_volume_ml,
        },
        "settings": {
            "body_temperature_C": body,
            "covered_percents": list(covered_percents),
            "hottest_volume_ml": hottest_ml,
            "kill_level": kill_level,
            "needle_vicinity_mm": needle_vicinity_mm,
            "thermal_time_course": THERMAL_TIME_COURSE,
        },
        "pairs": pairs,
        "totals": {
            "pulses": total_pulses,
            "energy_J": (
                None if any(e is None for e in energies) else sum(e for e in energies if e)
            ),
            "delivery_time_s": sum(p.pulses / p.repetition_rate_Hz for p in exposure.pairs),
            "peak_field_V_per_cm": float(exposure.max_field_V_per_cm.max()),
            "peak_temperature_C": body + float(rise.max()),
            "peak_temperature_away_from_needles_C": (
                body + float(rise[away].max()) if away.any() else None
            ),
        },
        "field_volume_histogram_axis_V_per_cm": [float(x) for x in axis],
        "structures": structures,
    }
    if detail != "full":
        del out["field_volume_histogram_axis_V_per_cm"]
        out["detail"] = detail
    return out
