"""Cancel, queue limits, graceful drain, and restarts (graceful and a killed process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import optuna
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.front.client import FrontClient
from services.front.gen.ectplan.v1 import job_pb2
from services.front.runner import QueueLimits
from services.front.server import BackgroundServer
from services.planner.storage import open_storage
from tests.services.front.conftest import GRID_MM, free_port, make_config, wait_for

REPO = Path(__file__).resolve().parents[3]
RESTART_TRIALS = 6
# The process test only needs a search that outlives two interruptions: with 3 trials the
# resumed search (0.6 s) once finished before the test could look at it and kill it.
KILL_TRIALS = 30


def started_exploring(event: job_pb2.JobEvent) -> bool:
    return event.progress.trials_done >= 1 or event.kind in (
        job_pb2.JOB_EVENT_KIND_SUCCEEDED,
        job_pb2.JOB_EVENT_KIND_FAILED,
    )


def kinds(events: list[job_pb2.JobEvent]) -> list[int]:
    return [e.kind for e in events]


def test_cancel_a_running_job_keeps_its_best_plan(client: FrontClient, phantom_id: str):
    job = client.submit(phantom_id, trials=500, grid_spacing_mm=GRID_MM, workers=1).job
    wait_for(client, job.job_id, started_exploring)
    started = time.monotonic()
    client.cancel(job.job_id)
    events = list(client.watch(job.job_id, timeout_s=180))
    assert events[-1].kind == job_pb2.JOB_EVENT_KIND_CANCELLED
    assert time.monotonic() - started < 120
    final = client.get(job.job_id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert final.progress.trials_done < 500
    if final.result.plan_json:  # a plan was evaluated before the cancel took effect
        assert final.result.stopped_by == "cancelled"
        assert events[-1].best.plan_json == final.result.plan_json


def test_queue_limits_and_cancelling_a_queued_job(tmp_path, phantom):
    cfg = make_config(
        tmp_path,
        queue=QueueLimits(
            max_queued=1, per_client_queued=5, per_client_running=1, workers=1, refine_top_k=1
        ),
    )
    with BackgroundServer(cfg) as server, FrontClient(server.target) as client:
        anatomy_id = client.upload_anatomy(phantom).anatomy_id
        running = client.submit(anatomy_id, trials=500, grid_spacing_mm=GRID_MM, workers=1).job
        wait_for(client, running.job_id, lambda e: e.kind == job_pb2.JOB_EVENT_KIND_STARTED)
        waiting = client.submit(anatomy_id, trials=3, grid_spacing_mm=GRID_MM).job
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(anatomy_id, trials=3, grid_spacing_mm=GRID_MM)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in caught.value.details()
        # A retry of an accepted submission still answers, full queue or not.
        cancelled = client.cancel(waiting.job_id)
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
        events = list(client.watch(waiting.job_id, timeout_s=30))
        assert kinds(events) == [job_pb2.JOB_EVENT_KIND_QUEUED, job_pb2.JOB_EVENT_KIND_CANCELLED]
        client.cancel(running.job_id)
        assert list(client.watch(running.job_id, timeout_s=180))[-1].kind == (
            job_pb2.JOB_EVENT_KIND_CANCELLED
        )


def _health(channel: grpc.Channel) -> int | None:
    try:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(), timeout=2)
            .status
        )
    except grpc.RpcError:
        return None


def test_graceful_restart_resumes_the_job_from_its_trials(tmp_path, phantom):
    cfg = make_config(tmp_path, port=free_port())
    first = BackgroundServer(cfg).start()
    with FrontClient(first.target) as client:
        anatomy_id = client.upload_anatomy(phantom).anatomy_id
        job = client.submit(
            anatomy_id, trials=RESTART_TRIALS, grid_spacing_mm=GRID_MM, workers=1, seed=5
        ).job
        seen = wait_for(client, job.job_id, lambda e: e.progress.trials_done >= 2)
        assert seen[-1].kind != job_pb2.JOB_EVENT_KIND_SUCCEEDED, "the search ended too soon"
        # Drain in the background; while it drains, health says NOT_SERVING and new work is
        # refused with UNAVAILABLE.
        stopper = threading.Thread(target=first.stop, args=(5.0,))
        stopper.start()
        statuses = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = _health(client.channel)
            statuses.add(status)
            if status != health_pb2.HealthCheckResponse.SERVING:
                break
        refused = None
        try:
            client.submit(anatomy_id, trials=2, grid_spacing_mm=GRID_MM)
        except grpc.RpcError as exc:
            refused = exc.code()
        stopper.join(120)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses or None in statuses
        assert refused == grpc.StatusCode.UNAVAILABLE
    # The job is back in the queue, its interrupted attempt recorded.
    second = BackgroundServer(make_config(tmp_path, port=cfg.port)).start()
    try:
        with FrontClient(second.target) as client:
            events = list(client.watch(job.job_id, timeout_s=300))
            final = client.get(job.job_id)
    finally:
        second.stop(1.0)
    assert job_pb2.JOB_EVENT_KIND_REQUEUED in kinds(events)
    assert kinds(events).count(job_pb2.JOB_EVENT_KIND_STARTED) == 2
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert final.progress.attempt == 2
    # Resumed, not restarted: this attempt ran only the trials the first one left.
    assert final.progress.trials_done == RESTART_TRIALS
    assert final.result.trials_run < RESTART_TRIALS
    assert "report.html" in final.result.artifacts
    # Both attempts kept their trials in the job's journal file.
    journal = tmp_path / "jobs" / job.job_id / "study.journal.log"
    stored = optuna.load_study(study_name=job.job_id, storage=open_storage(journal))
    assert sum(t.state.is_finished() for t in stored.trials) >= RESTART_TRIALS
    assert not (journal.parent / "study.db").exists()


def _serve_process(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.serve_cmd",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--runner",
            "local",
            "--grace",
            "1",
            "--refine-top-k",
            "1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_serving(target: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    channel = grpc.insecure_channel(target)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"ectplan serve exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
            if _health(channel) == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.2)
    finally:
        channel.close()
    raise AssertionError("ectplan serve did not become healthy")


def _json_logs(process: subprocess.Popen[bytes]) -> list[dict[str, object]]:
    assert process.stderr is not None
    return [
        json.loads(line) for line in process.stderr.read().splitlines() if line.startswith(b"{")
    ]


def test_sigterm_drains_then_a_killed_front_leaves_the_job_to_the_next_one(tmp_path, phantom):
    """``ectplan serve`` processes on one data folder: SIGTERM drains (the job goes back to the
    queue), the next process resumes it and is killed with SIGKILL mid-search (no drain at
    all), and a third front finds the job still marked running, re-queues it and finishes it."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    process = _serve_process(tmp_path, port)
    try:
        _wait_serving(target, process)
        with FrontClient(target) as client:
            anatomy_id = client.upload_anatomy(phantom).anatomy_id
            job = client.submit(anatomy_id, trials=KILL_TRIALS, grid_spacing_mm=GRID_MM, seed=7).job
            # Interrupted as soon as it runs: resuming stored trials is the graceful test's part.
            wait_for(client, job.job_id, lambda e: e.kind == job_pb2.JOB_EVENT_KIND_STARTED)
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
        logs = _json_logs(process)
        events = [e["event"] for e in logs]
        assert "front draining" in events and events[-1] == "front stopped"
        assert all(len(str(e.get("anatomy_id", "x" * 64))) == 64 for e in logs)

        process = _serve_process(tmp_path, port)
        _wait_serving(target, process)
        with FrontClient(target) as client:
            job_now = client.get(job.job_id)
            assert job_now.progress.attempt >= 1 and job_now.state in (
                job_pb2.JOB_STATE_QUEUED,
                job_pb2.JOB_STATE_RUNNING,
            )
            wait_for(
                client,
                job.job_id,
                lambda e: e.kind == job_pb2.JOB_EVENT_KIND_STARTED and e.progress.attempt == 2,
            )
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    with BackgroundServer(make_config(tmp_path)) as server, FrontClient(server.target) as client:
        events = list(client.watch(job.job_id, timeout_s=300))
        final = client.get(job.job_id)
    requeued = [e for e in events if e.kind == job_pb2.JOB_EVENT_KIND_REQUEUED]
    assert len(requeued) == 2
    assert "shut down" in requeued[0].message and "restarted" in requeued[1].message
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED and final.progress.attempt == 3
    assert final.progress.trials_done >= KILL_TRIALS
