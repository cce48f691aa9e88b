"""``ectplan plan``: search a plan on Ray workers, then write it with its full evaluation.

Writes plan.json, everything ``ectplan evaluate`` writes for that plan (metrics.json, fields,
markups, pictures, report.html), search.json, search_history.png and, for a multi-objective
search, pareto.json. The trials are kept in the Optuna journal file
``<out>/study.journal.log`` unless ``--storage`` names another (a PostgreSQL URL, a
sqlite:///path.db file); ``optuna-dashboard <out>/study.journal.log`` shows them live. Running
again into the same folder resumes that study (a folder an earlier version planned into keeps
its SQLite ``study.db``).

Exit 0 when a plan was produced, whether or not it meets every required criterion (the
summary says which it misses and by how much); 2 on bad input or an unreachable cluster or
database; 130 when cancelled with Ctrl-C (plan.json and search.json then hold the best plan
explored so far, not confirmed on the fine grid; no plan.json when no plan was evaluated yet).
A plan that was never re-evaluated on the fine grid gets plan.json and search.json only (run
``ectplan evaluate`` on it for the rest).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from services.cli.arg_types import positive_int, positive_seconds
from services.cli.target_option import add_target_argument

CANCELLED_EXIT = 130


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan", help="search a plan on Ray workers: plan.json, report, search history"
    )
    p.add_argument("--anatomy", required=True, help="case folder, DICOM folder, label map, .npz")
    p.add_argument("--protocol", required=True, help="protocol name (ect, ire, irect) or TOML file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--trials", type=positive_int, help="trial budget (default 200, or "
                   "unlimited when only --time-limit is given)")  # fmt: skip
    p.add_argument("--time-limit", type=positive_seconds,
                   help="seconds for the whole search: exploration leaves 40 %% of it (at most "
                   "30 s) to the fine re-evaluation")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=2,
                   help="evaluator actors (default 2)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--ray-address", help="Ray cluster (host:port or ray://host:10001); default "
                   "RAY_ADDRESS, else a local Ray")  # fmt: skip
    p.add_argument("--storage", help="Optuna storage (default: the journal file "
                   "<out>/study.journal.log; postgresql://user:pw@host/db, "
                   "sqlite:///path.db, or another path ending in .log)")  # fmt: skip
    p.add_argument("--study-name", help="default: derived from case, protocol and seed")
    p.add_argument(
        "--multi-objective",
        action="store_true",
        help="Pareto search (coverage, organ-at-risk exposure, needles)",
    )
    p.add_argument("--sampler", help="niche-ga, ga, tpe, nsga2, random or qmc (default "
                   "niche-ga; nsga2 with --multi-objective)")  # fmt: skip
    p.add_argument("--grid-mm", type=float, default=1.0,
                   help="fine planning grid (mm) for the final evaluation; exploration uses "
                   "max(2, this)")  # fmt: skip
    add_target_argument(p)
    p.add_argument("--library", help="a plan library (ectplan batch): the plans of its most "
                   "similar cases start the search (warm start)")  # fmt: skip
    order = p.add_mutually_exclusive_group()
    order.add_argument("--asynchronous", action="store_true",
                   help="tell results as they arrive (faster with uneven trials; not "
                   "reproducible with several workers)")  # fmt: skip
    order.add_argument("--islands", action="store_true",
                   help="each worker runs its own sampler on the shared trial history (the "
                   "most trials per second with several workers; not reproducible with "
                   "several workers)")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from optimizer.evaluate.protocol import load_protocol
    from optimizer.evaluate.report import write_evaluation_outputs
    from optimizer.search.study import SearchStudyError
    from optimizer.tissue.table import load_tissue_table
    from services.cli.main import CliError
    from services.planner.cluster import ClusterError, shutdown
    from services.planner.driver import DistributedSearch, SearchCancelledError
    from services.planner.outputs import write_search_outputs
    from services.planner.progress import ProgressView
    from services.planner.storage import dashboard_command, default_storage_url, mask_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console()
    out = Path(args.out)
    trials = args.trials if args.trials is not None or args.time_limit else 200
    protocol = load_protocol(args.protocol)
    table = load_tissue_table()
    # Opening the default study makes the output folder (or says why it cannot).
    storage = args.storage or default_storage_url(out)
    search = DistributedSearch(
        args.anatomy, protocol, trials=trials, time_limit_s=args.time_limit,
        workers=args.workers, seed=args.seed, multi_objective=args.multi_objective,
        sampler=args.sampler, storage_url=storage, study_name=args.study_name,
        ray_address=args.ray_address, coarse_mm=max(2.0, args.grid_mm), fine_mm=args.grid_mm,
        reproducible=not args.asynchronous, islands=args.islands, table=table,
        target_scope=args.target, library=args.library,
    )  # fmt: skip
    try:
        with console.status("loading the anatomy and building the search space"):
            try:
                search.prepare()
            except SearchStudyError as exc:
                where = "another --storage" if args.storage else "a new --out folder"
                raise CliError(
                    f"{exc} (here: plan into {where}, or name another study with --study-name)"
                ) from exc
        console.print(f"study {search.study_name!r} in {mask_url(storage)}; watch it live with: "
                      f"{dashboard_command(storage)}", highlight=False)  # fmt: skip
        for note in search.notes:
            console.print(f"  {note}", highlight=False)
        title = (f"ectplan plan: {search.case_fine.case_id}, protocol {protocol.name}, "
                 f"{args.workers} workers")  # fmt: skip
        try:
            with ProgressView(console, title) as view:
                result = search.run(on_progress=view.update)
        except ClusterError as exc:
            raise CliError(str(exc)) from exc
        except SearchCancelledError as exc:  # Ctrl-C before any plan was evaluated
            Console(stderr=True).print(f"cancelled: {exc}", highlight=False)
            return CANCELLED_EXIT
        cancelled = result.stopped_by == "cancelled"
        started = time.perf_counter()
        files = write_search_outputs(result, search, out)
        # A plan never re-evaluated on the fine grid (cancelled, or no fine evaluation could
        # be had) keeps its coarse evaluation alone: `ectplan evaluate` gives the full one.
        if result.refined:
            with console.status("writing the plan's fields, pictures and report"):
                evaluated = search.evaluate_with_fields(result.plan)
                extra = {"nonlinear": True, "search": {
                    "study_name": result.study_name, "trial": result.trial_number,
                    "trials_run": result.trials_run, "sampler": result.sampler,
                    "seed": result.seed}}  # fmt: skip
                files |= write_evaluation_outputs(
                    evaluated, search.case_fine, result.plan, protocol, table, out, extra,
                    search_notes=result.notes,
                )  # fmt: skip
        outputs_s = time.perf_counter() - started
    finally:
        search.close()
        if search.stats.cluster is not None and search.stats.cluster.started_here:
            shutdown()
    level = "" if result.refined else " on the coarse grid (not re-evaluated on the fine one)"
    verdict = f"[green]meets every required criterion{level}[/]" if result.passed else (
        f"[yellow]does NOT meet every required criterion{level}[/]")  # fmt: skip
    console.print(f"{search.case_fine.case_id}: the plan (trial {result.trial_number}, "
                  f"{len(result.plan.needles)} needles, {len(result.plan.pairs)} pairs) "
                  f"{verdict}; {result.trials_run} trials in {result.elapsed_s:.1f} s "
                  f"(+{outputs_s:.1f} s outputs), stopped by {result.stopped_by}")  # fmt: skip
    for u in result.unmet:
        margin = "unknown margin" if u.margin is None else f"short by {-u.margin:.3g} {u.unit}"
        console.print(f"  [red]unmet[/] ({u.severity}) {u.id}: {margin}", highlight=False)
    for note in result.notes:
        console.print(f"  note: {note}", highlight=False)
    main_file = files.get("report", files["plan"])
    console.print(f"written to {out}: {', '.join(sorted(p.name for p in files.values()))}")
    console.print(f"open: {main_file}")
    return CANCELLED_EXIT if cancelled else 0
