"""A small, dependency-free HTML report: headings, tables, images, notes, the disclaimer."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from optimizer import RESEARCH_USE_NOTICE, __version__

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { background: #e6f4e6; } td.fail { background: #fbe3e3; }
.disclaimer { border: 2px solid #b00; padding: 0.6em 1em; background: #fff4f4; }
.notes li { margin: 0.2em 0; } img { max-width: 100%; border: 1px solid #ddd; }
.meta { color: #555; font-size: 0.85em; }
"""


@dataclass
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""
    # Optional per-row CSS class for the last column (e.g. "pass" / "fail").
    row_status: Sequence[str] | None = None


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (relative path, alt text)
    notes: list[str] = field(default_factory=list)


def _cell(value: object) -> tuple[str, str]:
    if isinstance(value, bool):
        return ("yes" if value else "no"), ""
    if isinstance(value, float):
        return f"{value:.4g}", "num"
    if isinstance(value, int):
        return str(value), "num"
    return html.escape(str(value)), ""


def _table(t: Table) -> str:
    out = ["<table>"]
    if t.caption:
        out.append(f"<caption>{html.escape(t.caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + "</tr>")
    for r, row in enumerate(t.rows):
        cells = []
        for c, value in enumerate(row):
            text, cls = _cell(value)
            if t.row_status is not None and c == len(row) - 1:
                cls = t.row_status[r]
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_report(
    path: str | Path,
    title: str,
    sections: Sequence[Section],
    provenance: dict[str, str],
) -> Path:
    """Write the report; ``provenance`` names the tissue table, protocol, data and so on."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"ectplan version": __version__, "written": stamp, **provenance}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="disclaimer"><strong>Research use only.</strong> '
        f"{html.escape(RESEARCH_USE_NOTICE)}</p>",
        '<table class="meta">'
        + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in meta.items()
        )
        + "</table>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.heading)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in s.paragraphs)
        for src, alt in s.images:
            parts.append(f'<p><img src="{html.escape(src)}" alt="{html.escape(alt)}"></p>')
        parts.extend(_table(t) for t in s.tables)
        if s.notes:
            parts.append(
                '<ul class="notes">'
                + "".join(f"<li>{html.escape(n)}</li>" for n in s.notes)
                + "</ul>"
            )
    # Lets a headless browser check (and a test assert) that every picture actually loaded.
    parts.append(
        "<script>window.addEventListener('load', () => { document.body.dataset.imagesLoaded = "
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length; "
        "document.body.dataset.imagesTotal = document.images.length; });</script>"
    )
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
