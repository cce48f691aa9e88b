"""Warm starts from a plan library: how much sooner a search meets every criterion.

    python bench/warm_start.py --library LIB [--cases ...] [--protocol ect] [--seeds 3]
                               [--trials 300] [--out runs.json]

For each case, the same search (default sampler, geometric seeds, 2 mm linear exploration,
1 mm sigma(E) refinement of the best candidate) runs without and with the plans of the most
similar library cases enqueued first (the case itself is never its own neighbour). Reported
per case (median over seeds): evaluations and seconds until the first explored plan passes every
required criterion ("-" when most runs never did), the best coarse score after 50 evaluations
and at the end, and whether the returned fine plan passes. Build the library first, e.g.
``ectplan batch --input ../shared/data/anatomy --out /tmp/lib --protocol ect``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search import CASES, anatomy_root, median_or_dash
from optimizer.case import prepare_case
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.local import run_search
from optimizer.search.space import SearchSpace
from services.planner.warm_library import library_seed_plans

EARLY_BUDGET = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--protocol", default="ect")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    protocol = load_protocol(args.protocol)
    root = anatomy_root()
    runs: list[dict[str, object]] = []
    for case_name in args.cases:
        coarse = prepare_case(root / case_name, spacing_mm=2.0)
        fine = prepare_case(root / case_name, spacing_mm=1.0)
        space = SearchSpace(fine, protocol, also_clear_on=[coarse.obstacles])
        warm, notes = library_seed_plans(args.library, space)
        print(f"{case_name}: {'; '.join(notes)}", flush=True)
        fine_evaluator = PlanEvaluator(fine, protocol, nonlinear=True)
        for mode, seeds in (("cold", []), ("warm", warm)):
            for seed in range(args.seeds):
                started = time.perf_counter()
                result = run_search(
                    coarse, fine, protocol, trials=args.trials, seed=seed, seed_plans=seeds,
                    evaluate_coarse=PlanEvaluator(
                        coarse, protocol, nonlinear=False, metrics_detail="search"
                    ).evaluate,
                    evaluate_fine=fine_evaluator.evaluate, refine_top_k=1,
                )  # fmt: skip
                ok = [h for h in result.history if h.error is None]
                first = next((h for h in result.history if h.passed), None)
                run = {
                    "case": case_name, "mode": mode, "seed": seed,
                    "evals_to_pass": None if first is None else first.number + 1,
                    "seconds_to_pass": None if first is None else first.seconds,
                    "best_early": min((h.score for h in ok if h.number < EARLY_BUDGET),
                                      default=float("nan")),
                    "best_end": min((h.score for h in ok), default=float("nan")),
                    "fine_passed": result.passed,
                    "seconds": time.perf_counter() - started,
                }  # fmt: skip
                runs.append(run)
                print(json.dumps(run), flush=True)
                if args.out is not None:
                    args.out.write_text(json.dumps(runs, indent=1))
    print()
    print(f"{'case':16} {'mode':5} {'evals->pass':>11} {'s->pass':>8} "
          f"{'best@' + str(EARLY_BUDGET):>8} {'best':>7} {'fine':>5}")  # fmt: skip
    for case_name in args.cases:
        for mode in ("cold", "warm"):
            rs = [r for r in runs if r["case"] == case_name and r["mode"] == mode]
            print(
                f"{case_name:16} {mode:5} "
                f"{median_or_dash([r['evals_to_pass'] for r in rs], '.0f'):>11} "  # type: ignore[misc]
                f"{median_or_dash([r['seconds_to_pass'] for r in rs], '.1f'):>8} "  # type: ignore[misc]
                f"{statistics.median(float(r['best_early']) for r in rs):8.3f} "  # type: ignore[arg-type]
                f"{statistics.median(float(r['best_end']) for r in rs):7.3f} "  # type: ignore[arg-type]
                f"{sum(bool(r['fine_passed']) for r in rs):>2}/{len(rs)}"
            )


if __name__ == "__main__":
    main()
