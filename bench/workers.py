"""Search throughput with 1 and 2 workers, in the same run: trials per second and the ratio.

    python bench/workers.py [--case prostatex-0000] [--protocol ect] [--trials 300]
                            [--workers 1 2] [--repeats 2] [--modes reproducible async islands]
                            [--sharing on off] [--target auto] [--independent]
                            [--out workers.json]

Each configuration is a full ``DistributedSearch`` on a local Ray, as ``ectplan plan`` runs it:
the embedded journal storage in a fresh folder, the default sampler with its seeds, one Numba
thread per worker (a worker is one CPU, Ray's unit; ``--threads`` changes it), exploration on
the 2 mm grid. Throughput is told trials per second of the exploration phase (worker start-up
and the fine re-evaluation excluded). Configurations are interleaved, repeat by repeat, so a
load change on a shared machine hits all of them alike; the median over repeats is reported,
with the mean evaluation time inside the workers and the driver's CPU time per trial (ask,
tell, storage, Ray), which together say where the time goes. On Linux the machine's CPU time
per trial is read from /proc as well: all processes, the workers alone, and the share of the
machine left idle (a worker waiting for its next plan), and the needle-pair solves per trial.
``--sharing on off`` runs 2+ workers with and without sharing pair solutions between actors
(services.planner.unit_sharing; on is ``ectplan plan``'s default). ``--modes``: the driver's
orders of ask and tell, ``reproducible`` (batches, the default of ``ectplan plan``), ``async``
(``--asynchronous``) and ``islands`` (``--islands``: each actor asks its own sampler).
Also run: 1 worker with every core as Numba threads (the default of ``ectplan plan --workers
1``), for reference.
``--independent`` adds, for each worker count N, N serial searches side by side, each in its own
process with one thread: ask, evaluate and tell in one loop on its own study (embedded journal
storage, no Ray), as ``run_search`` runs. Their summed throughput is what workers that ran their
own Optuna loops could reach on this machine, with no driver and no Ray call per trial: the
ceiling against which the distributed search's ratio is read.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.search, when run as a script

from bench.search import one_thread_children  # noqa: E402
from optimizer.case import default_anatomy_root, prepare_case  # noqa: E402
from optimizer.evaluate.evaluation import PlanEvaluation  # noqa: E402
from optimizer.evaluate.evaluator import PlanEvaluator  # noqa: E402
from optimizer.evaluate.plan import Plan  # noqa: E402
from optimizer.evaluate.protocol import load_protocol  # noqa: E402
from optimizer.search.local import SearchProgress, run_search  # noqa: E402
from services.planner.driver import EVAL_SECONDS_ATTR, DistributedSearch  # noqa: E402
from services.planner.storage import default_storage_url  # noqa: E402


@dataclass
class Measure:
    workers: int
    threads: int
    mode: str
    sharing: str  # "on": actors share pair solutions (the default with 2+), "off": not
    repeat: int
    trials: int
    explore_s: float
    trials_per_s: float
    mean_eval_ms: float
    driver_cpu_ms_per_trial: float
    solves_per_trial: float  # Poisson solves of needle pairs per told trial
    machine_cpu_ms_per_trial: float = float("nan")
    workers_cpu_ms_per_trial: float = float("nan")
    idle_share: float = float("nan")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_snapshot(pids: list[int]) -> tuple[float, float, float] | None:
    """(busy s of the machine, all s of the machine, CPU s of ``pids``) from /proc; None
    where /proc is not there."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        own = 0.0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            after = stat[stat.rindex(")") + 2 :].split()
            own += (int(after[11]) + int(after[12])) / _TICK  # utime + stime
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / _TICK, sum(fields) / _TICK, own


