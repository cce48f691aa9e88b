"""Upload -> submit -> watch (several watchers) -> get -> list -> artifacts, on a real server."""

from __future__ import annotations

import argparse
import json
import threading

import nibabel as nib
import numpy as np
import pytest

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.readers import save_anatomy_npz
from optimizer.anatomy.structures import Anatomy, Structure
from optimizer.evaluate.plan import Plan
from services.cli import jobs_cmd
from services.cli.main import CliError
from services.front.client import FrontClient
from services.front.gen.ectplan.v1 import job_pb2, plan_pb2
from services.front.server import BackgroundServer
from tests.services.front.conftest import GRID_MM, SMALL_TRIALS

WATCHERS = 3


@pytest.fixture(scope="module")
def finished_job(front: BackgroundServer, client: FrontClient, phantom_id: str):
    """One small search, watched by several clients from before it starts to its end."""
    response = client.submit(
        phantom_id, protocol="ect", trials=SMALL_TRIALS, grid_spacing_mm=GRID_MM, seed=3, workers=1
    )
    job_id = response.job.job_id
    streams: list[list[job_pb2.JobEvent]] = [[] for _ in range(WATCHERS)]
    errors: list[BaseException] = []

    def watch(i: int) -> None:
        try:
            with FrontClient(front.target) as own:
                streams[i].extend(own.watch(job_id, timeout_s=300))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(WATCHERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return response, streams


def test_submit_returns_a_queued_job_at_once(finished_job, phantom_id):
    response, _ = finished_job
    job = response.job
    assert job.job_id.startswith("job-") and not response.deduplicated
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.anatomy_id == phantom_id and job.protocol == "ect"
    assert job.budget.trials == SMALL_TRIALS and job.seed == 3


def test_every_watcher_sees_the_same_complete_event_stream(finished_job):
    _, streams = finished_job
    first = streams[0]
    kinds = [e.kind for e in first]
    assert [e.sequence for e in first] == list(range(1, len(first) + 1))
    assert kinds[0] == job_pb2.JOB_EVENT_KIND_QUEUED
    assert job_pb2.JOB_EVENT_KIND_STARTED in kinds
    assert kinds[-1] == job_pb2.JOB_EVENT_KIND_SUCCEEDED
    assert first[-1].state == job_pb2.JOB_STATE_SUCCEEDED
    for other in streams[1:]:
        assert [e.SerializeToString() for e in other] == [e.SerializeToString() for e in first]


def test_improvements_carry_score_criteria_and_plan(finished_job):
    _, streams = finished_job
    improved = [e for e in streams[0] if e.kind == job_pb2.JOB_EVENT_KIND_IMPROVED]
    assert improved, "a search always reports its first evaluated plan as an improvement"
    scores = [e.progress.best_score for e in improved]
    assert scores == sorted(scores, reverse=True) or improved[-1].progress.best_passed
    last = improved[-1]
    assert last.best.evaluation.criteria and last.best.evaluation.fidelity == "coarse"
    assert last.best.evaluation.criteria_applicable > 0
    plan = Plan.from_json(last.best.plan_json)
    assert len(plan.needles) == len(last.best.plan.needles) >= 2
    progress = [e for e in streams[0] if e.kind == job_pb2.JOB_EVENT_KIND_PROGRESS]
    assert max(e.progress.trials_done for e in progress) == SMALL_TRIALS


def test_finished_job_holds_the_fine_plan_and_its_evaluation(finished_job, client):
    response, streams = finished_job
    job = client.get(response.job.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.progress.trials_done == SMALL_TRIALS and job.progress.attempt == 1
    result = job.result
    assert result.evaluation.fidelity == "fine" and result.stopped_by == "trials"
    assert result.trials_run == SMALL_TRIALS
    plan = Plan.from_json(result.plan_json)
    assert plan.protocol == "ect" and len(plan.needles) == len(result.plan.needles)
    metrics = json.loads(result.evaluation.metrics_json)
    assert "structures" in metrics
    statuses = {c.status for c in result.evaluation.criteria}
    assert statuses <= {
        plan_pb2.CRITERION_STATUS_PASS,
        plan_pb2.CRITERION_STATUS_FAIL,
        plan_pb2.CRITERION_STATUS_NOT_APPLICABLE,
    }
    assert "rectal_wall" in result.evaluation.modelled_structures
    assert job.end_time.seconds >= job.start_time.seconds >= job.create_time.seconds > 0
    assert job.last_event_sequence == streams[0][-1].sequence
    assert streams[0][-1].best.plan_json == result.plan_json


def test_a_late_watcher_gets_the_tail_and_the_stream_ends(finished_job, client):
    response, streams = finished_job
    full = streams[0]
    tail = list(client.watch(response.job.job_id, after_sequence=full[-3].sequence, timeout_s=30))
    assert [e.sequence for e in tail] == [e.sequence for e in full[-2:]]
    assert (
        list(client.watch(response.job.job_id, after_sequence=full[-1].sequence, timeout_s=30))
        == []
    )


def test_list_finds_the_job_by_state_and_anatomy(finished_job, client, phantom_id):
    response, _ = finished_job
    listed = client.list(states=[job_pb2.JOB_STATE_SUCCEEDED], anatomy_id=phantom_id)
    assert response.job.job_id in [j.job_id for j in listed.jobs]
    assert client.list(states=[job_pb2.JOB_STATE_FAILED], anatomy_id=phantom_id).jobs == []


def test_artifacts_stream_every_output_file(finished_job, client, tmp_path):
    response, _ = finished_job
    job = client.get(response.job.job_id)
    names = set(job.result.artifacts)
    assert {
        "report.html",
        "metrics.json",
        "needles.mrk.json",
        "plan.json",
        "field_max_V_per_cm.nii.gz",
        "field_max_V_per_cm_planning.nii.gz",
    } <= names
    paths = client.download_artifacts(job.job_id, tmp_path)
    assert set(paths) == names
    assert (
        Plan.load(paths["plan.json"]).model_dump()
        == Plan.from_json(job.result.plan_json).model_dump()
    )
    markups = json.loads(paths["needles.mrk.json"].read_text())
    assert "markups" in markups
    field = nib.load(paths["field_max_V_per_cm.nii.gz"])
    assert field.shape == (96, 96, 96)  # the phantom's own grid
    assert "<html" in paths["report.html"].read_text().lower()
    only = client.artifacts(job.job_id, names=["metrics.json"])
    assert list(only) == ["metrics.json"]
    assert json.loads(only["metrics.json"])["passed"] == job.result.evaluation.passed


def test_a_retried_submission_with_its_key_returns_the_same_job(client, phantom_id):
    kwargs = dict(
        protocol="ect", trials=SMALL_TRIALS, grid_spacing_mm=GRID_MM, idempotency_key="retry-key-1"
    )
    first = client.submit(phantom_id, **kwargs)
    again = client.submit(phantom_id, **kwargs)
    assert again.deduplicated and again.job.job_id == first.job.job_id
    client.cancel(first.job.job_id)


def run_cli(*argv: str) -> int:
    """``ectplan submit / watch / get / cancel`` (jobs_cmd's sub-commands) in this process."""
    parser = argparse.ArgumentParser(prog="ectplan")
    jobs_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def test_the_command_line_submits_watches_gets_and_cancels(
    front: BackgroundServer, finished_job, phantom, tmp_path, capsys
):
    server = ("--server", front.target)
    job_id = finished_job[0].job.job_id
    assert run_cli("get", *server, job_id, "--json") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["result"]["planJson"]
    out = tmp_path / "out"
    assert run_cli("watch", *server, job_id, "--after", "1", "--out", str(out)) == 0
    assert "succeeded" in capsys.readouterr().out and (out / "report.html").is_file()
    with pytest.raises(CliError, match="FAILED_PRECONDITION"):
        run_cli("cancel", *server, job_id)
    npz = save_anatomy_npz(phantom, tmp_path / "phantom.npz")
    with pytest.raises(CliError, match=r"budget\.trials"):
        run_cli("submit", *server, "--anatomy", str(npz), "--trials", "-1")
    assert (
        run_cli("submit", *server, "--anatomy", str(npz), "--trials", "50", "--grid-mm", "2") == 0
    )
    new_id = capsys.readouterr().out.split()[1]
    assert new_id.startswith("job-") and new_id != job_id
    assert run_cli("cancel", *server, new_id) == 0
    assert new_id in capsys.readouterr().out


def test_a_job_that_cannot_be_planned_fails_with_the_reason(client: FrontClient):
    # A lesion with no gland: the model organs have nothing to be placed around.
    grid = VoxelGrid((20, 20, 20), np.diag([2.0, 2.0, 2.0, 1.0]))
    lesion = np.zeros(grid.shape, dtype=bool)
    lesion[8:12, 8:12, 8:12] = True
    anatomy = Anatomy(grid, [Structure.from_name("lesion", lesion)[0]], case_id="x")
    anatomy_id = client.upload_anatomy(anatomy).anatomy_id
    job = client.submit(anatomy_id, trials=2, grid_spacing_mm=GRID_MM, workers=1).job
    events = list(client.watch(job.job_id, timeout_s=120))
    assert events[-1].kind == job_pb2.JOB_EVENT_KIND_FAILED
    assert "gland" in events[-1].message
    failed = client.get(job.job_id)
    assert failed.state == job_pb2.JOB_STATE_FAILED and "gland" in failed.error


def test_a_job_explores_with_islands_when_asked(client: FrontClient, phantom_id: str):
    job = client.submit(phantom_id, protocol="ect", trials=6, grid_spacing_mm=GRID_MM, seed=1,
                        workers=2, exploration="islands").job  # fmt: skip
    assert job.options.exploration == "islands"
    events = list(client.watch(job.job_id, timeout_s=300))
    assert events[-1].kind == job_pb2.JOB_EVENT_KIND_SUCCEEDED, events[-1].message
    done = client.get(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED and done.result.plan_json
    assert done.result.trials_run == 6
