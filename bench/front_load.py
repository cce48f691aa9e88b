"""Load on the gRPC front: many concurrent clients mixing GetPlanJob, WatchPlanJob, EvaluatePlan.

Starts ``ectplan serve`` (the in-process search runner) in a subprocess on a free localhost
port with a fresh data folder, prepares one finished job (a small search on the seeded phantom)
and the lesion case for evaluations, then runs ``--clients`` asyncio clients in this process,
each issuing requests until the total ``--requests`` or ``--seconds`` is reached. The mix is
what a planning UI does: poll a job, re-open its event stream (history replay to the end),
re-evaluate an edited plan (a few needle positions, so the server's evaluator cache is hit as
a UI's edits would). Prints latency percentiles per method, throughput and errors; writes
them as JSON with ``--out``. Traffic goes to 127.0.0.1 only, and every loop is bounded.

    python bench/front_load.py --clients 200 --requests 2000 --seconds 90
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimizer.anatomy.phantom import make_phantom  # noqa: E402
from services.front.client import FrontClient  # noqa: E402
from services.front.convert import plan_to_proto  # noqa: E402
from services.front.gen.ectplan.v1 import (  # noqa: E402
    evaluation_service_pb2,
    evaluation_service_pb2_grpc,
    planning_service_pb2,
    planning_service_pb2_grpc,
)
from tests.evaluate.cases import lesion_anatomy, move_needle, square_plan  # noqa: E402

MIX = (("GetPlanJob", 0.6), ("WatchPlanJob", 0.25), ("EvaluatePlan", 0.15))
# Needle offsets a UI's edits cycle through (mm): few enough that the cache is warm quickly.
EDITS = [(0.0, 0.0, 0.0), (2.0, 0.0, 0.0), (0.0, 2.0, 0.0), (-2.0, 0.0, 0.0)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.serve_cmd", "--data-dir", str(data), "--port",
         str(port), "--runner", "local", "--refine-top-k", "1", "--log-level", "warning"],
        cwd=REPO, env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            ).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                channel.close()
                return process
        except grpc.RpcError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the front did not start")


def prepare(target: str) -> tuple[str, str]:
    """(finished job id, lesion anatomy id)."""
    with FrontClient(target) as client:
        phantom_id = client.upload_anatomy(make_phantom(seed=0)).anatomy_id
        job = client.submit(phantom_id, trials=3, grid_spacing_mm=2.0).job
        for _ in client.watch(job.job_id, timeout_s=600):
            pass
        lesion_id = client.upload_anatomy(lesion_anatomy(spacing_mm=2.0)).anatomy_id
        # Warm the evaluator (case preparation and the first solves) as an open UI would have.
        plan = square_plan("ect", 1000.0, 8)
        for offset in EDITS:
            client.evaluate(lesion_id, move_needle(plan, 0, offset), grid_spacing_mm=2.0,
                            linear=True)
    return job.job_id, lesion_id


async def client_loop(
    target: str, job_id: str, lesion_id: str, budget: list[int], deadline: float,
    latencies: dict[str, list[float]], errors: dict[str, int], rng: random.Random,
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        planning = planning_service_pb2_grpc.PlanningServiceStub(channel)
        evaluation = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
        base = square_plan("ect", 1000.0, 8)
        while budget[0] > 0 and time.monotonic() < deadline:
            budget[0] -= 1
            method = rng.choices([m for m, _ in MIX], [w for _, w in MIX])[0]
            started = time.perf_counter()
            try:
                if method == "GetPlanJob":
                    await planning.GetPlanJob(
                        planning_service_pb2.GetPlanJobRequest(job_id=job_id), timeout=60)
                elif method == "WatchPlanJob":
                    async for _ in planning.WatchPlanJob(
                        planning_service_pb2.WatchPlanJobRequest(job_id=job_id), timeout=60
                    ):
                        pass
                else:
                    plan = move_needle(base, 0, rng.choice(EDITS))
                    await evaluation.EvaluatePlan(
                        evaluation_service_pb2.EvaluatePlanRequest(
                            anatomy_id=lesion_id, plan=plan_to_proto(plan), grid_spacing_mm=2.0,
                            linear=True),
                        timeout=120)  # fmt: skip
            except grpc.RpcError as exc:
                errors[f"{method} {exc.code().name}"] += 1
                continue
            latencies[method].append(time.perf_counter() - started)


async def run_load(target: str, job_id: str, lesion_id: str, clients: int, requests: int,
                   seconds: float, seed: int) -> dict[str, object]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    budget = [requests]
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(
        client_loop(target, job_id, lesion_id, budget, deadline, latencies, errors,
                    random.Random(seed + i))
        for i in range(clients)
    ))  # fmt: skip
    wall = time.perf_counter() - started
    done = sum(len(v) for v in latencies.values())
    report: dict[str, object] = {
        "clients": clients, "requests_done": done, "errors": dict(errors), "wall_s": wall,
        "requests_per_s": done / wall if wall > 0 else 0.0, "methods": {},
    }  # fmt: skip
    for method, values in sorted(latencies.items()):
        ms = np.array(values) * 1000
        report["methods"][method] = {  # type: ignore[index]
            "count": len(values),
            **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)},
            "max_ms": float(ms.max()),
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000, help="total across all clients")
    parser.add_argument("--seconds", type=float, default=90.0, help="stop issuing after this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    port = free_port()
    target = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ectplan-front-load-") as data:
        process = start_server(Path(data), port)
        try:
            t0 = time.perf_counter()
            job_id, lesion_id = prepare(target)
            print(f"prepared a finished job and a warm evaluator in "
                  f"{time.perf_counter() - t0:.1f} s")
            report = asyncio.run(run_load(target, job_id, lesion_id, args.clients,
                                          args.requests, args.seconds, args.seed))
        finally:
            process.terminate()
            process.wait(120)
    print(f"{report['requests_done']} requests from {report['clients']} clients in "
          f"{report['wall_s']:.1f} s ({report['requests_per_s']:.1f}/s); errors: "
          f"{report['errors'] or 'none'}")
    print(f"{'method':<14}{'count':>7}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for method, m in report["methods"].items():  # type: ignore[attr-defined]
        print(f"{method:<14}{m['count']:>7}{m['p50_ms']:>10.1f}{m['p90_ms']:>10.1f}"
              f"{m['p99_ms']:>10.1f}{m['max_ms']:>10.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