def measure(
    anatomy: Path, protocol_name: str, *, workers: int, threads: int, mode: str, trials: int,
    repeat: int, target: str, sharing: str = "on",
) -> Measure:  # fmt: skip
    protocol = load_protocol(protocol_name)
    with tempfile.TemporaryDirectory() as tmp:
        search = DistributedSearch(
            anatomy, protocol, trials=trials, workers=workers, seed=repeat,
            storage_url=default_storage_url(tmp), threads_per_worker=threads,
            reproducible=mode == "reproducible", islands=mode == "islands", refine_top_k=1,
            fine_mm=2.0,
            target_scope=target, share_units=None if sharing == "on" else False,
        )  # fmt: skip
        with search:
            search.prepare()
            marks: dict[str, float] = {}
            machine: dict[str, tuple[float, float, float] | None] = {}

            def worker_pids() -> list[int]:
                pool = search.pool
                return [w.pid for w in pool.workers if w.pid is not None] if pool else []

            def on_progress(p: object) -> None:
                # The driver's CPU clock at the first and last told trial of the exploration.
                phase = getattr(p, "phase", "")
                if phase == "explore" and "first" not in marks and getattr(p, "trials_done", 0):
                    marks["first"] = time.process_time()
                    marks["first_n"] = getattr(p, "trials_done", 0)
                    machine["first"] = _cpu_snapshot(worker_pids())
                if phase == "explore":
                    marks["last"] = time.process_time()
                    marks["last_n"] = getattr(p, "trials_done", 0)
                    if getattr(p, "trials_done", 0) == trials:
                        machine["last"] = _cpu_snapshot(worker_pids())

            search.run(on_progress=on_progress)
            evals = [
                float(t.user_attrs[EVAL_SECONDS_ATTR])
                for t in search.study.trials
                if EVAL_SECONDS_ATTR in t.user_attrs
            ]
        told = max(1.0, marks.get("last_n", 0) - marks.get("first_n", 0))
        stats = search.stats
        first, last = machine.get("first"), machine.get("last")
        per_trial = {}
        if first is not None and last is not None:
            busy, total, own = (b - a for a, b in zip(first, last, strict=True))
            per_trial = {
                "machine_cpu_ms_per_trial": 1000 * busy / told,
                "workers_cpu_ms_per_trial": 1000 * own / told,
                "idle_share": 1 - busy / total if total > 0 else float("nan"),
            }
        return Measure(
            workers=workers, threads=threads, mode=mode, sharing=sharing, repeat=repeat,
            trials=stats.trials_told, explore_s=stats.explore_s,
            trials_per_s=stats.trials_per_s,
            mean_eval_ms=1000 * statistics.fmean(evals) if evals else float("nan"),
            driver_cpu_ms_per_trial=1000 * (marks.get("last", 0) - marks.get("first", 0)) / told,
            solves_per_trial=stats.pairs_solved / max(1, stats.trials_told),
            **per_trial,
        )  # fmt: skip


# How long the independent searches may take to build their grids and compile, and to run.
INDEPENDENT_START_S = 600.0
INDEPENDENT_RUN_S = 3600.0


@dataclass(frozen=True)
class SerialRun:
    """One serial search's exploration: when each trial was told (wall clock, shared between
    processes), its CPU time and evaluation time."""

    told_at: list[float]
    cpu_s: float
    eval_s: float
    evaluations: int


def _serial_exploration(
    anatomy: Path, protocol_name: str, trials: int, seed: int, target: str,
    ready: object, start: object, results: object,
) -> None:  # fmt: skip
    """A child process: one serial search, started when every child is ready."""
    import numba

    numba.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    protocol = load_protocol(protocol_name)
    coarse = prepare_case(anatomy, spacing_mm=2.0, target_scope=target)
    evaluator = PlanEvaluator(coarse, protocol, nonlinear=False, metrics_detail="search")
    # The compiles, as a Ray worker's warm-up does, before the clock starts.
    run_search(coarse, coarse, protocol, trials=3, seed=seed, evaluate_coarse=evaluator.evaluate,
               evaluate_fine=evaluator.evaluate, refine_top_k=1)  # fmt: skip
    evaluator = PlanEvaluator(coarse, protocol, nonlinear=False, metrics_detail="search")
    eval_s: list[float] = []

    def timed(plan: Plan) -> PlanEvaluation:
        started = time.perf_counter()
        try:
            return evaluator.evaluate(plan)
        finally:
            eval_s.append(time.perf_counter() - started)

    told_at: list[float] = []
    cpu = [0.0, 0.0]

    def on_progress(p: SearchProgress) -> None:
        if p.phase == "explore" and p.trials_done > len(told_at):
            told_at.append(time.time())
            cpu[len(told_at) > 1] = time.process_time()

    ready.put(seed)  # type: ignore[attr-defined]
    start.wait()  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        run_search(
            coarse, coarse, protocol, trials=trials, seed=seed, storage=default_storage_url(tmp),
            evaluate_coarse=timed, evaluate_fine=evaluator.evaluate, refine_top_k=1,
            on_progress=on_progress,
        )  # fmt: skip
    run = SerialRun(told_at, cpu[1] - cpu[0], sum(eval_s), len(eval_s))
    results.put(run)  # type: ignore[attr-defined]


