"""``ectplan evaluate``: score a plan on an anatomy and write metrics, fields and a report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.cli.target_option import add_target_argument


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="evaluate a plan: metrics.json, NIfTI fields, report")
    p.add_argument("--anatomy", required=True, help="case folder, DICOM folder, label map, .npz")
    p.add_argument("--plan", required=True, help="plan.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--protocol", help="protocol name (ect, ire, irect) or TOML file; default: the plan's own"
    )
    p.add_argument("--grid-mm", type=float, default=1.0, help="planning grid spacing (mm)")
    p.add_argument(
        "--linear", action="store_true", help="constant conductivity (faster; default is sigma(E))"
    )
    add_target_argument(p)
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "gpu"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from optimizer.case import prepare_case
    from optimizer.evaluate.evaluator import PlanEvaluator
    from optimizer.evaluate.plan import Plan
    from optimizer.evaluate.protocol import load_protocol
    from optimizer.evaluate.report import write_evaluation_outputs
    from optimizer.tissue.table import load_tissue_table

    console = Console()
    started = time.perf_counter()
    plan = Plan.load(args.plan)
    protocol = load_protocol(args.protocol or plan.protocol)
    table = load_tissue_table()
    timings: dict[str, float] = {}
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("loading the anatomy and building the planning grid", total=None)
        t0 = time.perf_counter()
        case = prepare_case(args.anatomy, spacing_mm=args.grid_mm, target_scope=args.target)
        timings["prepare_s"] = time.perf_counter() - t0
        evaluator = PlanEvaluator(
            case, protocol, nonlinear=not args.linear, backend=args.backend, table=table
        )
        progress.update(task, description=f"solving {len(plan.pairs)} pulsed pairs")
        t0 = time.perf_counter()
        evaluated = evaluator.evaluate_with_fields(plan)
        timings["evaluate_s"] = time.perf_counter() - t0
        progress.update(task, description="writing metrics, fields and the report")
        t0 = time.perf_counter()
        extra = {"nonlinear": not args.linear, "timings_s": timings}
        files = write_evaluation_outputs(evaluated, case, plan, protocol, table, args.out, extra)
        timings["outputs_s"] = time.perf_counter() - t0
    evaluation = evaluated.evaluation
    status = "[green]passes[/]" if evaluation.passed else "[red]fails[/]"
    console.print(
        f"{case.case_id}: plan {status} protocol {protocol.name} "
        f"({sum(r.status == 'pass' for r in evaluation.results)} of "
        f"{len(evaluation.results)} checks pass) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    for r in evaluation.failures:
        console.print(f"  [red]fail[/] {r.id}: {r.description}", highlight=False)
    console.print(f"report: {Path(files['report'])}")
    return 0
