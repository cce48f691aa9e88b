"""One label image plus a value -> name table (JSON or CSV)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from optimizer.anatomy.errors import LabelError
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.readers import load_anatomy, read_label_map

AFFINE = np.array(
    [
        [-0.5, 0.01, 0.2, 40.0],
        [0.0, -0.47, 0.95, 80.0],
        [0.01, 0.16, 2.84, -27.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def label_image(path: Path) -> np.ndarray:
    data = np.zeros((16, 14, 5), dtype=np.int16)
    data[3:12, 3:11, 1:4] = 1  # prostate
    data[6:8, 6:8, 1:4] = 2  # urethra
    data[3:12, 11:13, 1:4] = 5  # rectal wall
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return data


def test_json_table_gives_structures(tmp_path: Path) -> None:
    data = label_image(tmp_path / "labels.nii.gz")
    table = {
        "1": "prostate",
        "2": {"name": "urethra", "role": "organ_at_risk"},
        "5": {"name": "wall", "kind": "rectum", "tissue": "muscle"},
        "7": "bladder",
    }
    (tmp_path / "labels.json").write_text(json.dumps(table))

    anatomy = load_anatomy(tmp_path / "labels.nii.gz")

    assert anatomy.names() == ["prostate", "urethra", "wall"]
    assert np.array_equal(anatomy["prostate"].mask, data == 1)
    assert anatomy["wall"].kind.name == "rectum" and anatomy["wall"].role == Role.ORGAN_AT_RISK
    assert anatomy["prostate"].role == Role.TARGET
    assert anatomy.case_id == "labels"
    assert any("bladder" in n and "empty" in n for n in anatomy.notes)
    stored = nib.load(tmp_path / "labels.nii.gz").affine
    np.testing.assert_allclose(anatomy.grid.affine, stored, atol=1e-6, rtol=0)


def test_csv_table_with_roles_and_tissues(tmp_path: Path) -> None:
    data = label_image(tmp_path / "seg.nii.gz")
    (tmp_path / "table.csv").write_text(
        "value,name,role,tissue\n1,prostate,,\n2,urethra,organ_at_risk,urethra\n5,RW,,muscle\n"
    )

    anatomy = read_label_map(tmp_path / "seg.nii.gz", tmp_path / "table.csv", case_id="c7")

    assert anatomy.case_id == "c7"
    assert np.array_equal(anatomy["RW"].mask, data == 5)
    assert anatomy["RW"].tissue == "muscle" and anatomy["RW"].kind.name == "soft_tissue"
    assert any("RW" in n and "soft tissue" in n for n in anatomy.notes)


def test_values_missing_from_the_table_are_named(tmp_path: Path) -> None:
    label_image(tmp_path / "labels.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({"labels": {"1": "prostate"}}))

    with pytest.raises(LabelError, match=r"labels\.nii\.gz: label value\(s\) 2, 5 occur"):
        load_anatomy(tmp_path / "labels.nii.gz")


def test_label_map_without_a_table_says_where_to_put_it(tmp_path: Path) -> None:
    label_image(tmp_path / "labels.nii.gz")

    with pytest.raises(LabelError, match=r"labels\.nii\.gz: no label table; put labels\.json"):
        load_anatomy(tmp_path / "labels.nii.gz")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("label,name\n1,prostate\n", r"need 'value' and 'name'.*missing \['value'\]"),
        ("value,name\none,prostate\n", r"line 2: value 'one' is not an integer"),
        ("value,name\n1,prostate\n1,gland\n", r"line 3: value 1 cannot be used"),
        ("value,name,role\n1,prostate,boss\n", r"line 2: role: Input should be"),
    ],
)
def test_malformed_csv_tables(tmp_path: Path, text: str, expected: str) -> None:
    label_image(tmp_path / "labels.nii.gz")
    (tmp_path / "labels.csv").write_text(text)

    with pytest.raises(LabelError, match=expected) as err:
        load_anatomy(tmp_path / "labels.nii.gz")
    assert "labels.csv" in str(err.value)
