"""Field-volume histograms and the field levels a fraction or volume of a structure receives.

All functions take the field values of one structure's voxels (any order) in V/cm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Default field axis of the cumulative histograms: 0 to 3000 V/cm in 10 V/cm steps covers every
# threshold in the tissue table (100-900 V/cm) with room for the near-needle fields; the last
# point counts everything at or above 3000 V/cm.
FVH_STEP_V_PER_CM = 10.0
FVH_MAX_V_PER_CM = 3000.0


def field_axis_V_per_cm(
    step_V_per_cm: float = FVH_STEP_V_PER_CM, maximum_V_per_cm: float = FVH_MAX_V_PER_CM
) -> FloatArray:
    if not (step_V_per_cm > 0 and maximum_V_per_cm >= step_V_per_cm):
        raise ValueError(f"need 0 < step <= maximum, got {step_V_per_cm}, {maximum_V_per_cm}")
    count = round(maximum_V_per_cm / step_V_per_cm) + 1
    return np.arange(count, dtype=np.float64) * step_V_per_cm


def cumulative_fraction(
    values: npt.NDArray[np.floating], axis: Sequence[float] | FloatArray
) -> FloatArray:
    """Fraction of ``values`` at or above each point of the increasing ``axis``.

    Empty input gives NaN everywhere (no volume, no fraction).
    """
    ax = np.asarray(axis, dtype=np.float64)
    if ax.ndim != 1 or ax.size == 0 or np.any(np.diff(ax) <= 0):
        raise ValueError("the histogram axis must be a non-empty, strictly increasing 1-D array")
    v = np.asarray(values).ravel()
    if v.size == 0:
        return np.full(ax.size, np.nan)
    steps = np.diff(ax)
    if ax.size > 1 and np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        # Uniform axis: arithmetic bin index, then one correction step each way so that a value
        # equal to an axis point always counts as "at or above" it despite rounding.
        idx = np.floor((v - ax[0]) / steps[0]).astype(np.int64)
        np.clip(idx, -1, ax.size - 1, out=idx)
        up = idx + 1 < ax.size
        up[up] = v[up] >= ax[idx[up] + 1]
        idx[up] += 1
        down = idx >= 0
        down[down] = v[down] < ax[idx[down]]
        idx[down] -= 1
    else:
        idx = np.searchsorted(ax, v, side="right") - 1
    # idx = index of the last axis point <= value (-1: below the axis).
    counts = np.bincount(idx + 1, minlength=ax.size + 1)[1:]
    at_or_above = np.cumsum(counts[::-1])[::-1]
    return np.asarray(at_or_above / v.size, dtype=np.float64)


def covered_level(values: npt.NDArray[np.floating], percent: int) -> float:
    """E_p: the largest field that at least ``percent`` % of the voxels receive (at or above).

    For n voxels sorted ascending this is value[floor((100 - p) n / 100)]: E98 is the 2nd
    percentile, E50 the median (upper one for even n). Integer arithmetic keeps it exact.
    """
    return covered_levels(values, [percent])[0]


def covered_levels(values: npt.NDArray[np.floating], percents: Sequence[int]) -> list[float]:
    v = np.asarray(values).ravel()
    for p in percents:
        if not (isinstance(p, int | np.integer) and 0 < p <= 100):
            raise ValueError(f"percent must be an integer in 1..100, got {p!r}")
    if v.size == 0:
        return [math.nan for _ in percents]
    ks = [min(((100 - int(p)) * v.size) // 100, v.size - 1) for p in percents]
    part = np.partition(v, sorted(set(ks)))
    return [float(part[k]) for k in ks]


def hottest_volume_level(
    values: npt.NDArray[np.floating], volume_ml: float, voxel_volume_ml: float
) -> float:
    """The field the hottest ``volume_ml`` receives (the minimum over that volume).

    The brachytherapy D0.1cc / D2cc convention (GEC-ESTRO): a robust peak that one noisy voxel
    cannot set. The volume is rounded up to whole voxels; a structure smaller than it gives its
    minimum field.
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        return math.nan
    if not (volume_ml > 0 and voxel_volume_ml > 0):
        raise ValueError("volume_ml and voxel_volume_ml must be > 0")
    k = min(max(math.ceil(volume_ml / voxel_volume_ml - 1e-9), 1), v.size)
    return float(np.partition(v, v.size - k)[v.size - k])
