"""EvaluatePlan: an edited plan scored on an uploaded anatomy, reusing cached pair solutions."""

from __future__ import annotations

import json

from optimizer.evaluate.plan import Plan
from services.front.client import FrontClient
from services.front.gen.ectplan.v1 import evaluation_service_pb2, plan_pb2
from tests.evaluate.cases import lesion_anatomy, move_needle, square_plan

# The lesion case on its 2 mm grid: four needles, six pairs; constant conductivity keeps the
# solves short (the cache works alike for sigma(E), one entry per pair and voltage).
SPACING_MM = 2.0


def test_moving_one_needle_solves_only_its_pairs(client: FrontClient):
    anatomy_id = client.upload_anatomy(lesion_anatomy(spacing_mm=2.0)).anatomy_id
    plan = square_plan("ect", 1000.0, 8)
    first = client.evaluate(anatomy_id, plan, grid_spacing_mm=SPACING_MM, linear=True)
    assert (first.solved_pairs, first.reused_pairs) == (6, 0)
    moved = move_needle(plan, 0, (2.0, 0.0, 0.0))
    second = client.evaluate(anatomy_id, moved, grid_spacing_mm=SPACING_MM, linear=True)
    # Needle 0 is in three of the six pairs: only those are solved again.
    assert (second.solved_pairs, second.reused_pairs) == (3, 3)
    again = client.evaluate(anatomy_id, moved, grid_spacing_mm=SPACING_MM, linear=True)
    assert (again.solved_pairs, again.reused_pairs) == (0, 6)
    assert again.evaluation.SerializeToString() == second.evaluation.SerializeToString()
    assert Plan.from_json(second.plan_json).needles[0].tip_mm == moved.needles[0].tip_mm


def test_evaluation_reports_criteria_metrics_and_modelled_organs(client: FrontClient):
    anatomy_id = client.upload_anatomy(lesion_anatomy(spacing_mm=2.0)).anatomy_id
    response = client.evaluate(
        anatomy_id, square_plan("ect", 1000.0, 8), grid_spacing_mm=SPACING_MM, linear=True
    )
    assert response.reused_pairs == 6  # the evaluator of the test above, still cached
    evaluation = response.evaluation
    assert evaluation.fidelity == "linear"
    ids = {c.id for c in evaluation.criteria}
    assert "insertion_paths" in ids and evaluation.criteria_applicable > 0
    assert "rectal_wall" in evaluation.modelled_structures
    metrics = json.loads(evaluation.metrics_json)
    assert "lesion" in metrics["structures"]
    assert evaluation.passed == (not evaluation.failed_required)
    statuses = {c.id: c.status for c in evaluation.criteria}
    assert all(statuses[i] == plan_pb2.CRITERION_STATUS_FAIL for i in evaluation.failed_required)


def test_a_plan_given_as_json_with_sigma_of_e(client: FrontClient):
    anatomy_id = client.upload_anatomy(lesion_anatomy(spacing_mm=2.0)).anatomy_id
    square = square_plan("ire", 1500.0, 90)
    plan = square.model_copy(update={"needles": square.needles[:2], "pairs": square.pairs[:1]})
    response = client.evaluation.EvaluatePlan(
        evaluation_service_pb2.EvaluatePlanRequest(
            anatomy_id=anatomy_id, plan_json=plan.to_json(), grid_spacing_mm=SPACING_MM
        ),
        timeout=300,
    )
    assert response.evaluation.fidelity == "fine"  # sigma(E), the default
    assert (response.solved_pairs, response.reused_pairs) == (1, 0)
    assert {c.id for c in response.evaluation.criteria} >= {"insertion_paths"}
