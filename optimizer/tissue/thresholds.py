"""Field thresholds versus pulse number, from the tissue table's two anchors.

The tissue table gives each electroporable tissue a reversible threshold ``e_rev`` and an
irreversible one ``e_irr`` at its reference pulse count (8, the ECT train), and an irreversible
threshold ``e_irr_90_pulses`` at 90 pulses (the IRE train). Between and beyond the anchors the
irreversible threshold follows a power law in the pulse count, i.e. it is linear in
log(E) versus log(n):

    E_irr(n) = E_irr(n_ref) * (n / n_ref) ** (-p)
    p = ln(E_irr(n_ref) / E_irr(90)) / ln(90 / n_ref)

so it passes exactly through both anchors, stays positive for any n and falls monotonically with
n. Outside [n_ref, 90] it is an extrapolation (uncertain). A tissue without a 90-pulse anchor
keeps a pulse-independent threshold.

The reversible threshold is held independent of the pulse count: the tables give it for the
8-pulse ECT train only. That under-states coverage at E_rev for longer trains (conservative for
targets) and under-states organ-at-risk volumes above E_rev (those are reported, not limited).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from optimizer.tissue.table import Tissue, TissueTable

# The pulse count of the tissue table's ``e_irr_90_pulses_V_per_cm`` key.
IRE_ANCHOR_PULSES = 90

ThresholdName = Literal["e_rev", "e_irr"]
THRESHOLD_NAMES: tuple[ThresholdName, ...] = ("e_rev", "e_irr")


class ThresholdError(ValueError):
    """A threshold was asked for by an unknown name, or for an impossible pulse count."""


def _check_pulses(pulses: float) -> None:
    if not (math.isfinite(pulses) and pulses >= 1):
        raise ThresholdError(f"pulse count must be >= 1, got {pulses}")


def irreversible_exponent(tissue: Tissue, reference_pulses: int) -> float:
    """The power-law exponent p of E_irr(n); 0 when the tissue has no 90-pulse anchor."""
    e_ref, e_90 = tissue.e_irr_V_per_cm, tissue.e_irr_90_pulses_V_per_cm
    if e_ref is None or e_90 is None:
        return 0.0
    if not 1 <= reference_pulses < IRE_ANCHOR_PULSES:
        raise ThresholdError(
            f"the tissue table's reference pulse count must lie in [1, {IRE_ANCHOR_PULSES}), "
            f"got {reference_pulses}"
        )
    if not 0 < e_90 <= e_ref:
        raise ThresholdError(
            f"tissue {tissue.name!r}: e_irr_90_pulses_V_per_cm ({e_90}) must be positive and at "
            f"most e_irr_V_per_cm ({e_ref}); thresholds fall with pulse number"
        )
    return math.log(e_ref / e_90) / math.log(IRE_ANCHOR_PULSES / reference_pulses)


def irreversible_threshold_V_per_cm(
    tissue: Tissue, pulses: float, reference_pulses: int
) -> float | None:
    """E_irr of ``tissue`` after ``pulses`` pulses; None for non-electroporable tissue."""
    _check_pulses(pulses)
    if tissue.e_irr_V_per_cm is None:
        return None
    p = irreversible_exponent(tissue, reference_pulses)
    return tissue.e_irr_V_per_cm * (pulses / reference_pulses) ** (-p)


def reversible_threshold_V_per_cm(tissue: Tissue, pulses: float) -> float | None:
    """E_rev of ``tissue``: independent of the pulse count (see the module docstring)."""
    _check_pulses(pulses)
    return tissue.e_rev_V_per_cm


class ThresholdTable:
    """Per-tissue thresholds versus pulse count, read from one tissue table."""

    def __init__(self, table: TissueTable) -> None:
        self.table = table
        for tissue in table.tissues.values():
            irreversible_exponent(tissue, table.reference_pulses)  # validates the anchors
        # lookup() answers, kept: an evaluation asks the same few thousands of times.
        self._looked_up: dict[tuple[tuple[str, ...], str, float], npt.NDArray[np.float64]] = {}

    def value(self, tissue: str, name: str, pulses: float) -> float | None:
        """Threshold ``name`` ("e_rev" or "e_irr") of ``tissue`` at ``pulses``, V/cm."""
        t = self.table[tissue]
        if name == "e_rev":
            return reversible_threshold_V_per_cm(t, pulses)
        if name == "e_irr":
            return irreversible_threshold_V_per_cm(t, pulses, self.table.reference_pulses)
        raise ThresholdError(
            f"unknown threshold {name!r}; use one of {', '.join(THRESHOLD_NAMES)} or a number "
            "in V/cm"
        )

    def lookup(
        self, tissue_names: Sequence[str], threshold: str | float, pulses: float
    ) -> npt.NDArray[np.float64]:
        """One threshold per tissue, in the order given; +inf where a tissue has none.

        A number is a field level in V/cm that applies to every tissue alike.
        """
        if not isinstance(threshold, str):
            level = float(threshold)
            if not (math.isfinite(level) and level > 0):
                raise ThresholdError(f"a numeric threshold must be > 0 V/cm, got {threshold}")
            return np.full(len(tissue_names), level)
        key = (tuple(tissue_names), threshold, float(pulses))
        known = self._looked_up.get(key)
        if known is None:
            values = [self.value(t, threshold, pulses) for t in tissue_names]
            known = np.array([math.inf if v is None else v for v in values], dtype=np.float64)
            known.flags.writeable = False  # shared between callers
            self._looked_up[key] = known
        return known

    def rows(self, pulse_counts: Sequence[int]) -> list[dict[str, object]]:
        """A report table: each tissue's E_rev and E_irr at each of ``pulse_counts``."""
        rows: list[dict[str, object]] = []
        for name, tissue in self.table.tissues.items():
            if not tissue.electroporable:
                continue
            row: dict[str, object] = {
                "tissue": name,
                "e_rev_V_per_cm": tissue.e_rev_V_per_cm,
                "e_irr_exponent": irreversible_exponent(tissue, self.table.reference_pulses),
            }
            for n in pulse_counts:
                row[f"e_irr_{n}_pulses_V_per_cm"] = self.value(name, "e_irr", n)
            rows.append(row)
        return rows
