"""Plan search: the default sampler beside random search and the genetic baseline, one run.

    python bench/search.py [--quick] [--seeds 5] [--cases ...] [--protocols ect irect]
                           [--samplers niche-ga ga:unseeded random:unseeded]
                           [--budgets 100 300 1000] [--out x.json] [--ours niche-ga]
                           [--jobs 15] [--time-limit 420] [--hard-limit 480] [--coarse-only]

Real cases from ../shared/data/anatomy (model organs at risk added), each protocol, each
sampler, each seed: a full ``run_search`` with the real ``PlanEvaluator`` (exploration on the
2 mm grid with constant conductivity, the best ``--refine-k`` candidates re-evaluated on the
1 mm grid with sigma(E)). Every run gets a fresh coarse evaluator, so its pair cache is part of
what is measured. A sampler spec ``tpe:categorical`` runs TPE on the categorical hole encoding;
``ga:unseeded`` and ``random:unseeded`` start without ectplan's geometric seeds: the published
genetic algorithm (random initial population) and plain random search, the baselines that
ectplan's search (the default sampler with its seeds, spec ``niche-ga``; ``--ours``) is
compared against.

Reported per case, protocol and sampler (median over seeds): evaluations and seconds until
the first plan passing every required criterion on the coarse level ("-" when none did), the
coarse score of the best plan after 100 / 300 / 1000 evaluations (best as the search ranks:
plans passing every required criterion first, then the lower score), the required criteria
the best plan meets, whether the returned fine plan passes, and evaluations per second. Lower
scores are better (optimizer/search/data/score.toml). Then, per budget, the seeds on which
ectplan's search (``--ours``) found a better best plan than both baselines (``ga:unseeded``
and ``random:unseeded``; seeds where either did not run are left out), with the plan-search
issue's target per case and protocol (better on 4 of 5 seeds at every budget; judged where
every budget compares 5 seeds or more; a pair that misses it only where a baseline found as
good a plan says so) and how many pairs meet it; when other samplers ran too
(TPE by default), the same comparison with every other sampler follows, without a verdict.
Then the same on the fine level: the plan a search stopped at each budget would return (the
fine evaluation, 1 mm with sigma(E), of its best coarse plans among the trials before the
budget, refined as ``run_search`` refines: ``returned_at``), since that is the plan a planner
gets; the coarse grid misjudges organ limits decided within a voxel, so the two levels can
disagree on which search found the better plan. ``--coarse-only`` refines the last budget's
plan alone. Wall times on a shared CPU are indicative only.

``--jobs N`` (N > 1) runs N runs at a time, each in its own process (spawned, one Numba thread,
one BLAS thread) that prepares each case and its fine evaluators once and keeps them for its
later runs, as the single process does. Runs start in the same order as with ``--jobs 1`` (seeds
outermost), so a benchmark stopped early still covers whole seeds first; ``--out`` is rewritten
after every finished run, in that order. A run's trials and scores are those of ``--jobs 1``
with one Numba thread (``NUMBA_NUM_THREADS=1``); with more threads the parallel reductions of
the field solver add in another order, which can change the last digits and, rarely, a
decision of the search. The fine evaluation of the returned plan can also differ in its last
digits: a process's fine evaluator keeps pair solutions of its earlier runs as warm starts,
and which runs those were depends on N. The wall-time columns (s->pass, eval/s) are measured
with N runs sharing the machine.

``--time-limit S``: no run starts after S seconds (wall time from the first run); runs already
going finish. ``--hard-limit S``: runs still exploring at S seconds stop there and get their
fine evaluation; they are kept in ``--out`` (``stopped_early``) but left out of the tables,
whose medians and comparisons need every run to have reached every budget.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import optuna

from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import Protocol, load_protocol
from optimizer.search.fidelity import DEFAULT_TOP_K, TwoFidelity
from optimizer.search.local import SearchError, SearchResult, run_search, search_levels
from optimizer.search.objective import ranking_key
from optimizer.search.samplers import DEFAULT_SAMPLER
from optimizer.search.space import HoleEncoding, SearchSpace
from optimizer.search.study import candidates as trial_candidates
from optimizer.search.study import completed

REPO = Path(__file__).resolve().parents[1]
CASES = ("prostatex-0000", "picai-10032", "picai-10043")
# Best scores closer than this tie in the comparison with the baselines: 1e-4 points is 10 J of
# pulse energy or 0.002 percentage points of coverage (optimizer/search/data/score.toml), far
# below what tells two plans apart clinically. Two samplers that found the same layout differ by
# that much through the needles' depths alone.
SCORE_TIE = 1e-4
# What the comparisons rank: the best explored (coarse) plans, or the fine plans returned.
Level = Literal["coarse", "fine"]
# The baselines of the plan-search issue: the published genetic algorithm (random initial
# population) and plain random search.
BASELINES = ("ga:unseeded", "random:unseeded")
# Its target: better than both baselines at every budget on at least 4 of 5 seeds.
TARGET_SHARE = 0.8
TARGET_SEEDS = 5


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
    # Stopped by --hard-limit before its trial budget: left out of the tables.
    stopped_early: bool = False
    # The plan a search of each budget returns: the fine evaluation (1 mm, sigma(E)) of the
    # best coarse plans among the first N trials, refined as run_search refines (--refine-k,
    # further rounds while none passes, lower voltages); empty with --coarse-only.
    fine_at: dict[int, float] = field(default_factory=dict)
    fine_passed_at: dict[int, bool] = field(default_factory=dict)

    def best_key(self, budget: int) -> tuple[int, float]:
        """The search's own order of the best plan by ``budget``: passing first, then score."""
        return ranking_key(self.passed_at.get(budget, False), self.best_at[budget])

    def fine_key(self, budget: int) -> tuple[int, float]:
        """The same order for the fine evaluation of the plan returned at ``budget``."""
        return ranking_key(self.fine_passed_at.get(budget, False), self.fine_at[budget])

    @property
    def evals_per_s(self) -> float:
        return self.trials / self.explore_seconds if self.explore_seconds > 0 else 0.0


