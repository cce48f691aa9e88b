"""The steps of one batch case, in the task's process: what ``plan_case`` runs and records.

Load the anatomy, prepare the coarse and fine planning cases, run the in-process search
(``optimizer.search.local.run_search``) with its study in the given storage, evaluate the
chosen plan with its fields and write everything ``ectplan evaluate`` writes (reusing
``write_evaluation_outputs``) plus plan.json, search.json and the search-history picture, then
build the case's index columns, the warm-start descriptor included.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages import BaseStorage

from optimizer import RESEARCH_USE_NOTICE, __version__
from optimizer.anatomy.readers import load_anatomy
from optimizer.anatomy.structures import Anatomy
from optimizer.anatomy.target_scope import GLAND_KIND, LESION_KIND
from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol
from optimizer.evaluate.report import write_evaluation_outputs
from optimizer.search.local import SearchResult, run_search
from optimizer.search.space import SearchSpace
from optimizer.search.warm_start import case_descriptor, portable_plan
from optimizer.tissue.table import load_tissue_table
from services.planner.library_index import evaluation_columns
from services.planner.outputs import HISTORY_FILE, render_history
from services.planner.storage import mask_url

if TYPE_CHECKING:
    from services.planner.batch_task import CaseJob

BATCH_SEARCH_SCHEMA = "ectplan.batch-search/1"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def search_document(result: SearchResult, job: CaseJob, storage: str) -> dict[str, Any]:
    """search.json of a batch case: how the search ran and how good the plan is."""
    return _finite({
        "schema": BATCH_SEARCH_SCHEMA,
        "research_use_notice": RESEARCH_USE_NOTICE,
        "software": {"name": "ectplan", "version": __version__},
        "case": job.case_id,
        "protocol": job.protocol.name,
        "passed": result.passed,
        "stopped_by": result.stopped_by,
        "summary": result.summary(),
        "trials": {"run": result.trials_run, "in_study": result.trials_in_study,
                   "budget": job.settings.trials},
        "time_limit_s": job.settings.time_limit_s,
        "elapsed_s": result.elapsed_s,
        "sampler": result.sampler,
        "seed": result.seed,
        "storage": storage,
        "study_name": result.study_name,
        "grids_mm": {"coarse": job.settings.coarse_mm, "fine": job.settings.grid_mm},
        "nonlinear": job.settings.nonlinear,
        "best": {"trial": result.trial_number, "score": result.score.total,
                 "score_parts": result.score.to_dict(), "coarse_score": result.coarse_score,
                 "params": result.params},
        "unmet": [u.__dict__ for u in result.unmet],
        "notes": result.notes,
    })  # fmt: skip


def run_case_steps(
    job: CaseJob, storage: BaseStorage | None, out: Path, on_stage: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The case's index columns and output files (raises on any failure)."""
    s, protocol = job.settings, job.protocol
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[f"seconds_{name}"] = now - clock
        clock = now

    on_stage("loading the anatomy")
    anatomy = load_anatomy(job.anatomy_path, case_id=job.case_id)
    lap("load")
    on_stage("preparing the planning grids")
    coarse = prepare_case(
        anatomy, spacing_mm=s.coarse_mm, margin_mm=s.margin_mm, target_scope=s.target_scope)
    fine = coarse if s.coarse_mm == s.grid_mm else prepare_case(
        anatomy, spacing_mm=s.grid_mm, margin_mm=s.margin_mm,
        target_scope=s.target_scope)  # fmt: skip
    lap("prepare")
    on_stage("searching")
    table = load_tissue_table()
    # Kept: the chosen plan's fields come from its pair cache, not from fresh solves.
    fine_evaluator = PlanEvaluator(fine, protocol, nonlinear=s.nonlinear, table=table)
    shared = fine is coarse and not s.nonlinear
    result = run_search(
        coarse, fine, protocol, trials=s.trials, time_limit_s=s.time_limit_s, seed=s.seed,
        storage=storage, study_name=job.study_name,
        evaluate_coarse=fine_evaluator.evaluate if shared else None,
        evaluate_fine=fine_evaluator.evaluate,
    )  # fmt: skip
    lap("search")
    on_stage("writing the outputs")
    evaluated = fine_evaluator.evaluate_with_fields(result.plan)
    out.mkdir(parents=True, exist_ok=True)
    result.plan.save(out / "plan.json")
    storage_text = mask_url(job.storage_url) if job.storage_url else "library studies/"
    extra = {
        "nonlinear": s.nonlinear,
        "search": {
            "study_name": result.study_name,
            "trial": result.trial_number,
            "trials_run": result.trials_run,
            "sampler": result.sampler,
            "seed": result.seed,
        },
    }
    write_evaluation_outputs(
        evaluated, fine, result.plan, protocol, table, out, extra, search_notes=result.notes
    )
    (out / "search.json").write_text(
        json.dumps(search_document(result, job, storage_text), indent=2, allow_nan=False)
    )
    render_history(result.history, out / HISTORY_FILE, chosen=result.trial_number,
                   title=f"{job.case_id}: {protocol.name} search, sampler {result.sampler}, "
                   f"seed {result.seed}")  # fmt: skip
    document = json.loads((out / "metrics.json").read_text())
    lap("outputs")
    on_stage("describing the case")
    plan = result.plan
    target_ml = float(fine.planning.target_mask().sum() * fine.planning.grid.voxel_volume_ml)
    row: dict[str, Any] = {
        "tissue_table": table.label,
        "storage": storage_text,
        "score": result.score.total,
        "coarse_score": result.coarse_score,
        "trial_number": result.trial_number,
        "trials_run": result.trials_run,
        "trials_in_study": result.trials_in_study,
        "stopped_by": result.stopped_by,
        "sampler": result.sampler,
        "needles": len(plan.needles),
        "pairs": len(plan.pairs),
        "max_voltage_V": max((p.voltage_V for p in plan.pairs), default=0.0),
        "total_pulses": sum(p.pulses for p in plan.pairs),
        "organs_modelled": bool(fine.modelled_structures),
        "modelled_structures": ", ".join(fine.modelled_structures),
        "target_scope": fine.target_scope,
        "target_volume_ml": target_ml,
        **input_volumes(anatomy),
        "input_grid": anatomy.grid.describe(),
        "planning_grid": fine.planning.grid.describe(),
        **evaluation_columns(document),
        **timings,
    }
    row.update(warm_start_columns(coarse, fine, job.protocol, plan))
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    return row, files


def input_volumes(anatomy: Anatomy) -> dict[str, float]:
    """Segmented gland and lesion volumes on the input grid (ml), whatever the target scope."""
    out: dict[str, float] = {}
    for kind in (GLAND_KIND, LESION_KIND):
        voxels = sum(int(s.mask.sum()) for s in anatomy.of_kind(kind))
        out[f"input_{kind}_volume_ml"] = voxels * anatomy.grid.voxel_volume_ml
    return out


def warm_start_columns(
    coarse: PreparedCase, fine: PreparedCase, protocol: Protocol, plan: Plan
) -> dict[str, Any]:
    """WARM-START CALL SITE: what later searches need to start from this case
    (optimizer.search.warm_start): its descriptor (``desc_*`` columns: target volume, extents,
    position) and the plan in portable form (``portable_plan``, JSON text)."""
    columns: dict[str, Any] = dict(case_descriptor(fine))
    space = SearchSpace.for_levels(coarse, fine, protocol)  # the space run_search searched
    columns["portable_plan"] = json.dumps(portable_plan(space, plan))
    return columns
