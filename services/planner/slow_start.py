"""What a time-limited search says when its start-up took much of the limit.

A time limit bounds the whole search, start-up included, so a slow start leaves exploration
little time and the returned plan can be far worse than usual. The usual cause is a cold Numba
cache: each worker's warm-up compiles the field solver where the cache holds no build for it
(a new checkout, a new pod, another CPU). Measured on picai-10043 IRECT (ectplan plan
--time-limit 45, 2 workers, 2-core machine, 2026-11-28): in new cache directories 22 s of
start-up and 74 trials explored, and 28 s and 2 trials, neither returning a passing plan,
against 5-7 s of start-up and 380-580 trials once warm. The search cannot tell a cold cache
from a slow machine, so the note gives the figures and both remedies.
"""

from __future__ import annotations

# A start-up above this share of the time limit gets a note (a warm start-up on the 2-core
# machine takes 5-7 s of a 45 s limit, 11-16 %).
SLOW_START_SHARE = 0.25


def slow_start_note(
    time_limit_s: float | None,
    startup_s: float,
    warmup_s: float,
    explore_s: float,
    trials: int,
) -> str | None:
    """A note when ``startup_s`` (search start until the workers were ready) exceeds
    ``SLOW_START_SHARE`` of ``time_limit_s``; None otherwise or without a limit. ``warmup_s``:
    the slowest worker's warm-up (its first evaluations, which compile the solver)."""
    if time_limit_s is None or time_limit_s <= 0 or startup_s <= SLOW_START_SHARE * time_limit_s:
        return None
    warm_up = ""
    if warmup_s >= 0.5 * startup_s:
        warm_up = (
            f" ({warmup_s:.0f} s of it the workers' warm-up, which compiles the field solver "
            "where Numba's cache has no build for it yet: a new checkout or pod, another CPU)"
        )
    return (
        f"start-up took {startup_s:.0f} s of the {time_limit_s:g} s time limit{warm_up}, "
        f"leaving {explore_s:.0f} s to explore {trials} trials: the plan may be worse than "
        "a search with the same limit on a warm machine finds; run it again (the cache is "
        "then warm) or give a longer time limit"
    )
