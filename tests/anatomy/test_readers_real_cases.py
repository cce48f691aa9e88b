"""All real cases load with the volumes the data README gives, on their exact stored grids."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from optimizer.anatomy.kinds import Role
from optimizer.anatomy.readers import load_anatomy
from optimizer.anatomy.structures import Anatomy
from tests.conftest import REAL_CASES

pytestmark = pytest.mark.realdata
CaseDir = Callable[[str], Path]

# From ../shared/data/anatomy/README.md: gland = whole_gland_AI_Bosma22b (the first AI gland
# in sorted order, which the reader uses); lesions = expert lesions per ISUP grade.
GLAND_ML = {
    "prostatex-0000": 44.3,
    "prostatex-0001": 32.2,
    "picai-10021": 63.9,
    "picai-10032": 41.5,
    "picai-10043": 33.9,
    "picai-10059": 53.3,
    "picai-10074": 32.7,
    "picai-10233": 51.0,
    "picai-10268": 66.0,
    "picai-10434": 39.5,
}
LESION_ML: dict[str, list[float]] = {
    "prostatex-0000": [0.31],
    "prostatex-0001": [],
    "picai-10021": [8.73],
    "picai-10032": [4.22],
    "picai-10043": [10.42],
    "picai-10059": [8.38],
    "picai-10074": [5.56],
    "picai-10233": [24.88],
    "picai-10268": [1.01, 1.91],
    "picai-10434": [0.52, 1.46],
}
WITH_IMAGE = {"prostatex-0000", "prostatex-0001"}
ZONAL_OFF_GRID = {"picai-10074", "picai-10233"}

_loaded: dict[str, tuple[Anatomy, float]] = {}


def load(case_dir: Path) -> Anatomy:
    """Each case is loaded once per session (the big ones take a second)."""
    if case_dir.name not in _loaded:
        start = time.perf_counter()
        anatomy = load_anatomy(case_dir)
        _loaded[case_dir.name] = (anatomy, time.perf_counter() - start)
    return _loaded[case_dir.name][0]


def volume_ml(anatomy: Anatomy, name: str) -> float:
    return anatomy[name].voxel_count() * anatomy.grid.voxel_volume_ml


@pytest.mark.parametrize("case", REAL_CASES)
def test_case_loads_with_readme_volumes(real_case_dir: CaseDir, case: str) -> None:
    if case not in GLAND_ML:
        pytest.skip(f"{case} is not in the README table this test knows")
    anatomy = load(real_case_dir(case))

    assert anatomy.case_id == case
    assert anatomy.target_mask().any()
    assert anatomy["gland"].role == Role.TARGET
    assert anatomy["gland"].source == "whole_gland_AI_Bosma22b.nii.gz"
    assert volume_ml(anatomy, "gland") == pytest.approx(GLAND_ML[case], rel=0.005)
    lesions = LESION_ML[case]
    if lesions:
        assert anatomy["lesion"].role == Role.TARGET
        assert volume_ml(anatomy, "lesion") == pytest.approx(sum(lesions), rel=0.005)
    else:
        assert not anatomy.of_kind("lesion")
    assert (anatomy.image is not None) == (case in WITH_IMAGE)
    zonal_skipped = any(n.startswith("skipped zonal_PZ1_TZ2_AI_HeviAI23") for n in anatomy.notes)
    assert zonal_skipped == (case in ZONAL_OFF_GRID)
    assert ("PZ" in anatomy.names()) == (case not in ZONAL_OFF_GRID)
    print(f"{case}: loaded in {_loaded[case][1]:.2f} s")


@pytest.mark.parametrize("case", REAL_CASES)
def test_grid_and_masks_are_exactly_as_stored(real_case_dir: CaseDir, case: str) -> None:
    case_dir = real_case_dir(case)
    anatomy = load(case_dir)
    # The grid is the first target file's, to 1e-6 mm (oblique and anisotropic as stored);
    # the other files of a case agree with it to better than 1e-3 mm.
    reference = min(s.source for s in anatomy.with_role(Role.TARGET))
    stored_reference = nib.load(case_dir / reference).affine
    np.testing.assert_allclose(anatomy.grid.affine, stored_reference, atol=1e-6, rtol=0)
    for structure in anatomy:
        file_name = structure.source.split(" (value ")[0]
        stored = nib.load(case_dir / file_name)
        np.testing.assert_allclose(anatomy.grid.affine, stored.affine, atol=1e-3, rtol=0)
        data = np.asanyarray(stored.dataobj)
        if " (value " in structure.source:
            value = int(structure.source.split(" (value ")[1].rstrip(")"))
            expected = data == value
        else:
            expected = data != 0
        assert np.array_equal(structure.mask, expected), structure.name  # no reorientation


@pytest.mark.parametrize("case", sorted(WITH_IMAGE & set(REAL_CASES)))
def test_t2w_image_is_the_stored_scan(real_case_dir: CaseDir, case: str) -> None:
    case_dir = real_case_dir(case)
    anatomy = load(case_dir)
    (image_file,) = case_dir.glob("t2w_axial_*.nii.gz")
    assert f"image: {image_file.name}" in anatomy.notes
    assert anatomy.image is not None
    assert np.array_equal(anatomy.image, np.asanyarray(nib.load(image_file).dataobj))


def test_two_gland_models_keep_the_second_as_helper(real_case_dir: CaseDir) -> None:
    anatomy = load(real_case_dir("picai-10268"))
    assert anatomy["whole_gland_AI_Guerbet23"].role == Role.HELPER
    assert anatomy["zonal_PZ1_TZ2_AI_Yuan23_TZ"].role == Role.HELPER
    assert any("gland: used whole_gland_AI_Bosma22b.nii.gz" in n for n in anatomy.notes)
    grades = next(n for n in anatomy.notes if "ISUP grades" in n)
    assert "2 (1.01 ml)" in grades and "3 (1.91 ml)" in grades