@dataclass(frozen=True)
class Job:
    """One benchmark run: a full search of one case and protocol with one sampler and seed."""

    seed: int
    case: str
    protocol: str
    sampler: str  # a spec: "ga", "ga:unseeded", "tpe:categorical", ...


def jobs_in_order(
    seeds: Sequence[int], cases: Sequence[str], protocols: Sequence[str], samplers: Sequence[str]
) -> list[Job]:
    """Every run, seeds outermost: a benchmark stopped early still covers every case,
    protocol and sampler for the seeds it finished."""
    return [
        Job(seed, case, protocol, spec)
        for seed in seeds
        for case in cases
        for protocol in protocols
        for spec in samplers
    ]


@dataclass(frozen=True)
class Settings:
    """What every run shares (sent to each worker process with its job)."""

    root: Path
    budgets: tuple[int, ...]
    refine_k: int
    # Whether to refine the best plans at every budget, not only at the last (--coarse-only).
    fine_every_budget: bool = True
    # time.time() at which a run still exploring stops (--hard-limit); None: never.
    stop_at: float | None = None


# Per process: prepared cases (2 mm, 1 mm), protocols and fine evaluators, made on first use
# and kept for the process's later runs. A run's coarse evaluator is always new: its pair cache
# is part of what is measured.
_CASES: dict[str, tuple[PreparedCase, PreparedCase]] = {}
_PROTOCOLS: dict[str, Protocol] = {}
_FINE: dict[tuple[str, str], PlanEvaluator] = {}


def _case(root: Path, name: str) -> tuple[PreparedCase, PreparedCase]:
    if name not in _CASES:
        _CASES[name] = (prepare_case(root / name, spacing_mm=2.0),
                        prepare_case(root / name, spacing_mm=1.0))  # fmt: skip
    return _CASES[name]


def _fine_evaluator(root: Path, case: str, protocol: str) -> PlanEvaluator:
    if protocol not in _PROTOCOLS:
        _PROTOCOLS[protocol] = load_protocol(protocol)
    if (case, protocol) not in _FINE:
        _FINE[case, protocol] = PlanEvaluator(_case(root, case)[1], _PROTOCOLS[protocol],
                                              nonlinear=True)  # fmt: skip
    return _FINE[case, protocol]


