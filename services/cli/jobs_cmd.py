"""``ectplan submit / watch / get / cancel``: plan jobs on a running front (``ectplan serve``).

The server address and credentials come from flags or ECTPLAN_SERVER, ECTPLAN_TOKEN,
ECTPLAN_CA_CERT, ECTPLAN_CLIENT_CERT and ECTPLAN_CLIENT_KEY.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console

DEFAULT_SERVER = "localhost:50051"


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("ECTPLAN_SERVER", DEFAULT_SERVER),
        help="front address host:port (env ECTPLAN_SERVER)",
    )
    p.add_argument(
        "--token", default=os.environ.get("ECTPLAN_TOKEN"), help="bearer token (env ECTPLAN_TOKEN)"
    )
    p.add_argument(
        "--ca-cert",
        default=os.environ.get("ECTPLAN_CA_CERT"),
        help="CA certificate (PEM) to verify a TLS server",
    )
    p.add_argument(
        "--client-cert",
        default=os.environ.get("ECTPLAN_CLIENT_CERT"),
        help="client certificate (PEM) for mutual TLS",
    )
    p.add_argument(
        "--client-key",
        default=os.environ.get("ECTPLAN_CLIENT_KEY"),
        help="client key (PEM) for mutual TLS",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", help="upload an anatomy and queue a plan search on a front")
    _add_connection(p)
    p.add_argument("--anatomy", required=True, help="case folder, DICOM folder, label map, .npz")
    p.add_argument("--protocol", default="ect", help="ect, ire, irect, or a .toml file")
    p.add_argument("--trials", type=int, default=200, help="trial budget (0: none)")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="seconds for the whole search, fine re-evaluation included (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="Ray workers (0: server default)")
    p.add_argument("--grid-mm", type=float, default=0.0, help="fine grid spacing (0: 1 mm)")
    p.add_argument("--sampler", default="", help="niche-ga, ga, tpe, nsga2, random, qmc")
    p.add_argument("--multi-objective", action="store_true")
    p.add_argument("--idempotency-key", default="", help="makes retries safe")
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.add_argument("--out", help="with --watch: download the outputs into this folder")
    p.set_defaults(handler=run_submit)

    p = sub.add_parser("watch", help="follow a plan job's events until it ends")
    _add_connection(p)
    p.add_argument("job_id")
    p.add_argument("--after", type=int, default=0, help="resume after this event sequence")
    p.add_argument("--out", help="download the outputs into this folder when it succeeds")
    p.set_defaults(handler=run_watch)

    p = sub.add_parser("get", help="show a plan job (state, progress, result)")
    _add_connection(p)
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.add_argument("--out", help="download the outputs into this folder")
    p.set_defaults(handler=run_get)

    p = sub.add_parser("cancel", help="cancel a queued or running plan job")
    _add_connection(p)
    p.add_argument("job_id")
    p.set_defaults(handler=run_cancel)


def _client(args: argparse.Namespace) -> Any:
    from services.front.client import FrontClient

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return FrontClient(
        args.server,
        token=args.token,
        root_certificates=read(args.ca_cert),
        client_certificate=read(args.client_cert),
        client_key=read(args.client_key),
    )


def _call(fn: Any, *a: Any, **kw: Any) -> Any:
    """Run an RPC; a failed one becomes a CliError with the server's message."""
    import grpc

    from services.cli.main import CliError
    from services.front.errors import field_violations

    try:
        return fn(*a, **kw)
    except grpc.RpcError as exc:
        fields = "".join(f"\n  {v.field}: {v.description}" for v in field_violations(exc))
        raise CliError(f"{exc.code().name}: {exc.details()}{fields}") from None


def _state(state: int) -> str:
    from services.front.gen.ectplan.v1 import job_pb2

    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]


def _event_line(event: Any) -> str:
    from services.front.gen.ectplan.v1 import job_pb2

    kind = job_pb2.JobEventKind.Name(event.kind).removeprefix("JOB_EVENT_KIND_").lower()
    p = event.progress
    text = f"#{event.sequence} {kind:<9} trials {p.trials_done}"
    if p.trials_budget:
        text += f"/{p.trials_budget}"
    if p.HasField("best_score"):
        text += f"  best {p.best_score:.4g} ({p.criteria_met}/{p.criteria_applicable} met)"
    if event.message:
        text += f"  {event.message}"
    return text


def _follow(client: Any, console: Console, job_id: str, after: int, out: str | None) -> int:
    from services.front.gen.ectplan.v1 import job_pb2

    last = None
    for event in _call(lambda: list(client.watch(job_id, after_sequence=after))):
        console.print(_event_line(event), highlight=False)
        last = event
    job = _call(client.get, job_id)
    console.print(f"job {job_id}: {_state(job.state)}")
    if job.state == job_pb2.JOB_STATE_SUCCEEDED and out:
        files = _call(client.download_artifacts, job_id, out)
        console.print(f"outputs in {out}: {', '.join(sorted(files))}")
    ok = last is not None and job.state == job_pb2.JOB_STATE_SUCCEEDED
    return 0 if ok else 1


def run_submit(args: argparse.Namespace) -> int:
    from optimizer.anatomy.readers import load_anatomy

    console = Console()
    anatomy = load_anatomy(args.anatomy)
    with _client(args) as client:
        summary = _call(client.upload_anatomy, anatomy)
        response = _call(
            client.submit, summary.anatomy_id, protocol=args.protocol, trials=args.trials,
            time_limit_s=args.time_limit, seed=args.seed, workers=args.workers,
            grid_spacing_mm=args.grid_mm, sampler=args.sampler,
            multi_objective=args.multi_objective, idempotency_key=args.idempotency_key,
        )  # fmt: skip
        job = response.job
        again = " (already submitted with this key)" if response.deduplicated else ""
        console.print(
            f"job {job.job_id} {_state(job.state)}{again}; anatomy {summary.anatomy_id[:12]}"
        )
        if args.watch:
            return _follow(client, console, job.job_id, 0, args.out)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, Console(), args.job_id, args.after, args.out)


def run_get(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToJson

    console = Console()
    with _client(args) as client:
        job = _call(client.get, args.job_id)
        if args.json:
            print(MessageToJson(job))
        else:
            p = job.progress
            console.print(
                f"job {job.job_id}: {_state(job.state)} (attempt {p.attempt}), "
                f"protocol {job.protocol}, trials {p.trials_done}",
                highlight=False,
            )
            if job.error:
                console.print(f"  error: {job.error}", highlight=False)
            if job.HasField("result") and job.result.plan_json:
                e = job.result.evaluation
                verdict = "passes" if e.passed else "fails " + ", ".join(e.failed_required)
                console.print(
                    f"  plan: {len(job.result.plan.needles)} needles, "
                    f"{len(job.result.plan.pairs)} pairs, score {e.score:.4g}, "
                    f"{verdict} ({e.fidelity})",
                    highlight=False,
                )
        if args.out:
            files = _call(client.download_artifacts, args.job_id, args.out)
            console.print(f"outputs in {args.out}: {', '.join(sorted(files))}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from services.front.gen.ectplan.v1 import job_pb2

    with _client(args) as client:
        job = _call(client.cancel, args.job_id)
        running = job.state == job_pb2.JOB_STATE_RUNNING
        Console().print(
            f"job {job.job_id}: {_state(job.state)}"
            + (" (stops at its next trial)" if running else "")
        )
    return 0
