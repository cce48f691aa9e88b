"""Shared planner fixtures: the session's Ray, the lesion phantom and a quick search setup."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from optimizer.anatomy.readers.npz import save_anatomy_npz
from optimizer.anatomy.structures import Anatomy
from optimizer.evaluate.protocol import Protocol, load_protocol
from tests.conftest_ray import ray_cluster  # noqa: F401
from tests.evaluate.cases import lesion_anatomy

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The lesion phantom keeps 4 admissible holes around its lesion with a 25 mm planning margin
# (tests/evaluate/cases.py uses the same): enough for a passing 4-needle ECT plan.
LESION_MARGIN_MM = 25.0
# Both levels on the 2 mm grid: the 1 mm nonlinear confirmation is too slow for unit tests.
# One Numba thread per worker: on a ~30^3 grid more threads only add barrier waits, and on a
# busy 2-core machine oversubscribed Numba threads slow solves down tenfold.
QUICK = {"coarse_mm": 2.0, "fine_mm": 2.0, "margin_mm": LESION_MARGIN_MM, "threads_per_worker": 1}


@pytest.fixture(scope="session")
def lesion() -> Anatomy:
    return lesion_anatomy()


@pytest.fixture(scope="session")
def lesion_npz(lesion: Anatomy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_anatomy_npz(lesion, tmp_path_factory.mktemp("anatomy") / "lesion.npz")


@pytest.fixture(scope="session")
def ect() -> Protocol:
    return load_protocol("ect")
