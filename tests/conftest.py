"""Shared test fixtures: where the real anatomy is, and a skip when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def anatomy_root() -> Path:
    """The real cases: $ECTPLAN_ANATOMY_DIR, else ../shared/data/anatomy beside the repo."""
    env = os.environ.get("ECTPLAN_ANATOMY_DIR")
    return Path(env) if env else (REPO.parent / "shared" / "data" / "anatomy").resolve()


REAL_CASES = (
    sorted(p.name for p in anatomy_root().iterdir() if p.is_dir())
    if anatomy_root().is_dir()
    else []
)


@pytest.fixture(scope="session")
def anatomy_dir() -> Path:
    root = anatomy_root()
    if not root.is_dir():
        pytest.skip(f"real anatomy not present at {root}")
    return root


@pytest.fixture(scope="session")
def real_case_dir(anatomy_dir: Path):
    """Callable: real_case_dir('prostatex-0000') -> Path, skipping when that case is absent."""

    def get(name: str) -> Path:
        path = anatomy_dir / name
        if not path.is_dir():
            pytest.skip(f"real case {name} not present")
        return path

    return get


@pytest.fixture(autouse=True)
def _session_ray_has_its_cpus(request: pytest.FixtureRequest) -> None:
    """Before a test on the session's Ray: every CPU free again (see reclaim_leaked_cpus)."""
    if not {"ray_cluster", "_session_ray"} & set(request.fixturenames):
        return
    ray = sys.modules.get("ray")  # not imported yet: no Ray running either
    if ray is not None and ray.is_initialized():
        from tests.conftest_ray import TEST_RAY_CPUS, reclaim_leaked_cpus

        reclaim_leaked_cpus(TEST_RAY_CPUS)
