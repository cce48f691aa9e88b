"""The product-path benchmark: the command it runs, how it reads a run, and its table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.product import Run, plan_command, read_run, table
from services.cli.main import build_parser


def test_the_command_is_one_ectplan_plan_accepts(tmp_path: Path) -> None:
    command = plan_command(tmp_path / "case", "irect", 3, tmp_path / "out", workers=2,
                           time_limit_s=45.0, trials=None)  # fmt: skip
    assert command[:4] == [sys.executable, "-m", "services.cli.main", "plan"]
    args = build_parser().parse_args(command[3:])
    assert (args.protocol, args.seed, args.workers, args.time_limit, args.trials) == (
        "irect", 3, 2, 45.0, None
    )
    args = build_parser().parse_args(
        plan_command(tmp_path, "ect", 0, tmp_path, workers=1, time_limit_s=None, trials=300)[3:]
    )
    assert (args.time_limit, args.trials, args.islands) == (None, 300, False)
    islands = plan_command(tmp_path, "ect", 0, tmp_path, workers=2, time_limit_s=45.0,
                           trials=None, islands=True)  # fmt: skip
    assert build_parser().parse_args(islands[3:]).islands


def test_a_run_without_its_record_says_what_the_command_said(tmp_path: Path) -> None:
    run = read_run("c", "ect", 0, 3.0, 2, tmp_path, stderr="one\ntwo\nerror: no anatomy\n")
    assert not run.passed and "exit 2" in run.error and "error: no anatomy" in run.error


def test_a_run_reads_its_search_record(tmp_path: Path) -> None:
    doc = {"passed": True, "trials": {"run": 412}, "time_s": {"total": 30.5, "refine": None},
           "unmet": [{"id": "bladder_irreversible", "severity": "advisory"}],
           "best": {"score": 0.4375}, "refined": [{"trial": 3}, {"trial": 9}, {"trial": 1}]}
    (tmp_path / "search.json").write_text(json.dumps(doc))
    run = read_run("c", "irect", 1, 33.0, 0, tmp_path, stderr="")
    assert run.passed and run.trials == 412 and run.search_s == {"total": 30.5}
    assert run.unmet_required == [] and run.score == 0.4375 and run.refined == 3


def _run(case: str, seed: int, wall_s: float, passed: bool, unmet: list[str] | None = None
         ) -> Run:  # fmt: skip
    return Run(case, "ect", seed, wall_s, 0, passed=passed, trials=900,
               unmet_required=unmet or [])  # fmt: skip


def test_the_table_counts_passing_plans_within_the_target() -> None:
    runs = [_run("a", 0, 44.0, True), _run("a", 1, 50.5, True), _run("a", 2, 61.0, True),
            _run("b", 0, 52.0, False, ["target_reversible_coverage"])]  # fmt: skip
    text = table(runs, target_s=60.0)
    assert "2 of 4 runs returned a passing plan within 60 s" in text
    row_a = next(line for line in text.splitlines() if line.startswith("a "))
    assert "2/3" in row_a and "44.0-50.5" in row_a and "seed 2: 61.0 s" in row_a
    row_b = next(line for line in text.splitlines() if line.startswith("b "))
    assert "0/1" in row_b and "seed 0: fails target_reversible_coverage" in row_b
