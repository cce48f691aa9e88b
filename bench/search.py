"""Plan search: the default sampler beside random search and the genetic baseline, one run.

    python bench/search.py [--quick] [--seeds 5] [--cases ...] [--protocols ect irect]
                           [--samplers tpe random ga] [--budgets 100 300 1000] [--out x.json]

Real cases from ../shared/data/anatomy (model organs at risk added), each protocol, each
sampler, each seed: a full ``run_search`` with the real ``PlanEvaluator`` (exploration on the
2 mm grid with constant conductivity, the best ``--refine-k`` candidates re-evaluated on the
1 mm grid with sigma(E)). Every run gets a fresh coarse evaluator, so its pair cache is part of
what is measured. A sampler spec ``tpe:categorical`` runs TPE on the categorical hole encoding;
``ga:unseeded`` and ``random:unseeded`` start without ectplan's geometric seeds: the published
genetic algorithm (random initial population) and plain random search, the baselines that
ectplan's search (the default sampler with its seeds, spec ``ga``) is compared against.

Reported per case, protocol and sampler (median over seeds): evaluations and seconds until
the first plan passing every required criterion on the coarse level ("-" when none did), the
coarse score of the best plan after 100 / 300 / 1000 evaluations (best as the search ranks:
plans passing every required criterion first, then the lower score), the required criteria
the best plan meets, whether the returned fine plan passes, and evaluations per second. Lower
scores are better (optimizer/search/data/score.toml). Then, per budget, the seeds on which ectplan's
search (``ga``) found a better best plan than every baseline. Wall times on a shared CPU are
indicative only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from optimizer.case import prepare_case
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import load_protocol
from optimizer.search.fidelity import DEFAULT_TOP_K
from optimizer.search.local import SearchResult, run_search
from optimizer.search.objective import ranking_key

REPO = Path(__file__).resolve().parents[1]
CASES = ("prostatex-0000", "picai-10032", "picai-10043")


def anatomy_root() -> Path:
    import os

    env = os.environ.get("ECTPLAN_ANATOMY_DIR")
    return Path(env) if env else (REPO.parent / "shared" / "data" / "anatomy").resolve()


@dataclass
class Run:
    case: str
    protocol: str
    sampler: str
    seed: int
    evals_to_pass: int | None
    seconds_to_pass: float | None
    best_at: dict[int, float]
    best_met: int
    best_applicable: int
    fine_passed: bool
    fine_score: float
    fine_unmet: list[str]
    trials: int
    seconds: float
    explore_seconds: float
    # Whether the best plan at each budget passes every required criterion.
    passed_at: dict[int, bool] = field(default_factory=dict)
    # Every told trial: (number, score, passed); None score for a failed evaluation.
    history: list[tuple[int, float | None, bool]] = field(default_factory=list)

    def best_key(self, budget: int) -> tuple[int, float]:
        """The search's own order of the best plan by ``budget``: passing first, then score."""
        return ranking_key(self.passed_at.get(budget, False), self.best_at[budget])

    @property
    def evals_per_s(self) -> float:
        return self.trials / self.explore_seconds if self.explore_seconds > 0 else 0.0


def summarise(
    result: SearchResult, case: str, protocol: str, sampler: str, seed: int,
    budgets: list[int], seconds: float,
) -> Run:  # fmt: skip
    ok = [h for h in result.history if h.error is None]
    first_pass = next((h for h in result.history if h.passed), None)
    # "Best" as the search ranks plans: any plan passing every required criterion before any
    # that does not, then the lower score (a failing plan can score lower than a passing one).
    best_by = {b: min((h for h in ok if h.number < b), key=lambda h: ranking_key(h.passed, h.score),
                      default=None) for b in budgets}  # fmt: skip
    best_at = {b: h.score if h is not None else float("nan") for b, h in best_by.items()}
    passed_at = {b: h is not None and h.passed for b, h in best_by.items()}
    best = min(ok, key=lambda h: ranking_key(h.passed, h.score))
    return Run(
        case=case, protocol=protocol, sampler=sampler, seed=seed,
        evals_to_pass=None if first_pass is None else first_pass.number + 1,
        seconds_to_pass=None if first_pass is None else first_pass.seconds,
        best_at=best_at, best_met=best.criteria_met, best_applicable=best.criteria_applicable,
        fine_passed=result.passed, fine_score=result.score.total,
        fine_unmet=[u.id for u in result.unmet if u.severity == "required"],
        trials=result.trials_run, seconds=seconds,
        explore_seconds=result.history[-1].seconds if result.history else 0.0,
        passed_at=passed_at,
        history=[(h.number, h.score if h.error is None else None, h.passed)
                 for h in result.history],
    )  # fmt: skip


def median_or_dash(values: list[float | None], fmt: str) -> str:
    known = [v for v in values if v is not None]
    if len(known) < len(values) / 2 or not known:  # most runs never got there
        return "-"
    return format(statistics.median(known), fmt)


