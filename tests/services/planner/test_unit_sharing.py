"""Pair solutions handed from one evaluator actor to another through Ray's object store."""

from __future__ import annotations

import ray

from services.planner.actors import CaseSpec, Reply
from services.planner.pool import WorkerPool
from services.planner.unit_sharing import SharedUnits
from tests.evaluate.cases import move_needle, square_plan
from tests.services.planner.conftest import LESION_MARGIN_MM


def test_the_driver_keeps_the_newest_solutions_within_its_budget(ray_cluster):
    unit_bytes = 1000
    shared = SharedUnits(max_bytes=3 * unit_bytes)
    a, b = ray.put({"a": 1}), ray.put({"b": 1})
    shared.add("actor 0", a, ["p1", "p2"], 2 * unit_bytes)
    shared.add("actor 1", b, ["p2", "p3"], 2 * unit_bytes)  # p2: the first solution is kept
    assert len(shared) == 3 and shared.bytes == 3 * unit_bytes
    assert shared.for_keys(["p2", "p3", "p9"]) == {"p2": a, "p3": b}
    shared.add("actor 1", b, ["p4"], unit_bytes)  # over budget: p1, used least lately, goes
    assert shared.for_keys(["p1", "p2", "p3", "p4"]) == {"p2": a, "p3": b, "p4": b}
    shared.forget_owner("actor 1")
    assert shared.for_keys(["p2", "p3", "p4"]) == {"p2": a}
    assert shared.bytes == unit_bytes and shared.handed == 6


def _criteria(reply: Reply) -> list[tuple[str, str, float]]:
    assert reply.evaluation is not None, reply.error
    return [(r.id, r.status, r.value) for r in reply.evaluation.results]


@ray.remote(num_cpus=0, max_retries=0)
def _lost_on_the_way() -> None:
    raise RuntimeError("the node holding this object went down")


def test_actors_hand_over_pair_solutions_and_solve_those_they_cannot_read(ray_cluster, lesion, ect):
    # One pool for both cases: a pool kept across tests would hold the CPUs the next test's
    # check waits for (tests/conftest.py).
    pool = WorkerPool(ray.put(lesion), ect, CaseSpec(2.0, 2.0, LESION_MARGIN_MM), workers=2)
    try:
        assert pool.wait_ready()
        solver, receiver = pool.workers
        plan = square_plan("ect", 1100.0, 8, 5.0)
        reply_ref, bundle = pool.submit_sharing(solver, plan, {})
        solved: Reply = ray.get(reply_ref)
        assert solved.solved_pairs == 6 and len(solved.bundled) == 6
        assert solved.bundled_bytes > 0
        reply_ref, second_bundle = pool.submit_sharing(
            receiver, plan, dict.fromkeys(solved.bundled, bundle)
        )
        received: Reply = ray.get(reply_ref)
        assert (received.solved_pairs, received.reused_pairs, received.adopted_pairs) == (0, 6, 6)
        assert received.bundled == () and ray.get(second_bundle) == {}
        assert _criteria(received) == _criteria(solved)

        # A solution that cannot be read (ray.get raises, as for a lost object): the plan is
        # evaluated all the same, the pairs it could not adopt solved where it runs.
        moved = move_needle(plan, 0, (-2.0, 0.0, 0.0))
        reply_ref, _ = pool.submit_sharing(solver, moved, {})
        fresh: Reply = ray.get(reply_ref)
        assert len(fresh.bundled) == 3  # the pairs of the moved needle
        unreadable = _lost_on_the_way.remote()
        reply_ref, _ = pool.submit_sharing(
            receiver, moved, dict.fromkeys(fresh.bundled, unreadable)
        )
        reply: Reply = ray.get(reply_ref)
        assert (reply.solved_pairs, reply.adopted_pairs) == (3, 0)
        assert _criteria(reply) == _criteria(fresh)
    finally:
        pool.shutdown()