def run_job(job: Job, settings: Settings) -> Run | None:
    """One full search; None when the hard limit stopped it before its first evaluation."""
    fine_evaluator = _fine_evaluator(settings.root, job.case, job.protocol)
    coarse, fine = _case(settings.root, job.case)
    protocol = _PROTOCOLS[job.protocol]
    sampler, _, option = job.sampler.partition(":")
    encoding: HoleEncoding = "categorical" if option == "categorical" else "grid"
    stop_at = settings.stop_at
    should_stop = None if stop_at is None else (lambda: time.time() >= stop_at)
    evaluate_coarse = PlanEvaluator(coarse, protocol, nonlinear=False,
                                    metrics_detail="search").evaluate  # fmt: skip
    storage = optuna.storages.InMemoryStorage()  # kept to refine the plans of each budget
    started = time.perf_counter()
    try:
        result = run_search(
            coarse, fine, protocol, trials=max(settings.budgets), seed=job.seed,
            sampler=sampler, storage=storage, study_name="bench",
            evaluate_coarse=evaluate_coarse, evaluate_fine=fine_evaluator.evaluate,
            refine_top_k=settings.refine_k, hole_encoding=encoding,
            geometric_seeds=option != "unseeded", should_stop=should_stop,
        )  # fmt: skip
    except SearchError:
        if should_stop is not None and should_stop():
            return None
        raise
    run = summarise(result, job.case, job.protocol, job.sampler, job.seed,
                    list(settings.budgets), time.perf_counter() - started)  # fmt: skip
    run.stopped_early = result.stopped_by == "cancelled"
    if settings.fine_every_budget and not run.stopped_early:
        space = SearchSpace.for_levels(coarse, fine, protocol, hole_encoding=encoding)
        levels = search_levels(space, evaluate_coarse, fine_evaluator.evaluate,
                               top_k=settings.refine_k)  # fmt: skip
        study = optuna.load_study(study_name="bench", storage=storage)
        last = max(settings.budgets)  # the run's own plan, refined the same way
        run.fine_at[last], run.fine_passed_at[last] = result.score.total, result.passed
        earlier = [b for b in settings.budgets if b != last]
        for budget, (score, passed) in returned_at(study, space, levels, earlier).items():
            run.fine_at[budget], run.fine_passed_at[budget] = score, passed
    return run


def returned_at(
    study: optuna.Study, space: SearchSpace, levels: TwoFidelity, budgets: Sequence[int]
) -> dict[int, tuple[float, bool]]:
    """Per budget, the fine score and pass of the plan a search stopped after that many trials
    returns: ``levels.refine`` (as run_search refines) of the trials told before it."""
    told = completed(study)
    out = {}
    for budget in budgets:
        refined = levels.refine(trial_candidates(space, [t for t in told if t.number < budget]))
        best = refined[0] if refined else None
        if best is None or best.evaluation is None or best.score is None:
            out[budget] = (float("nan"), False)
        else:
            out[budget] = (best.score.total, best.evaluation.passed)
    return out


def _init_worker() -> None:
    """A worker process: one Numba thread (NUMBA_NUM_THREADS is set for it before it starts,
    since Numba reads it on import), and optuna as quiet as in the main process."""
    import numba

    numba.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# Every pool of threads a worker could start: N processes with one thread each use N cores.
