"""Field-volume histograms: the fraction of each structure receiving at least E."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optimizer import RESEARCH_USE_NOTICE
from optimizer.render.slices import KIND_COLOURS


def render_field_volume_histograms(
    axis_V_per_cm: Sequence[float],
    structures: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    thresholds: Mapping[str, float] | None = None,
    title: str = "Field-volume histograms",
) -> Path:
    """One curve per structure (targets solid, others dashed), threshold lines dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.2), constrained_layout=True)
    for name, entry in structures.items():
        fractions = entry.get("field_volume_histogram_fraction")
        # None marks an undefined fraction: a structure with no voxel on this planning grid.
        if not fractions or any(f is None for f in fractions):
            continue
        kind = str(entry.get("kind", ""))
        style = "-" if entry.get("role") == "target" else "--"
        label = name + (" (modelled)" if entry.get("modelled") else "")
        ax.plot(
            list(axis_V_per_cm),
            [100.0 * f for f in fractions],
            style,
            color=KIND_COLOURS.get(kind, "#444444"),
            label=label,
            linewidth=1.6,
        )
    for label, value in (thresholds or {}).items():
        ax.axvline(value, color="#555555", linestyle=":", linewidth=1.0)
        ax.text(value, 101, label, rotation=90, va="bottom", ha="center", fontsize=7)
    ax.set_xlabel("|E| (V/cm)")
    ax.set_ylabel("volume receiving at least |E| (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, max(axis_V_per_cm))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_title(title, fontsize=10)
    fig.text(0.5, -0.04, RESEARCH_USE_NOTICE, ha="center", fontsize=7)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
