"""Everything ``ectplan evaluate`` writes for one evaluated plan.

metrics.json (units in key names), the cumulative field as NIfTI on the input and planning
grids, the needles as 3D Slicer markups, slice pictures with E_rev/E_irr isolines,
field-volume histograms, and report.html tying them together with the criteria table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optimizer import RESEARCH_USE_NOTICE, __version__
from optimizer.case import PreparedCase
from optimizer.evaluate.evaluator import EvaluatedPlan
from optimizer.evaluate.exports import write_field_exports
from optimizer.evaluate.markups import write_needle_markups
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol
from optimizer.render.histograms import render_field_volume_histograms
from optimizer.render.html import Section, Table, write_report
from optimizer.render.slices import FieldOverlay, Segment, SliceFigure, render_slices
from optimizer.tissue.table import TissueTable
from optimizer.tissue.thresholds import ThresholdTable

METRICS_FILE = "metrics.json"
# The field scale of the pictures: ECT/IRE fields of interest lie below 2000 V/cm; the needle
# surface (several thousand V/cm) would otherwise wash the colour scale out.
PICTURE_VMAX_V_PER_CM = 2000.0
# The tissue whose thresholds the isolines show: the gland's.
ISOLINE_TISSUE = "prostate"


def isoline_levels(plan: Plan, table: TissueTable) -> dict[str, float]:
    """E_rev and E_irr of the target tissue at the plan's largest pulse count."""
    pulses = max((p.pulses for p in plan.pairs), default=table.reference_pulses)
    thresholds = ThresholdTable(table)
    levels: dict[str, float] = {}
    for name in ("e_rev", "e_irr"):
        value = thresholds.value(ISOLINE_TISSUE, name, pulses)
        if value is not None:
            levels[f"{name.upper()} ({pulses} pulses) {value:.0f} V/cm"] = float(value)
    return levels


def needle_segments(plan: Plan) -> list[Segment]:
    segments = []
    for i, n in enumerate(plan.needles):
        needle = n.to_needle()
        start, tip = needle.exposed_segment()
        shaft_start = needle.path_start_mm(fallback_length_mm=40.0)
        segments.append(Segment(shaft_start, start, colour="#7fdfff", width=1.0))
        segments.append(Segment(start, tip, colour="#00ffff", width=2.6, label=f"needle {i}"))
    return segments


def metrics_document(
    evaluated: EvaluatedPlan,
    case: PreparedCase,
    plan: Plan,
    protocol: Protocol,
    table: TissueTable,
    extra: dict[str, Any],
) -> dict[str, Any]:
    evaluation = evaluated.evaluation.to_dict()
    pairs = evaluation["metrics"].get("pairs", [])
    for entry, solution in zip(pairs, evaluated.solutions, strict=True):
        entry["solver_iterations"] = solution.iterations
        entry["solver_relative_residual"] = solution.relative_residual
        entry["picard_iterations"] = solution.picard_iterations
        entry["solver_backend"] = solution.backend
    return {
        **evaluation,
        "research_use_notice": RESEARCH_USE_NOTICE,
        "software": {"name": "ectplan", "version": __version__},
        "case": case.case_id,
        "tissue_table": table.label,
        "protocol": {"name": protocol.name, "title": protocol.title,
                     "modality": protocol.modality.value},
        "organs_modelled": bool(case.modelled_structures),
        "modelled_structures": case.modelled_structures,
        "planning_grid": {
            "shape": list(case.planning.grid.shape),
            "spacing_mm": float(case.planning.grid.spacing_mm[0]),
            "affine": np.asarray(case.planning.grid.affine).tolist(),
        },
        "input_grid": {
            "shape": list(case.input_grid.shape),
            "affine": np.asarray(case.input_grid.affine).tolist(),
        },
        "plan": json.loads(plan.to_json()),
        **extra,
    }


def _criteria_table(document: dict[str, Any]) -> Table:
    rows, status = [], []
    for c in document["criteria"]:
        value = "" if c["value"] is None else f"{c['value']:.4g} {c['unit']}"
        margin = "" if c["margin"] is None else f"{c['margin']:+.4g}"
        rows.append([c["id"], c["description"], value, f"{c['limit']:.4g}", margin,
                     c["severity"], c["status"]])
        status.append("pass" if c["status"] == "pass" else
                      "fail" if c["status"] == "fail" else "")
    return Table(["criterion", "description", "value", "limit", "margin", "severity", "status"],
                 rows, row_status=status)


