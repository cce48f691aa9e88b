"""Ray start-up and connection: fast, clear failures; a local cluster that writes no token file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.planner.cluster import ClusterError, connect, probe, requested_address

REPO = Path(__file__).resolve().parents[3]


def _python(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, text=True,
        capture_output=True, timeout=timeout,
    )  # fmt: skip


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    return env | extra


def test_an_unreachable_or_wrong_address_fails_fast_with_a_clear_message():
    # A port nobody listens on, and a port that listens but is no Ray GCS (the slow case: Ray
    # would retry it for minutes).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free_port = closed.getsockname()[1]
    silent = socket.socket()
    silent.bind(("0.0.0.0", 0))
    silent.listen(8)
    code = f"""
        import json, time
        from services.planner.cluster import ClusterError, connect
        out = []
        for address in ("127.0.0.1:{free_port}", "127.0.0.1:{silent.getsockname()[1]}"):
            started = time.monotonic()
            try:
                connect(address, connect_timeout_s=4.0)
                out.append(["connected", address, 0.0])
            except ClusterError as exc:
                out.append([str(exc), address, time.monotonic() - started])
        print(json.dumps(out))
    """
    try:
        done = _python(code, _clean_env(), timeout=60)
    finally:
        silent.close()
    assert done.returncode == 0, done.stderr[-2000:]
    refused, silent_one = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cannot reach a Ray cluster" in refused[0] and refused[1] in refused[0]
    assert "ray start --head" in refused[0]
    assert refused[2] < 5.0
    assert "no Ray cluster answered" in silent_one[0] and silent_one[2] < 10.0


def test_address_comes_from_the_argument_else_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert requested_address(None) == "10.1.2.3:6379"
    assert requested_address("head:6380") == "head:6380"
    monkeypatch.delenv("RAY_ADDRESS")
    assert requested_address(None) is None
    assert requested_address("  ") is None


def test_bad_addresses_are_named():
    with pytest.raises(ClusterError, match="has no port"):
        probe("headnode")
    with pytest.raises(ClusterError, match="is not a number"):
        probe("headnode:http")
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"ray://127\.0\.0\.1:1"):
        probe("ray://127.0.0.1:1")
    assert time.monotonic() - started < 5.0


def test_an_address_other_than_the_running_cluster_is_refused(ray_cluster):
    with pytest.raises(ClusterError, match="already connected"):
        connect("127.0.0.1:1")
    assert connect().address == ray_cluster.address


def test_a_local_cluster_keeps_token_auth_without_writing_a_token_file(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = """
        import json, os, ray
        from services.planner.cluster import connect
        info = connect(num_cpus=1)
        mode = ray.get(ray.remote(lambda: os.environ.get("RAY_AUTH_MODE")).remote())
        print(json.dumps([info.auth, mode]))
        ray.shutdown()
    """
    done = _python(code, _clean_env(HOME=str(home)), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    auth, worker_mode = json.loads(done.stdout.strip().splitlines()[-1])
    assert auth == "token (ephemeral)" and worker_mode == "token"
    assert not (home / ".ray").exists()


def test_a_local_start_that_fails_once_is_tried_again_and_says_why():
    """Ray's own start-up deadline can pass once on a loaded machine: the second start runs,
    and a warning names the first failure (here injected into the first ``ray.init``)."""
    code = """
        import json, ray
        from services.planner.cluster import connect
        real_init, calls = ray.init, []
        def flaky_init(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected: the raylet did not register in time")
            return real_init(*args, **kwargs)
        ray.init = flaky_init
        info = connect(num_cpus=1)
        print(json.dumps([len(calls), info.cpus, info.started_here]))
        ray.shutdown()
    """
    done = _python(code, _clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [2, 1, True]
    assert "local Ray did not start (RuntimeError: injected" in done.stderr
    assert "starting it once more" in done.stderr
