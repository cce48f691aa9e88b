"""Fixtures of the front's tests: real servers on free localhost ports, real searches.

Searches run with small budgets on the 2 mm grid of the seeded phantom (96 mm, model organs);
EvaluatePlan uses the lesion case of tests/evaluate/cases.py. The runner is the Ray driver
when services/planner/driver.py exists (with the planner tests' local Ray), else the
in-process search.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from optimizer.anatomy.phantom import make_phantom
from optimizer.anatomy.structures import Anatomy
from services.front.client import FrontClient
from services.front.gen.ectplan.v1 import job_pb2
from services.front.runner import QueueLimits
from services.front.searches import ray_driver_available
from services.front.server import BackgroundServer, FrontConfig
from tests.conftest_ray import ray_cluster  # noqa: F401

# Small searches: a few trials on the 2 mm grid (coarse and fine are the same case there).
SMALL_TRIALS = 3
GRID_MM = 2.0


def runner_kind() -> str:
    return os.environ.get("ECTPLAN_FRONT_TEST_RUNNER") or (
        "ray" if ray_driver_available() else "local"
    )


@pytest.fixture(scope="session", autouse=True)
def _session_ray(request: pytest.FixtureRequest) -> None:
    """The Ray driver joins the session's local Ray (tests/conftest_ray.py) instead of
    starting one per server."""
    if runner_kind() == "ray":
        request.getfixturevalue("ray_cluster")


@pytest.fixture(scope="session")
def phantom() -> Anatomy:
    return make_phantom(seed=0)


def make_config(data_dir: Path, **overrides: object) -> FrontConfig:
    # One fine (sigma(E)) confirmation per search instead of three: the slow part of a job.
    cfg = FrontConfig(
        data_dir=data_dir,
        port=0,
        runner=runner_kind(),
        grace_s=2.0,
        queue=QueueLimits(refine_top_k=1),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """One server for a module's tests (its own data folder and SQLite database)."""
    cfg = make_config(tmp_path_factory.mktemp("front"))
    with BackgroundServer(cfg) as server:
        yield server


@pytest.fixture(scope="module")
def client(front: BackgroundServer) -> Iterator[FrontClient]:
    with FrontClient(front.target) as c:
        yield c


@pytest.fixture(scope="module")
def phantom_id(client: FrontClient, phantom: Anatomy) -> str:
    return client.upload_anatomy(phantom).anatomy_id


def wait_for(
    client: FrontClient, job_id: str, predicate: object, timeout_s: float = 120.0
) -> list[job_pb2.JobEvent]:
    """Watch ``job_id`` until ``predicate(event)`` holds (or the job ends); the events seen."""
    seen: list[job_pb2.JobEvent] = []
    for event in client.watch(job_id, timeout_s=timeout_s):
        seen.append(event)
        if callable(predicate) and predicate(event):
            break
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rpc_code(exc: grpc.RpcError) -> grpc.StatusCode:
    code = exc.code()
    assert isinstance(code, grpc.StatusCode)
    return code


# ---- PostgreSQL: $ECTPLAN_TEST_POSTGRES_URL, else a throwaway cluster when initdb exists -------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        candidate = version / "bin" / name
        if candidate.is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("ECTPLAN_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    pytest.importorskip("psycopg2", reason="psycopg2 (psycopg2-binary) is not installed")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(
            "no PostgreSQL server binaries (install Debian's postgresql) and no "
            "ECTPLAN_TEST_POSTGRES_URL"
        )
    # Not under pytest's temporary folder: that one is private to root, and the server runs
    # as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="ectplan-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    # The server refuses to run as root: run it as the postgres user when we are root.
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                str(data),
                "-w",
                "-t",
                "60",
                "-l",
                str(root / "log.txt"),
                "-o",
                f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"could not start a PostgreSQL cluster: {exc} {detail[-300:]!r}")
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