def _structure_table(document: dict[str, Any]) -> Table:
    rows = []
    for name, s in document["metrics"]["structures"].items():
        f = s.get("field") or {}
        th = s.get("thresholds") or {}
        heat = s.get("heat") or {}

        def cov(key: str, th: dict[str, Any] = th) -> object:
            entry = th.get(key) or {}
            value = entry.get("coverage_fraction")
            return "" if value is None else f"{100 * value:.1f} %"

        rows.append([
            name + (" (modelled)" if s.get("modelled") else ""), s.get("role", ""),
            s.get("volume_ml") or 0.0, cov("e_rev"), cov("e_irr"),
            f.get("e98_V_per_cm") or "", f.get("e50_V_per_cm") or "",
            f.get("hottest_0p1ml_V_per_cm") or "", heat.get("peak_temperature_C") or "",
        ])
    return Table(["structure", "role", "volume (ml)", ">= E_rev", ">= E_irr", "E98 (V/cm)",
                  "E50 (V/cm)", "peak 0.1 ml (V/cm)", "peak T (degC)"], rows)


def _pairs_table(document: dict[str, Any]) -> Table:
    rows = [
        [p["index"], f"{p['anode']} -> {p['cathode']}", p["voltage_V"], p["pulses"],
         p["pulse_length_us"], p.get("current_A") or "", p.get("energy_J") or "",
         p.get("picard_iterations", 0)]
        for p in document["metrics"].get("pairs", [])
    ]
    return Table(["pair", "needles", "voltage (V)", "pulses", "pulse (us)", "current (A)",
                  "energy (J)", "Picard iterations"], rows)


def write_evaluation_outputs(
    evaluated: EvaluatedPlan,
    case: PreparedCase,
    plan: Plan,
    protocol: Protocol,
    table: TissueTable,
    out_dir: str | Path,
    extra: dict[str, Any] | None = None,
    search_notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write metrics.json, the field exports, the needles' markups, the pictures and
    report.html for ``plan``. ``search_notes``: what the search that found the plan said of it
    (a lowered voltage, a slow start, a worker lost), shown in the report's notes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = metrics_document(evaluated, case, plan, protocol, table, extra or {})
    files: dict[str, Path] = {}
    files["metrics"] = out / METRICS_FILE
    files["metrics"].write_text(json.dumps(document, indent=2, allow_nan=False))
    field = evaluated.field_max_V_per_cm
    exports = write_field_exports(field, case.planning, out)
    files["field_input"], files["field_planning"] = exports["input"], exports["planning"]
    files["markups"] = write_needle_markups(plan, out / "needles.mrk.json")
    levels = isoline_levels(plan, table)
    modelled = case.modelled_structures
    footer = ("Modelled organs (not segmented): " + ", ".join(modelled)) if modelled else ""
    files["slices"] = render_slices(
        SliceFigure(
            title=f"{case.case_id}: cumulative |E| of plan {plan.name or ''} "
            f"({protocol.name}); dashed isolines: " + ", ".join(levels),
            anatomy=case.planning,
            segments=needle_segments(plan),
            overlay=FieldOverlay(field, "|E| (V/cm), maximum over pairs",
                                 levels=list(levels.values()), vmax=PICTURE_VMAX_V_PER_CM),
            footer=footer,
        ),
        out / "slices.png",
    )
    files["histograms"] = render_field_volume_histograms(
        document["metrics"]["field_volume_histogram_axis_V_per_cm"],
        document["metrics"]["structures"],
        out / "field_volume_histograms.png",
        thresholds=levels,
    )
    verdict = "passes every required criterion" if document["passed"] else (
        "fails: " + ", ".join(document["failed_required"]))
    sections = [
        Section("Summary", paragraphs=[
            f"Plan {plan.name or '(unnamed)'} with {len(plan.needles)} needles and "
            f"{len(plan.pairs)} pulsed pairs, protocol {protocol.title} ({protocol.name}), "
            f"evaluated on case {case.case_id}: it {verdict}.",
            f"Planning grid {case.planning.grid.describe()}; "
            + ("nonlinear conductivity sigma(E)." if document.get("nonlinear") else
               "linear conductivity (sigma0)."),
        ], notes=([footer] if footer else [])),
        Section("Slices through the target", images=[(files["slices"].name, "slices")]),
        Section("Criteria", tables=[_criteria_table(document)]),
        Section("Field-volume histograms", images=[(files["histograms"].name, "histograms")]),
        Section("Structures", tables=[_structure_table(document)]),
        Section("Pulsed pairs", tables=[_pairs_table(document)]),
        Section("Files", notes=[
            f"{files['metrics'].name}: every metric, units in key names",
            f"{files['field_input'].name}: |E| max over pairs on the input image grid",
            f"{files['field_planning'].name}: the same on the planning grid",
            f"{files['markups'].name}: the needles as 3D Slicer markups (lines)",
        ]),
        Section("Notes", notes=[*(f"search: {n}" for n in search_notes), *case.planning.notes]),
    ]
    files["report"] = write_report(
        out / "report.html",
        f"ectplan plan evaluation: {case.case_id}",
        sections,
        provenance={
            "case": case.case_id,
            "tissue table": table.label,
            "protocol": f"{protocol.name} ({protocol.title})",
            "modelled organs": ", ".join(modelled) if modelled else "none",
        },
    )
    return files
