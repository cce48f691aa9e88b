"""Plans go to the actor that holds their pair solutions; deterministic, one plan per actor."""

from __future__ import annotations

import pytest

from optimizer.evaluate.plan import Plan, PlanNeedle, PulsedPair
from services.planner.affinity import PairAffinity


def _plan(*xs: float) -> Plan:
    """Needles at x = xs (mm) on one line, each pulsed with the next."""
    needles = [PlanNeedle(tip_mm=(x, 0.0, 0.0), direction=(0.0, 0.0, 1.0), exposure_mm=20.0)
               for x in xs]  # fmt: skip
    pairs = [PulsedPair(anode=i, cathode=i + 1, voltage_V=1000.0, pulses=8,
                        pulse_length_us=100.0) for i in range(len(xs) - 1)]  # fmt: skip
    return Plan(protocol="ect", needles=needles, pairs=pairs)


def test_without_reuse_plans_are_dealt_out_in_order() -> None:
    affinity = PairAffinity()
    assert affinity.assign([_plan(0, 10), _plan(20, 30)], ["a", "b"]) == [0, 1]
    assert affinity.assign([_plan(0, 10)], ["a", "b", "c"]) == [0]


def test_a_plan_goes_to_the_actor_that_solved_its_pairs() -> None:
    affinity = PairAffinity()
    affinity.sent("b", _plan(0, 10, 20))
    affinity.sent("a", _plan(40, 50))
    # The first plan shares a pair with b's, the second one with a's.
    assert affinity.assign([_plan(0, 10, 30), _plan(40, 50, 60)], ["a", "b"]) == [1, 0]


def test_the_plan_that_reuses_most_is_placed_first() -> None:
    affinity = PairAffinity()
    affinity.sent("a", _plan(0, 10, 20, 30))
    affinity.sent("b", _plan(0, 10))
    # Plan 0 reuses one pair on either actor, plan 1 three pairs on a only: a goes to plan 1.
    assert affinity.assign([_plan(0, 10, 70), _plan(0, 10, 20, 30)], ["a", "b"]) == [1, 0]


def test_polarity_and_voltage_do_not_matter_but_geometry_does() -> None:
    affinity = PairAffinity()
    affinity.sent("a", _plan(0, 10))
    swapped = _plan(10, 0)
    assert affinity.hits("a", swapped) == 1
    assert affinity.hits("a", _plan(0, 11)) == 0


def test_the_warm_up_plan_is_held_by_every_actor_and_a_replacement_starts_empty() -> None:
    warm = _plan(0, 10)
    affinity = PairAffinity(warm)
    assert affinity.hits("a", warm) == affinity.hits("new", warm) == 1
    affinity.sent("a", _plan(20, 30))
    affinity.forget("a")
    assert affinity.hits("a", _plan(20, 30)) == 0
    assert affinity.hits("a", warm) == 1


def test_oldest_pairs_are_forgotten_beyond_the_cache_size() -> None:
    affinity = PairAffinity(remembered=2)
    for x in (0, 100, 200):
        affinity.sent("a", _plan(x, x + 10))
    assert affinity.hits("a", _plan(0, 10)) == 0
    assert affinity.hits("a", _plan(200, 210)) == 1


def test_more_plans_than_actors_is_refused() -> None:
    with pytest.raises(ValueError, match="2 plans for 1 actors"):
        PairAffinity().assign([_plan(0, 10), _plan(20, 30)], ["a"])
