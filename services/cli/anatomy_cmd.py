"""``ectplan anatomy PATH``: what ectplan read from a case, and what it will plan on."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from services.cli.target_option import add_target_argument


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("anatomy", help="show the structures, volumes and notes of a case")
    p.add_argument("path", help="a case folder, DICOM folder, label map or .npz")
    p.add_argument("--grid-mm", type=float, default=1.0, help="planning grid spacing (mm)")
    add_target_argument(p)
    p.add_argument("--margin-mm", type=float, default=30.0, help="margin around the target")
    p.set_defaults(handler=run)


def structure_rich_table(rows: list[dict[str, object]], title: str) -> Table:
    table = Table(title=title)
    for col in ("name", "kind", "role", "tissue", "volume ml", "won ml", "modelled"):
        table.add_column(col, justify="right" if "ml" in col else "left")
    for r in rows:
        table.add_row(
            str(r["name"]),
            str(r["kind"]),
            str(r["role"]),
            str(r["tissue"]),
            f"{float(r['volume_ml']):.2f}",  # type: ignore[arg-type]
            f"{float(r['won_volume_ml']):.2f}",  # type: ignore[arg-type]
            "yes" if r["modelled"] else "",
        )
    return table


def run(args: argparse.Namespace) -> int:
    from optimizer.case import prepare_case

    console = Console()
    case = prepare_case(
        args.path, spacing_mm=args.grid_mm, margin_mm=args.margin_mm, target_scope=args.target
    )
    console.print(f"[bold]{case.case_id}[/]  input grid {case.input_grid.describe()}")
    console.print(structure_rich_table(case.input_anatomy.structure_table(), "input grid"))
    console.print(structure_rich_table(case.planning.structure_table(), "planning grid"))
    for note in case.planning.notes:
        console.print(f"- {note}", highlight=False)
    console.print(
        f"template: {len(case.admissible)} of {len(case.reach)} holes reach the target "
        "without crossing rectum, bladder, urethra or bone"
    )
    console.print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in case.timings_s.items()))
    return 0
