"""Electroporation-dependent conductivity sigma(E), per tissue, from the tissue table.

sigma(E) = sigma0 + (sigma1 - sigma0) * smoothstep((E - E_rev) / (E_irr - E_rev)), with the
cubic smoothstep s(x) = 3x^2 - 2x^3 on [0, 1] (0 below, 1 above): conductivity rises
smoothly from its intact value at the reversible threshold to its permeabilised value at the
irreversible one (Sel et al. 2005, IEEE TBME 52:816; Corovic et al. 2013, BioMed Eng OnLine
12:16, who use a smoothed Heaviside step of the same shape). Tissues without thresholds in the
table (urine, blood, bone) keep sigma0. Every number comes from ``tissues.toml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from optimizer.tissue.table import TissueTable, TissueTableError, load_tissue_table

F64 = npt.NDArray[np.float64]


def smoothstep(x: npt.ArrayLike) -> F64:
    """3x^2 - 2x^3 clipped to [0, 1]."""
    t = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t))


@njit(parallel=True, cache=True)
def _sigma_of_field(labels, field, sigma0, sigma1, e_rev, inv_width, out):  # type: ignore[no-untyped-def]
    flat_l = labels.reshape(-1)
    flat_e = field.reshape(-1)
    flat_o = out.reshape(-1)
    for i in prange(flat_l.size):
        k = flat_l[i]
        t = (flat_e[i] - e_rev[k]) * inv_width[k]
        t = min(max(t, 0.0), 1.0)
        flat_o[i] = sigma0[k] + (sigma1[k] - sigma0[k]) * t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True, eq=False)
class ConductivityModel:
    """Per-tissue sigma(E) for a label map whose values index ``names``."""

    names: tuple[str, ...]
    sigma0_S_per_m: F64
    sigma1_S_per_m: F64
    e_rev_V_per_cm: F64  # +inf for tissues that do not electroporate
    e_irr_V_per_cm: F64

    @classmethod
    def from_table(
        cls, names: Sequence[str], table: TissueTable | None = None
    ) -> ConductivityModel:
        table = load_tissue_table() if table is None else table
        tissues = [table[n] for n in names]  # raises naming an unknown tissue
        if not tissues:
            raise TissueTableError("a conductivity model needs at least one tissue name")
        rev = [t.e_rev_V_per_cm if t.electroporable else np.inf for t in tissues]
        irr = [t.e_irr_V_per_cm if t.electroporable else np.inf for t in tissues]
        return cls(
            names=tuple(names),
            sigma0_S_per_m=np.array([t.sigma0_S_per_m for t in tissues]),
            sigma1_S_per_m=np.array(
                [t.sigma1_S_per_m if t.electroporable else t.sigma0_S_per_m for t in tissues]
            ),
            e_rev_V_per_cm=np.array(rev, dtype=np.float64),
            e_irr_V_per_cm=np.array(irr, dtype=np.float64),
        )

    @property
    def electroporable(self) -> npt.NDArray[np.bool_]:
        return np.asarray(np.isfinite(self.e_rev_V_per_cm))

    def _labels(self, labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
        arr = np.asarray(labels)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"tissue labels must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.names)):
            raise ValueError(
                f"tissue labels must lie in 0..{len(self.names) - 1} (tissues "
                f"{', '.join(self.names)}); found {int(arr.min())}..{int(arr.max())}"
            )
        return np.ascontiguousarray(arr, dtype=np.int64)

    def baseline(self, labels: npt.ArrayLike) -> F64:
        """sigma0 per voxel (the intact tissue)."""
        return np.asarray(self.sigma0_S_per_m[self._labels(labels)])

    def sigma(self, labels: npt.ArrayLike, field_V_per_cm: npt.ArrayLike) -> F64:
        """sigma(E) per voxel for the field magnitude map |E| (V/cm)."""
        lab = self._labels(labels)
        field = np.ascontiguousarray(field_V_per_cm, dtype=np.float64)
        if field.shape != lab.shape:
            raise ValueError(f"field shape {field.shape} differs from labels shape {lab.shape}")
        if not np.all(np.isfinite(field)):
            raise ValueError("field contains NaN or infinite values")
        # Non-electroporable tissues: zero slope, so t = 0 and sigma stays sigma0.
        active = self.electroporable
        e_rev = np.where(active, self.e_rev_V_per_cm, 0.0)
        width = np.where(active, self.e_irr_V_per_cm - e_rev, 1.0)
        inv_width = np.where(active, 1.0 / width, 0.0)
        out = np.empty(lab.shape, dtype=np.float64)
        _sigma_of_field(lab, field, self.sigma0_S_per_m, self.sigma1_S_per_m, e_rev, inv_width, out)
        return out
