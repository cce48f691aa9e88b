from __future__ import annotations

import numpy as np
import pytest

from optimizer.electrodes.needle import NEEDLE_19G_DIAMETER_MM
from optimizer.electrodes.template import Template, TemplateError
from tests.electrodes.builders import build, centred_grid, rotation, sphere


def test_labels_run_from_a1_column_by_column() -> None:
    template = Template(np.zeros(3))
    labels = template.labels()
    assert len(labels) == 169 == len(set(labels))
    assert labels[:3] == ["A1", "A2", "A3"]
    assert labels[-1] == "M13"
    assert template.hole(" c4 ") is template.hole("C4")


def test_columns_run_right_to_left_and_rows_posterior_to_anterior() -> None:
    template = Template(np.array([1.0, 2.0, 3.0]))
    a1, b1, a2 = (template.hole(x).position_mm for x in ("A1", "B1", "A2"))
    # RAS: +x is the patient's right, +y anterior.
    np.testing.assert_allclose(b1 - a1, [-5.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(a2 - a1, [0.0, 5.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(template.hole("G7").position_mm, [1.0, 2.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(template.depth_of(template.positions_mm()), 0.0, atol=1e-12)


def test_even_sized_template_is_centred_between_holes() -> None:
    template = Template(np.zeros(3), columns=4, rows=2, spacing_mm=2.0)
    np.testing.assert_allclose(template.positions_mm().mean(axis=0), 0.0, atol=1e-12)
    assert template.labels() == ["A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2"]


def test_tilted_template_keeps_holes_in_its_plane() -> None:
    direction = np.array([0.0, 0.3, 1.0]) / np.hypot(0.3, 1.0)
    template = Template(np.array([5.0, -3.0, -40.0]), direction=direction)
    axes = np.stack([template.column_axis, template.row_axis, template.direction])
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-12)
    assert template.column_axis[0] < 0 and template.row_axis[1] > 0
    np.testing.assert_allclose(template.depth_of(template.positions_mm()), 0.0, atol=1e-12)
    needle = template.needle("D9", depth_mm=60.0, exposure_mm=20.0, diameter_mm=1.27)
    assert needle.entry_mm is not None
    np.testing.assert_allclose(needle.entry_mm, template.hole("D9").position_mm)
    np.testing.assert_allclose(needle.tip_mm - needle.entry_mm, 60.0 * direction, atol=1e-12)
    np.testing.assert_allclose(needle.direction, direction, atol=1e-15)
    assert needle.hole == "D9" and needle.exposure_mm == 20.0 and needle.diameter_mm == 1.27
    assert template.depth_of(needle.tip_mm) == pytest.approx(60.0)


def test_needle_defaults_to_19_gauge() -> None:
    needle = Template(np.zeros(3)).needle("A1", 30.0, 10.0)
    assert needle.diameter_mm == NEEDLE_19G_DIAMETER_MM
    assert needle.label == "A1"


@pytest.mark.parametrize("direction", [(0, 0, 1), (0.2, -0.3, 1.0)])
def test_for_anatomy_centres_on_target_below_its_caudal_end(direction: tuple[float, ...]) -> None:
    grid = centred_grid((40, 36, 14), spacing=(0.7, 0.9, 3.0), rot=rotation((1, 2, 0.5), 17))
    anatomy = build(grid, {"lesion": sphere((2.0, -1.0, 3.0), 9.0)})
    template = Template.for_anatomy(anatomy, standoff_mm=12.0, direction=direction)
    d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    np.testing.assert_allclose(template.direction, d)
    centres = grid.index_to_world(np.argwhere(anatomy.target_mask()).astype(float))
    centroid = centres.mean(axis=0)
    # The grid centre hole lies on the line through the target centroid along the direction.
    offset = centroid - template.hole("G7").position_mm
    np.testing.assert_allclose(offset - (offset @ d) * d, 0.0, atol=1e-9)
    # The plane is 12 mm below the caudal-most corner of any target voxel.
    corners = np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5])).reshape(3, -1).T
    target_idx = np.argwhere(anatomy.target_mask()).astype(float)
    all_corners = grid.index_to_world((target_idx[:, None, :] + corners[None]).reshape(-1, 3))
    assert float(np.min(template.depth_of(all_corners))) == pytest.approx(12.0, abs=1e-9)


def test_for_anatomy_size_and_spacing() -> None:
    grid = centred_grid((30, 30, 30))
    anatomy = build(grid, {"prostate": sphere((0, 0, 0), 8)})
    template = Template.for_anatomy(anatomy, spacing_mm=2.5, columns=7, rows=5)
    assert template.labels()[-1] == "G5"
    d = np.linalg.norm(template.hole("B1").position_mm - template.hole("A1").position_mm)
    assert d == pytest.approx(2.5)


def test_unknown_hole_names_the_range() -> None:
    template = Template(np.zeros(3))
    with pytest.raises(TemplateError, match=r"no hole 'N1'.*A1\.\.M13"):
        template.hole("N1")
    with pytest.raises(TemplateError, match="no hole 'A14'"):
        template.needle("A14", 40.0, 10.0)


@pytest.mark.parametrize("depth", [0.0, -5.0, float("nan")])
def test_depth_must_be_positive(depth: float) -> None:
    with pytest.raises(TemplateError, match="depth_mm must be > 0"):
        Template(np.zeros(3)).needle("C4", depth, 1.0)


def test_exposure_cannot_exceed_depth() -> None:
    with pytest.raises(TemplateError, match=r"exposure_mm 30\.0 exceeds depth_mm 20\.0"):
        Template(np.zeros(3)).needle("C4", 20.0, 30.0)
    with pytest.raises(ValueError, match="exposure_mm must be > 0"):
        Template(np.zeros(3)).needle("C4", 20.0, 0.0)


def test_bad_templates_are_refused() -> None:
    with pytest.raises(TemplateError, match="left-right"):
        Template(np.zeros(3), direction=np.array([1.0, 0.0, 0.0]))
    with pytest.raises(TemplateError, match="zero length"):
        Template(np.zeros(3), direction=np.zeros(3))
    with pytest.raises(TemplateError, match=r"columns must be 1\.\.26"):
        Template(np.zeros(3), columns=27)
    with pytest.raises(TemplateError, match="spacing_mm must be > 0"):
        Template(np.zeros(3), spacing_mm=0.0)
    grid = centred_grid((10, 10, 10))
    with pytest.raises(TemplateError, match="standoff_mm"):
        Template.for_anatomy(build(grid, {"gland": sphere((0, 0, 0), 3)}), standoff_mm=-1.0)
