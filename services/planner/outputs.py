"""What a finished search writes besides the plan's evaluation: search.json, pareto.json and
the search-history picture.

search.json says how the search ran (trials, time, sampler, seed, storage, workers) and how
good the returned plan is: its fine score and every criterion it misses, with the margin
(negative: by how much, in the criterion's unit).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optimizer import RESEARCH_USE_NOTICE, __version__
from optimizer.search.local import SearchResult
from optimizer.search.objective import OBJECTIVE_NAMES, ranking_key
from optimizer.search.study import TrialRecord
from services.planner.driver import DistributedSearch
from services.planner.storage import dashboard_command, mask_url

SEARCH_FILE = "search.json"
PARETO_FILE = "pareto.json"
HISTORY_FILE = "search_history.png"
SEARCH_SCHEMA = "ectplan.search/1"


def _json_safe(value: Any) -> Any:
    """Non-finite numbers as null (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def search_document(result: SearchResult, search: DistributedSearch) -> dict[str, Any]:
    stats = search.stats
    cluster = stats.cluster
    url = search.storage_url
    return {
        "schema": SEARCH_SCHEMA,
        "research_use_notice": RESEARCH_USE_NOTICE,
        "software": {"name": "ectplan", "version": __version__},
        "case": search.case_fine.case_id,
        "protocol": search.protocol.name,
        "passed": result.passed,
        "stopped_by": result.stopped_by,
        "summary": result.summary(),
        "trials": {
            "run": result.trials_run,
            "in_study": result.trials_in_study,
            "failed": stats.failed_trials,
            "budget": search.trials,
            "resumed_from": search.resumed_trials,
        },
        "time_limit_s": search.time_limit_s,
        "time_s": {
            "total": result.elapsed_s,
            "startup": stats.startup_s,
            "explore": stats.explore_s,
            "refine": stats.refine_s,
        },
        "trials_per_s": stats.trials_per_s,
        # Exploration's needle pairs: Poisson solves, cache hits, and of those the solutions
        # handed over from another worker.
        "pairs": {
            "solved": stats.pairs_solved,
            "reused": stats.pairs_reused,
            "shared": stats.pairs_adopted,
        },
        "sampler": result.sampler,
        "seed": result.seed,
        "multi_objective": search.multi_objective,
        "reproducible_order": search.reproducible,
        "exploration": search.exploration,
        "storage": mask_url(url) if url else "in memory (not kept)",
        "study_name": result.study_name,
        "dashboard": dashboard_command(url) if url else None,
        "grids_mm": {"coarse": search.spec.coarse_mm, "fine": search.spec.fine_mm},
        "workers": {
            "count": search.workers,
            "threads_each": stats.threads_per_worker,
            "deaths": stats.worker_deaths,
            "startup_s": stats.worker_startup_s,
            "ray_address": None if cluster is None else cluster.address,
            "local_ray": None if cluster is None else cluster.local,
            "cluster_cpus": None if cluster is None else cluster.cpus,
            "nodes": None if cluster is None else cluster.nodes,
        },
        "best": {
            "trial": result.trial_number,
            "score": result.score.total,
            "score_parts": result.score.to_dict(),
            "coarse_score": result.coarse_score,
            "voltage_factor": result.voltage_factor,
            "confirmed_on_fine_grid": bool(result.refined),
            "params": result.params,
        },
        "refined": [
            {
                "trial": r.candidate.trial_number,
                "voltage_factor": r.candidate.voltage_factor,
                "coarse_score": r.candidate.coarse_score,
                "fine_score": None if r.score is None else r.score.total,
                "passed": None if r.evaluation is None else r.evaluation.passed,
                # What kept a refined plan from being returned, with its margin.
                "failed_required": (
                    None
                    if r.evaluation is None
                    else {
                        f.id: f.margin
                        for f in r.evaluation.failures
                        if f.severity == "required"
                    }
                ),
                "seconds": r.seconds,
                "error": r.error,
            }
            for r in result.refined
        ],
        "unmet": [u.__dict__ for u in result.unmet],
        "notes": result.notes,
    }


def pareto_document(result: SearchResult) -> dict[str, Any]:
    return {
        "schema": "ectplan.pareto/1",
        "research_use_notice": RESEARCH_USE_NOTICE,
        "objectives": list(OBJECTIVE_NAMES),
        "note": "coarse-grid objectives of the non-dominated explored plans (all minimised); "
        "among the plans passing every required criterion when any does",
        "points": [
            {
                "trial": p.trial_number,
                "objectives": dict(zip(OBJECTIVE_NAMES, p.objectives, strict=True)),
                "passed": p.passed,
                "score": p.score,
                "params": p.params,
                "plan": p.plan.model_dump(mode="json"),
            }
            for p in result.pareto
        ],
    }


def render_history(
    history: Sequence[TrialRecord], path: Path, *, title: str, chosen: int | None = None
) -> Path:
    """Score per trial (log scale), best so far, feasible trials marked, failed ones on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ok = [r for r in history if r.error is None and math.isfinite(r.score)]
    failed = [r for r in history if r.error is not None]
    feasible = [r for r in ok if r.passed]
    infeasible = [r for r in ok if not r.passed]
    if infeasible:
        ax.scatter([r.number for r in infeasible], [r.score for r in infeasible], s=14,
                   color="#8c8c8c", label="fails a required criterion")  # fmt: skip
    if feasible:
        ax.scatter([r.number for r in feasible], [r.score for r in feasible], s=22,
                   color="#2ca02c", label="passes every required criterion")  # fmt: skip
    best: TrialRecord | None = None
    xs: list[int] = []
    ys: list[float] = []
    for r in sorted(ok, key=lambda r: r.number):
        if best is None or ranking_key(r.passed, r.score) < ranking_key(best.passed, best.score):
            best = r
        xs.append(r.number)
        ys.append(best.score)
    if xs:
        ax.step(xs, ys, where="post", color="#1f77b4", label="best so far")
    positive = [r.score for r in ok if r.score > 0]
    # Scores span decades early in a search (infeasible plans) and shrink to tie-breakers.
    if positive and max(positive) > 10 * min(positive):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if failed:
        top = max(positive) * 1.5 if positive else 1.0
        ax.scatter([r.number for r in failed], [top] * len(failed), marker="x", s=26,
                   color="#d62728", label="not evaluated (error or lost)")  # fmt: skip
    if chosen is not None:
        pick = next((r for r in ok if r.number == chosen), None)
        if pick is not None:
            ax.scatter([pick.number], [pick.score], marker="*", s=160, color="#ff7f0e",
                       zorder=5, label=f"returned plan (trial {chosen})")  # fmt: skip
    ax.set_xlabel("trial")
    ax.set_ylabel("score (coarse grid; lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if history:
        ax.legend(fontsize=8, loc="upper right")
    fig.text(0.01, 0.01, RESEARCH_USE_NOTICE, fontsize=5.5, color="#666666")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_search_outputs(
    result: SearchResult, search: DistributedSearch, out_dir: str | Path
) -> dict[str, Path]:
    """plan.json, search.json, the history picture and (multi-objective) pareto.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"plan": out / "plan.json"}
    result.plan.save(files["plan"])
    files["search"] = out / SEARCH_FILE
    files["search"].write_text(
        json.dumps(_json_safe(search_document(result, search)), indent=2, allow_nan=False)
    )
    if search.multi_objective:
        files["pareto"] = out / PARETO_FILE
        files["pareto"].write_text(
            json.dumps(_json_safe(pareto_document(result)), indent=2, allow_nan=False)
        )
    files["history"] = render_history(
        result.history,
        out / HISTORY_FILE,
        title=f"{search.case_fine.case_id}: {search.protocol.name} search, sampler "
        f"{result.sampler}, seed {result.seed}",
        chosen=result.trial_number,
    )
    return files