def table(runs: list[Run], budgets: list[int]) -> str:
    header = (
        f"{'case':16} {'protocol':8} {'sampler':16} {'evals->pass':>11} {'s->pass':>8} "
        + " ".join(f"{'best@' + str(b):>9}" for b in budgets)
        + f" {'met':>7} {'fine':>5} {'fine score':>10} {'eval/s':>7}"
    )
    lines = [header, "-" * len(header)]
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.case, r.protocol, r.sampler), []).append(r)
    for (case, protocol, sampler), rs in groups.items():
        lines.append(
            f"{case:16} {protocol:8} {sampler:16} "
            f"{median_or_dash([r.evals_to_pass for r in rs], '.0f'):>11} "
            f"{median_or_dash([r.seconds_to_pass for r in rs], '.1f'):>8} "
            + " ".join(
                f"{median_or_dash([r.best_at[b] if b <= r.trials else None for r in rs], '.3f'):>9}"
                for b in budgets
            )
            + f" {statistics.median(r.best_met for r in rs):>3.0f}/"
            f"{statistics.median(r.best_applicable for r in rs):<3.0f}"
            f" {sum(r.fine_passed for r in rs):>2}/{len(rs):<2}"
            f" {statistics.median(r.fine_score for r in rs):>10.3f}"
            f" {statistics.median(r.evals_per_s for r in rs):>7.1f}"
        )
    return "\n".join(lines)


def versus_baselines(runs: list[Run], budgets: list[int], ours: str = "ga") -> str:
    """Per case, protocol and budget: on how many seeds ``ours`` had a strictly better best
    plan than every other sampler run with the same seed, in the search's own order (passing
    every required criterion first, then the lower score); in brackets, on how many it was no
    worse than any (ties: all found passing plans of equal score)."""
    by_key: dict[tuple[str, str, int], dict[str, Run]] = {}
    for r in runs:
        by_key.setdefault((r.case, r.protocol, r.seed), {})[r.sampler] = r
    lines = [f"seeds on which {ours!r} beat every baseline (strictly / no worse):"]
    combos = sorted({(r.case, r.protocol) for r in runs})
    for case, protocol in combos:
        cells = []
        for b in budgets:
            better = tied = total = 0
            for (c, p, _), samplers in by_key.items():
                mine = samplers.get(ours)
                others = [r for name, r in samplers.items() if name != ours]
                if c != case or p != protocol or mine is None or not others:
                    continue
                if any(b > r.trials for r in (mine, *others)):
                    continue
                total += 1
                best_other = min(r.best_key(b) for r in others)
                better += mine.best_key(b) < best_other
                tied += mine.best_key(b) <= best_other
            cells.append(f"@{b} {better}/{total} ({tied}/{total})")
        lines.append(f"  {case:16} {protocol:6} " + "  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, budgets 100 and 300")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--protocols", nargs="+", default=["ect", "irect"])
    parser.add_argument(
        "--samplers", nargs="+", default=["ga", "tpe", "ga:unseeded", "random:unseeded"]
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--refine-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--out", type=Path, default=None, help="write every run as JSON")
    parser.add_argument(
        "--table", type=Path, default=None, help="only print the table of runs saved by --out"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budgets = 1, [100, 300]
    if args.table is not None:
        saved = [Run(**r) for r in json.loads(args.table.read_text())]
        for r in saved:
            r.best_at = {int(k): v for k, v in r.best_at.items()}
            r.passed_at = {int(k): v for k, v in r.passed_at.items()}
        budgets = sorted({b for r in saved for b in r.best_at})
        print(table(saved, budgets))
        print()
        print(versus_baselines(saved, budgets))
        return
    root = anatomy_root()
    if not root.is_dir():
        sys.exit(f"real anatomy not found at {root} (set ECTPLAN_ANATOMY_DIR)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = max(args.budgets)
    runs: list[Run] = []
    prepared = {
        name: (prepare_case(root / name, spacing_mm=2.0), prepare_case(root / name, spacing_mm=1.0))
        for name in args.cases
    }
    protocols = {name: load_protocol(name) for name in args.protocols}
    fine_evaluators = {
        (c, p): PlanEvaluator(prepared[c][1], protocols[p], nonlinear=True)
        for c in args.cases
        for p in args.protocols
    }
    # Seeds outermost: a benchmark stopped early still covers every case, protocol and sampler.
    for seed in range(args.seeds):
        for case_name in args.cases:
            coarse, fine = prepared[case_name]
            for protocol_name, protocol in protocols.items():
                for spec in args.samplers:
                    sampler, _, option = spec.partition(":")
                    started = time.perf_counter()
                    result = run_search(
                        coarse, fine, protocol, trials=budget, seed=seed, sampler=sampler,
                        evaluate_coarse=PlanEvaluator(coarse, protocol, nonlinear=False).evaluate,
                        evaluate_fine=fine_evaluators[case_name, protocol_name].evaluate,
                        refine_top_k=args.refine_k,
                        hole_encoding="categorical" if option == "categorical" else "grid",
                        geometric_seeds=option != "unseeded",
                    )  # fmt: skip
                    run = summarise(result, case_name, protocol_name, spec, seed, args.budgets,
                                    time.perf_counter() - started)  # fmt: skip
                    runs.append(run)
                    if args.out is not None:  # after every run: a long benchmark keeps its figures
                        args.out.write_text(
                            json.dumps([r.__dict__ for r in runs], indent=1, default=str)
                        )
                    print(
                        f"{case_name} {protocol_name} {spec} seed {seed}: "
                        f"best@{budget} {run.best_at[budget]:.3f}, met {run.best_met}/"
                        f"{run.best_applicable}, fine {'PASS' if run.fine_passed else 'FAIL'} "
                        f"({', '.join(run.fine_unmet) or 'all met'}), {run.seconds:.0f} s",
                        flush=True,
                    )
    print()
    print(table(runs, args.budgets))
    print()
    print(versus_baselines(runs, args.budgets))


if __name__ == "__main__":
    main()