def common_window(told_at: Sequence[Sequence[float]]) -> tuple[int, float]:
    """(trials told while every search was exploring, that window's seconds): from the
    latest first tell (excluded: it opens the window) to the earliest last tell."""
    opened = max(times[0] for times in told_at)
    closed = min(times[-1] for times in told_at)
    if closed <= opened:
        return 0, 0.0
    return sum(sum(opened < t <= closed for t in times) for times in told_at), closed - opened


def _collect(
    box: object, count: int, children: Sequence[multiprocessing.process.BaseProcess],
    timeout_s: float,
) -> list[Any]:  # fmt: skip
    """``count`` items from the queue ``box``; exits the bench when a child died first or
    the time ran out (its traceback is above)."""
    items: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(items) < count:
        try:
            items.append(box.get(timeout=1.0))  # type: ignore[attr-defined]
            continue
        except queue.Empty:
            pass
        dead = [c.exitcode for c in children if c.exitcode not in (None, 0)]
        if dead or time.monotonic() > deadline:
            for child in children:
                child.kill()
            sys.exit(f"independent searches: a child failed or ran out of time (exit codes "
                     f"{[c.exitcode for c in children]})")  # fmt: skip
    return items


def measure_independent(
    anatomy: Path, protocol_name: str, *, searches: int, trials: int, repeat: int, target: str
) -> Measure:
    """``searches`` serial searches side by side (seeds ``repeat``, ``repeat`` + 1, ...), one
    process and one thread each. Throughput: the trials all of them told while every one was
    exploring (from the last first tell to the first last tell), per second of that window;
    a search that ends early would otherwise leave the other a free machine."""
    context = multiprocessing.get_context("spawn")
    ready, start = context.Queue(), context.Event()
    results = context.Queue()
    with one_thread_children():
        children = [
            context.Process(
                target=_serial_exploration,
                args=(anatomy, protocol_name, trials, repeat + i, target, ready, start, results),
            )
            for i in range(searches)
        ]
        for child in children:
            child.start()
    _collect(ready, searches, children, INDEPENDENT_START_S)
    start.set()
    first = _cpu_snapshot([c.pid for c in children if c.pid is not None])
    runs: list[SerialRun] = _collect(results, searches, children, INDEPENDENT_RUN_S)
    # Busy time up to the last result: each search's short refinement included.
    last = _cpu_snapshot([c.pid for c in children if c.pid is not None])
    for child in children:
        child.join()
    in_window, span = common_window([r.told_at for r in runs])
    told = max(1, sum(len(r.told_at) - 1 for r in runs))
    per_trial = {}
    if first is not None and last is not None:
        busy, total, _ = (b - a for a, b in zip(first, last, strict=True))
        per_trial = {
            "machine_cpu_ms_per_trial": 1000 * busy / told,
            "workers_cpu_ms_per_trial": 1000 * sum(r.cpu_s for r in runs) / told,
            "idle_share": 1 - busy / total if total > 0 else float("nan"),
        }
    return Measure(
        workers=searches, threads=1, mode="independent", sharing="-", repeat=repeat,
        trials=told, explore_s=span,
        trials_per_s=in_window / span if span > 0 else float("nan"),
        mean_eval_ms=1000 * sum(r.eval_s for r in runs) / max(1, sum(r.evaluations for r in runs)),
        driver_cpu_ms_per_trial=float("nan"), solves_per_trial=float("nan"), **per_trial,
    )  # fmt: skip


