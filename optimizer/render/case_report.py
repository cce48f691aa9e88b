"""The case preview: planning grid, structures (segmented and modelled) and the template."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimizer.case import PreparedCase
from optimizer.render.html import Section, Table, write_report
from optimizer.render.slices import Marker, Segment, SliceFigure, render_slices
from optimizer.tissue import load_tissue_table

HOLE_COLOURS = {"admissible": "#2ca02c", "blocked": "#d62728", "misses": "#7f7f7f"}


def template_markers(case: PreparedCase) -> list[Marker]:
    """Holes drawn where their needle axis crosses the slice through the target centre."""
    centre = case.planning.grid.index_to_world(np.argwhere(case.planning.target_mask()).mean(0))
    depth = float(case.template.depth_of(centre))
    markers = []
    for r in case.reach:
        status = "admissible" if r.admissible else ("blocked" if r.blocked_by else "misses")
        point = r.position_mm + depth * case.template.direction
        markers.append(Marker(point, r.label, HOLE_COLOURS[status]))
    return markers


def template_plane_segments(case: PreparedCase) -> list[Segment]:
    """The template plane seen edge-on: its middle row in coronal, middle column in sagittal."""
    holes = case.template.holes()
    mid_row = sorted({h.row for h in holes})[len({h.row for h in holes}) // 2]
    mid_col = sorted({h.column for h in holes})[len({h.column for h in holes}) // 2]
    row = [h.position_mm for h in holes if h.row == mid_row]
    col = [h.position_mm for h in holes if h.column == mid_col]
    return [
        Segment(row[0], row[-1], colour="#00ffff", width=3.0, label="template",
                views=("coronal",)),
        Segment(col[0], col[-1], colour="#00ffff", width=3.0, label="template",
                views=("sagittal",)),
    ]


def write_case_report(case: PreparedCase, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planning = case.planning
    modelled = planning.modelled_structures
    picture = render_slices(
        SliceFigure(
            title=f"{case.case_id}: planning grid {planning.grid.describe()} with the 5 mm "
            "template (green: admissible hole, red: path blocked, grey: misses the target)",
            anatomy=planning,
            markers=template_markers(case),
            segments=template_plane_segments(case),
            footer=("Modelled organs (not segmented): " + ", ".join(modelled)) if modelled else "",
        ),
        out / "planning_grid.png",
    )

    def rows(table: list[dict[str, object]]) -> list[list[object]]:
        return [
            [r["name"], r["kind"], r["role"], r["tissue"], r["volume_ml"], r["won_volume_ml"],
             r["modelled"]]
            for r in table
        ]

    columns = ["structure", "kind", "role", "tissue", "volume (ml)", "won overlap (ml)",
               "modelled"]
    blocked: dict[str, int] = {}
    for r in case.reach:
        if r.blocked_by and not r.admissible:
            blocked[r.blocked_by] = blocked.get(r.blocked_by, 0) + 1
    sections = [
        Section(
            "Planning grid and template",
            paragraphs=[
                f"Input grid {case.input_grid.describe()}; planning grid "
                f"{planning.grid.describe()} aligned with the image axes, cropped to the "
                f"target plus {planning.margin_mm:g} mm.",
                f"{len(case.admissible)} of {len(case.reach)} template holes can reach the "
                "target without crossing rectum, bladder, urine, urethra or bone"
                + (
                    " (blocked: " + ", ".join(f"{k} {v}" for k, v in sorted(blocked.items()))
                    + ")." if blocked else "."
                ),
            ],
            images=[(picture.name, "axial, coronal and sagittal slices of the planning grid")],
        ),
        Section("Structures on the input grid",
                tables=[Table(columns, rows(case.input_anatomy.structure_table()))]),
        Section("Structures on the planning grid",
                tables=[Table(columns, rows(planning.structure_table()))]),
        Section("Notes", notes=list(planning.notes)),
        Section(
            "Timings",
            tables=[Table(["step", "seconds"],
                          [[k.removesuffix("_s"), v] for k, v in case.timings_s.items()])],
        ),
    ]
    tissue = load_tissue_table()
    return write_report(
        out / "report.html",
        f"ectplan case preview: {case.case_id}",
        sections,
        provenance={
            "case": case.case_id,
            "tissue table": f"{tissue.label} ({tissue.path})",
            "protocol": "none (preview of the planning grid only)",
            "modelled organs": ", ".join(modelled) if modelled else "none",
        },
    )
