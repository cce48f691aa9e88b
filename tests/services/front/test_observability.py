"""Prometheus metrics and structured logs of a real server."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request

import grpc
import pytest

from services.front import logging as front_logging
from services.front.client import FrontClient
from services.front.server import BackgroundServer
from tests.services.front.conftest import GRID_MM, free_port, make_config


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_endpoint_counts_jobs_queue_and_rpcs(tmp_path, phantom):
    port = free_port()
    cfg = make_config(tmp_path, metrics_port=port, runner="local")
    with BackgroundServer(cfg) as server, FrontClient(server.target) as client:
        anatomy_id = client.upload_anatomy(phantom).anatomy_id
        job = client.submit(anatomy_id, trials=2, grid_spacing_mm=GRID_MM).job
        client.cancel(job.job_id)
        list(client.watch(job.job_id, timeout_s=120))
        with pytest.raises(grpc.RpcError):
            client.get("job-missing")
        # An aborted call's status reaches the client before the server's timer closes.
        key = 'ectplan_front_rpc_seconds_count{code="NOT_FOUND",method="GetPlanJob"}'
        deadline = time.monotonic() + 5
        while key not in (values := scrape(port)) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert values['ectplan_front_jobs{state="cancelled"}'] == 1
    assert values['ectplan_front_jobs{state="queued"}'] == 0
    assert values["ectplan_front_queue_length"] == 0
    assert values['ectplan_front_rpc_seconds_count{code="NOT_FOUND",method="GetPlanJob"}'] == 1
    assert values['ectplan_front_rpc_seconds_count{code="OK",method="SubmitPlanJob"}'] == 1
    assert values['ectplan_front_rpc_seconds_count{code="OK",method="WatchPlanJob"}'] == 1
    assert values['ectplan_front_jobs_finished_total{state="cancelled"}'] == 1
    assert "ectplan_front_trials_total" in values and "ectplan_front_trials_per_second" in values


def test_logs_are_json_and_drop_fields_not_on_the_list():
    stream = io.StringIO()
    front_logging.configure("info", stream)
    try:
        front_logging.log_event(
            "job submitted",
            job_id="job-1",
            patient_name="Jane Doe",
            birth_date="1950-01-01",
            anatomy_id="a" * 64,
        )
        front_logging.log_event("quiet", level=logging.DEBUG, job_id="job-2")
    finally:
        front_logging.configure("warning")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["event"] == "job submitted" and entry["job_id"] == "job-1"
    assert "Jane" not in lines[0] and "1950" not in lines[0]
    assert entry["level"] == "info" and entry["time"].endswith("Z")


def test_reflection_lists_the_services(front):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(front.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "ectplan.v1.AnatomyService",
        "ectplan.v1.PlanningService",
        "ectplan.v1.EvaluationService",
        "grpc.health.v1.Health",
    } <= services