_ONE_THREAD = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def one_thread_children() -> Iterator[None]:
    """Processes spawned inside the block inherit one-thread settings; this process's own
    environment is restored afterwards."""
    saved = {name: os.environ.get(name) for name in _ONE_THREAD}
    os.environ.update(dict.fromkeys(_ONE_THREAD, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


T = TypeVar("T")
R = TypeVar("R")


def run_in_order(
    items: Sequence[T],
    call: Callable[[T], R],
    *,
    workers: int = 1,
    time_limit_s: float | None = None,
    on_result: Callable[[int, R], None] | None = None,
    initializer: Callable[[], None] | None = None,
) -> tuple[dict[int, R], int]:
    """``call`` on every item, started in order, at most ``workers`` at a time in spawned
    worker processes (1: one after the other in this process). No call starts once
    ``time_limit_s`` seconds have passed since the first; calls already running finish.
    ``on_result(index, result)`` follows each call as it finishes. Returns the results by item
    index and how many items never started."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    started = time.monotonic()

    def expired() -> bool:
        return time_limit_s is not None and time.monotonic() - started >= time_limit_s

    results: dict[int, R] = {}
    queue = list(enumerate(items))
    queue.reverse()  # pop() from the end takes the items in order
    if workers == 1:
        while queue and not expired():
            index, item = queue.pop()
            results[index] = call(item)
            if on_result is not None:
                on_result(index, results[index])
        return results, len(queue)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer) as pool:
        # Submitted only when a worker is free, so a submitted call starts at once and none
        # starts after the limit (the pool would otherwise hand queued calls out by itself).
        running: dict[Future[R], int] = {}
        while queue or running:
            while queue and len(running) < workers and not expired():
                index, item = queue.pop()
                running[pool.submit(call, item)] = index
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=running.__getitem__):
                index = running.pop(future)
                results[index] = future.result()
                if on_result is not None:
                    on_result(index, results[index])
    return results, len(queue)


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


def by_sampler(runs: list[Run]) -> dict[tuple[str, str, str], list[Run]]:
    """The runs of each case, protocol and sampler, in the order they first appear."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.case, r.protocol, r.sampler), []).append(r)
    return groups


def table(runs: list[Run], budgets: list[int]) -> str:
    header = (
        f"{'case':16} {'protocol':8} {'sampler':16} {'evals->pass':>11} {'s->pass':>8} "
        + " ".join(f"{'best@' + str(b):>9}" for b in budgets)
        + f" {'met':>7} {'fine':>5} {'fine score':>10} {'eval/s':>7}"
    )
    lines = [header, "-" * len(header)]
    for (case, protocol, sampler), rs in by_sampler(runs).items():
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


def ahead(key: tuple[int, float], other: tuple[int, float]) -> bool:
    """``key`` ranks before ``other`` by more than a tie: it passes where ``other`` does not,
    or both pass (or both fail) and its score is lower by more than ``SCORE_TIE``."""
    return key[0] < other[0] or (key[0] == other[0] and key[1] < other[1] - SCORE_TIE)


@dataclass(frozen=True)
class Count:
    """Seeds at one budget: ``better`` strictly, ``tied`` no worse, of ``total`` compared."""

    better: int
    tied: int
    total: int


def target_verdict(counts: Sequence[Count]) -> str | None:
    """The plan-search issue's target for one case and protocol, given its count at each
    budget: "met" when strictly better on ``TARGET_SHARE`` of at least ``TARGET_SEEDS`` seeds
    at every budget, "not met" when not; None when some budget has no seed compared (runs
    too short, or a baseline missing) or too few seeds to judge."""
    if not counts or any(c.total < TARGET_SEEDS for c in counts):
        return None
    return "met" if all(c.better >= TARGET_SHARE * c.total for c in counts) else "not met"


def only_ties_short(counts: Sequence[Count]) -> bool:
    """Whether every budget short of the target would meet it counting ties as wins: the
    baselines found plans as good (within ``SCORE_TIE``), e.g. the protocol's fewest needles
    at the same energy, so no sampler could have been strictly better there."""
    return all(c.tied >= TARGET_SHARE * c.total for c in counts)  # ``tied`` counts wins too


def versus_baselines(
    runs: list[Run],
    budgets: list[int],
    ours: str = DEFAULT_SAMPLER,
    baselines: Sequence[str] | None = BASELINES,
    level: Level = "coarse",
) -> str:
    """Per case, protocol and budget: on how many seeds ``ours`` had a strictly better best
    plan than every one of ``baselines`` run with the same seed (None: every other sampler;
    ``ours`` is never its own baseline), in the search's own order (passing every required
    criterion first, then the lower score, lower by more than ``SCORE_TIE``); in brackets, on
    how many it was no worse than any (ties: scores within ``SCORE_TIE``). A seed counts only
    where all of ``baselines`` ran. With ``baselines`` named, also the plan-search issue's
    target per case and protocol (``target_verdict``) and the pairs that meet it.
    ``level`` "coarse" compares the best explored plans (2 mm, constant conductivity); "fine"
    the plans a search of that budget returns (``Run.fine_key``), where every run has them."""

    def key(run: Run, budget: int) -> tuple[int, float]:
        return run.best_key(budget) if level == "coarse" else run.fine_key(budget)

    def reached(run: Run, budget: int) -> bool:
        return budget <= run.trials and (level == "coarse" or budget in run.fine_at)

    by_key: dict[tuple[str, str, int], dict[str, Run]] = {}
    for r in runs:
        by_key.setdefault((r.case, r.protocol, r.seed), {})[r.sampler] = r
    named_baselines = None if baselines is None else [b for b in baselines if b != ours]
    named = ", ".join(named_baselines) if named_baselines is not None else "every other sampler"
    lines = [f"{level} level: seeds on which {ours!r} beat {named} (strictly / no worse):"]
    combos = sorted({(r.case, r.protocol) for r in runs})
    verdicts: list[str | None] = []
    for case, protocol in combos:
        counts = []
        for b in budgets:
            better = tied = total = 0
            for (c, p, _), samplers in by_key.items():
                mine = samplers.get(ours)
                if named_baselines is None:
                    others = [r for name, r in samplers.items() if name != ours]
                else:
                    others = [samplers[name] for name in named_baselines if name in samplers]
                    if len(others) < len(named_baselines):
                        continue
                if c != case or p != protocol or mine is None or not others:
                    continue
                if not all(reached(r, b) for r in (mine, *others)):
                    continue
                total += 1
                best_other = min(key(r, b) for r in others)
                better += ahead(key(mine, b), best_other)
                tied += not ahead(best_other, key(mine, b))
            counts.append(Count(better, tied, total))
        line = f"  {case:16} {protocol:6} " + "  ".join(
            f"@{b} {n.better}/{n.total} ({n.tied}/{n.total})"
            for b, n in zip(budgets, counts, strict=True)
        )
        if named_baselines is not None:
            verdict = target_verdict(counts)
            verdicts.append(verdict)
            line += "  target " + (verdict or "not measured")
            if verdict == "not met" and only_ties_short(counts):
                line += " (only ties: where it falls short, a baseline found as good a plan)"
        lines.append(line)
    if named_baselines is not None:
        measured = [v for v in verdicts if v is not None]
        unmeasured = len(verdicts) - len(measured)
        lines.append(
            f"target (strictly better on {TARGET_SHARE:.0%} of {TARGET_SEEDS} or more seeds at "
            f"every budget): met on {measured.count('met')} of {len(measured)} case/protocol "
            "pairs measured"
            + (f" ({unmeasured} not measured: a budget without {TARGET_SEEDS} seeds compared)"
               if unmeasured else "")
        )  # fmt: skip
    return "\n".join(lines)


def progress_line(run: Run, budget: int) -> str:
    stopped = f", stopped at {run.trials} trials" if run.stopped_early else ""
    return (
        f"{run.case} {run.protocol} {run.sampler} seed {run.seed}: "
        f"best@{budget} {run.best_at[budget]:.3f}, met {run.best_met}/"
        f"{run.best_applicable}, fine {'PASS' if run.fine_passed else 'FAIL'} "
        f"({', '.join(run.fine_unmet) or 'all met'}), {run.seconds:.0f} s{stopped}"
    )


def fine_table(runs: list[Run], budgets: list[int]) -> str:
    """Per case, protocol and sampler: the fine plans a search of each budget returns, how
    many pass every required criterion and their median score."""
    header = f"{'case':16} {'protocol':8} {'sampler':16} " + " ".join(
        f"{'fine@' + str(b):>16}" for b in budgets
    )
    lines = [header, "-" * len(header)]
    for (case, protocol, sampler), rs in by_sampler(runs).items():
        cells = []
        for b in budgets:
            have = [r for r in rs if b in r.fine_at]
            passed = f"{sum(r.fine_passed_at[b] for r in have)}/{len(have)}"
            score = median_or_dash([r.fine_at[b] for r in have], ".3f") if have else "-"
            cells.append(f"{passed + ' pass ' + score:>16}")
        lines.append(f"{case:16} {protocol:8} {sampler:16} " + " ".join(cells))
    return "\n".join(lines)


def print_tables(runs: list[Run], budgets: list[int], ours: str = DEFAULT_SAMPLER) -> None:
    """The tables and the comparisons over the runs that reached their whole budget: with the
    issue's baselines, and with every other sampler when others ran (e.g. TPE); on the coarse
    level, then on the fine level where the runs refined every budget's plan."""
    complete = [r for r in runs if not r.stopped_early]
    levels: list[Level] = ["coarse", "fine"] if any(r.fine_at for r in complete) else ["coarse"]
    print(table(complete, budgets))
    if "fine" in levels:
        print()
        print(fine_table(complete, budgets))
    for level in levels:
        print()
        print(versus_baselines(complete, budgets, ours, level=level))
        if {r.sampler for r in complete} - {ours, *BASELINES}:
            print()
            print(versus_baselines(complete, budgets, ours, baselines=None, level=level))
    if len(complete) < len(runs):
        print(f"({len(runs) - len(complete)} runs stopped by the hard limit left out)")


def load_runs(*paths: Path) -> list[Run]:
    """Runs saved by ``--out``, of one benchmark or several (e.g. seeds run apart)."""
    saved = [Run(**r) for path in paths for r in json.loads(path.read_text())]
    for r in saved:
        r.best_at = {int(k): v for k, v in r.best_at.items()}
        r.passed_at = {int(k): v for k, v in r.passed_at.items()}
        r.fine_at = {int(k): v for k, v in r.fine_at.items()}
        r.fine_passed_at = {int(k): v for k, v in r.fine_passed_at.items()}
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, budgets 100 and 300")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first .. first+seeds-1")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--protocols", nargs="+", default=["ect", "irect"])
    parser.add_argument(
        "--samplers", nargs="+",
        default=[DEFAULT_SAMPLER, "tpe", "ga:unseeded", "random:unseeded"],
    )  # fmt: skip
    parser.add_argument(
        "--ours", default=DEFAULT_SAMPLER,
        help="the sampler spec compared against all others (default: ectplan's default)",
    )  # fmt: skip
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--refine-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument(
        "--coarse-only", action="store_true",
        help="refine only the last budget's plan (the fine comparison per budget is left out)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write every run as JSON")
    parser.add_argument(
        "--table", type=Path, nargs="+", default=None,
        help="only print the tables of the runs saved by --out (several files: merged)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time, each in its own process"
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, metavar="S",
        help="start no run after S seconds; runs already going finish",
    )  # fmt: skip
    parser.add_argument(
        "--hard-limit", type=float, default=None, metavar="S",
        help="runs still exploring after S seconds stop (kept in --out, left out of the table)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budgets = 1, [100, 300]
    if args.table is not None:
        saved = load_runs(*args.table)
        print_tables(saved, sorted({b for r in saved for b in r.best_at}), args.ours)
        return
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    root = anatomy_root()
    if not root.is_dir():
        sys.exit(f"real anatomy not found at {root} (set ECTPLAN_ANATOMY_DIR)")
    missing = [name for name in args.cases if not (root / name).is_dir()]
    if missing:
        sys.exit(f"case folder(s) {', '.join(missing)} not found in {root} (see --cases)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = max(args.budgets)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = jobs_in_order(seeds, args.cases, args.protocols, args.samplers)
    settings = Settings(
        root, tuple(args.budgets), args.refine_k, fine_every_budget=not args.coarse_only,
        stop_at=None if args.hard_limit is None else time.time() + args.hard_limit,
    )  # fmt: skip
    finished: dict[int, Run] = {}

    def record(index: int, run: Run | None) -> None:
        if run is None:  # the hard limit came before its first evaluation
            return
        finished[index] = run
        if args.out is not None:  # after every run: a long benchmark keeps its figures
            runs = [finished[i] for i in sorted(finished)]
            args.out.write_text(json.dumps([r.__dict__ for r in runs], indent=1, default=str))
        print(progress_line(run, budget), flush=True)

    # One thread per worker process; with --jobs 1 this process keeps its own settings.
    with one_thread_children() if args.jobs > 1 else nullcontext():
        _, not_started = run_in_order(
            jobs, partial(run_job, settings=settings), workers=args.jobs,
            time_limit_s=args.time_limit, on_result=record, initializer=_init_worker,
        )  # fmt: skip
    runs = [finished[i] for i in sorted(finished)]
    print()
    if not_started:
        print(f"time limit: {not_started} of {len(jobs)} runs not started")
    if args.jobs > 1:
        print(f"wall times measured with {args.jobs} runs at a time, one thread each")
    print_tables(runs, args.budgets, args.ours)


if __name__ == "__main__":
    main()
