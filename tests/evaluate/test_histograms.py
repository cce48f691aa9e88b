"""Cumulative field-volume histograms and covered levels on hand-computed cases."""

import numpy as np
import pytest

from optimizer.evaluate.histograms import (
    covered_level,
    covered_levels,
    cumulative_fraction,
    field_axis_V_per_cm,
    hottest_volume_level,
)


def test_cumulative_fraction_counts_values_at_or_above_each_axis_point():
    values = np.array([0.0, 10.0, 10.0, 20.0, 35.0])
    axis = [0.0, 10.0, 20.0, 30.0, 40.0]
    assert cumulative_fraction(values, axis).tolist() == [1.0, 0.8, 0.4, 0.2, 0.0]


def test_a_10_cubed_field_with_known_values():
    # E = 100 i V/cm along the first axis: each value holds a tenth of the voxels.
    field = np.broadcast_to(100.0 * np.arange(10)[:, None, None], (10, 10, 10)).astype(np.float32)
    axis = field_axis_V_per_cm(50.0, 1000.0)
    fvh = cumulative_fraction(field, axis)
    expected = [np.mean(np.arange(10) * 100 >= a) for a in axis]
    assert fvh.tolist() == pytest.approx(expected, abs=0)
    assert fvh[axis.tolist().index(450.0)] == 0.5
    assert fvh[-1] == 0.0 and fvh[0] == 1.0


def test_axis_points_that_round_badly_still_count_as_reached():
    # 0.3 / 0.1 is 2.9999999999999996 in binary floating point.
    axis = np.arange(6) * 0.1
    values = np.array([axis[3]] * 4 + [axis[5]])
    fvh = cumulative_fraction(values, axis)
    assert fvh[3] == 1.0 and fvh[4] == pytest.approx(0.2) and fvh[5] == pytest.approx(0.2)


def test_uniform_and_non_uniform_axes_agree_with_a_direct_count():
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 200.0, 5000).astype(np.float32)
    values[:50] = 3000.0  # above the last axis point
    uniform = field_axis_V_per_cm()
    ragged = np.concatenate([uniform[:10], uniform[10::7]])
    for axis in (uniform, ragged):
        direct = [(values >= a).mean() for a in axis]
        assert cumulative_fraction(values, axis) == pytest.approx(direct, abs=0)


def test_empty_structure_and_bad_axes():
    assert np.isnan(cumulative_fraction(np.array([]), [0.0, 1.0])).all()
    with pytest.raises(ValueError, match="strictly increasing"):
        cumulative_fraction(np.ones(3), [0.0, 0.0])


def test_covered_levels_on_a_known_distribution():
    values = np.arange(1, 101, dtype=np.float32)  # 1 .. 100 V/cm, shuffled
    np.random.default_rng(0).shuffle(values)
    e98, e95, e50 = covered_levels(values, [98, 95, 50])
    assert (e98, e95, e50) == (3.0, 6.0, 51.0)
    assert covered_level(values, 100) == 1.0


def test_covered_level_is_the_largest_field_that_the_fraction_reaches():
    rng = np.random.default_rng(1)
    for n in (1, 7, 99, 1000):
        values = rng.normal(500, 100, n)
        for p in (98, 95, 90, 50, 2):
            e = covered_level(values, p)
            assert np.mean(values >= e) >= p / 100
            above = values[values > e]
            if above.size:
                assert np.mean(values >= above.min()) < p / 100


def test_covered_level_rejects_non_integer_percents():
    with pytest.raises(ValueError, match="integer"):
        covered_level(np.ones(3), 97.5)  # type: ignore[arg-type]
    assert np.isnan(covered_level(np.array([]), 95))


def test_hottest_volume_level_is_the_minimum_over_the_hottest_voxels():
    values = np.arange(1, 1001, dtype=np.float32)
    # 0.1 ml of 0.001 ml voxels = the 100 hottest: 901 .. 1000.
    assert hottest_volume_level(values, 0.1, 0.001) == 901.0
    # Rounded up to whole voxels: 0.1 ml of 0.008 ml voxels = 13 voxels.
    assert hottest_volume_level(values, 0.1, 0.008) == 988.0
    assert hottest_volume_level(values[:5], 0.1, 0.001) == 1.0
