"""sigma(E) by warm-started Picard iterations."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.field import ConvergenceError, FieldSolver, solve_pair_nonlinear
from optimizer.tissue.conductivity import ConductivityModel
from tests.field.builders import column

SHAPE = (41, 37, 33)


def _case() -> tuple[np.ndarray, ConductivityModel, object, object]:
    labels = np.zeros(SHAPE, dtype=np.int64)  # prostate
    labels[:, :8] = 1  # fat
    labels[:, -5:] = 2  # urine
    model = ConductivityModel.from_table(("prostate", "fat", "urine"))
    anode = column((13, 18), (8, 25), 0.5335, 1.0)
    cathode = column((27, 18), (8, 25), 0.5335, 1.0)
    return labels, model, anode, cathode


def test_picard_converges_and_raises_the_current() -> None:
    labels, model, anode, cathode = _case()
    v = 1500.0
    linear = FieldSolver(model.baseline(labels), 1.0, backend="cpu").solve(anode, cathode, v)
    sol = solve_pair_nonlinear(labels, model, 1.0, anode, cathode, v, backend="cpu")
    assert sol.picard_iterations >= 1
    assert sol.current_A > 1.2 * linear.current_A  # prostate sigma1/sigma0 = 2.5
    assert sol.current_mismatch < 1e-3
    # Converged: one more full update moves the current by less than the 0.5 % criterion.
    again = FieldSolver(model.sigma(labels, sol.field_V_per_cm), 1.0, backend="cpu").solve(
        anode, cathode, v, x0=sol.potential_V
    )
    assert again.current_A == pytest.approx(sol.current_A, rel=0.02)


def test_low_voltage_stays_linear() -> None:
    labels, model, anode, cathode = _case()
    sol = solve_pair_nonlinear(labels, model, 1.0, anode, cathode, 20.0, backend="cpu")
    linear = FieldSolver(model.baseline(labels), 1.0, backend="cpu").solve(anode, cathode, 20.0)
    assert sol.picard_iterations == 1
    assert sol.current_A == pytest.approx(linear.current_A, rel=1e-6)


def test_picard_cap_raises() -> None:
    labels, model, anode, cathode = _case()
    with pytest.raises(ConvergenceError, match="Picard") as info:
        solve_pair_nonlinear(
            labels, model, 1.0, anode, cathode, 2000.0, backend="cpu", max_picard=1
        )
    assert info.value.iterations == 1
