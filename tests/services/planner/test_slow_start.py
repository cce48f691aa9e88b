"""A time-limited search whose start-up took much of its limit says so, with its figures."""

from __future__ import annotations

import pytest

from services.planner.slow_start import SLOW_START_SHARE, slow_start_note


@pytest.mark.parametrize("limit", [None, 0.0])
def test_without_a_time_limit_there_is_no_note(limit):
    assert slow_start_note(limit, 60.0, 50.0, 1.0, 3) is None


def test_a_usual_start_up_gets_no_note():
    assert slow_start_note(45.0, SLOW_START_SHARE * 45.0, 5.0, 20.0, 600) is None


def test_a_cold_compile_is_named_with_the_figures():
    note = slow_start_note(45.0, 22.1, 17.4, 5.4, 74)
    assert note is not None
    assert note.startswith("start-up took 22 s of the 45 s time limit (17 s of it the workers'")
    assert "compiles the field solver" in note
    assert "leaving 5 s to explore 74 trials" in note
    assert note.endswith("run it again (the cache is then warm) or give a longer time limit")


def test_a_slow_start_that_is_not_the_warm_up_does_not_blame_the_compiles():
    note = slow_start_note(20.0, 12.0, 2.0, 4.0, 30)
    assert note is not None and "compiles" not in note
    assert note.startswith("start-up took 12 s of the 20 s time limit, leaving 4 s")
