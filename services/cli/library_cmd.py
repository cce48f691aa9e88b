"""``ectplan library``: look into, report on and merge plan libraries (made by ``ectplan batch``).

- ``ectplan library show LIB [--status planned] [--protocol ect] [--criterion ID
  [--criterion-status fail]] [--passed | --not-passed]``: the matching cases, one line each;
- ``ectplan library report LIB``: rewrite library_report.html;
- ``ectplan library merge A B [...] --out C [--prefer newer]``: a new library with the cases of
  all; a case planned in more than one is refused unless ``--prefer newer`` (a failure never
  replaces a plan; see services/planner/library_merge.py).

Exit 0 on success, 2 on bad input (not a library, a conflict, an unknown criterion).
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("library", help="show, report on or merge plan libraries")
    actions = p.add_subparsers(dest="library_action", required=True)

    show = actions.add_parser("show", help="list the cases of a library, filtered")
    show.add_argument("library", help="library folder")
    show.add_argument("--status", choices=["planned", "failed"])
    show.add_argument("--protocol", help="protocol name")
    show.add_argument("--criterion", help="criterion id, e.g. rectum_irreversible")
    show.add_argument("--criterion-status", default="pass",
                      choices=["pass", "fail", "not_applicable"])  # fmt: skip
    verdict = show.add_mutually_exclusive_group()
    verdict.add_argument("--passed", dest="passed", action="store_const", const=True,
                         help="only plans meeting every required criterion")  # fmt: skip
    verdict.add_argument("--not-passed", dest="passed", action="store_const", const=False,
                         help="only plans missing a required criterion")  # fmt: skip
    show.set_defaults(handler=run_show)

    report = actions.add_parser("report", help="rewrite library_report.html")
    report.add_argument("library", help="library folder")
    report.set_defaults(handler=run_report)

    merge = actions.add_parser("merge", help="merge libraries into a new one")
    merge.add_argument("libraries", nargs="+", help="two or more library folders")
    merge.add_argument("--out", required=True, help="the new library's folder")
    merge.add_argument("--prefer", choices=["newer"],
                       help="resolve a case planned in several libraries by keeping the plan "
                       "that finished last (default: refuse)")  # fmt: skip
    merge.set_defaults(handler=run_merge)


def run_show(args: argparse.Namespace) -> int:
    from services.planner.library import open_library

    console = Console(soft_wrap=True)  # paths and reasons stay whole lines
    lib = open_library(args.library)
    ids = lib.cases(status=args.status, protocol=args.protocol, passed=args.passed,
                    criterion=args.criterion, criterion_status=args.criterion_status)  # fmt: skip
    for case_id in ids:
        r = lib.row(case_id)
        if r.get("status") == "planned":
            verdict = "passes" if r.get("passed") else f"fails {r.get('failed_required')}"
            text = (f"{case_id}  planned  {r.get('protocol')}  {r.get('needles')} needles  "
                    f"score {float(r.get('score', 0.0)):.4g}  {verdict}")  # fmt: skip
        else:
            text = f"{case_id}  failed  {r.get('reason')}"
        console.print(escape(text), highlight=False)
    console.print(f"{len(ids)} of {len(lib)} cases", highlight=False)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from services.planner.library import open_library
    from services.planner.library_report import write_library_report

    lib = open_library(args.library)
    with lib.locked():
        page = write_library_report(lib)
    Console(soft_wrap=True).print(f"written: {page}", highlight=False)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from services.planner.library_merge import merge_libraries
    from services.planner.library_report import write_library_report

    merged = merge_libraries(args.libraries, args.out, prefer=args.prefer)
    with merged.locked():
        page = write_library_report(merged)
    counts = merged.meta["cases"]
    Console(soft_wrap=True).print(f"merged {len(args.libraries)} libraries into {merged.path}: "
                    f"{counts['total']} cases ({counts['planned']} planned, {counts['failed']} "
                    f"failed); report: {page}", highlight=False)  # fmt: skip
    return 0
