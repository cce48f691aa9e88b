"""``ectplan demo``: the main job end to end on the embedded default (what ./run main runs)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="load a real case (or a phantom), build the planning grid, write a report",
    )
    p.add_argument("--anatomy", help="case to use (default: prostatex-0000 from the shared data, "
                   "or a built-in phantom when that is absent)")
    p.add_argument("--phantom", action="store_true", help="use the built-in phantom")
    p.add_argument("--out", default="out", help="output folder (default: ./out)")
    p.add_argument("--grid-mm", type=float, default=1.0, help="planning grid spacing (mm)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from optimizer.case import default_anatomy_path, prepare_case
    from optimizer.render.case_report import write_case_report

    console = Console()
    anatomy_path: Path | None
    if args.phantom:
        anatomy_path = None
    elif args.anatomy:
        anatomy_path = Path(args.anatomy)
    else:
        anatomy_path = default_anatomy_path()
        if anatomy_path is None:
            console.print("shared anatomy not found: using the built-in phantom")
    started = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"preparing {anatomy_path or 'phantom'}", total=None)
        case = prepare_case(anatomy_path, spacing_mm=args.grid_mm)
        out = Path(args.out) / case.case_id
        progress.update(task, description="drawing the planning grid and template")
        report = write_case_report(case, out)
    summary = {
        "case": case.case_id,
        "planning_grid": case.planning.grid.describe(),
        "admissible_holes": len(case.admissible),
        "modelled_structures": case.modelled_structures,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"[bold]{case.case_id}[/]: planning grid {case.planning.grid.describe()}, "
                  f"{len(case.admissible)} of {len(case.reach)} template holes admissible")
    console.print(f"report: {report}")
    return 0
