"""The synthetic phantom: deterministic, varied, plausible, and ready to plan on."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.anatomy.errors import AnatomyError, GridTooLargeError
from optimizer.anatomy.model_organs import ORGAN_KINDS
from optimizer.anatomy.phantom import make_phantom
from optimizer.anatomy.planning import make_planning_grid
from optimizer.anatomy.structures import Role
from optimizer.tissue.table import load_tissue_table


def volume_ml(anatomy, name):
    return anatomy[name].voxel_count() * anatomy.grid.voxel_volume_ml


def centroid(anatomy, name):
    return anatomy.grid.index_to_world(np.argwhere(anatomy[name].mask)).mean(axis=0)


def test_same_seed_same_phantom_other_seed_other_phantom():
    a, b, c = make_phantom(seed=3), make_phantom(seed=3), make_phantom(seed=4)
    assert a.names() == b.names() == c.names()
    assert np.array_equal(a.grid.affine, b.grid.affine)
    for s, t in zip(a, b, strict=True):
        assert np.array_equal(s.mask, t.mask), s.name
    assert not np.array_equal(a["prostate"].mask, c["prostate"].mask)
    assert not np.array_equal(a["lesion"].mask, c["lesion"].mask)


def test_phantom_has_every_structure_marked_modelled():
    phantom = make_phantom(seed=0)
    assert phantom.names() == ["prostate", "lesion", *ORGAN_KINDS]
    assert {s.name for s in phantom.with_role(Role.TARGET)} == {"prostate", "lesion"}
    for s in phantom:
        assert s.modelled and s.mask.any(), s.name
    assert phantom["prostate"].source == "phantom: seed=0"
    assert phantom["rectal_wall"].source.startswith("model: default")
    assert "synthetic phantom" in phantom.notes[0]
    assert any("rectal_wall" in n for n in phantom.notes)
    assert phantom.case_id == "phantom-0"


@pytest.mark.parametrize("seed", range(8))
def test_gland_and_lesion_are_plausible(seed):
    phantom = make_phantom(seed=seed, spacing_mm=2.0, organs=False)
    # Analytic volume 35-45 ml; a 2 mm raster of a 40 ml ellipsoid is within a few percent.
    assert 33.0 <= volume_ml(phantom, "prostate") <= 47.0
    assert 0.15 <= volume_ml(phantom, "lesion") <= 2.5
    inside = np.mean(phantom["prostate"].mask[phantom["lesion"].mask])
    assert inside > 0.2  # in the gland, sometimes poking out


def test_some_lesions_reach_out_of_the_gland_and_most_sit_posterior():
    inside, posterior = [], []
    for seed in range(16):
        phantom = make_phantom(seed=seed, spacing_mm=2.0, organs=False)
        inside.append(np.mean(phantom["prostate"].mask[phantom["lesion"].mask]))
        posterior.append(centroid(phantom, "lesion")[1] < centroid(phantom, "prostate")[1])
    assert min(inside) < 1.0 and max(inside) == 1.0
    assert sum(posterior) >= 9


def test_world_anatomy_does_not_depend_on_grid_tilt_or_spacing():
    straight = make_phantom(seed=5)
    tilted = make_phantom(seed=5, spacing_mm=(0.5, 0.5, 3.0), oblique_deg=15.0)
    assert not np.allclose(straight.grid.directions, tilted.grid.directions)
    # Gland and lesion are analytic: only sampling differs (3 mm slices on a 1 ml lesion).
    assert volume_ml(tilted, "prostate") == pytest.approx(volume_ml(straight, "prostate"), rel=0.01)
    assert volume_ml(tilted, "lesion") == pytest.approx(volume_ml(straight, "lesion"), rel=0.06)
    for name in ("prostate", "lesion"):
        assert np.linalg.norm(centroid(tilted, name) - centroid(straight, name)) < 0.5, name
    # The organs are placed from the rasterised gland, whose extent 3 mm slices know only to
    # half a slice; those that lie inside both grids land within a slice of each other.
    for name in ("urethra", "nvb_left", "nvb_right", "pubic_bone"):
        assert np.linalg.norm(centroid(tilted, name) - centroid(straight, name)) < 3.0, name


def test_phantom_plans_with_every_tissue_known():
    phantom = make_phantom(seed=2)
    plan = make_planning_grid(phantom, spacing_mm=2.0)
    table = load_tissue_table()
    tissues = plan.tissue_map(table.names())
    present = {table.names()[i] for i in np.unique(tissues)}
    assert {"prostate", "tumour", "urine", "bone", "nvb"} <= present
    assert plan.needle_blocking_mask().any()


def test_bad_phantom_arguments_are_refused():
    with pytest.raises(GridTooLargeError, match="coarser spacing"):
        make_phantom(spacing_mm=0.1)
    with pytest.raises(AnatomyError, match="size_mm"):
        make_phantom(size_mm=(96, 96))
    with pytest.raises(AnatomyError, match="spacing_mm"):
        make_phantom(spacing_mm=(1.0, 0.0, 1.0))
