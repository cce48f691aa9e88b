"""The product path: ``ectplan plan`` per case, protocol and seed, the whole command timed.

    python bench/product.py [--cases prostatex-0000 picai-10032 picai-10043]
                            [--protocols ect irect] [--seeds 5] [--first-seed 0]
                            [--time-limit 45 | --trials 300] [--workers 2] [--target-s 60]
                            [--islands] [--out product.json] [--keep DIR]

Each run is what a planner types, in a subprocess: ``ectplan plan --anatomy CASE --protocol P
--workers W --seed S`` with the time limit or trial budget, into a fresh output folder (a new
study, a local Ray of its own, the default sampler with its seeds). Measured: the wall time of
the whole command (process start, imports, Ray start, search, every output written) and, from
its search.json, whether the returned plan (fine grid, nonlinear conductivity) meets every
required criterion, the search's start-up / exploration / refinement seconds, the trials run
and the unmet required criteria. Per case and protocol: the runs that passed within
``--target-s`` (the plan-search issue's target: a passing plan within 60 s on each case), and
the time range of the passing runs. Run it on a quiet machine: the runs are timed one at a
time, each using every core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from optimizer.case import default_anatomy_root

DEFAULT_CASES = ("prostatex-0000", "picai-10032", "picai-10043")
DEFAULT_TIME_LIMIT_S = 45.0
# The plan-search issue's target for the whole command on the 2-core machine.
DEFAULT_TARGET_S = 60.0


@dataclass
class Run:
    case: str
    protocol: str
    seed: int
    wall_s: float
    returncode: int
    passed: bool = False
    trials: int = 0
    search_s: dict[str, float] = field(default_factory=dict)
    unmet_required: list[str] = field(default_factory=list)
    error: str = ""
    # The returned plan's fine score and how many plans were refined on the fine grid.
    score: float | None = None
    refined: int = 0

    def passed_within(self, target_s: float) -> bool:
        return self.passed and self.wall_s <= target_s


def plan_command(anatomy: Path, protocol: str, seed: int, out: Path, *, workers: int,
                 time_limit_s: float | None, trials: int | None,
                 islands: bool = False) -> list[str]:  # fmt: skip
    command = [sys.executable, "-m", "services.cli.main", "plan", "--anatomy", str(anatomy),
               "--protocol", protocol, "--workers", str(workers), "--seed", str(seed),
               "--out", str(out)]  # fmt: skip
    if time_limit_s is not None:
        command += ["--time-limit", f"{time_limit_s:g}"]
    if trials is not None:
        command += ["--trials", str(trials)]
    if islands:
        command.append("--islands")
    return command


def read_run(case: str, protocol: str, seed: int, wall_s: float, returncode: int, out: Path,
             stderr: str) -> Run:  # fmt: skip
    """The run as its search.json tells it; without one, the command's last words."""
    run = Run(case, protocol, seed, wall_s, returncode)
    try:
        doc = json.loads((out / "search.json").read_text())
    except (OSError, ValueError) as exc:
        tail = stderr.strip().splitlines()[-3:]
        run.error = f"no readable search.json ({exc}); exit {returncode}: " + " | ".join(tail)
        return run
    run.passed = bool(doc["passed"])
    run.trials = int(doc["trials"]["run"])
    run.search_s = {k: float(v) for k, v in doc["time_s"].items() if v is not None}
    run.unmet_required = [u["id"] for u in doc["unmet"] if u["severity"] == "required"]
    run.score = float(doc["best"]["score"])
    run.refined = len(doc["refined"])
    return run


def table(runs: list[Run], target_s: float) -> str:
    lines = [
        f"{'case':<16} {'protocol':<8} {'passed in time':>14} {'wall s (passing)':>18} "
        f"{'median wall s':>13} {'median trials':>13}  misses",
        "-" * 110,
    ]
    pairs = sorted({(r.case, r.protocol) for r in runs}, key=lambda p: (p[0], p[1]))
    for case, protocol in pairs:
        mine = [r for r in runs if (r.case, r.protocol) == (case, protocol)]
        ok = [r for r in mine if r.passed_within(target_s)]
        span = f"{min(r.wall_s for r in ok):.1f}-{max(r.wall_s for r in ok):.1f}" if ok else "-"
        misses = "; ".join(
            f"seed {r.seed}: "
            + (r.error or (f"{r.wall_s:.1f} s" if r.passed else "fails " + ", ".join(
                r.unmet_required)))
            for r in mine
            if not r.passed_within(target_s)
        )  # fmt: skip
        lines.append(
            f"{case:<16} {protocol:<8} {f'{len(ok)}/{len(mine)}':>14} {span:>18} "
            f"{statistics.median(r.wall_s for r in mine):>13.1f} "
            f"{statistics.median(r.trials for r in mine):>13.0f}  {misses}"
        )
    total = sum(r.passed_within(target_s) for r in runs)
    lines += ["", f"{total} of {len(runs)} runs returned a passing plan within {target_s:g} s"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--protocols", nargs="+", default=["ect", "irect"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--time-limit", type=float, default=None,
                        help=f"ectplan plan --time-limit (default {DEFAULT_TIME_LIMIT_S:g})")
    budget.add_argument("--trials", type=int, default=None, help="ectplan plan --trials")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--islands", action="store_true", help="ectplan plan --islands")
    parser.add_argument("--target-s", type=float, default=DEFAULT_TARGET_S)
    parser.add_argument("--out", type=Path, default=None, help="write every run as JSON")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run's outputs in DIR/CASE-PROTOCOL-SEED")  # fmt: skip
    args = parser.parse_args()
    time_limit = args.time_limit
    if time_limit is None and args.trials is None:
        time_limit = DEFAULT_TIME_LIMIT_S
    root = default_anatomy_root()
    missing = [c for c in args.cases if not (root / c).is_dir()]
    if missing:
        sys.exit(f"cases not found under {root}: {', '.join(missing)} (set ECTPLAN_ANATOMY_DIR)")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ectplan-product-") as scratch:
        base = args.keep if args.keep is not None else Path(scratch)
        for case in args.cases:
            for protocol in args.protocols:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    out = base / f"{case}-{protocol}-{seed}"
                    command = plan_command(
                        root / case, protocol, seed, out, workers=args.workers,
                        time_limit_s=time_limit, trials=args.trials, islands=args.islands,
                    )  # fmt: skip
                    started = time.monotonic()
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    run = read_run(case, protocol, seed, time.monotonic() - started,
                                   done.returncode, out, done.stderr)  # fmt: skip
                    runs.append(run)
                    verdict = "PASS" if run.passed else "fail"
                    score = "" if run.score is None else f", score {run.score:.3f}"
                    print(f"{case} {protocol} seed {seed}: {verdict} in {run.wall_s:.1f} s, "
                          f"{run.trials} trials, {run.refined} refined{score} {run.error}",
                          flush=True)  # fmt: skip
                    if args.out is not None:
                        args.out.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    budget_text = (f"--time-limit {time_limit:g}" if time_limit is not None
                   else f"--trials {args.trials}")  # fmt: skip
    print()
    print(f"ectplan plan {budget_text} --workers {args.workers}, seeds {args.first_seed}-"
          f"{args.first_seed + args.seeds - 1}, whole command timed")  # fmt: skip
    print(table(runs, args.target_s))


if __name__ == "__main__":
    main()
