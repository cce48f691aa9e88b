"""Target scope: focal (lesions) or whole gland, and what it does to the planning case."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.anatomy.errors import AnatomyError, MissingTargetError
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.phantom import make_phantom
from optimizer.anatomy.structures import Anatomy
from optimizer.anatomy.target_scope import apply_target_scope, resolve_target_scope
from optimizer.case import prepare_case


@pytest.fixture(scope="module")
def phantom() -> Anatomy:
    return make_phantom(seed=0)


def without_lesion(a: Anatomy) -> Anatomy:
    return Anatomy(a.grid, [s for s in a if s.kind.name != "lesion"], a.case_id, a.source)


def test_auto_is_focal_when_a_lesion_is_segmented(phantom: Anatomy) -> None:
    scoped, resolved = apply_target_scope(phantom, "auto")
    assert resolved == "lesion"
    assert [s.name for s in scoped.with_role(Role.TARGET)] == ["lesion"]
    assert scoped["prostate"].role == Role.HELPER
    # The input is untouched and the gland keeps its tissue (its conductivity still counts).
    assert phantom["prostate"].role == Role.TARGET
    assert scoped["prostate"].tissue == phantom["prostate"].tissue
    assert "target scope: focal" in scoped.notes[-1]
    assert np.array_equal(scoped.target_mask(), phantom["lesion"].mask)


def test_auto_is_the_gland_without_a_lesion(phantom: Anatomy) -> None:
    scoped, resolved = apply_target_scope(without_lesion(phantom), "auto")
    assert resolved == "gland"
    assert [s.name for s in scoped.with_role(Role.TARGET)] == ["prostate"]


def test_gland_scope_keeps_every_target(phantom: Anatomy) -> None:
    scoped, resolved = apply_target_scope(phantom, "gland")
    assert resolved == "gland"
    assert {s.name for s in scoped.with_role(Role.TARGET)} == {"prostate", "lesion"}
    assert "whole gland" in scoped.notes[-1]


def test_lesion_scope_without_a_lesion_says_how_to_fix(phantom: Anatomy) -> None:
    with pytest.raises(MissingTargetError, match="target scope 'gland'"):
        resolve_target_scope(without_lesion(phantom), "lesion")


def test_unknown_scope_is_refused(phantom: Anatomy) -> None:
    with pytest.raises(AnatomyError, match="unknown target scope 'organ'"):
        apply_target_scope(phantom, "organ")


def test_focal_case_crops_to_the_lesion_and_keeps_the_template_below_the_gland(
    phantom: Anatomy,
) -> None:
    focal = prepare_case(phantom, spacing_mm=2.0, target_scope="auto")
    whole = prepare_case(phantom, spacing_mm=2.0, target_scope="gland")
    assert (focal.target_scope, whole.target_scope) == ("lesion", "gland")
    lesion_ml = phantom["lesion"].mask.sum() * phantom.grid.voxel_volume_ml
    focal_ml = focal.planning.target_mask().sum() * focal.planning.grid.voxel_volume_ml
    assert focal_ml == pytest.approx(lesion_ml, rel=0.15)
    assert np.prod(focal.planning.grid.shape) <= np.prod(whole.planning.grid.shape)
    # The template plane sits below the whole gland in both (against the perineum), so the
    # depth of a hole's plane along the needles is the same whichever scope is planned.
    d = whole.template.direction
    assert float((focal.template.centre_mm - whole.template.centre_mm) @ d) == pytest.approx(
        0.0, abs=2.5
    )
    # Needles may bracket the lesion from up to one hole outside it.
    assert len(focal.admissible) >= 4
