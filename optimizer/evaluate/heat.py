"""Adiabatic Joule heating and Arrhenius thermal damage of a pulse protocol.

Temperature rise (an upper bound: no conduction, no perfusion, DESIGN.md section 4):

    dT = sum over pairs p of  n_p * sigma(E_p) * E_p^2 * tau_p / (rho c)

with sigma(E) of the voxel's tissue (the tissue map: heat is physics, it follows the material
actually there), E in V/m, tau the pulse length and rho c from the tissue table.

Arrhenius damage Omega = integral of A exp(-Ea / (R T(t))) dt, under this time course:
pairs are delivered in plan order, each pair's pulses back to back at its train's repetition
rate f; each pulse raises the temperature by its adiabatic step and the temperature is then
held, without diffusion, for one period 1/f (the last pulse too). Holding the temperature is an
upper bound during delivery; cooling after delivery is not modelled. With the soft-tissue
parameters of the tissue table the rate at 37 degC is not negligible (~2.9e-4 /s: Omega = 1
after an hour at body temperature, an artefact of the fit), so the damage reported is the
excess over the body-temperature rate: Omega = sum over pulses of (k(T_j) - k(T_body)) / f.

Computation: exact per pulse where the total rise is at least ``exact_above_K`` (the sum over
each pair's linear temperature ramp via the exponential-integral antiderivative with the
Euler-Maclaurin end correction, or term by term for steps above 1 K); below it the rate is
linearised about body temperature, cheap on the full grid. The linearisation under-states the
excess rate by the fraction 1 - x/(e^x - 1), x = Ea dT / (R T^2): 8 % at 0.5 K, where Omega stays
below ~0.1 for deliveries under half an hour, so the damaged volume (Omega >= 1) does not
depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import exp1

from optimizer.tissue.conductivity import ConductivityModel
from optimizer.tissue.table import TissueTable

GAS_CONSTANT_J_PER_MOL_K = 8.314462618  # CODATA 2018
KELVIN_AT_0_C = 273.15
# Above this a/T, the asymptotic series of E1 is used (see ThermalModel.rate_and_integral).
ASYMPTOTIC_E1_FROM = 20.0
# Per-pulse steps above this are summed term by term (the ramp integral is then too coarse).
DIRECT_SUM_STEP_K = 1.0

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ConductivityLookup:
    """sigma(E) per tissue as optimizer.tissue.conductivity.ConductivityModel defines it.

    The parameters come from that model (one source of truth, the tissue table); the
    evaluation here is a float32, in-place copy of its smoothstep, ~3x faster on a full grid
    than the model's float64 kernel. tests/evaluate/test_heat.py checks both agree.
    """

    sigma0_S_per_m: Float32Array
    sigma1_S_per_m: Float32Array
    e_rev_V_per_cm: Float32Array
    inverse_width_per_V_per_cm: Float32Array

    @classmethod
    def from_model(cls, model: ConductivityModel) -> ConductivityLookup:
        active = model.electroporable
        # Non-electroporable tissue: zero slope keeps sigma0 (the model's own convention).
        e_rev = np.where(active, model.e_rev_V_per_cm, 0.0)
        with np.errstate(invalid="ignore"):
            inv_width = np.where(active, 1.0 / (model.e_irr_V_per_cm - e_rev), 0.0)
        return cls(
            model.sigma0_S_per_m.astype(np.float32),
            model.sigma1_S_per_m.astype(np.float32),
            e_rev.astype(np.float32),
            inv_width.astype(np.float32),
        )

    @classmethod
    def from_table(cls, table: TissueTable, tissue_names: Sequence[str]) -> ConductivityLookup:
        return cls.from_model(ConductivityModel.from_table(tissue_names, table))

    def on_voxels(self, tissue_index: npt.NDArray[np.integer]) -> VoxelConductivity:
        """Per-voxel parameters, gathered once so each pair's sigma(E) is arithmetic only."""
        s0 = self.sigma0_S_per_m[tissue_index]
        return VoxelConductivity(
            s0,
            self.sigma1_S_per_m[tissue_index] - s0,
            self.e_rev_V_per_cm[tissue_index],
            self.inverse_width_per_V_per_cm[tissue_index],
        )


