"""``ectplan demo``: the main job end to end on the embedded default (what ./run main runs).

It previews the case (planning grid, model organs, template), starts the gRPC front in this
process on a free localhost port with a local Ray and an SQLite job store, uploads the case
through the Python client, submits a plan search, streams its events into a progress bar and
downloads the plan, the evaluation report and the field NIfTI files.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.cli.target_option import add_target_argument

DEFAULT_TRIALS = 60
DEFAULT_TIME_LIMIT_S = 240.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="plan a real case (or a phantom) end to end through the gRPC front and Ray",
    )
    p.add_argument(
        "--anatomy",
        help="case to use (default: prostatex-0000 from the shared data, "
        "or a built-in phantom when that is absent)",
    )
    p.add_argument("--phantom", action="store_true", help="use the built-in phantom")
    p.add_argument("--out", default="out", help="output folder (default: ./out)")
    p.add_argument("--protocol", default="ect", help="ect, ire, irect or a protocol file")
    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="search budget (trials)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        help="seconds for the whole search, fine re-evaluation included",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-mm", type=float, default=1.0, help="planning grid spacing (mm)")
    add_target_argument(p)
    p.add_argument(
        "--preview-only",
        action="store_true",
        help="only the case preview (planning grid and template), no search",
    )
    p.set_defaults(handler=run)


def _progress_text(event: object) -> str:
    progress = getattr(event, "progress", None)
    if progress is None:
        return ""
    parts = [progress.phase]
    if progress.HasField("best_score"):
        parts.append(f"best score {progress.best_score:.3g}")
        parts.append(f"criteria {progress.criteria_met}/{progress.criteria_applicable}")
    if progress.trials_per_second:
        parts.append(f"{progress.trials_per_second:.2f} trials/s")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    # gRPC's C core logs a line at every fork Ray makes; only errors matter here.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it all
    from optimizer.anatomy.phantom import make_phantom
    from optimizer.anatomy.readers import load_anatomy
    from optimizer.case import default_anatomy_path, prepare_case
    from optimizer.render.case_report import write_case_report
    from services.front.client import FrontClient
    from services.front.gen.ectplan.v1 import job_pb2
    from services.front.server import BackgroundServer, FrontConfig

    console = Console()
    if args.phantom:
        anatomy = make_phantom(seed=0, size_mm=(128.0, 128.0, 128.0))
    else:
        path = Path(args.anatomy) if args.anatomy else default_anatomy_path()
        if path is None:
            console.print("shared anatomy not found: using the built-in phantom")
            anatomy = make_phantom(seed=0, size_mm=(128.0, 128.0, 128.0))
        else:
            anatomy = load_anatomy(path)
    started = time.perf_counter()
    case = prepare_case(anatomy, spacing_mm=args.grid_mm, target_scope=args.target)
    out = Path(args.out) / case.case_id
    preview = write_case_report(case, out / "preview")
    console.print(
        f"[bold]{case.case_id}[/]: planning grid {case.planning.grid.describe()}, "
        f"{len(case.admissible)} of {len(case.reach)} template holes admissible; "
        f"preview {preview}"
    )
    if args.preview_only:
        return 0

    summary: dict[str, object] = {"case": case.case_id, "protocol": args.protocol}
    config = FrontConfig(data_dir=out / "front", port=0, runner="ray")
    with (
        console.status("starting the gRPC front and a local Ray"),
        BackgroundServer(config) as server,
        FrontClient(server.target) as client,
    ):
        console.print(f"front listening on {server.target} (local Ray, SQLite job store)")
        uploaded = client.upload_anatomy(anatomy)
        job = client.submit(
            uploaded.anatomy_id,
            protocol=args.protocol,
            trials=args.trials,
            time_limit_s=args.time_limit,
            seed=args.seed,
            grid_spacing_mm=args.grid_mm,
            target_scope=args.target,
        ).job
        console.print(
            f"submitted job {job.job_id} ({args.trials} trials, {args.time_limit:g} s limit)"
        )
        final = None
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} trials"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("queued", total=args.trials)
            for event in client.watch(job.job_id):
                bar.update(
                    task,
                    completed=event.progress.trials_done,
                    description=_progress_text(event) or "running",
                )
                final = event
        if final is None or final.state != job_pb2.JOB_STATE_SUCCEEDED:
            message = final.message if final is not None else "no events"
            console.print(f"[red]the plan job did not succeed:[/] {message}")
            return 1
        files = client.download_artifacts(job.job_id, out)
        summary.update(
            {
                "job_id": job.job_id,
                "passed": final.best.evaluation.passed
                if final.HasField("best")
                else final.progress.best_passed,
                "best_score": final.progress.best_score
                if final.progress.HasField("best_score")
                else None,
                "trials": final.progress.trials_done,
                "artifacts": sorted(p.name for p in files.values()),
            }
        )
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    verdict = (
        "passes every required criterion"
        if summary.get("passed")
        else ("is the best found but does not pass every required criterion (see the report)")
    )
    console.print(f"plan {verdict}; {summary['trials']} trials in {summary['elapsed_s']} s")
    console.print(f"report: {out / 'report.html'}")
    return 0
