"""The .npz format: exact round trips, hand-written files, and real cases."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.readers import load_anatomy, read_npz, save_anatomy_npz
from optimizer.anatomy.structures import Anatomy, Structure

OBLIQUE = np.array(
    [
        [-0.4999, 0.0002, -0.0038, 57.685437],
        [0.0002, -0.474188, -0.95144, 82.363057],
        [-0.0006, -0.158573, 2.845127, -27.080757],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def synthetic() -> Anatomy:
    grid = VoxelGrid((12, 10, 4), OBLIQUE)
    gland = np.zeros(grid.shape, bool)
    gland[2:10, 2:8, 1:3] = True
    rectum = np.zeros(grid.shape, bool)
    rectum[2:10, 8:10, 1:3] = True
    structures = [
        Structure.from_name("prostate", gland, source="prostate.nii.gz")[0],
        Structure.from_name("rectal wall", rectum, modelled=True, source="model: rectum")[0],
        Structure.from_name(
            "spot", np.arange(grid.size).reshape(grid.shape) == 77, role="avoid", tissue="blood"
        )[0],
    ]
    image = np.random.default_rng(1).random(grid.shape).astype(np.float32)
    return Anatomy(
        grid,
        structures,
        case_id="syn-1",
        source="/data/syn",
        image=image,
        notes=["made for a test", "second note"],
    )


def assert_same(a: Anatomy, b: Anatomy) -> None:
    assert np.array_equal(a.grid.affine, b.grid.affine)
    assert a.grid.shape == b.grid.shape
    assert (a.case_id, a.source, a.notes) == (b.case_id, b.source, b.notes)
    assert a.names() == b.names()
    for s, t in zip(a, b, strict=True):
        assert np.array_equal(s.mask, t.mask)
        assert (s.kind, s.role, s.tissue, s.modelled, s.source) == (
            t.kind,
            t.role,
            t.tissue,
            t.modelled,
            t.source,
        )
    assert (a.image is None) == (b.image is None)
    if a.image is not None and b.image is not None:
        assert np.array_equal(a.image, b.image)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    original = synthetic()
    path = save_anatomy_npz(original, tmp_path / "case")

    assert path.name == "case.npz"
    loaded = load_anatomy(path)

    assert_same(original, loaded)
    assert loaded["rectal wall"].modelled and loaded.modelled_structures == ["rectal wall"]
    assert loaded["spot"].role == Role.AVOID and loaded["spot"].tissue == "blood"


def test_hand_written_npz_without_meta(tmp_path: Path) -> None:
    gland = np.zeros((8, 8, 3), np.uint8)
    gland[2:6, 2:6, 1] = 1
    np.savez(
        tmp_path / "hand.npz",
        affine=np.diag([0.8, 0.8, 2.0, 1.0]),
        mask__Prostate=gland,
        mask__Urethra=gland * 0 + (np.indices(gland.shape)[0] == 4),
    )

    anatomy = read_npz(tmp_path / "hand.npz")

    assert anatomy.case_id == "hand"
    assert anatomy["Prostate"].kind.name == "gland" and anatomy["Urethra"].kind.name == "urethra"
    assert np.array_equal(anatomy["Prostate"].mask, gland != 0)


def test_meta_is_plain_json(tmp_path: Path) -> None:
    path = save_anatomy_npz(synthetic(), tmp_path / "x.npz")
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        keys = set(npz.files)
    assert meta["format"] == "ectplan-anatomy" and meta["version"] == 1
    assert {"affine", "image", "mask__prostate", "mask__rectal wall"} <= keys
    assert meta["structures"][1] == {
        "name": "rectal wall",
        "kind": "rectum",
        "role": "organ_at_risk",
        "tissue": "muscle",
        "modelled": True,
        "source": "model: rectum",
    }


def test_real_case_round_trip(real_case_dir: Callable[[str], Path], tmp_path: Path) -> None:
    original = load_anatomy(real_case_dir("prostatex-0000"))
    loaded = read_npz(save_anatomy_npz(original, tmp_path / "px0.npz"))
    assert_same(original, loaded)
