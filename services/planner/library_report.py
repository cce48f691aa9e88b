"""The library report: library_report.html with its pictures, in the library folder.

A table of cases (each linking to its own report.html), the distribution over the planned
cases of every coverage criterion and every organ-at-risk criterion (value per case against the
protocol's limit; matplotlib PNGs), the failed cases with their reasons, and the research-use
banner, provenance (ectplan version, protocols, tissue table) and which organs were modelled.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from optimizer import RESEARCH_USE_NOTICE
from services.planner.library import CASES_DIR, INDEX_FILE, Library, now_utc
from services.planner.library_index import FAILED, PLANNED, criterion_column

REPORT_FILE = "library_report.html"
COVERAGE_PICTURE = "library_coverage.png"
ORGANS_PICTURE = "library_organs_at_risk.png"
COVERAGE_KINDS = ("coverage_min",)
ORGAN_KINDS = ("volume_above_max", "peak_field_max", "peak_temperature_max",
               "thermal_damage_volume_max")  # fmt: skip
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { background: #e6f4e6; } td.fail { background: #fbe3e3; }
.disclaimer { border: 2px solid #b00; padding: 0.6em 1em; background: #fff4f4; }
img { max-width: 100%; border: 1px solid #ddd; } .meta { color: #555; font-size: 0.85em; }
td:first-child { white-space: nowrap; }
"""


