"""Warm starts from a plan library made by a real batch, through the distributed search."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.case import prepare_case
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.space import SearchSpace
from services.planner.batch import run_batch
from services.planner.batch_task import BatchSettings
from services.planner.driver import plan_distributed
from services.planner.library import LibraryError
from services.planner.warm_library import library_seed_plans
from tests.services.planner.conftest import QUICK

LIBRARY_CASES = ("picai-10043", "picai-10059", "picai-10268")
NEW_CASE = "picai-10032"
CHEAP = BatchSettings(trials=3, grid_mm=2.0, nonlinear=False)


@pytest.fixture(scope="module")
def library(ray_cluster, anatomy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    cases = tmp_path_factory.mktemp("cases")
    for name in LIBRARY_CASES:
        (cases / name).symlink_to(anatomy_dir / name, target_is_directory=True)
    out = tmp_path_factory.mktemp("lib") / "library"
    summary = run_batch(cases, out, load_protocol("ect"), settings=CHEAP)
    assert sorted(summary.planned) == sorted(LIBRARY_CASES)
    return out


def test_a_new_case_gets_the_plans_of_its_nearest_library_cases(
    library: Path, anatomy_dir: Path
) -> None:
    case = prepare_case(anatomy_dir / NEW_CASE, spacing_mm=2.0)
    space = SearchSpace(case, load_protocol("ect"))
    plans, notes = library_seed_plans(library, space, k=2)
    assert len(plans) == 2
    assert all(p.name.startswith("warm start from picai-") for p in plans)
    admissible = {h.label for h in space.holes}
    assert all(n.hole in admissible for p in plans for n in p.needles)
    used = [n for n in notes if "warm start from library case" in n]
    assert len(used) == 2 and all("distance" in n for n in used)


def test_a_library_of_another_protocol_is_refused_with_the_fix(
    library: Path, anatomy_dir: Path
) -> None:
    case = prepare_case(anatomy_dir / NEW_CASE, spacing_mm=2.0)
    with pytest.raises(LibraryError, match="--protocol irect"):
        library_seed_plans(library, SearchSpace(case, load_protocol("irect")))


def test_the_distributed_search_starts_from_the_library(
    library: Path, anatomy_dir: Path
) -> None:
    result = plan_distributed(
        anatomy_dir / NEW_CASE, load_protocol("ect"), trials=3, workers=1, refine_top_k=1,
        library=library, warm_start_cases=1, **QUICK,
    )  # fmt: skip
    used = [n for n in result.notes if "warm start from library case" in n]
    assert len(used) == 1 and any(f"'{name}'" in used[0] for name in LIBRARY_CASES)
    assert result.trials_run == 3