@dataclass(frozen=True)
class VoxelConductivity:
    sigma0_S_per_m: Float32Array
    delta_S_per_m: Float32Array
    e_rev_V_per_cm: Float32Array
    inverse_width_per_V_per_cm: Float32Array

    def sigma_S_per_m(self, field_V_per_cm: npt.NDArray[np.floating]) -> Float32Array:
        t = np.subtract(field_V_per_cm, self.e_rev_V_per_cm, dtype=np.float32)
        t *= self.inverse_width_per_V_per_cm
        np.clip(t, 0.0, 1.0, out=t)
        sigma = t * t  # smoothstep t^2 (3 - 2t), in place to spare temporaries
        t *= np.float32(-2.0)
        t += np.float32(3.0)
        sigma *= t
        sigma *= self.delta_S_per_m
        sigma += self.sigma0_S_per_m
        return sigma


@dataclass(frozen=True)
class ThermalModel:
    rho_c_J_per_m3K: float
    body_temperature_C: float
    frequency_factor_per_s: float
    activation_energy_J_per_mol: float

    @classmethod
    def from_table(cls, table: TissueTable) -> ThermalModel:
        return cls(
            table.rho_c_J_per_m3K,
            table.body_temperature_C,
            table.arrhenius_frequency_factor_per_s,
            table.arrhenius_activation_energy_J_per_mol,
        )

    @property
    def activation_temperature_K(self) -> float:
        """Ea / R."""
        return self.activation_energy_J_per_mol / GAS_CONSTANT_J_PER_MOL_K

    @property
    def body_temperature_K(self) -> float:
        return self.body_temperature_C + KELVIN_AT_0_C

    def rate_per_s(self, temperature_K: npt.ArrayLike) -> FloatArray:
        t = np.asarray(temperature_K, dtype=np.float64)
        return np.asarray(self.frequency_factor_per_s * np.exp(-self.activation_temperature_K / t))

    def rate_and_integral(self, temperature_K: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The rate k(T) and an antiderivative of it over T: A (T e^(-x) - a E1(x)), x = a/T.

        The antiderivative is written A T e^(-x) (1 - x e^x E1(x)); for x >= 20 (T below
        ~1500 K) the asymptotic series 1/x - 2/x^2 + 6/x^3 - ... (7 terms, relative error
        < 1e-4, far less near body temperature where x ~ 100) replaces scipy's E1, which is
        several times slower.
        """
        a = self.activation_temperature_K
        y = temperature_K / a  # 1/x
        series = 5040.0 * y
        for c in (-720.0, 120.0, -24.0, 6.0, -2.0, 1.0):
            series += c
            series *= y
        x = a / temperature_K
        far = x < ASYMPTOTIC_E1_FROM
        if np.any(far):
            xf = x[far]
            series[far] = 1.0 - xf * np.exp(xf) * exp1(xf)
        rate = np.exp(np.negative(x, out=x), out=x)
        rate *= self.frequency_factor_per_s
        series *= rate
        series *= temperature_K
        return rate, series


@dataclass(frozen=True)
class PulseTrainHeat:
    """One pair's train as the heat model needs it."""

    field_V_per_cm: npt.NDArray[np.floating]
    pulses: int
    pulse_length_us: float
    repetition_rate_Hz: float


@dataclass(frozen=True)
class HeatResult:
    temperature_rise_K: Float32Array
    arrhenius_omega: FloatArray
    exact_voxels: int


def rise_per_pulse_K(
    field_V_per_cm: npt.NDArray[np.floating],
    conductivity: VoxelConductivity,
    pulse_length_us: float,
    rho_c_J_per_m3K: float,
) -> Float32Array:
    """Adiabatic temperature step of one pulse: sigma(E) E^2 tau / (rho c), E in V/m."""
    rise = conductivity.sigma_S_per_m(field_V_per_cm)
    rise *= field_V_per_cm
    rise *= field_V_per_cm
    # (100 E[V/cm])^2 tau[us] 1e-6 = E^2 tau 1e-2
    rise *= np.float32(1e-2 * pulse_length_us / rho_c_J_per_m3K)
    return rise


def _ramp_excess_rate_sum(
    start_K: FloatArray, step_K: FloatArray, pulses: int, model: ThermalModel
) -> FloatArray:
    """sum over m = 1..n of k(start + m step) - k(body): one pair's pulses, per voxel.

    Euler-Maclaurin on the linear ramp T(m) = start + m step: the sum is the integral over
    m in [1/2, n + 1/2] minus (k'(T_hi) - k'(T_lo)) step / 24, exact to O(step^4); steps above
    DIRECT_SUM_STEP_K are summed term by term and vanishing ramps use the midpoint.
    """
    n = pulses
    a = model.activation_temperature_K
    safe = np.maximum(step_K, 1e-12)
    lo = start_K + 0.5 * safe
    hi = start_K + (n + 0.5) * safe
    k_lo, f_lo = model.rate_and_integral(lo)
    k_hi, f_hi = model.rate_and_integral(hi)
    total = f_hi - f_lo
    total /= safe
    # End correction: k'(T) = k a / T^2, times dT/dm = step.
    k_hi *= a / (hi * hi)
    k_lo *= a / (lo * lo)
    k_hi -= k_lo
    k_hi *= safe / 24.0
    total -= k_hi
    tiny = step_K * n < 1e-6  # the difference of antiderivatives has no digits left
    if np.any(tiny):
        total[tiny] = n * model.rate_per_s(start_K[tiny] + 0.5 * (n + 1) * step_K[tiny])
    direct = step_K > DIRECT_SUM_STEP_K
    if np.any(direct):
        s0, d = start_K[direct], step_K[direct]
        acc = np.zeros_like(s0)
        for m in range(1, n + 1):
            acc += model.rate_per_s(s0 + m * d)
        total[direct] = acc
    total -= n * float(model.rate_per_s(model.body_temperature_K))
    return total


def adiabatic_heating(
    trains: Sequence[PulseTrainHeat],
    tissue_index: npt.NDArray[np.integer],
    conductivity: ConductivityLookup,
    model: ThermalModel,
    exact_above_K: float = 0.5,
) -> HeatResult:
    """Temperature rise and excess Arrhenius damage of ``trains`` delivered in order."""
    shape = np.shape(tissue_index)
    rise = np.zeros(shape, dtype=np.float32)
    voxels = conductivity.on_voxels(tissue_index)
    # sum over pulses of (T_j - T_body) / f: the linearised damage integral.
    weighted_rise = np.zeros(shape, dtype=np.float32)
    for train in trains:
        step = rise_per_pulse_K(
            train.field_V_per_cm, voxels, train.pulse_length_us, model.rho_c_J_per_m3K
        )  # fmt: skip
        n = train.pulses
        period = 1.0 / train.repetition_rate_Hz
        weighted_rise += np.float32(period * n) * rise
        weighted_rise += np.float32(period * 0.5 * n * (n + 1)) * step
        step *= np.float32(n)
        rise += step
    t_body = model.body_temperature_K
    k_body = float(model.rate_per_s(t_body))
    slope = k_body * model.activation_temperature_K / (t_body * t_body)
    omega = weighted_rise.astype(np.float64)
    omega *= slope

    hot = np.flatnonzero(rise.ravel() >= exact_above_K)
    if hot.size:
        temperature = np.full(hot.size, t_body)
        hot_omega = np.zeros(hot.size)
        voxels_hot = conductivity.on_voxels(np.asarray(tissue_index).reshape(-1)[hot])
        for train in trains:
            field_hot = np.asarray(train.field_V_per_cm).ravel()[hot]
            step_hot = rise_per_pulse_K(
                field_hot, voxels_hot, train.pulse_length_us, model.rho_c_J_per_m3K
            ).astype(np.float64)
            hot_omega += _ramp_excess_rate_sum(temperature, step_hot, train.pulses, model) / (
                train.repetition_rate_Hz
            )
            temperature += train.pulses * step_hot
        omega.reshape(-1)[hot] = hot_omega
    return HeatResult(rise, np.maximum(omega, 0.0), int(hot.size))


def damage_fraction(omega: npt.ArrayLike) -> FloatArray:
    """Fraction of cells thermally damaged: 1 - exp(-Omega)."""
    return np.asarray(-np.expm1(-np.asarray(omega, dtype=np.float64)))
