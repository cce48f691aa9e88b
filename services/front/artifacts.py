"""A finished job's output files on disk, and their streaming as named chunks.

The files are those ``ectplan evaluate`` writes (optimizer/evaluate/report.py: report.html with
its pictures, the cumulative field as NIfTI on the input and planning grids, the needles as 3D
Slicer markups, metrics.json) plus the plan itself (plan.json), under
``<data>/jobs/<job id>/artifacts/``.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from optimizer.case import PreparedCase
from optimizer.evaluate.evaluator import EvaluatedPlan, PlanEvaluator
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol
from optimizer.evaluate.report import write_evaluation_outputs
from optimizer.tissue.table import load_tissue_table
from services.front.errors import failed_precondition, invalid
from services.front.gen.ectplan.v1 import planning_service_pb2

CHUNK_BYTES = 1 << 20  # 1 MiB: well under gRPC's default 4 MiB message limit
PLAN_FILE = "plan.json"
_MEDIA_TYPES = {
    ".html": "text/html",
    ".json": "application/json",
    ".png": "image/png",
    ".gz": "application/gzip",
    ".nii": "application/octet-stream",
}


def artifacts_dir(job_dir: Path) -> Path:
    return job_dir / "artifacts"


def write_job_artifacts(
    job_dir: Path,
    case: PreparedCase,
    plan: Plan,
    protocol: Protocol,
    evaluated: EvaluatedPlan | None,
    extra: dict[str, Any],
    search_notes: Sequence[str] = (),
) -> list[str]:
    """Write every output of ``plan`` into the job's artifact folder (``search_notes`` in its
    report); returns the file names."""
    out = artifacts_dir(job_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = load_tissue_table()
    if evaluated is None:  # the Ray runner evaluated remotely: solve the fields here
        evaluated = PlanEvaluator(case, protocol, nonlinear=True, table=table).evaluate_with_fields(
            plan
        )
    write_evaluation_outputs(
        evaluated, case, plan, protocol, table, out, extra, search_notes=search_notes
    )
    (out / PLAN_FILE).write_text(plan.to_json())
    return list_artifacts(job_dir)


def list_artifacts(job_dir: Path) -> list[str]:
    folder = artifacts_dir(job_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def artifact_chunks(
    job_dir: Path, available: Sequence[str], wanted: Sequence[str]
) -> Iterator[planning_service_pb2.GetPlanArtifactsResponse]:
    """Chunks of the wanted files (all when ``wanted`` is empty), one file after another."""
    if not available:
        raise failed_precondition(
            "ARTIFACTS_NOT_READY", "the job has no artifacts yet; they are written when it succeeds"
        )
    for i, name in enumerate(wanted):
        if name not in available:
            raise invalid(
                f"names[{i}]", f"no artifact {name[:80]!r}; the job has {', '.join(available)}"
            )
    folder = artifacts_dir(job_dir)
    for name in wanted or available:
        path = folder / name
        total = path.stat().st_size
        kind = media_type(name)
        with path.open("rb") as fh:
            offset = 0
            while True:
                data = fh.read(CHUNK_BYTES)
                last = offset + len(data) >= total
                yield planning_service_pb2.GetPlanArtifactsResponse(
                    name=name,
                    media_type=kind,
                    offset=offset,
                    total_size=total,
                    data=data,
                    last=last,
                )
                offset += len(data)
                if last:
                    break
