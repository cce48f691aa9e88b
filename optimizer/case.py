"""A case ready to plan on: input anatomy, planning grid with model organs, template, reach.

This is the one place that strings the anatomy and needle steps together, so the demo, the
evaluator and the search all see the same planning grid for the same input.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.model_organs import add_model_organs
from optimizer.anatomy.phantom import make_phantom
from optimizer.anatomy.planning import PlanningAnatomy, make_planning_grid
from optimizer.anatomy.readers import load_anatomy
from optimizer.anatomy.structures import Anatomy
from optimizer.anatomy.target_scope import GLAND_KIND, apply_target_scope
from optimizer.electrodes import HoleReach, Obstacles, Template, hole_reach

# Exposure used to ask which holes can reach the target (a typical ECT/IRE setting: 15-20 mm).
DEFAULT_REACH_EXPOSURE_MM = 15.0
# Needles may stand up to one template hole (5 mm, DESIGN.md section 1) outside the target:
# electrode arrays bracket a tumour rather than pierce it (Mir et al. 2006 ESOPE SOP; Miklavcic
# et al. 2010 place needles around deep-seated tumours), and a small focal target would
# otherwise admit only the one or two holes whose axis crosses it.
NEEDLE_ZONE_MM = 5.0
DEFAULT_CASE = "prostatex-0000"
PHANTOM_SOURCE = "phantom"


def default_anatomy_root() -> Path:
    """$ECTPLAN_ANATOMY_DIR, else ../shared/data/anatomy beside the repository."""
    env = os.environ.get("ECTPLAN_ANATOMY_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "anatomy"


def default_anatomy_path() -> Path | None:
    path = default_anatomy_root() / DEFAULT_CASE
    return path if path.is_dir() else None


@dataclass
class PreparedCase:
    input_anatomy: Anatomy
    planning: PlanningAnatomy
    template: Template
    obstacles: Obstacles
    reach: list[HoleReach]
    timings_s: dict[str, float] = field(default_factory=dict)
    target_scope: str = "gland"  # resolved: "lesion" (focal) or "gland"

    @property
    def case_id(self) -> str:
        return self.planning.case_id

    @property
    def input_grid(self) -> VoxelGrid:
        return self.input_anatomy.grid

    @property
    def admissible(self) -> list[HoleReach]:
        return [r for r in self.reach if r.admissible]

    @property
    def modelled_structures(self) -> list[str]:
        return self.planning.modelled_structures


def prepare_case(
    anatomy: Anatomy | str | Path | None,
    *,
    spacing_mm: float = 1.0,
    margin_mm: float = 30.0,
    reach_exposure_mm: float = DEFAULT_REACH_EXPOSURE_MM,
    phantom_seed: int = 0,
    target_scope: str = "auto",
) -> PreparedCase:
    """Load (or take, or make a phantom when ``anatomy`` is None), choose what is treated
    (``target_scope``: optimizer/anatomy/target_scope.py), resample, add model organs."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if anatomy is None:
        # Large enough for the gland plus the default 30 mm margin on every side.
        source = make_phantom(seed=phantom_seed, size_mm=(128.0, 128.0, 128.0))
    elif isinstance(anatomy, Anatomy):
        source = anatomy
    else:
        source = load_anatomy(anatomy)
    source, scope = apply_target_scope(source, target_scope)
    timings["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    planning = make_planning_grid(source, spacing_mm=spacing_mm, margin_mm=margin_mm)
    timings["resample_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with_organs = add_model_organs(planning, reference=source)
    assert isinstance(with_organs, PlanningAnatomy)
    timings["model_organs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    placement = with_organs.target_mask()
    for gland in with_organs.of_kind(GLAND_KIND):
        placement = placement | gland.mask
    template = Template.for_anatomy(with_organs, placement_mask=placement)
    obstacles = Obstacles.from_anatomy(with_organs, needle_zone_mm=NEEDLE_ZONE_MM)
    reach = hole_reach(template, obstacles, exposure_mm=reach_exposure_mm)
    timings["template_s"] = time.perf_counter() - t0
    return PreparedCase(source, with_organs, template, obstacles, reach, timings, scope)
