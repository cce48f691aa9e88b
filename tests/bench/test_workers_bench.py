"""The throughput benchmark reads CPU time from /proc and reports the ratio of its medians."""

from __future__ import annotations

import os
import sys

import pytest

from bench.workers import Measure, _cpu_snapshot, common_window, table


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_cpu_snapshot_counts_this_process_and_the_machine() -> None:
    before = _cpu_snapshot([os.getpid()])
    sum(i * i for i in range(2_000_000))  # a little CPU work
    after = _cpu_snapshot([os.getpid()])
    assert before is not None and after is not None
    busy, total, own = (b - a for a, b in zip(before, after, strict=True))
    assert own > 0 and 0 <= busy <= total


def test_a_missing_process_gives_no_snapshot() -> None:
    assert _cpu_snapshot([2**22 + 12345]) is None


def _m(workers: int, rate: float, repeat: int, sharing: str = "on") -> Measure:
    return Measure(workers=workers, threads=1, mode="reproducible", sharing=sharing,
                   repeat=repeat, trials=300, explore_s=300 / rate, trials_per_s=rate,
                   mean_eval_ms=20.0, driver_cpu_ms_per_trial=4.0, solves_per_trial=0.9,
                   machine_cpu_ms_per_trial=30.0, workers_cpu_ms_per_trial=25.0,
                   idle_share=0.1)  # fmt: skip


def test_the_table_gives_the_ratio_of_median_throughputs() -> None:
    text = table([_m(1, 40.0, 0), _m(1, 44.0, 1), _m(1, 100.0, 2), _m(2, 60.0, 0),
                  _m(2, 66.0, 1), _m(2, 50.0, 0, "off"), _m(2, 52.0, 1, "off")])  # fmt: skip
    # 63 / 44 and 51 / 44
    assert "reproducible: 2 workers (sharing on) / 1 worker (1 thread each) = 1.43x" in text
    assert "reproducible: 2 workers (sharing off) / 1 worker (1 thread each) = 1.16x" in text
    assert "10%" in text and "0.90" in text


def test_independent_searches_count_only_while_all_explore() -> None:
    # The second search starts at 1.0 and the first ends at 3.0: 2 s, in which the first told
    # 2.0 and 3.0, the second 2.0 and 2.5 (its own start, 1.0, opens the window).
    assert common_window([[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 2.5, 4.0, 5.0]]) == (4, 2.0)
    assert common_window([[0.0, 1.0], [2.0, 3.0]]) == (0, 0.0)  # never side by side


def test_the_table_gives_the_ratio_of_independent_searches() -> None:
    one = _m(1, 80.0, 0)
    two = _m(2, 150.0, 0)
    independent = [
        Measure(**{**m.__dict__, "mode": "independent", "sharing": "-"}) for m in (one, two)
    ]
    text = table([one, two, *independent])
    assert "independent: 2 serial searches / 1 = 1.88x" in text
    assert "reproducible: 2 workers (sharing on) / 1 worker (1 thread each) = 1.88x" in text
