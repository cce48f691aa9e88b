"""Folder-of-masks reader on small synthetic oblique grids: conventions and anatomy.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from optimizer.anatomy.errors import GridMismatchError, LabelError
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.readers import load_anatomy, read_mask_folder
from optimizer.anatomy.readers.schema import AnatomySpec


def oblique_affine(spacing=(0.5, 0.6, 3.0), tilt_deg=15.0) -> np.ndarray:
    t = np.deg2rad(tilt_deg)
    rot_x = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    rot_z = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = [12.5, -20.25, 31.0]
    return affine


SHAPE = (20, 16, 6)


def box(lo=(5, 4, 1), hi=(15, 12, 5), value=1, shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    data = np.zeros(shape, dtype=dtype)
    data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value
    return data


def write(folder: Path, name: str, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path = folder / name
    nib.save(nib.Nifti1Image(data, oblique_affine() if affine is None else affine), path)
    return path


def test_names_give_kinds_image_and_unknowns(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 900, SHAPE).astype(np.uint16)
    write(tmp_path, "t2w_axial_case.nii.gz", image)
    write(tmp_path, "prostate.nii.gz", box())
    write(tmp_path, "GTV.nii.gz", box((7, 6, 2), (9, 8, 4)))
    write(tmp_path, "Rectum.nii.gz", box((5, 13, 1), (15, 15, 5)))
    write(tmp_path, "couch_top.nii.gz", box((0, 0, 0), (2, 2, 2)))

    anatomy = read_mask_folder(tmp_path)

    assert anatomy.case_id == tmp_path.name
    assert np.array_equal(anatomy.image, image.astype(np.float32))
    by_name = {s.name: s for s in anatomy}
    assert set(by_name) == {"lesion", "gland", "rectum", "couch_top"}
    assert by_name["lesion"].role == Role.TARGET and by_name["lesion"].kind.name == "lesion"
    assert by_name["gland"].role == Role.TARGET and by_name["gland"].tissue == "prostate"
    assert by_name["rectum"].role == Role.ORGAN_AT_RISK
    assert by_name["couch_top"].kind.name == "soft_tissue"
    assert by_name["couch_top"].role == Role.HELPER
    assert any("couch_top" in n and "soft tissue" in n for n in anatomy.notes)
    assert np.array_equal(by_name["gland"].mask, box().astype(bool))
    assert by_name["gland"].voxel_count() == 10 * 8 * 4
    reference = nib.load(tmp_path / "GTV.nii.gz").affine
    np.testing.assert_allclose(anatomy.grid.affine, reference, atol=1e-6, rtol=0)


def test_label_table_stem_splits_into_zones(tmp_path: Path) -> None:
    zonal = box(value=1)
    zonal[10:15] = np.where(zonal[10:15] > 0, 2, 0)
    write(tmp_path, "zonal_PZ1_TZ2_AI_Model23.nii.gz", zonal)
    write(tmp_path, "whole_gland_AI_Model22b.nii.gz", box())

    anatomy = read_mask_folder(tmp_path)

    assert anatomy.names() == ["gland", "PZ", "TZ"]
    assert np.array_equal(anatomy["PZ"].mask, zonal == 1)
    assert np.array_equal(anatomy["TZ"].mask, zonal == 2)
    assert anatomy["PZ"].kind.name == "zone" and anatomy["PZ"].role == Role.HELPER


def test_label_table_stem_rejects_undeclared_value(tmp_path: Path) -> None:
    zonal = box(value=1)
    zonal[6, 6, 2] = 3
    write(tmp_path, "zonal_PZ1_TZ2_x.nii.gz", zonal)
    write(tmp_path, "gland.nii.gz", box())

    with pytest.raises(LabelError, match=r"zonal_PZ1_TZ2_x\.nii\.gz.*value\(s\) 3"):
        read_mask_folder(tmp_path)


def test_second_delineation_of_a_kind_is_a_helper_but_lesions_stay_targets(
    tmp_path: Path,
) -> None:
    write(tmp_path, "whole_gland_AI_A.nii.gz", box())
    write(tmp_path, "whole_gland_AI_B.nii.gz", box((6, 4, 1), (15, 12, 5)))
    write(tmp_path, "lesion_1.nii.gz", box((7, 6, 2), (9, 8, 4)))
    write(tmp_path, "lesion_2.nii.gz", box((11, 6, 2), (13, 8, 4)))

    anatomy = read_mask_folder(tmp_path)

    assert anatomy["gland"].source == "whole_gland_AI_A.nii.gz"
    assert anatomy["whole_gland_AI_B"].role == Role.HELPER
    assert anatomy["lesion_1"].role == Role.TARGET and anatomy["lesion_2"].role == Role.TARGET
    used = [n for n in anatomy.notes if n.startswith("gland: used")]
    assert used and "whole_gland_AI_A.nii.gz" in used[0] and "whole_gland_AI_B.nii.gz" in used[0]


def test_lesion_grades_are_inside_and_noted(tmp_path: Path) -> None:
    lesion = box((7, 6, 2), (9, 8, 4), value=2, dtype=np.uint16)
    lesion[11:13, 6:8, 2:4] = 4
    write(tmp_path, "csPCa_lesions_ISUP.nii.gz", lesion)

    anatomy = read_mask_folder(tmp_path)

    assert np.array_equal(anatomy["lesion"].mask, lesion != 0)
    note = next(n for n in anatomy.notes if "ISUP grades" in n)
    assert "2 (" in note and "4 (" in note


def test_off_grid_helpers_are_skipped_with_a_note(tmp_path: Path) -> None:
    write(tmp_path, "gland_a.nii.gz", box((0, 0, 0), (4, 4, 4), shape=(24, 16, 6)))
    write(tmp_path, "gland_b.nii.gz", box())
    write(tmp_path, "lesion.nii.gz", box((7, 6, 2), (9, 8, 4)))
    write(tmp_path, "zonal_PZ1_TZ2.nii.gz", box(shape=(20, 16, 4)))

    anatomy = read_mask_folder(tmp_path)

    # gland_a is off the lesion's grid, so gland_b (on it) becomes the primary gland.
    assert anatomy["gland"].source == "gland_b.nii.gz"
    assert anatomy.names() == ["gland", "lesion"]
    skipped = [n for n in anatomy.notes if n.startswith("skipped")]
    assert any("gland_a.nii.gz" in n and "24x16x6" in n and "20x16x6" in n for n in skipped)
    assert any("zonal_PZ1_TZ2.nii.gz" in n and "20x16x4" in n for n in skipped)


def test_off_grid_target_raises_naming_both_files(tmp_path: Path) -> None:
    write(tmp_path, "gland.nii.gz", box())
    write(tmp_path, "lesion.nii.gz", box(), affine=oblique_affine(spacing=(0.5, 0.5, 3.0)))

    with pytest.raises(GridMismatchError) as err:
        read_mask_folder(tmp_path)
    message = str(err.value)
    assert "gland.nii.gz" in message and "lesion.nii.gz" in message
    assert "0.6" in message and "resample" in message


def test_anatomy_json_names_roles_tissues_and_labels(tmp_path: Path) -> None:
    write(tmp_path, "scan.nii.gz", np.ones(SHAPE, dtype=np.int16))
    lesion = box((7, 6, 2), (9, 8, 4), value=1)
    lesion[11:13, 6:8, 2:4] = 3
    write(tmp_path, "lesions.nii.gz", lesion)
    organs = box(value=1)
    organs[5:15, 13:15, 1:5] = 2
    write(tmp_path, "organs.nii.gz", organs)
    write(tmp_path, "old_try.nii.gz", box())
    spec = {
        "case_id": "demo-1",
        "image": "scan.nii.gz",
        "files": {
            "lesions.nii.gz": {"name": "csPCa", "inside": [2, 3, 4, 5]},
            "organs.nii.gz": {"labels": {"1": "prostate", "2": {"name": "wall", "kind": "rectum"}}},
            "old_try.nii.gz": {"ignore": True},
        },
    }
    (tmp_path / "anatomy.json").write_text(json.dumps(spec))

    anatomy = load_anatomy(tmp_path)

    assert anatomy.case_id == "demo-1"
    assert anatomy.image is not None
    assert anatomy.names() == ["csPCa", "prostate", "wall"]
    assert np.array_equal(anatomy["csPCa"].mask, lesion == 3)  # ISUP 1 is not inside
    assert anatomy["wall"].kind.name == "rectum" and anatomy["wall"].role == Role.ORGAN_AT_RISK
    assert anatomy["prostate"].role == Role.TARGET
    assert any("old_try.nii.gz" in n for n in anatomy.notes)
    assert any("values [1] not counted" in n for n in anatomy.notes)


def test_anatomy_json_role_and_tissue_override(tmp_path: Path) -> None:
    write(tmp_path, "ablation_zone.nii.gz", box())
    spec = {"files": {"ablation_zone.nii.gz": {"role": "target", "tissue": "tumour"}}}
    (tmp_path / "anatomy.json").write_text(json.dumps(spec))

    anatomy = read_mask_folder(tmp_path, case_id="given")

    s = anatomy["ablation_zone"]
    assert (s.role, s.tissue, anatomy.case_id) == (Role.TARGET, "tumour", "given")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.nii.gz": {"role": "tumour"}}, r"files -> a\.nii\.gz -> role: Input should be"),
        ({"a.nii.gz": {"colour": "red"}}, r"files -> a\.nii\.gz -> colour: Extra inputs"),
        ({"a.nii.gz": {"kind": "liver"}}, r"unknown kind 'liver'"),
        ({"a.nii.gz": {"name": "x", "labels": {"1": "y"}}}, r"either 'labels'"),
        ({"a.nii.gz": {"labels": {"0": "bg"}}}, r"0 is background"),
        ({"a.nii.gz": {"inside": [0, 1]}}, r"0 is background"),
        ({"missing.nii.gz": {"name": "x"}}, r"not in the folder: missing\.nii\.gz"),
    ],
)
def test_anatomy_json_errors_name_file_and_field(
    tmp_path: Path, files: dict[str, object], expected: str
) -> None:
    write(tmp_path, "a.nii.gz", box())
    (tmp_path / "anatomy.json").write_text(json.dumps({"files": files}))

    with pytest.raises(LabelError, match=expected) as err:
        read_mask_folder(tmp_path)
    assert "anatomy.json" in str(err.value)


def _lps_header(affine_ras: np.ndarray) -> dict[str, object]:
    flip = np.array([-1.0, -1.0, 1.0])
    return {
        "space": "left-posterior-superior",
        "space directions": (affine_ras[:3, :3] * flip[:, None]).T,
        "space origin": affine_ras[:3, 3] * flip,
    }


@pytest.mark.parametrize("detached", [False, True])
def test_nrrd_masks_in_lps_space_match_nifti(tmp_path: Path, detached: bool) -> None:
    affine = oblique_affine()
    gland = box()
    suffix = ".nhdr" if detached else ".nrrd"
    nrrd.write(
        str(tmp_path / f"prostate{suffix}"), gland, _lps_header(affine), detached_header=detached
    )
    nrrd.write(str(tmp_path / "GTV.nrrd"), box((7, 6, 2), (9, 8, 4)), _lps_header(affine))

    anatomy = load_anatomy(tmp_path)

    np.testing.assert_allclose(anatomy.grid.affine, affine, atol=1e-9, rtol=0)
    assert np.array_equal(anatomy["gland"].mask, gland.astype(bool))
    assert anatomy.names() == ["lesion", "gland"]


def test_masks_keep_on_disk_voxel_order(tmp_path: Path) -> None:
    # A RAS-ordered file (no axis flips): nothing may be reoriented to match the LPS one.
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    gland = box((1, 2, 0), (6, 14, 3))
    write(tmp_path, "prostate.nii.gz", gland, affine=affine)

    anatomy = read_mask_folder(tmp_path)

    assert np.array_equal(anatomy["gland"].mask, gland.astype(bool))
    np.testing.assert_allclose(anatomy.grid.affine, affine)


def test_image_null_leaves_scans_out(tmp_path: Path) -> None:
    write(tmp_path, "t2w.nii.gz", np.full(SHAPE, 7, dtype=np.int16))
    write(tmp_path, "prostate.nii.gz", box())
    (tmp_path / "anatomy.json").write_text(json.dumps({"image": None}))

    anatomy = read_mask_folder(tmp_path)

    assert anatomy.image is None and anatomy.names() == ["gland"]
    assert any("image-like files not used: t2w.nii.gz" in n for n in anatomy.notes)


def test_documented_example_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "anatomy_input.md").read_text()
    example = re.search(r"```json\n(\{\n  \"case_id\".*?)```", doc, re.S)
    assert example is not None
    spec = AnatomySpec.model_validate(json.loads(example.group(1)))
    assert spec.files["seg_organs.nii.gz"].labels is not None
    assert spec.files["seg_organs.nii.gz"].labels[2].role == Role.ORGAN_AT_RISK
