import numpy as np
import pytest

from optimizer.anatomy.errors import AnatomyError, GridMismatchError, MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role, kind_for, match_kind
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.tissue import load_tissue_table


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("Prostate", "gland"),
        ("whole_gland_AI_Bosma22b", "gland"),
        ("GTV", "lesion"),
        ("csPCa_lesions_ISUP_human_expert_resampled", "lesion"),
        ("Tumour", "lesion"),
        ("RectalWall", "rectum"),
        ("rectum", "rectum"),
        ("Bladder", "bladder"),
        ("bladder lumen", "urine"),
        ("Urethra", "urethra"),
        ("NVB_L", "nvb"),
        ("neurovascular bundle right", "nvb"),
        ("Pubis", "bone"),
        ("zonal_PZ1_TZ2_AI_HeviAI23", "zone"),
    ],
)
def test_names_match_kinds_case_insensitively(name, kind):
    found = match_kind(name)
    assert found is not None and found.name == kind


def test_unknown_names_become_soft_tissue_and_say_so():
    kind, recognised = kind_for("mystery blob")
    assert kind.name == "soft_tissue" and not recognised
    assert kind.tissue == "fat"


def _grid(n=6):
    return VoxelGrid((n, n, n), np.eye(4))


def test_overlaps_resolve_by_priority_and_report_what_won():
    grid = _grid()
    gland = np.zeros(grid.shape, bool)
    gland[1:5, 1:5, 1:5] = True
    lesion = np.zeros(grid.shape, bool)
    lesion[3:6, 3:6, 3:6] = True  # partly outside the gland, as in the real cases
    rectum = np.zeros(grid.shape, bool)
    rectum[:, 0:2, :] = True
    structures = [
        Structure.from_name("rectum", rectum)[0],  # listed first: priority, not order, decides
        Structure.from_name("gland", gland)[0],
        Structure.from_name("lesion", lesion)[0],
    ]
    anatomy = Anatomy(grid, structures)
    winner = anatomy.winner_map()
    assert winner[4, 4, 4] == 2  # lesion over gland
    assert winner[2, 2, 2] == 1  # gland over nothing
    assert winner[2, 1, 2] == 1  # gland over rectum
    assert winner[0, 0, 0] == 0
    table = load_tissue_table()
    tissues = anatomy.tissue_map(table.names())
    names = table.names()
    assert names[tissues[4, 4, 4]] == "tumour"
    assert names[tissues[2, 1, 2]] == "prostate"
    assert names[tissues[0, 5, 0]] == "fat"  # unclaimed: background soft tissue
    rows = {r["name"]: r for r in anatomy.structure_table()}
    lost = rows["rectum"]["lost_to_overlap_ml"]
    assert lost == pytest.approx(np.count_nonzero(rectum & gland) * 1e-3)
    assert np.count_nonzero(anatomy.target_mask()) == np.count_nonzero(gland | lesion)


def test_explicit_role_and_unknown_role():
    s, recognised = Structure.from_name("blob", np.ones((2, 2, 2)), role="target")
    assert s.role is Role.TARGET and recognised
    with pytest.raises(AnatomyError, match="unknown role"):
        Structure.from_name("blob", np.ones((2, 2, 2)), role="tumor-ish")


def test_missing_and_empty_targets_are_named():
    grid = _grid()
    rectum = Structure.from_name("rectum", np.ones(grid.shape))[0]
    with pytest.raises(MissingTargetError, match="no target"):
        Anatomy(grid, [rectum]).target_mask()
    empty = Structure.from_name("GTV", np.zeros(grid.shape))[0]
    with pytest.raises(MissingTargetError, match="empty"):
        Anatomy(grid, [empty]).target_mask()


def test_mask_on_wrong_grid_and_duplicate_names_are_refused():
    grid = _grid()
    with pytest.raises(GridMismatchError, match="gland"):
        Anatomy(grid, [Structure.from_name("gland", np.ones((5, 6, 6)))[0]])
    g = Structure.from_name("gland", np.ones(grid.shape))[0]
    with pytest.raises(AnatomyError, match="unique"):
        Anatomy(grid, [g, g])