def table(measures: list[Measure]) -> str:
    keys = sorted({(m.mode, m.workers, m.threads, m.sharing) for m in measures})
    lines = [
        f"{'mode':<13} {'workers':>7} {'threads':>7} {'sharing':>7} {'trials/s':>9} "
        f"{'eval ms':>8} {'solves/trial':>12} "
        f"{'driver ms/trial':>15} {'workers ms/trial':>16} {'machine ms/trial':>16} "
        f"{'idle':>5} {'runs':>5}",
        "-" * 131,
    ]
    rate: dict[tuple[str, int, int, str], float] = {}
    for key in keys:
        runs = [m for m in measures if (m.mode, m.workers, m.threads, m.sharing) == key]
        rate[key] = statistics.median(m.trials_per_s for m in runs)
        lines.append(
            f"{key[0]:<13} {key[1]:>7} {key[2]:>7} {key[3]:>7} {rate[key]:>9.2f} "
            f"{statistics.median(m.mean_eval_ms for m in runs):>8.1f} "
            f"{statistics.median(m.solves_per_trial for m in runs):>12.2f} "
            f"{statistics.median(m.driver_cpu_ms_per_trial for m in runs):>15.1f} "
            f"{statistics.median(m.workers_cpu_ms_per_trial for m in runs):>16.1f} "
            f"{statistics.median(m.machine_cpu_ms_per_trial for m in runs):>16.1f} "
            f"{statistics.median(m.idle_share for m in runs):>5.0%} {len(runs):>5}"
        )
    lines.append("")
    for mode in sorted({k[0] for k in keys}):
        one = [r for k, r in rate.items() if k[0] == mode and k[1] == 1 and k[2] == 1]
        for key, r in sorted(rate.items()):
            if key[0] == mode and key[1] > 1 and one:
                what = (
                    f"{key[1]} serial searches / 1"
                    if mode == "independent"
                    else f"{key[1]} workers (sharing {key[3]}) / 1 worker (1 thread each)"
                )
                lines.append(f"{mode}: {what} = {r / one[0]:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="prostatex-0000")
    parser.add_argument("--protocol", default="ect")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="Numba threads per worker")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["reproducible", "async"],
                        choices=["reproducible", "async", "islands"])  # fmt: skip
    parser.add_argument("--target", default="auto", choices=["auto", "lesion", "gland"])
    parser.add_argument("--sharing", nargs="+", default=["on"], choices=["on", "off"],
                        help="with 2+ workers: actors share pair solutions (on, the default "
                        "of ectplan plan) or not; both to compare them")  # fmt: skip
    parser.add_argument("--no-reference", action="store_true",
                        help="skip 1 worker with every core as Numba threads")  # fmt: skip
    parser.add_argument("--independent", action="store_true",
                        help="also N serial searches side by side, one process each, for each "
                        "worker count N: the ceiling without a driver")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write every run as JSON")
    args = parser.parse_args()
    anatomy = default_anatomy_root() / args.case
    if not anatomy.is_dir():
        sys.exit(f"real anatomy not found at {anatomy} (set ECTPLAN_ANATOMY_DIR)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = [
        (w, args.threads, mode, sharing)
        for mode in args.modes
        for w in args.workers
        for sharing in (args.sharing if w > 1 else ["on"])  # one worker has no one to share with
    ]
    if not args.no_reference:
        configs.append((1, os.cpu_count() or 1, args.modes[0], "on"))
    measures: list[Measure] = []

    def record(m: Measure, line: str) -> None:
        measures.append(m)
        print(line, flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps([asdict(x) for x in measures], indent=1))

    for repeat in range(args.repeats):
        for workers, threads, mode, sharing in configs:
            m = measure(anatomy, args.protocol, workers=workers, threads=threads, mode=mode,
                        trials=args.trials, repeat=repeat, target=args.target,
                        sharing=sharing)  # fmt: skip
            record(
                m,
                f"repeat {repeat} {mode} {workers} worker(s) x {threads} thread(s), sharing "
                f"{sharing}: "
                f"{m.trials_per_s:.2f} trials/s, eval {m.mean_eval_ms:.1f} ms, driver "
                f"{m.driver_cpu_ms_per_trial:.1f} ms/trial, {m.solves_per_trial:.2f} solves/trial",
            )
        for searches in args.workers if args.independent else []:
            m = measure_independent(
                anatomy, args.protocol, searches=searches, trials=args.trials, repeat=repeat,
                target=args.target,
            )  # fmt: skip
            record(
                m,
                f"repeat {repeat} {searches} independent serial search(es): "
                f"{m.trials_per_s:.2f} trials/s, eval {m.mean_eval_ms:.1f} ms, "
                f"{m.workers_cpu_ms_per_trial:.1f} ms CPU/trial",
            )
    print()
    print(f"{args.case}, {args.protocol}, {args.trials} trials, {os.cpu_count()} CPUs")
    print(table(measures))


if __name__ == "__main__":
    main()