def _criteria_of(library: Library, kinds: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    catalogue: dict[str, dict[str, Any]] = library.meta.get("criteria", {})
    return [(cid, c) for cid, c in sorted(catalogue.items()) if c.get("kind") in kinds]


def _values(rows: Sequence[dict[str, Any]], cid: str) -> list[tuple[str, float, bool]]:
    """(case id, value, passed) of every planned case that has a value for the criterion."""
    out = []
    for r in rows:
        value = r.get(criterion_column(cid, "value"))
        if value is not None and math.isfinite(float(value)):
            out.append((str(r["case_id"]), float(value),
                        r.get(criterion_column(cid, "status")) == "pass"))  # fmt: skip
    return out


def render_distribution(
    rows: Sequence[dict[str, Any]],
    criteria: Sequence[tuple[str, dict[str, Any]]],
    path: Path,
    title: str,
) -> Path:
    """One panel per criterion: each planned case's value (green: passes, red: fails) and the
    protocol's limit as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(cid, c, _values(rows, cid)) for cid, c in criteria]
    panels = [p for p in panels if p[2]]
    columns = min(3, max(1, len(panels)))
    lines = max(1, math.ceil(len(panels) / columns))
    # At least 7 inches wide, so that the research-use line fits under a single panel.
    fig, axes = plt.subplots(lines, columns, figsize=(max(7.0, 4.6 * columns), 3.2 * lines + 0.4),
                             dpi=100, squeeze=False)  # fmt: skip
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no planned case has these figures yet", ha="center",
                          va="center", fontsize=11)  # fmt: skip
    for ax, (cid, c, values) in zip(axes.flat, panels, strict=False):
        ordered = sorted(values, key=lambda v: v[1])
        ys = range(len(ordered))
        ax.scatter([v[1] for v in ordered], ys, s=22,
                   c=["#2ca02c" if v[2] else "#d62728" for v in ordered])  # fmt: skip
        ax.set_yticks(list(ys), [v[0] for v in ordered], fontsize=6)
        limit = c.get("limit")
        if limit is not None:
            ax.axvline(float(limit), color="#333333", linestyle="--", linewidth=1,
                       label=f"limit {float(limit):.3g}")  # fmt: skip
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(f"{c.get('unit', '')}", fontsize=8)
        ax.set_title(cid, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=11)
    fig.text(0.01, 0.005, RESEARCH_USE_NOTICE, fontsize=5.5, color="#666666")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(value: Any, cls: str = "") -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text, cls = f"{value:.4g}", cls or "num"
    elif isinstance(value, int):
        text, cls = str(value), cls or "num"
    else:
        text = html.escape("" if value is None else str(value))
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def _table(columns: Sequence[str], rows: Sequence[str]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    return "<table>" + head + "".join(rows) + "</table>"


def _case_rows(library: Library, rows: Sequence[dict[str, Any]],
               coverage: Sequence[str]) -> list[str]:  # fmt: skip
    out = []
    for r in rows:
        case_id = str(r["case_id"])
        link = f"{CASES_DIR}/{quote(case_id)}/report.html"
        name = (f'<td><a href="{html.escape(link)}">{html.escape(case_id)}</a></td>'
                if r.get("status") == PLANNED else _cell(case_id))  # fmt: skip
        if r.get("status") == PLANNED:
            verdict = "passes" if r.get("passed") else f"fails: {r.get('failed_required', '')}"
            cls = "pass" if r.get("passed") else "fail"
        else:
            verdict, cls = "not planned (see failures)", "fail"
        cells = [
            name,
            _cell(r.get("protocol")),
            _cell(verdict, cls),
            _cell(r.get("needles")),
            _cell(r.get("pairs")),
            _cell(r.get("score")),
            _cell(r.get("target_volume_ml")),
        ]
        cells += [_cell(r.get(criterion_column(cid, "value"))) for cid in coverage]
        cells += [_cell(r.get("trials_run")), _cell(r.get("seconds")), _cell(r.get("host"))]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return out


def write_library_report(library: Library) -> Path:
    """Write library_report.html and its pictures into the library folder; returns the page."""
    rows = [library.row(c) for c in library.case_ids]
    planned = [r for r in rows if r.get("status") == PLANNED]
    failed = [r for r in rows if r.get("status") == FAILED]
    coverage = _criteria_of(library, COVERAGE_KINDS)
    organs = _criteria_of(library, ORGAN_KINDS)
    render_distribution(planned, coverage, library.path / COVERAGE_PICTURE,
                        "Target coverage per planned case")  # fmt: skip
    render_distribution(planned, organs, library.path / ORGANS_PICTURE,
                        "Organ-at-risk and thermal figures per planned case")  # fmt: skip
    meta = library.meta
    modelled = sorted(
        {
            s.strip()
            for r in planned
            for s in str(r.get("modelled_structures") or "").split(",")
            if s.strip()
        }
    )
    provenance = {
        "ectplan version": str(meta.get("ectplan_version")),
        "library format": str(meta.get("format")),
        "protocols": ", ".join(sorted(library.protocols)) or "none yet",
        "tissue table": str(meta.get("tissue_table")),
        "created": str(meta.get("created")),
        "updated": str(meta.get("updated")),
        "report written": now_utc(),
        "modelled organs": ", ".join(modelled) or "none",
    }  # fmt: skip
    passing = sum(1 for r in planned if r.get("passed"))
    title = f"ectplan plan library: {library.path.name}"
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="disclaimer"><strong>Research use only.</strong> '
        f"{html.escape(RESEARCH_USE_NOTICE)}</p>",
        '<table class="meta">' + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in provenance.items()) + "</table>",
        "<h2>Summary</h2>",
        f"<p>{len(rows)} cases: {len(planned)} planned ({passing} meeting every required "
        f"criterion, {len(planned) - passing} not), {len(failed)} failed. The index "
        f"({html.escape(INDEX_FILE)}) has every criterion and metric per case.</p>",
        "<h2>Coverage</h2>", f'<p><img src="{COVERAGE_PICTURE}" alt="coverage"></p>',
        "<h2>Organs at risk</h2>", f'<p><img src="{ORGANS_PICTURE}" alt="organs at risk"></p>',
        "<h2>Cases</h2>",
        _table(["case", "protocol", "verdict", "needles", "pairs", "score", "target (ml)",
                *[f"{cid} ({c.get('unit', '')})" for cid, c in coverage], "trials",
                "time (s)", "host"],
               _case_rows(library, rows, [cid for cid, _ in coverage])),
        "<h2>Failures</h2>",
        _table(["case", "reason", "finished"],
               ["<tr>" + _cell(r["case_id"]) + _cell(r.get("reason"), "fail")
                + _cell(r.get("finished_at")) + "</tr>" for r in failed])
        if failed else "<p>No case failed.</p>",
    ]  # fmt: skip
    if modelled:
        parts.append(f'<p class="meta">Modelled organs (not segmented) were used: '
                     f"{html.escape(', '.join(modelled))}.</p>")  # fmt: skip
    # Lets a headless browser (and a test) check that every picture loaded.
    parts.append(
        "<script>window.addEventListener('load', () => { document.body.dataset.imagesLoaded = "
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length; "
        "document.body.dataset.imagesTotal = document.images.length; });</script>"
    )
    parts.append("</body></html>")
    page = library.path / REPORT_FILE
    temporary = page.with_name(f".{REPORT_FILE}.tmp")
    temporary.write_text("\n".join(parts), encoding="utf-8")
    temporary.replace(page)
    return page
