"""``ectplan batch``: plan every case of a folder into a plan library, cases in parallel on Ray.

Each subfolder of --input is a case. The library (--out) gets index.parquet (one row per case:
identifiers, target volumes, plan summary, every criterion and metric), cases/<case>/ with
everything ``ectplan evaluate`` writes plus plan.json and search.json, library.json and
library_report.html. Rerunning skips planned cases and retries failed ones.

Exit 0 when every case is planned (whether or not its plan meets every criterion: the index
and report say), 1 when some case failed (recorded in the library with its reason), 2 on bad
input or an unreachable cluster or database, 130 when cancelled with Ctrl-C (finished cases
stay in the library; the interrupted ones resume their studies on the next run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from services.cli.arg_types import positive_int, positive_seconds
from services.cli.target_option import add_target_argument

CANCELLED_EXIT = 130
SOME_FAILED_EXIT = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("batch", help="plan every case of a folder into a plan library (Ray)")
    p.add_argument("--input", required=True, help="folder with one subfolder per case")
    p.add_argument("--out", required=True, help="library folder (created, or resumed)")
    p.add_argument(
        "--protocol",
        default="ect",
        help="protocol name (ect, ire, irect) or TOML file (default ect)",
    )
    p.add_argument("--trials", type=positive_int, help="trials per case (default 200, or "
                   "unlimited when only --time-limit-per-case is given)")  # fmt: skip
    p.add_argument("--time-limit-per-case", type=positive_seconds,
                   help="seconds of search per case")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--grid-mm", type=float, default=1.0, help="fine planning grid (mm) for the "
                   "final evaluation; exploration uses max(2, this)")  # fmt: skip
    add_target_argument(p)
    p.add_argument(
        "--linear",
        action="store_true",
        help="final evaluation with constant conductivity (faster; default sigma(E))",
    )
    p.add_argument("--concurrency", type=int, help="cases at once (default: the cluster's CPUs)")
    p.add_argument("--ray-address", help="Ray cluster (host:port or ray://host:10001); default "
                   "RAY_ADDRESS, else a local Ray")  # fmt: skip
    p.add_argument("--storage", help="Optuna storage URL for the studies (default: one journal "
                   "file per case in <out>/studies; postgresql://user:pw@host/db)")  # fmt: skip
    p.set_defaults(handler=run)


class _View:
    """A progress bar over the cases to plan (with ETA) and one line per finished case."""

    def __init__(self, console: Console, progress: Progress) -> None:
        self.console = console
        self.progress = progress
        self.task: TaskID | None = None
        self.running = 0

    def __call__(self, event: object) -> None:
        from services.planner.batch import BatchEvent

        assert isinstance(event, BatchEvent)
        if event.kind == "queued":
            if event.skipped:
                self.console.print(f"{event.skipped} case(s) already planned: skipped")
            if event.todo:
                self.task = self.progress.add_task("cases", total=event.todo)
            return
        if event.kind == "connected":
            self.console.print(event.message, highlight=False, markup=False)
            return
        if self.task is None:
            return
        if event.kind == "started":
            self.running += 1
        elif event.kind == "finished" and event.outcome is not None:
            self.running -= 1
            self.progress.advance(self.task)
            self.console.print(_line(event.outcome.row), highlight=False)
        elif event.kind == "cancelled":
            self.console.print(f"cancelled {event.case_id} (resumes on the next run)",
                               highlight=False, markup=False)  # fmt: skip
        self.progress.update(self.task, description=f"cases ({self.running} running)")


def _line(row: dict[str, object]) -> str:
    from rich.markup import escape

    case = escape(str(row["case_id"]))
    seconds = float(row.get("seconds") or 0.0)  # type: ignore[arg-type]
    if row.get("status") != "planned":
        return f"[red]failed[/]  {case} after {seconds:.1f} s: {escape(str(row.get('reason')))}"
    verdict = "[green]passes[/]" if row.get("passed") else (
        f"[yellow]fails[/] {escape(str(row.get('failed_required')))}")  # fmt: skip
    host = f" on {escape(str(row['host']))}" if row.get("host") else ""
    return (f"[green]planned[/] {case} in {seconds:.1f} s{host}: {row.get('needles')} needles, "
            f"{row.get('pairs')} pairs; {verdict}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from optimizer.evaluate.protocol import load_protocol
    from services.cli.main import CliError
    from services.planner.batch import run_batch
    from services.planner.batch_task import BatchSettings
    from services.planner.cluster import ClusterError
    from services.planner.library_report import REPORT_FILE

    console = Console(soft_wrap=True)  # paths and reasons stay whole lines
    protocol = load_protocol(args.protocol)
    trials = args.trials if args.trials is not None or args.time_limit_per_case else 200
    settings = BatchSettings(
        trials=trials,
        time_limit_s=args.time_limit_per_case,
        seed=args.seed,
        grid_mm=args.grid_mm,
        nonlinear=not args.linear,
        target_scope=args.target,
    )
    progress = Progress(
        TextColumn("[bold cyan]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )  # fmt: skip
    console.print(f"ectplan batch: {args.input} -> {args.out}, protocol {protocol.name}, "
                  f"{trials or 'unlimited'} trials per case", highlight=False)  # fmt: skip
    try:
        with progress:
            summary = run_batch(
                args.input, args.out, protocol, settings=settings, storage_url=args.storage,
                ray_address=args.ray_address, concurrency=args.concurrency,
                on_event=_View(console, progress),
            )  # fmt: skip
    except ClusterError as exc:
        raise CliError(str(exc)) from exc
    ran = len(summary.planned) + len(summary.failed)
    mean = sum(summary.case_seconds.values()) / ran if ran else 0.0
    where = ""
    if summary.cluster is not None:
        c = summary.cluster
        where = (f" on {c.nodes} node(s), {c.cpus} CPUs, {summary.concurrency} cases at "
                 "once")  # fmt: skip
    console.print(f"{summary.cases} cases: {len(summary.planned)} planned now, "
                  f"{len(summary.skipped)} already planned, {len(summary.failed)} failed, "
                  f"{len(summary.not_run)} not run; {summary.elapsed_s:.1f} s wall time, "
                  f"{mean:.1f} s per case{where}", highlight=False)  # fmt: skip
    for case_id, reason in summary.failed.items():
        console.print(f"  [red]failed[/] {escape(case_id)}: {escape(reason)}", highlight=False)
    console.print(f"library: {Path(args.out)}; open: {Path(args.out) / REPORT_FILE}",
                  highlight=False)  # fmt: skip
    if summary.cancelled:
        return CANCELLED_EXIT
    return SOME_FAILED_EXIT if summary.failed else 0
