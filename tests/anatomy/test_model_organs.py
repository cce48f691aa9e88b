"""Model organs at risk: where they go, how big they are, and how they join an anatomy."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from optimizer.anatomy.errors import AnatomyError, MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import kind_for
from optimizer.anatomy.model_organs import (
    DEFAULT_PARAMETER_FILE,
    ORGAN_KINDS,
    Ellipsoid,
    RoundedBox,
    Shell,
    Tube,
    add_model_organs,
    load_model_organ_params,
    place_model_organs,
    rasterise_shape,
)
from optimizer.anatomy.phantom import make_phantom
from optimizer.anatomy.planning import PlanningAnatomy, make_planning_grid
from optimizer.anatomy.readers import load_anatomy
from optimizer.anatomy.structures import Anatomy, Structure
from tests.conftest import REAL_CASES, anatomy_root

# Plausible volumes (ml) on a 1 mm planning grid with the default 30 mm margin and default
# parameters: wide enough for any gland from 30 to 70 ml, narrow enough to catch a misplaced
# or mis-sized organ (bladder and rectum are clipped by the grid, so these are partial).
PLAUSIBLE_ML = {
    "rectal_wall": (15.0, 45.0),
    "bladder_wall": (8.0, 30.0),
    "urine": (25.0, 110.0),
    "urethra": (0.7, 3.0),
    "sphincter": (0.8, 3.0),
    "nvb_left": (1.0, 4.0),
    "nvb_right": (1.0, 4.0),
    "pubic_bone": (15.0, 30.0),
}


def centroid(grid: VoxelGrid, mask: np.ndarray) -> np.ndarray:
    return grid.index_to_world(np.argwhere(mask)).mean(axis=0)


def world_points(grid: VoxelGrid, mask: np.ndarray) -> np.ndarray:
    return grid.index_to_world(np.argwhere(mask))


@cache
def planned_phantom() -> Anatomy:
    gland_only = make_phantom(seed=4, spacing_mm=(0.5, 0.5, 3.0), oblique_deg=15.0, organs=False)
    return add_model_organs(make_planning_grid(gland_only))


def check_anatomically_placed(anatomy: Anatomy, gland_name: str) -> None:
    grid, gland = anatomy.grid, anatomy[gland_name].mask
    g = world_points(grid, gland)
    c, lo, hi = g.mean(axis=0), g.min(axis=0), g.max(axis=0)
    organs = {s.name: s.mask for s in anatomy if s.modelled and s.name in ORGAN_KINDS}
    assert set(organs) == set(ORGAN_KINDS)
    cen = {name: centroid(grid, m) for name, m in organs.items()}
    # RAS+: +x patient right, +y anterior, +z superior.
    assert cen["rectal_wall"][1] < lo[1]  # wholly behind the gland's most posterior point
    assert not (organs["rectal_wall"] & gland).any()
    for name in ("bladder_wall", "urine"):
        assert world_points(grid, organs[name])[:, 2].min() > hi[2]
        assert not (organs[name] & gland).any()
    assert cen["pubic_bone"][1] > hi[1]
    assert not (organs["pubic_bone"] & gland).any()
    assert cen["nvb_left"][0] < c[0] < cen["nvb_right"][0]
    for side in ("nvb_left", "nvb_right"):
        assert cen[side][1] < c[1]  # posterolateral
        assert abs(cen[side][2] - c[2]) < 0.25 * (hi[2] - lo[2]) + 5  # along the gland
        assert not (organs[side] & gland).any()
    urethra = organs["urethra"]
    assert cen["urethra"][1] > c[1] - 1.0  # anterior of (or at) the centre
    within = world_points(grid, urethra)[:, 2]
    beside = (within > lo[2] + 3) & (within < hi[2] - 3)
    assert np.mean(gland[tuple(np.argwhere(urethra)[beside].T)]) > 0.9  # through the gland
    assert within.min() < lo[2] and within.max() > hi[2]  # apex to bladder neck
    ml = grid.voxel_volume_ml
    for name, mask in organs.items():
        low, high = PLAUSIBLE_ML[name]
        assert low <= mask.sum() * ml <= high, (name, mask.sum() * ml)


def test_organs_sit_where_anatomy_puts_them_on_a_phantom():
    check_anatomically_placed(planned_phantom(), "prostate")


def test_modelled_organs_are_marked_and_named_in_the_notes():
    anatomy = planned_phantom()
    assert isinstance(anatomy, PlanningAnatomy)
    params = load_model_organ_params()
    for name, kind in ORGAN_KINDS.items():
        s = anatomy[name]
        assert s.modelled and s.kind.name == kind
        assert s.source == f"model: {params.label}"
        # The names alone map back to the same kind (files written out read back right).
        assert kind_for(name) == (s.kind, True)
    note = next(n for n in anatomy.notes if n.startswith("modelled organs at risk"))
    assert all(name in note for name in ORGAN_KINDS)


def test_only_missing_kinds_are_added():
    base = make_planning_grid(make_phantom(seed=4, organs=False), spacing_mm=2.0)
    grid = base.grid
    rectum = Structure.from_name("Rectum", np.zeros(grid.shape, bool))[0]
    bladder = Structure.from_name("Bladder", np.zeros(grid.shape, bool))[0]
    nerve = Structure.from_name("NVB_L", np.zeros(grid.shape, bool))[0]
    with_some = PlanningAnatomy(
        grid=grid,
        structures=[*base.structures, rectum, bladder, nerve],
        parent_grid=base.parent_grid,
        spacing_mm=base.spacing_mm,
        margin_mm=base.margin_mm,
        inside_input=base.inside_input,
    )
    added = add_model_organs(with_some)
    new = [s.name for s in added if s.modelled and s.source.startswith("model:")]
    # A segmented bladder means no modelled urine either; one bundle means no modelled bundles.
    assert new == ["urethra", "sphincter", "pubic_bone"]
    assert added.names()[: len(with_some.structures)] == with_some.names()
    again = add_model_organs(added)
    assert again.names() == added.names()
    assert len(again.notes) == len(added.notes)


def test_a_gland_is_needed():
    grid = VoxelGrid((10, 10, 10), np.eye(4))
    lesion_only = Anatomy(grid, [Structure.from_name("lesion", np.ones(grid.shape, bool))[0]])
    with pytest.raises(MissingTargetError, match="gland"):
        add_model_organs(lesion_only)
    empty = Anatomy(grid, [Structure.from_name("prostate", np.zeros(grid.shape, bool))[0]])
    with pytest.raises(MissingTargetError, match="empty"):
        add_model_organs(empty)


def rotated_grid(deg_x: float, deg_z: float, spacing: float = 1.0) -> VoxelGrid:
    a, b = np.deg2rad(deg_x), np.deg2rad(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    n = round(140 / spacing)
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx * spacing
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (n - 1) / 2) + np.array([0.0, 0.0, 12.0])
    return VoxelGrid((n, n, n), affine)


def test_organ_positions_do_not_depend_on_the_grid_orientation():
    phantom = make_phantom(seed=6, spacing_mm=(0.5, 0.5, 3.0), oblique_deg=18.0, organs=False)
    organs = place_model_organs(phantom["prostate"].mask, phantom.grid)
    grids = (rotated_grid(0.0, 0.0, 0.75), rotated_grid(20.0, 35.0, 0.75))
    rasters = [organs.rasterise(g) for g in grids]
    for name in ORGAN_KINDS:
        volumes = [r[name].sum() * g.voxel_volume_ml for r, g in zip(rasters, grids, strict=True)]
        centres = [centroid(g, r[name]) for g, r in zip(grids, rasters, strict=True)]
        # Sampling a 6 mm tube at 0.75 mm voxel centres counts a few percent more or fewer
        # voxels depending on how the lattice meets it; the larger organs agree far closer.
        assert volumes[1] == pytest.approx(volumes[0], rel=0.04), name
        assert np.linalg.norm(centres[1] - centres[0]) < 0.5, name


def test_the_margin_holds_the_organs_near_the_gland():
    # Default 30 mm margin against a 60 mm one: the parts of the organs level with the gland
    # are complete (only bladder dome and rectum beyond the gland's ends are clipped).
    gland_only = make_phantom(seed=4, organs=False)
    plans = [make_planning_grid(gland_only, margin_mm=m) for m in (30.0, 60.0)]
    organs = place_model_organs(plans[0]["prostate"].mask, plans[0].grid)
    g = world_points(plans[0].grid, plans[0]["prostate"].mask)
    z_lo, z_hi = g[:, 2].min(), g[:, 2].max()
    for name in ("rectal_wall", "nvb_left", "nvb_right", "pubic_bone", "urethra"):
        counts = []
        for plan in plans:
            pts = world_points(plan.grid, organs.rasterise(plan.grid)[name])
            counts.append(np.count_nonzero((pts[:, 2] >= z_lo) & (pts[:, 2] <= z_hi)))
        assert counts[0] == counts[1] > 0, name


def test_parameters_change_the_placement():
    gland_only = make_planning_grid(make_phantom(seed=4, organs=False), spacing_mm=1.0)
    params = load_model_organ_params()
    near = place_model_organs(gland_only["prostate"].mask, gland_only.grid, params)
    far = place_model_organs(
        gland_only["prostate"].mask,
        gland_only.grid,
        params.with_values({"rectum.gap_to_gland_mm": 6.0}),
    )
    y = [
        centroid(gland_only.grid, o.rasterise(gland_only.grid)["rectal_wall"])[1]
        for o in (near, far)
    ]
    assert y[1] == pytest.approx(y[0] - 3.0, abs=0.3)
    assert "gap_to_gland_mm=6" in far.params.label
    with pytest.raises(AnatomyError, match="unknown model organ parameter"):
        params.with_values({"rectum.gap": 1.0})


def test_every_parameter_has_a_range_and_a_source():
    params = load_model_organ_params()
    assert params.name == "default"
    for entries in params.sections.values():
        for p in entries.values():
            assert p.low <= p.value <= p.high
            assert len(p.source) > 20


def write_params(tmp_path: Path, replace: tuple[str, str]) -> Path:
    default = resources.files("optimizer.anatomy").joinpath(DEFAULT_PARAMETER_FILE).read_text()
    assert replace[0] in default
    path = tmp_path / "organs.toml"
    path.write_text(default.replace(*replace, 1))
    return path


EXTRA = '[rectum.colour_mm]\nvalue = 1.0\nrange = [0.0, 2.0]\nsource = "a typo"\n\n'


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (
            ("value = 3.0\nrange = [1.0, 6.0]\nsource", "value = 30.0\nrange = [1.0, 6.0]\nsource"),
            r"rectum.gap_to_gland_mm\].*outside its range",
        ),
        (('source = "Denonvilliers', 'origin = "Denonvilliers'), "needs a non-empty 'source'"),
        (
            ("[rectum.wall_thickness_mm]", "[rectum.wall_thick_mm]"),
            r"missing \[rectum.wall_thickness",
        ),
        (("[rectum.gap_to_gland_mm]", "[rectum.gap_to_gland_mm"), "not valid TOML"),
        (
            ("[rectum.inferior_extent_mm]", EXTRA + "[rectum.inferior_extent_mm]"),
            r"unknown parameter.*\[rectum.colour_mm\]",
        ),
        (("[urethra.radius_mm]", "[urethras.radius_mm]"), "unknown section"),
    ],
)
def test_bad_parameter_files_say_what_and_where(tmp_path, replace, message):
    path = write_params(tmp_path, replace)
    with pytest.raises(AnatomyError, match=message) as info:
        load_model_organ_params(path)
    assert str(path) in str(info.value)


def test_shapes_rasterise_to_their_analytic_volumes():
    grid = rotated_grid(13.0, 27.0, spacing=0.5)
    origin = np.array([3.0, -2.0, 6.0])
    ball = Ellipsoid(origin, np.array([20.0, 12.0, 9.0]))
    cases = [
        (ball, ball.volume_ml()),
        (
            Tube(np.array([origin, origin + np.array([0, 0, 30.0])]), 4.0),
            (np.pi * 16 * 30 + 4 / 3 * np.pi * 64) / 1000,
        ),
        (RoundedBox(origin, np.array([10.0, 8.0, 6.0]), 0.0), 20 * 16 * 12 / 1000),
        (
            Shell(ball, Ellipsoid(origin, np.array([17.0, 9.0, 6.0]))),
            ball.volume_ml() - 4 / 3 * np.pi * 17 * 9 * 6 / 1000,
        ),
    ]
    for shape, expected in cases:
        got = rasterise_shape(shape, grid).sum() * grid.voxel_volume_ml
        assert got == pytest.approx(expected, rel=0.03), type(shape).__name__


# ---------------------------------------------------------------- real cases -------------


@cache
def real_planned(name: str) -> Anatomy:
    return add_model_organs(make_planning_grid(load_anatomy(anatomy_root() / name)))


@pytest.mark.realdata
@pytest.mark.parametrize("case", REAL_CASES)
def test_real_case_organs_are_placed_around_its_gland(case, real_case_dir):
    real_case_dir(case)
    anatomy = real_planned(case)
    gland = next(s for s in anatomy.of_kind("gland") if s.role.value == "target")
    check_anatomically_placed(anatomy, gland.name)
