"""Warm starts from a plan library: the seed plans a new search takes from similar cases.

The similarity and the plan transfer are optimizer/search/warm_start.py; this module only
reads the library (services/planner/library.py) and keeps its errors readable.
"""

from __future__ import annotations

from pathlib import Path

from optimizer.evaluate.plan import Plan
from optimizer.search.space import SearchSpace
from optimizer.search.warm_start import warm_start_plans
from services.planner.library import LibraryError, open_library
from services.planner.library_index import PLANNED

# Three neighbours: enough to start the sampler from a few shapes, few enough that the
# geometric seeds still get their turn in a short search.
DEFAULT_WARM_START_CASES = 3


def library_seed_plans(
    library: str | Path, space: SearchSpace, k: int = DEFAULT_WARM_START_CASES
) -> tuple[list[Plan], list[str]]:
    """Plans of the ``k`` library cases most similar to ``space``'s case (same protocol,
    planned), nearest first, and notes saying which were used or skipped."""
    lib = open_library(library)
    rows = lib.rows(status=PLANNED, protocol=space.protocol.name)
    if not rows:
        raise LibraryError(
            f"library {lib.path} has no planned case for protocol {space.protocol.name!r} "
            f"(cases: {', '.join(lib.case_ids) or 'none'}); plan some with `ectplan batch "
            f"--protocol {space.protocol.name} --out {lib.path}`"
        )
    plans, notes = warm_start_plans(space, rows, k)
    return plans, [f"library {lib.path.name}: {n}" for n in notes]
