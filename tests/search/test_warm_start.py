"""Warm starts: case descriptors, nearest cases, portable plans carried between cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.seeding import geometric_seeds, target_footprint
from optimizer.search.space import SearchSpace
from optimizer.search.warm_start import (
    DESCRIPTOR_PREFIX,
    WarmStartError,
    case_descriptor,
    load_similarity_scales,
    nearest,
    plan_from_portable,
    portable_plan,
    warm_start_plans,
)


@pytest.fixture(scope="module")
def cases(real_case_dir) -> dict[str, PreparedCase]:  # type: ignore[no-untyped-def]
    names = ("picai-10032", "picai-10043", "prostatex-0001")
    return {n: prepare_case(real_case_dir(n), spacing_mm=2.0) for n in names}


def test_descriptor_measures_the_target_in_the_template_frame(
    cases: dict[str, PreparedCase],
) -> None:
    case = cases["picai-10032"]
    d = case_descriptor(case)
    assert all(k.startswith(DESCRIPTOR_PREFIX) for k in d)
    target_ml = case.planning.target_mask().sum() * case.planning.grid.voxel_volume_ml
    assert d["desc_target_volume_ml"] == pytest.approx(target_ml)
    # The template is centred on the gland, a lesion sits somewhere inside it: the centre is
    # a few cm at most from the template centre, and spreads are positive and plausible.
    assert math.hypot(d["desc_centre_u_mm"], d["desc_centre_v_mm"]) < 30.0
    for axis in "uvw":
        assert 3.0 < d[f"desc_extent_{axis}_mm"] < 80.0
    gland_only = case_descriptor(cases["prostatex-0001"])
    assert gland_only["desc_lesion_volume_ml"] == 0.0


def test_nearest_orders_by_distance_and_excludes_the_case_itself(
    cases: dict[str, PreparedCase],
) -> None:
    rows = [{"case_id": n, **case_descriptor(c)} for n, c in cases.items()]
    me = case_descriptor(cases["picai-10032"])
    ranked = nearest(me, rows, k=5, exclude_case="picai-10032")
    assert [r["case_id"] for _, r in ranked] != [] and "picai-10032" not in [
        r["case_id"] for _, r in ranked
    ]
    assert [d for d, _ in ranked] == sorted(d for d, _ in ranked)
    same = nearest(me, rows, k=1)
    assert same[0][0] == 0.0 and same[0][1]["case_id"] == "picai-10032"


def test_portable_plan_roundtrips_on_its_own_case(cases: dict[str, PreparedCase]) -> None:
    case = cases["picai-10043"]
    space = SearchSpace(case, load_protocol("ect"))
    plan = geometric_seeds(space)[0]
    portable = json.loads(json.dumps(portable_plan(space, plan)))  # survives JSON
    again = plan_from_portable(space, portable, name="again")
    assert [n.hole for n in again.needles] == [n.hole for n in plan.needles]
    assert [round(n.exposure_mm, 6) for n in again.needles] == [
        round(n.exposure_mm, 6) for n in plan.needles
    ]
    assert [(p.anode, p.cathode, p.voltage_V) for p in again.pairs] == [
        (p.anode, p.cathode, p.voltage_V) for p in plan.pairs
    ]


def test_portable_plan_moves_with_the_target(cases: dict[str, PreparedCase]) -> None:
    """A layout around one case's lesion lands around the other case's lesion."""
    source = SearchSpace(cases["picai-10043"], load_protocol("ect"))
    target = SearchSpace(cases["picai-10032"], load_protocol("ect"))
    portable = portable_plan(source, geometric_seeds(source)[0])
    moved = plan_from_portable(target, portable, name="moved")
    assert len(moved.needles) == portable["needles"]
    fp = target_footprint(target)
    t = target.template
    for n in moved.needles:
        hole = target.hole(str(n.hole))
        u = (hole.column - (t.columns - 1) / 2) * t.spacing_mm
        v = (hole.row - (t.rows - 1) / 2) * t.spacing_mm
        assert math.dist((u, v), fp.centre_mm) < 2.5 * fp.radius_mm + t.spacing_mm


def test_warm_start_plans_use_the_same_protocol_only(cases: dict[str, PreparedCase]) -> None:
    source = SearchSpace(cases["picai-10043"], load_protocol("ect"))
    row = {
        "case_id": "picai-10043",
        **case_descriptor(cases["picai-10043"]),
        "portable_plan": json.dumps(portable_plan(source, geometric_seeds(source)[0])),
    }
    broken = {**row, "case_id": "broken", "portable_plan": "{not json"}
    ect = SearchSpace(cases["picai-10032"], load_protocol("ect"))
    plans, notes = warm_start_plans(ect, [row, broken], k=3)
    assert len(plans) == 1 and plans[0].name == "warm start from picai-10043"
    assert any("picai-10043" in n for n in notes)
    irect = SearchSpace(cases["picai-10032"], load_protocol("irect"))
    assert warm_start_plans(irect, [row], k=3)[0] == []


def test_portable_plan_of_another_protocol_is_refused(cases: dict[str, PreparedCase]) -> None:
    source = SearchSpace(cases["picai-10043"], load_protocol("ect"))
    portable = portable_plan(source, geometric_seeds(source)[0])
    with pytest.raises(WarmStartError, match="protocol 'ect'"):
        plan_from_portable(
            SearchSpace(cases["picai-10032"], load_protocol("irect")), portable, "x"
        )


def test_similarity_scales_file_errors_are_clear(tmp_path: Path) -> None:
    assert load_similarity_scales().scales["centre_u_mm"] > 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[similarity]\nsource = 'x'\n[similarity.scales]\ncentre_u_mm = -1\n")
    with pytest.raises(WarmStartError, match="positive"):
        load_similarity_scales(bad)
    with pytest.raises(WarmStartError, match="cannot read"):
        load_similarity_scales(tmp_path / "missing.toml")
