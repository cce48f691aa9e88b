"""sigma(E): smooth step between the table's thresholds, numbers read from the table."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.tissue.conductivity import ConductivityModel, smoothstep
from optimizer.tissue.table import TissueTableError, load_tissue_table


def test_smoothstep_shape() -> None:
    x = np.linspace(-1, 2, 301)
    s = smoothstep(x)
    assert s[x <= 0].max() == 0.0 and s[x >= 1].min() == 1.0
    assert smoothstep(0.5) == pytest.approx(0.5)
    assert np.all(np.diff(s) >= 0)


def test_values_follow_the_table() -> None:
    table = load_tissue_table()
    names = ("prostate", "fat", "urine", "muscle")
    model = ConductivityModel.from_table(names, table)
    labels = np.arange(4)
    for name, k in zip(names, labels, strict=True):
        t = table[name]
        low = model.sigma(labels, np.zeros(4))[k]
        assert low == pytest.approx(t.sigma0_S_per_m)
        if t.electroporable:
            assert t.e_rev_V_per_cm is not None and t.e_irr_V_per_cm is not None
            high = model.sigma(labels, np.full(4, t.e_irr_V_per_cm * 1.01))[k]
            mid_field = 0.5 * (t.e_rev_V_per_cm + t.e_irr_V_per_cm)
            mid = model.sigma(labels, np.full(4, mid_field))[k]
            assert high == pytest.approx(t.sigma1_S_per_m)
            assert mid == pytest.approx(0.5 * (t.sigma0_S_per_m + t.sigma1_S_per_m))
        else:
            assert model.sigma(labels, np.full(4, 1e5))[k] == pytest.approx(t.sigma0_S_per_m)


def test_monotone_in_field_and_shape_preserving() -> None:
    model = ConductivityModel.from_table(("prostate",))
    field = np.linspace(0, 2000, 64).reshape(4, 4, 4)
    sigma = model.sigma(np.zeros((4, 4, 4), dtype=np.int16), field)
    assert sigma.shape == (4, 4, 4)
    assert np.all(np.diff(sigma.reshape(-1)) >= 0)


def test_bad_input() -> None:
    with pytest.raises(TissueTableError, match="not in table"):
        ConductivityModel.from_table(("prostate", "kidney"))
    model = ConductivityModel.from_table(("prostate", "fat"))
    with pytest.raises(ValueError, match=r"0\.\.1"):
        model.baseline(np.array([0, 2]))
    with pytest.raises(ValueError, match="integers"):
        model.baseline(np.array([0.5]))
    with pytest.raises(ValueError, match="shape"):
        model.sigma(np.zeros(3, dtype=int), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        model.sigma(np.zeros(2, dtype=int), np.array([1.0, np.nan]))
