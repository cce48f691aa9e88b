"""Exposure: per-pair thresholds, pulses above threshold, regions with margins, needle vicinity."""

import numpy as np
import pytest

from optimizer.anatomy.kinds import Role
from optimizer.evaluate.exposure import Exposure, ExposureError, PairExposure
from optimizer.evaluate.protocol import StructureSelector

from .builders import anatomy, box_grid, box_mask, constant, two_needle_plan

SHAPE = (10, 10, 10)


@pytest.fixture(scope="module")
def case():
    """2 mm voxels (0.008 ml): a 6^3 gland and a rectal slab below it (-y)."""
    grid = box_grid(SHAPE, 2.0)
    return anatomy(
        grid,
        {
            "gland": box_mask(SHAPE, (2, 2, 2), (8, 8, 8)),
            "rectum": box_mask(SHAPE, (2, 0, 2), (8, 2, 8)),
        },
    )


def ramp() -> np.ndarray:
    """E = 100 i V/cm along the first axis."""
    return np.broadcast_to(100.0 * np.arange(10)[:, None, None], SHAPE).astype(np.float32)


def test_coverage_uses_each_tissue_at_the_pairs_pulse_count(case):
    exp = Exposure(case, [PairExposure(ramp(), 90, 100.0)])
    gland = exp.structure_region(case["gland"])
    rectum = exp.structure_region(case["rectum"])
    # Gland i = 2..7 sees 200..700 V/cm; prostate E_irr(90) = 500 -> i = 5, 6, 7.
    assert exp.at_or_above(gland, "e_irr").mean() == pytest.approx(0.5)
    assert exp.at_or_above(gland, "e_rev").mean() == pytest.approx(4 / 6)
    # Rectal wall (muscle): E_irr(90) = 281.25 -> i = 3..7.
    assert exp.at_or_above(rectum, "e_irr").mean() == pytest.approx(5 / 6)
    assert exp.at_or_above(gland, 650.0).mean() == pytest.approx(1 / 6)


def test_a_voxel_counts_only_when_one_pair_reaches_its_own_threshold(case):
    # Pair A: 8 pulses at 700 V/cm everywhere (below E_irr(8) = 800).
    # Pair B: 90 pulses at 520 V/cm in the upper half (above E_irr(90) = 500).
    b = np.zeros(SHAPE, np.float32)
    b[5:] = 520.0
    exp = Exposure(case, [PairExposure(constant(SHAPE, 700.0), 8, 100.0), PairExposure(b, 90, 100)])
    gland = exp.structure_region(case["gland"])
    covered = exp.at_or_above(gland, "e_irr")
    # The cumulative field is >= 700 everywhere, yet only B's half is irreversibly treated.
    assert exp.max_field_in(gland).min() == 700.0
    assert covered.mean() == pytest.approx(0.5)
    pulses = exp.pulses_above(gland, "e_rev")
    assert set(np.unique(pulses).tolist()) == {8, 98}
    assert exp.threshold_range(gland, "e_irr") == pytest.approx((500.0, 800.0))


def test_margin_grows_the_target_and_margin_voxels_keep_their_tissue(case):
    exp = Exposure(case, [PairExposure(ramp(), 90, 100.0)])
    plain = exp.select(StructureSelector(role=[Role.TARGET]))
    grown = exp.select(StructureSelector(role=[Role.TARGET], margin_mm=2.0))
    assert plain.voxel_count == 216
    # One 2 mm voxel on each face (diagonals are 2.8 mm away): 216 + 6 x 36.
    assert grown.voxel_count == 432
    assert grown.name == "gland + 2 mm"
    names = [exp.tissue_names[t] for t in np.unique(grown.tissue)]
    assert sorted(names) == ["fat", "muscle", "prostate"]
    muscle = np.count_nonzero(grown.tissue == exp.tissue_names.index("muscle"))
    assert muscle == 36  # the face of the gland that touches the rectal slab


def test_selectors_that_match_nothing_give_an_empty_region(case):
    exp = Exposure(case, [PairExposure(ramp(), 90, 100.0)])
    region = exp.select(StructureSelector(kind=["nvb"]))
    assert region.voxel_count == 0 and region.volume_ml == 0
    assert exp.select(StructureSelector(everywhere=True)).voxel_count == 1000


def test_untreatable_tissue_never_reaches_a_named_threshold():
    grid = box_grid(SHAPE, 1.0)
    case = anatomy(grid, {"bladder lumen": box_mask(SHAPE, (0, 0, 0), (5, 10, 10))})
    exp = Exposure(case, [PairExposure(constant(SHAPE, 5000.0), 90, 100.0)])
    region = exp.structure_region(case["bladder lumen"])
    assert not exp.treatable(region, "e_irr").any()
    assert not exp.at_or_above(region, "e_irr").any()
    assert exp.at_or_above(region, 1000.0).all()
    assert exp.threshold_range(region, "e_irr") is None


def test_kill_probability_is_one_half_at_the_calibrated_field(case):
    exp = Exposure(case, [PairExposure(constant(SHAPE, 500.0), 90, 100.0)])
    kill = exp.kill_probability(exp.structure_region(case["gland"]))
    assert kill == pytest.approx(np.full(216, 0.5), abs=1e-6)
    cold = Exposure(case, [PairExposure(constant(SHAPE, 10.0), 90, 100.0)])
    assert cold.kill_probability(cold.structure_region(case["gland"])).max() == 0.0


def test_needle_vicinity_is_a_capsule_around_the_exposed_segment(case):
    plan = two_needle_plan(spacing_mm=20.0, centre_mm=(10.0, 10.0))
    one = plan.model_copy(update={"needles": [plan.needles[0]], "pairs": []})
    # Needle at x = 0 mm (voxel 0), y = 10 mm, exposed z = 5..15 mm; 2 mm voxels.
    exp = Exposure.from_plan(one, case, [])
    near = exp.near_needles(2.0)
    # x in {0, 2} (x = -2 is off the grid), y in {8, 10, 12}: the 3 + 1 columns within 2 mm,
    # z centres 6..14 along the segment plus the caps at 4 and 16 on the axis only.
    assert np.count_nonzero(near) == 4 * 5 + 2
    assert near[0, 5, 2] and near[0, 5, 8] and not near[0, 5, 9] and not near[2, 5, 5]
    assert not exp.near_needles(0.0).any()


def test_fields_that_do_not_fit_are_refused(case):
    with pytest.raises(ExposureError, match="pair 0: field shape"):
        Exposure(case, [PairExposure(np.zeros((5, 5, 5), np.float32), 8, 100.0)])
    bad = constant(SHAPE, 1.0)
    bad[0, 0, 0] = -1
    with pytest.raises(ExposureError, match="finite and >= 0"):
        Exposure(case, [PairExposure(bad, 8, 100.0)])
    with pytest.raises(ExposureError, match="2 field arrays for 1 pairs"):
        Exposure.from_plan(two_needle_plan(), case, [ramp(), ramp()])


def test_float64_fields_are_accepted_as_float32(case):
    exp = Exposure(case, [PairExposure(ramp().astype(np.float64), 90, 100.0)])  # type: ignore[arg-type]
    assert exp.pairs[0].field_V_per_cm.dtype == np.float32
