"""Shared test fixtures: where the real anatomy is, and a skip when it is absent."""

from __future__ import annotations

import os
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
