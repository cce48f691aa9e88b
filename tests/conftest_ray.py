"""One local Ray for the whole test session (``ray.init`` takes ~5 s on a 2-core machine).

Import the fixture into the conftest of any folder whose tests need Ray:

    from tests.conftest_ray import ray_cluster  # noqa: F401

The first use starts Ray through ``services.planner.cluster.connect`` (local cluster, token
authentication with an ephemeral token, nothing written under the home folder); a second
import elsewhere finds it running and leaves the shutdown to the fixture that started it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Two CPUs: enough for the two-worker searches, and what the CI machine has.
TEST_RAY_CPUS = max(2, min(4, os.cpu_count() or 2))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    pytest.importorskip("ray")
    from services.planner.cluster import connect, shutdown

    info = connect(num_cpus=TEST_RAY_CPUS)
    yield info
    if info.started_here:
        shutdown()
