"""``ectplan batch`` on a real multi-node Ray cluster with PostgreSQL as the Optuna storage.

Three ``ray start --block`` processes on this machine: a head without CPUs and two worker nodes
of one CPU each, with token authentication (one token in all their environments and the
driver's), their own temp folder and free ports, so they never meet the session's shared local
Ray (tests/conftest_ray.py). The driver runs in a subprocess through ``RAY_ADDRESS``, so this
process's own Ray is untouched. Each node runs in its own process group, which teardown kills
whatever happened; it then checks that no process of those groups is left.

Skipped without ECTPLAN_TEST_POSTGRES_URL (.ci/run sets it) or without the real anatomy.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from services.planner.library import open_library
from services.planner.storage import open_storage

REPO = Path(__file__).resolve().parents[3]
POSTGRES_ENV = "ECTPLAN_TEST_POSTGRES_URL"
CASES = ("picai-10043", "picai-10434", "prostatex-0000", "prostatex-0001")
NODE_START_TIMEOUT_S = 60.0
RUN_CLI = "import sys; from services.cli.main import main; sys.exit(main())"


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A free port never handed out before in this session: the kernel may give a port just
    released to the next bind, and Ray refuses two of its components on one port."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live (non-zombie) process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def _descendants(roots: list[int]) -> dict[int, str]:
    """The roots and every process below them (pid -> start time). Ray's workers start their
    own process groups, so the groups of the nodes alone would miss them."""
    table = _processes()
    found = {pid: table[pid][1] for pid in roots if pid in table}
    grew = True
    while grew:
        grew = False
        for pid, (parent, started) in table.items():
            if parent in found and pid not in found:
                found[pid] = started
                grew = True
    return found


def _alive(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` still running (the same process: same start time)."""
    table = _processes()
    return [pid for pid, started in processes.items() if table.get(pid, (0, ""))[1] == started]


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    nodes: list[Node]
    folder: Path

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log.read_text(errors='replace')[-1500:]}"
                         for n in self.nodes)  # fmt: skip


def _start_node(cluster: Cluster, name: str, args: list[str]) -> None:
    ray = Path(sys.executable).with_name("ray")
    log = cluster.folder / f"{name}.log"
    ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--metrics-export-port", "--runtime-env-agent-port"]  # fmt: skip
    command = [str(ray), "start", "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1", *args]  # fmt: skip
    for option in ports:
        command += [option, str(_free_port())]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=cluster.env, cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    cluster.nodes.append(Node(name, process, log))
    # One node at a time: raylets starting together race for the same socket names.
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Ray node {name} did not start:\n{cluster.logs()}")
        time.sleep(0.2)


def _stop(cluster: Cluster) -> list[int]:
    """Stop the nodes (workers first, then the head); the pids of their processes left."""
    ours = _descendants([n.process.pid for n in cluster.nodes])
    for node in reversed(cluster.nodes):
        # A head asked to drain waits for its own GCS: it gets no grace.
        first = signal.SIGTERM if node.name != "head" else signal.SIGKILL
        try:
            os.killpg(node.process.pid, first)
            node.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)  # the rest of its group
    deadline = time.monotonic() + 10
    while _alive(ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _alive(ours):  # workers that outlived their raylet: ours, by pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    return _alive(ours)


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (.ci/run starts PostgreSQL and sets it)")
    return url


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not Path(sys.executable).with_name("ray").is_file():
        pytest.skip("the ray command is not installed beside this Python")
    # A short path: Ray's Unix sockets live under the temp folder (108-byte path limit).
    folder = Path(tempfile.mkdtemp(prefix="ectplan-mn-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}  # fmt: skip
    port = _free_port()
    c = Cluster(f"127.0.0.1:{port}", env, [], folder)
    try:
        _start_node(c, "head", ["--head", "--port", str(port), "--num-cpus", "0",
                                "--include-dashboard", "false", "--temp-dir", str(folder / "ray"),
                                "--ray-client-server-port", str(_free_port())])  # fmt: skip
        for name in ("worker-1", "worker-2"):
            _start_node(c, name, ["--address", c.address, "--num-cpus", "1"])
        yield c
    finally:
        left = _stop(c)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


def _nodes(cluster: Cluster) -> list[dict[str, object]]:
    code = f"""
        import json, ray
        ray.init(address={cluster.address!r}, log_to_driver=False)
        print(json.dumps([{{"id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0),
                            "alive": n["Alive"]}} for n in ray.nodes()]))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=cluster.env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:] + cluster.logs()
    nodes: list[dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return nodes


@pytest.mark.realdata
@pytest.mark.slow
def test_batch_runs_its_cases_on_the_worker_nodes_with_postgres_studies(
    cluster, postgres_url, anatomy_dir, tmp_path
):
    nodes = [n for n in _nodes(cluster) if n["alive"]]
    workers = {str(n["id"]) for n in nodes if float(n["cpus"]) > 0}  # type: ignore[arg-type]
    head = {str(n["id"]) for n in nodes} - workers
    assert len(workers) == 2 and len(head) == 1, nodes
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in CASES:
        (cases / name).symlink_to(anatomy_dir / name, target_is_directory=True)
    library = tmp_path / "library"
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "batch", "--input", str(cases), "--out", str(library),
         "--trials", "4", "--grid-mm", "2", "--linear", "--storage", postgres_url],
        env=cluster.env | {"RAY_ADDRESS": cluster.address}, cwd=REPO, capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip
    output = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + cluster.logs()
    assert "on 3 node(s), 2 CPUs, 2 cases at once" in output
    lib = open_library(library)
    storage = open_storage(postgres_url)  # psycopg2, as the batch's tasks use
    studies = []
    try:
        assert lib.cases(status="planned") == sorted(CASES)
        rows = [lib.row(name) for name in CASES]
        studies = [str(r["study_name"]) for r in rows]
        # Every case ran on a worker node, and with two one-CPU nodes both took cases.
        assert {r["node_id"] for r in rows} == workers
        assert all("***" in str(r["storage"]) or "@" not in str(r["storage"]) for r in rows)
        assert not list((library / "studies").iterdir())  # no journal, no SQLite file
        for name in studies:
            study = optuna.load_study(study_name=name, storage=storage)
            assert sum(t.state.is_finished() for t in study.trials) == 4
    finally:
        for name in studies:
            optuna.delete_study(study_name=name, storage=storage)
