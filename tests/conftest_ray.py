"""One local Ray for the whole test session (``ray.init`` takes ~5 s on a 2-core machine).

Import the fixture into the conftest of any folder whose tests need Ray:

    from tests.conftest_ray import ray_cluster  # noqa: F401

The first use starts Ray through ``services.planner.cluster.connect`` (local cluster, token
authentication with an ephemeral token, nothing written under the home folder); a second
import elsewhere finds it running and leaves the shutdown to the fixture that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# Two CPUs: enough for the two-worker searches, and what the CI machine has.
TEST_RAY_CPUS = max(2, min(4, os.cpu_count() or 2))
# Between tests, how long released actors and cancelled tasks may take to give CPUs back.
CPUS_BACK_S = 20.0
# Actor states that hold (or are about to hold) a CPU legitimately.
LIVE_ACTOR_STATES = {"ALIVE", "PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    pytest.importorskip("ray")
    from services.planner.cluster import connect, shutdown

    info = connect(num_cpus=TEST_RAY_CPUS)
    yield info
    if info.started_here:
        shutdown()


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (the local Ray's raylet and its workers are children of
    the test process that started it), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _idle_ray_workers() -> list[int]:
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::IDLE"):
            pids.append(pid)
    return pids


def _free_cpus() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def _wait_for_cpus(total: float, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _free_cpus() < total:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def reclaim_leaked_cpus(total: float) -> None:
    """Give the session's Ray its CPUs back when a killed actor leaked one.

    An actor killed while Ray was still placing it (a cancelled batch force-kills the task
    that owns a search's actors) can leave its CPU leased to an idle worker process: Ray then
    logs "Mismatched ActorID: ignoring KillActor ... NIL_ID", and every later two-worker
    search waits out the pool's start-up deadline. Killing the idle workers of our own local
    Ray returns the lease (the raylet frees a dead worker's resources; idle ones are
    restarted on demand). Only done when no actor is alive to hold the CPUs."""
    from ray._private.state import state

    if _wait_for_cpus(total, CPUS_BACK_S):
        return
    live = [a for a in state.actor_table(None).values() if a.get("State") in LIVE_ACTOR_STATES]
    if live:
        return  # held by an actor a fixture keeps: not a leak
    free = _free_cpus()
    idle = _idle_ray_workers()
    for pid in idle:
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, signal.SIGKILL)
    back = _wait_for_cpus(total, CPUS_BACK_S)
    warnings.warn(
        f"the session's Ray had {free:g} of {total:g} CPUs free and no live actor; killed "
        f"{len(idle)} idle Ray worker(s): " + ("the CPUs are back" if back else "still missing"),
        stacklevel=1,
    )
