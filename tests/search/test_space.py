"""The search space: only admissible holes, clear paths, exact round trips, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optimizer.anatomy.phantom import make_phantom
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.case import PreparedCase, prepare_case
from optimizer.electrodes import check_path
from optimizer.evaluate.device import pair_spacing_mm
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol, load_protocol
from optimizer.search.space import SearchSpace, SearchSpaceError

SLOW = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def value_strategy(dist: BaseDistribution) -> st.SearchStrategy[object]:
    if isinstance(dist, CategoricalDistribution):
        return st.sampled_from(dist.choices)
    if isinstance(dist, IntDistribution):
        return st.integers(dist.low, dist.high)
    assert isinstance(dist, FloatDistribution) and dist.step is not None
    low, step = dist.low, dist.step
    n = round((dist.high - low) / step)
    return st.integers(0, n).map(lambda k: low + k * step)


def params_strategy(space: SearchSpace) -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries(
        {name: value_strategy(d) for name, d in space.distributions().items()}
    )


def geometry(plan: Plan) -> str:
    return plan.model_dump_json(exclude={"name", "notes"})


@pytest.fixture(scope="module")
def space(phantom_gland_case: PreparedCase, ect: Protocol) -> SearchSpace:
    return SearchSpace(phantom_gland_case, ect)


@pytest.fixture(scope="module")
def irect_space(phantom_gland_case: PreparedCase, irect: Protocol) -> SearchSpace:
    return SearchSpace(phantom_gland_case, irect)


@given(data=st.data())
@SLOW
def test_random_params_give_admissible_clear_plans_that_round_trip(space, data):
    params = data.draw(params_strategy(space))
    plan = space.decode(params)
    admissible = {r.label: r for r in space.case.admissible}
    holes = [n.hole for n in plan.needles]
    assert len(set(holes)) == len(holes) == params.get("n_needles", space.n_min)
    for needle in plan.needles:
        assert needle.hole in admissible
        assert check_path(needle.to_needle(), space.case.obstacles).ok
        option = space.hole(needle.hole)
        depth = float(space.template.depth_of(np.asarray(needle.tip_mm)))
        lo, hi = option.tip_range_mm(needle.exposure_mm)
        assert lo - 1e-9 <= depth <= hi + 1e-9
    device = space.protocol.device
    for i, pair in enumerate(plan.pairs):
        assert 0 < pair.voltage_V <= device.voltage_max_V
        if len(plan.pairs) > 1:  # a lone pair may be the out-of-limits fallback
            spacing = pair_spacing_mm(plan, i)
            assert device.pair_spacing_min_mm <= spacing <= device.pair_spacing_max_mm
    assert geometry(space.decode(space.encode(plan))) == geometry(plan)


@pytest.fixture(scope="module")
def forgetting_space(phantom_gland_case: PreparedCase, ect: Protocol) -> SearchSpace:
    """A space that forgets its needles at every new one."""
    space = SearchSpace(phantom_gland_case, ect)
    space._memo_size = 1
    return space


@given(data=st.data())
@SLOW
def test_remembered_needles_decode_to_the_same_plans(space, forgetting_space, data):
    params = data.draw(params_strategy(space))
    for _ in range(2):  # the second decode reads the memo
        assert space.decode(params) == forgetting_space.decode(params)
    assert len(forgetting_space._needle_memo) <= 1
    needle = space.decode(params).needles[0]
    assert any(kept is needle for kept in space._needle_memo.values())  # the same object
    _, tip = space._exposed_segment(needle)
    with pytest.raises(ValueError, match="read-only"):
        tip[0] = 0.0  # shared between plans: nobody may move it


@given(data=st.data())
@SLOW
def test_two_train_round_trip_keeps_core_and_margin_pulses(irect_space, data):
    params = data.draw(params_strategy(irect_space))
    plan = irect_space.decode(params)
    core, margin = irect_space.trains
    for pair in plan.pairs:
        both_core = params[f"core_{pair.anode}"] and params[f"core_{pair.cathode}"]
        train = core if both_core else margin
        assert pair.pulses in train.pulse_choices
        assert pair.pulse_length_us == train.train.pulse_length_us
    assert geometry(irect_space.decode(irect_space.encode(plan))) == geometry(plan)


@given(data=st.data())
@SLOW
def test_core_slots_are_the_used_needles_in_the_core(space, irect_space, data):
    params = data.draw(params_strategy(irect_space))
    used = irect_space.n_needles(params)
    assert irect_space.core_slots(params) == [k for k in range(used) if params[f"core_{k}"]]
    assert space.core_slots(data.draw(params_strategy(space))) == []  # one train: no core


def test_categorical_encoding_round_trips(phantom_gland_case, ect):
    space = SearchSpace(phantom_gland_case, ect, hole_encoding="categorical")
    labels = [h.label for h in space.holes]
    params = space.complete({"n_needles": 4, "pairs": "all", "ratio_ect": 1200.0})
    for k, label in enumerate(labels[::7][:4]):
        params[f"hole_{k}"] = label
    plan = space.decode(params)
    assert [n.hole for n in plan.needles] == labels[::7][:4]
    assert geometry(space.decode(space.encode(plan))) == geometry(plan)


def test_duplicate_holes_move_to_the_nearest_free_admissible_hole(space):
    centre = space.holes[len(space.holes) // 2]
    params = space.complete({"n_needles": 4, "pairs": "all", "ratio_ect": 1200.0})
    for k in range(4):
        params[f"hole_col_{k}"], params[f"hole_row_{k}"] = centre.column, centre.row
    holes = [space.hole(n.hole) for n in space.decode(params).needles]
    assert holes[0].label == centre.label
    assert len({h.label for h in holes}) == 4
    # The later slots got the closest free holes: one template step (5 mm) away.
    steps = [np.hypot(h.column - centre.column, h.row - centre.row) for h in holes[1:]]
    assert max(steps) == pytest.approx(1.0)


@pytest.mark.parametrize(("columns_apart", "ratio"), [(4, 1300.0), (3, 1010.0), (5, 1300.0)])
def test_voltage_is_ratio_times_spacing_rounded_and_clipped(space, columns_apart, ratio):
    by_place = {(h.column, h.row): h for h in space.holes}
    a, b = next(
        (h, by_place[(h.column + columns_apart, h.row)])
        for h in space.holes
        if (h.column + columns_apart, h.row) in by_place
    )
    params = space.complete({"n_needles": 2, "pairs": "all", "ratio_ect": ratio})
    params |= {"hole_col_0": a.column, "hole_row_0": a.row,
               "hole_col_1": b.column, "hole_row_1": b.row}  # fmt: skip
    plan = space.decode(params)
    spacing = pair_spacing_mm(plan, 0)
    assert spacing >= 5.0 * columns_apart - 1e-9
    expected = min(round(ratio * spacing / 10.0 / 10.0) * 10.0, 3000.0)
    assert plan.pairs[0].voltage_V == pytest.approx(expected)


def test_encoding_snaps_foreign_plans_onto_the_space(space):
    plan = space.decode(space.complete({"n_needles": 3, "pairs": "all", "ratio_ect": 1100.0}))
    # Forget the holes and nudge the tips 1 mm sideways: encode finds the same holes again.
    moved = plan.model_copy(
        update={
            "needles": [
                n.model_copy(update={"hole": None, "tip_mm": (n.tip_mm[0] + 1.0, *n.tip_mm[1:])})
                for n in plan.needles
            ]
        }
    )
    assert [n.hole for n in space.decode(space.encode(moved)).needles] == [
        n.hole for n in plan.needles
    ]


@pytest.fixture(scope="module")
def irect_categorical_space(phantom_gland_case: PreparedCase, irect: Protocol) -> SearchSpace:
    return SearchSpace(phantom_gland_case, irect, hole_encoding="categorical")


@pytest.mark.parametrize("encoding", ["grid", "categorical"])
@given(data=st.data())
@SLOW
def test_a_needle_taken_out_leaves_the_others_where_they_were(
    irect_space, irect_categorical_space, encoding, data
):
    space = irect_space if encoding == "grid" else irect_categorical_space
    # Raw parameters: two slots may ask for one hole, the later then gets the nearest free one.
    params = data.draw(params_strategy(space))
    n = space.n_needles(params)
    if n <= space.n_min:
        with pytest.raises(SearchSpaceError, match="minimum"):
            space.without_needle(params, 0)
        return
    slot = data.draw(st.integers(0, n - 1))
    before = space.decode(params).needles
    child = space.without_needle(params, slot)
    assert space.n_needles(child) == n - 1
    kept = [k for k in range(n) if k != slot]
    assert space.decode(child).needles == [before[k] for k in kept]
    for i, k in enumerate(kept):  # a needle keeps its IRE core or ECT margin role
        assert child[f"core_{i}"] == params[f"core_{k}"]
    for name in space.global_params():  # pairs, ratios and pulses stay
        if name != "n_needles":
            assert child[name] == params[name]


def test_a_needle_taken_out_does_not_let_another_move_into_its_hole(space):
    """Slot 1 asks for slot 0's hole and gets the nearest free one; without slot 0 it stays
    there rather than moving into the hole it first asked for."""
    params = space.complete({"n_needles": 3, "pairs": "all", "ratio_ect": 1100.0})
    params["hole_col_1"], params["hole_row_1"] = params["hole_col_0"], params["hole_row_0"]
    holes = [n.hole for n in space.decode(params).needles]
    assert len(set(holes)) == 3
    assert [n.hole for n in space.decode(space.without_needle(params, 0)).needles] == holes[1:]


def test_slot_parameters_are_told_from_a_train_whose_key_ends_in_a_digit(
    phantom_gland_case, ect
):
    renamed = ect.model_copy(
        update={
            "pulses": ect.pulses.model_copy(
                update={
                    "trains": [
                        ect.pulses.trains[0].model_copy(update={"name": "ect 1"})
                    ]
                }
            )
        }
    )
    space = SearchSpace(phantom_gland_case, renamed)
    assert "ratio_ect_1" in space.global_params()
    assert space.slot_params(1) == ["hole_col_1", "hole_row_1", "tip_offset_1", "exposure_1"]


def test_a_needle_outside_the_plan_cannot_be_taken_out(space):
    params = space.complete({"n_needles": 3, "pairs": "all", "ratio_ect": 1100.0})
    with pytest.raises(SearchSpaceError, match="slot 3 is not used by a plan of 3 needles"):
        space.without_needle(params, 3)


def test_encoding_refuses_a_plan_with_too_many_needles(space):
    plan = space.decode(space.complete({"n_needles": 6, "pairs": "all", "ratio_ect": 1100.0}))
    big = plan.model_copy(update={"needles": [*plan.needles, plan.needles[0]]})
    with pytest.raises(SearchSpaceError, match="7 needles"):
        space.encode(big)


def test_missing_parameter_is_named(space):
    with pytest.raises(SearchSpaceError, match="pairs"):
        space.decode({"n_needles": 2, "hole_col_0": 3, "hole_row_0": 3})


def test_signature_depends_on_protocol(phantom_gland_case, ect, irect):
    a, b = SearchSpace(phantom_gland_case, ect), SearchSpace(phantom_gland_case, ect)
    assert a.signature() == b.signature()
    assert a.signature() != SearchSpace(phantom_gland_case, irect).signature()


def _with_bone(anatomy: Anatomy, mask: np.ndarray) -> Anatomy:
    bone, _ = Structure.from_name("bone", mask, modelled=True)
    return Anatomy(anatomy.grid, [*anatomy.structures, bone], case_id="blocked")


def _world(anatomy: Anatomy) -> np.ndarray:
    idx = np.indices(anatomy.grid.shape).reshape(3, -1).T.astype(np.float64)
    return anatomy.grid.index_to_world(idx).reshape(*anatomy.grid.shape, 3)


def test_target_behind_a_wall_is_named_in_the_error():
    phantom = make_phantom(seed=0, spacing_mm=2.0)
    xyz = _world(phantom)
    z_target = xyz[..., 2][phantom.target_mask()].min()
    wall = (xyz[..., 2] > z_target - 8.0) & (xyz[..., 2] < z_target - 4.0)
    case = prepare_case(_with_bone(phantom, wall), spacing_mm=2.0, target_scope="gland")
    with pytest.raises(SearchSpaceError, match=r"no template hole reaches the target.*'prostate'"):
        SearchSpace(case, load_protocol("ect"))


def test_lesion_shielded_from_every_nearby_hole_is_named():
    phantom = make_phantom(seed=0, spacing_mm=2.0)
    xyz = _world(phantom)
    lesion = phantom["lesion"].mask
    centre = xyz[lesion].mean(axis=0)
    z_target = xyz[..., 2][phantom.target_mask()].min()
    near = np.hypot(xyz[..., 0] - centre[0], xyz[..., 1] - centre[1]) < 21.0
    column = near & (xyz[..., 2] > z_target - 8.0) & (xyz[..., 2] < z_target - 4.0)
    case = prepare_case(_with_bone(phantom, column), spacing_mm=2.0, target_scope="gland")
    with pytest.raises(SearchSpaceError, match="target 'lesion' lies"):
        SearchSpace(case, load_protocol("ect"))
