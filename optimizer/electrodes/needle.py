"""A needle electrode: a conducting exposed tip on an insulated shaft."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# 19 G needle outer diameter (Stubs' gauge table: 1.067 mm), the usual ECT/IRE electrode.
NEEDLE_19G_DIAMETER_MM = 1.067


class NeedleError(ValueError):
    """A needle's geometry is impossible (zero direction, negative exposure, NaN tip...)."""


@dataclass(frozen=True, eq=False)
class Needle:
    """Tip in RAS mm; ``direction`` is the unit insertion direction (from skin towards tip).

    The exposed (conducting) part runs from ``tip - exposure_mm * direction`` to ``tip``; the
    shaft behind it, back to the entry point, is insulated.
    """

    tip_mm: FloatArray
    direction: FloatArray
    exposure_mm: float
    diameter_mm: float = NEEDLE_19G_DIAMETER_MM
    hole: str | None = None
    entry_mm: FloatArray | None = field(default=None)

    def __post_init__(self) -> None:
        tip = np.asarray(self.tip_mm, dtype=np.float64).reshape(3)
        d = np.asarray(self.direction, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(tip)) and np.all(np.isfinite(d))):
            raise NeedleError(f"needle {self.label}: tip and direction must be finite")
        norm = float(np.linalg.norm(d))
        if norm < 1e-9:
            raise NeedleError(f"needle {self.label}: direction has zero length")
        if not (np.isfinite(self.exposure_mm) and self.exposure_mm > 0):
            raise NeedleError(f"needle {self.label}: exposure_mm must be > 0")
        if not (np.isfinite(self.diameter_mm) and 0 < self.diameter_mm < 5):
            raise NeedleError(f"needle {self.label}: diameter_mm must be in (0, 5)")
        object.__setattr__(self, "tip_mm", tip)
        object.__setattr__(self, "direction", d / norm)
        if self.entry_mm is not None:
            entry = np.asarray(self.entry_mm, dtype=np.float64).reshape(3)
            object.__setattr__(self, "entry_mm", entry)

    @property
    def label(self) -> str:
        return self.hole or "(free)"

    @property
    def radius_mm(self) -> float:
        return self.diameter_mm / 2.0

    @property
    def exposed_start_mm(self) -> FloatArray:
        """The insulated-to-exposed transition, ``exposure_mm`` behind the tip."""
        return np.asarray(self.tip_mm - self.exposure_mm * self.direction)

    def exposed_segment(self) -> tuple[FloatArray, FloatArray]:
        return self.exposed_start_mm, np.asarray(self.tip_mm)

    def path_start_mm(self, fallback_length_mm: float = 150.0) -> FloatArray:
        """Where the path through tissue begins: the entry point, or far behind the tip."""
        if self.entry_mm is not None:
            return np.asarray(self.entry_mm)
        return np.asarray(self.tip_mm - fallback_length_mm * self.direction)
