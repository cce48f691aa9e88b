"""Geometric starting plans: admissible, within the device limits, around the target."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from optimizer.electrodes import check_path
from optimizer.evaluate.criteria import evaluate_limits
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.seeding import (
    geometric_seed_params,
    geometric_seeds,
    lesion_footprint,
    protected_sparing,
    seed_params_from_plans,
    target_footprint,
)
from optimizer.search.space import SearchSpace


@pytest.mark.parametrize("protocol", ["ect", "ire", "irect"])
def test_seeds_pass_device_and_pulse_limits_on_clear_paths(phantom_case, protocol):
    space = SearchSpace(phantom_case, load_protocol(protocol))
    seeds = geometric_seeds(space)
    assert len(seeds) >= 4
    for plan in seeds:
        failed = [r.description for r in evaluate_limits(plan, space.protocol) if not r.passed]
        assert failed == [], plan.name
        for needle in plan.needles:
            assert check_path(needle.to_needle(), phantom_case.obstacles).ok


def test_seed_needles_surround_the_target_at_the_first_pattern_radius(phantom_case, ect):
    space = SearchSpace(phantom_case, ect)
    footprint = target_footprint(space)
    first = geometric_seeds(space)[0]
    t = space.template
    uv = [
        ((np.asarray(n.tip_mm) - t.centre_mm) @ t.column_axis,
         (np.asarray(n.tip_mm) - t.centre_mm) @ t.row_axis)
        for n in first.needles
    ]  # fmt: skip
    centre = np.mean(uv, axis=0)
    # Snapping to 5 mm holes moves each needle by at most half a diagonal pitch (3.5 mm).
    assert math.dist(centre, footprint.centre_mm) < 5.0
    ring = [math.dist(p, footprint.centre_mm) for p in uv]
    assert max(ring) < footprint.radius_mm + 10.0


def test_seed_exposures_span_the_target_along_each_hole(phantom_case, ect):
    space = SearchSpace(phantom_case, ect)
    inset = space.settings.sparing_inset_mm  # a sparing seed leaves that much to the others
    for plan in geometric_seeds(space):
        for needle in plan.needles:
            hole = space.hole(needle.hole)
            chord = hole.target_far_mm - hole.target_near_mm
            assert needle.exposure_mm >= chord - inset or needle.exposure_mm == max(
                hole.exposures_mm
            )


def _exposed_depths(space: SearchSpace, needle) -> tuple[float, float]:
    hole = space.hole(needle.hole)
    tip = float((np.asarray(needle.tip_mm) - hole.position_mm) @ space.template.direction)
    return tip - needle.exposure_mm, tip


def _flush_needles(space: SearchSpace, sparing) -> int:
    """Needles of the seeds whose exposed part stops at the target on the protected side."""
    flush = 0
    for plan in geometric_seeds(space):
        for needle in plan.needles:
            hole = space.hole(needle.hole)
            side = sparing.side(space, hole)
            start, tip = _exposed_depths(space, needle)
            flush += side == "near" and start >= hole.target_near_mm - 1e-6
            flush += side == "far" and tip <= hole.target_far_mm + 1e-6
    return flush


@pytest.mark.parametrize("protocol", ["ect", "irect"])
def test_sparing_seeds_keep_the_exposure_off_the_organ_side(phantom_case, protocol):
    space = SearchSpace(phantom_case, load_protocol(protocol))
    sparing = protected_sparing(space)
    assert sparing is not None  # the phantom's rectal wall and sphincter lie near its gland
    with_sparing = _flush_needles(space, sparing)
    space.settings = dataclasses.replace(space.settings, sparing_patterns=0)
    centred_only = _flush_needles(space, sparing)
    # The sparing variants add needles whose exposure stops at the target on the organ side.
    assert with_sparing > centred_only


def test_no_sparing_seeds_when_switched_off(phantom_case, ect):
    space = SearchSpace(phantom_case, ect)
    with_sparing = len(geometric_seed_params(space))
    space.settings = dataclasses.replace(space.settings, sparing_patterns=0)
    assert len(geometric_seed_params(space)) < with_sparing


def test_two_train_seeds_include_a_lesion_core(phantom_case, irect):
    space = SearchSpace(phantom_case, irect)
    core_pulses = space.trains[0].train.pulses
    assert any(all(p.pulses == core_pulses for p in plan.pairs) for plan in geometric_seeds(space))


def test_two_train_seeds_offer_one_ire_pair_at_the_lesion(phantom_case, irect):
    # A seed whose core has three needles or more is followed by the same needles with only
    # the two straddling the lesion in the core: one IRE pair, every other pair the margin's.
    space = SearchSpace(phantom_case, irect)
    seeds = geometric_seed_params(space)
    centre = lesion_footprint(space).centre_mm
    core_pulses, margin_pulses = (t.train.pulses for t in space.trains)
    followed = 0
    for seed, after in itertools.pairwise(seeds):
        cores = space.core_slots(seed)
        if len(cores) < 3:
            continue
        followed += 1
        assert space.decode_needles(after) == space.decode_needles(seed)
        kept = space.core_slots(after)
        assert len(kept) == 2 and set(kept) < set(cores)
        needles = space.decode_needles(seed)
        at = {k: space.hole(str(n.hole)).position_mm for k, n in enumerate(needles)}

        def off_centre(i: int, j: int, at: dict = at) -> float:
            mid = (at[i] + at[j]) / 2
            return float(np.hypot(*(np.asarray(_uv(space, mid)) - centre)))

        assert off_centre(*kept) == pytest.approx(
            min(off_centre(i, j) for i in cores for j in cores if i < j), abs=1e-6
        )
        pulses = sorted(p.pulses for p in space.decode(after).pairs)
        assert pulses.count(core_pulses) == 1 and set(pulses) == {margin_pulses, core_pulses}
    assert followed >= 2


def _uv(space: SearchSpace, point_mm: np.ndarray) -> tuple[float, float]:
    t = space.template
    rel = np.asarray(point_mm) - t.centre_mm
    return float(rel @ t.column_axis), float(rel @ t.row_axis)


def test_seeds_are_distinct(phantom_case, ect):
    space = SearchSpace(phantom_case, ect)
    plans = [space.decode(p).model_dump_json(exclude={"name", "notes"})
             for p in geometric_seed_params(space)]  # fmt: skip
    assert len(set(plans)) == len(plans)


def test_plans_from_elsewhere_are_encoded_or_skipped_with_a_note(phantom_case, ect):
    space = SearchSpace(phantom_case, ect)
    good = geometric_seeds(space)[0]
    # More needles than the generator drives (6), whatever the first seed has.
    too_big = good.model_copy(update={"needles": [*good.needles] * 7, "name": "big"})
    params, notes = seed_params_from_plans(space, [good, too_big])
    assert len(params) == 1
    assert space.decode(params[0]).needles == good.needles
    assert len(notes) == 1 and "big" in notes[0]
