"""The search's fine level on a real case, CPU beside GPU: what the GPU does for a plan search.

    python bench/gpu_plan.py [--cases prostatex-0000 picai-10043] [--protocol ect] [--plans 3]

The plans a search re-evaluates at clinical quality (1 mm grid, sigma(E) conductivity) are
evaluated by ``PlanEvaluator`` with the CPU backend and with the GPU backend on the same
machine: the case's first geometric seed plans (optimizer/search/seeding.py), pair cache off,
so every pair is solved. Per plan: seconds on each backend (after one warm-up evaluation that
compiles), and agreement: the largest difference of any criterion value relative to its
limit, and whether every criterion's status (pass/fail) matches. Exit status 1 on a mismatch.
Needs a CUDA GPU (numba-cuda); with ``--allow-simulator`` it runs a tiny dry run on the CUDA
simulator (NUMBA_ENABLE_CUDASIM=1) with a 4 mm grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.case import default_anatomy_root, prepare_case
from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import load_protocol
from optimizer.field.backend import gpu_available
from optimizer.search.seeding import geometric_seeds
from optimizer.search.space import SearchSpace

# Criterion values agree when within this fraction of their limit (the solvers' tolerance is
# far tighter; thresholds on voxel counts can flip a voxel).
AGREEMENT = 0.01


def disagreement(a: PlanEvaluation, b: PlanEvaluation) -> tuple[float, bool]:
    """Largest |value difference| / |limit| over the criteria, and whether statuses match."""
    worst, same = 0.0, True
    for ra, rb in zip(a.results, b.results, strict=True):
        same &= ra.status == rb.status
        if ra.value is not None and rb.value is not None:
            worst = max(worst, abs(ra.value - rb.value) / max(abs(ra.limit), 1e-9))
    return worst, same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["prostatex-0000", "picai-10043"])
    parser.add_argument("--protocol", default="ect")
    parser.add_argument("--plans", type=int, default=3)
    parser.add_argument("--spacing-mm", type=float, default=1.0)
    parser.add_argument("--allow-simulator", action="store_true")
    args = parser.parse_args()
    if not gpu_available(allow_simulator=args.allow_simulator):
        print("no CUDA GPU visible to numba.cuda (is numba-cuda installed?)")
        return 2
    spacing = 4.0 if args.allow_simulator else args.spacing_mm
    protocol = load_protocol(args.protocol)
    ok = True
    print(f"{'case':16} {'plan':8} {'needles':>7} {'cpu s':>7} {'gpu s':>7} {'ratio':>6} "
          f"{'max diff':>9} statuses")  # fmt: skip
    for name in args.cases:
        case = prepare_case(default_anatomy_root() / name, spacing_mm=spacing)
        plans = geometric_seeds(SearchSpace(case, protocol))[: args.plans]
        evaluators = {
            backend: PlanEvaluator(case, protocol, nonlinear=True, backend=backend, cache_bytes=0)
            for backend in ("cpu", "gpu")
        }
        for evaluator in evaluators.values():
            evaluator.evaluate(plans[0])  # compiles (or loads the Numba cache)
        for plan in plans:
            seconds, done = {}, {}
            for backend, evaluator in evaluators.items():
                t = time.perf_counter()
                done[backend] = evaluator.evaluate(plan)
                seconds[backend] = time.perf_counter() - t
            worst, same = disagreement(done["cpu"], done["gpu"])
            ok &= same and worst <= AGREEMENT
            print(
                f"{name:16} {plan.name:8} {len(plan.needles):>7} {seconds['cpu']:7.2f} "
                f"{seconds['gpu']:7.2f} {seconds['cpu'] / seconds['gpu']:6.2f} {worst:9.2e} "
                f"{'same' if same else 'DIFFER'}",
                flush=True,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
