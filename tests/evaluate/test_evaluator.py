"""The evaluator end to end on a lesion phantom: real solves, known good and bad plans."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.plan import PlanError
from optimizer.evaluate.protocol import load_protocol
from optimizer.tissue.thresholds import ThresholdTable
from tests.evaluate.cases import LESION_CENTRE_MM, lesion_case, move_needle, square_plan


@pytest.fixture(scope="module")
def case():
    return lesion_case(spacing_mm=1.0)


def required_failures(evaluation):
    return [r.id for r in evaluation.failures if r.severity == "required"]


def test_known_good_ect_plan_passes(case):
    evaluator = PlanEvaluator(case, load_protocol("ect"), nonlinear=True)
    evaluated = evaluator.evaluate_with_fields(square_plan("ect", 1100.0, 8, 5.0))
    assert evaluated.evaluation.passed, required_failures(evaluated.evaluation)
    coverage = next(r for r in evaluated.evaluation.results
                    if r.id == "target_reversible_coverage")
    assert coverage.value == pytest.approx(100.0)
    # sigma(E) raises the current above the intact-tissue value.
    linear = PlanEvaluator(case, load_protocol("ect"), nonlinear=False)
    linear_currents = [s.current_A for s in linear.evaluate_with_fields(
        square_plan("ect", 1100.0, 8, 5.0)).solutions]
    for nonlinear_solution, linear_current in zip(evaluated.solutions, linear_currents,
                                                  strict=True):
        assert nonlinear_solution.current_A > 1.1 * linear_current
        assert nonlinear_solution.picard_iterations >= 1


def test_known_good_ire_plan_passes_its_required_criteria(case):
    evaluator = PlanEvaluator(case, load_protocol("ire"), nonlinear=True)
    evaluation = evaluator.evaluate(square_plan("ire", 1500.0, 90, 5.0))
    assert evaluation.passed, required_failures(evaluation)
    # The adiabatic bound over a 90-pulse train is reported (advisory), not hidden.
    thermal = next(r for r in evaluation.results if r.id == "temperature_away_from_needles")
    assert thermal.severity == "advisory" and thermal.value is not None


def test_plan_next_to_the_rectum_fails_with_the_measured_margin(case):
    protocol = load_protocol("ect")
    evaluator = PlanEvaluator(case, protocol, nonlinear=False)
    rectum = case.planning["rectal_wall"]
    # Slide the square posteriorly until its posterior needles sit 3 mm from the rectal wall.
    wall_y = float(case.planning.grid.voxel_centres()[rectum.mask][:, 1].max())
    posterior_y = float(LESION_CENTRE_MM[1]) - 5.0
    plan = square_plan("ect", 1300.0, 8, 5.0, shift_mm=(-10.0, wall_y + 3.0 - posterior_y, 0.0))
    evaluated = evaluator.evaluate_with_fields(plan)
    result = next(r for r in evaluated.evaluation.results if r.id == "rectum_irreversible")
    assert result.status == "fail"
    # The margin is the limit minus the rectal-wall volume at or above muscle's E_irr(8).
    e_irr = ThresholdTable(evaluator.table).value("muscle", "e_irr", 8)
    hot = rectum.mask & (evaluated.field_max_V_per_cm >= e_irr)
    measured_ml = np.count_nonzero(hot) * case.planning.grid.voxel_volume_ml
    assert measured_ml > 0.01
    assert result.margin == pytest.approx(result.limit - measured_ml, rel=1e-6)


def test_moving_one_needle_resolves_only_its_pairs(case):
    evaluator = PlanEvaluator(case, load_protocol("ect"), nonlinear=False)
    plan = square_plan("ect", 1100.0, 8, 5.0)
    first = evaluator.evaluate_with_fields(plan)
    assert first.solved_pairs == 6
    moved = move_needle(plan, 0, (-1.0, 0.0, 0.0))
    again = evaluator.evaluate_with_fields(moved)
    assert (again.solved_pairs, again.reused_pairs) == (3, 3)
    # New voltages on the same geometry reuse the unit solutions: no solve at all.
    pairs = [p.model_copy(update={"voltage_V": 1.2 * p.voltage_V}) for p in moved.pairs]
    louder = moved.model_copy(update={"pairs": pairs})
    scaled = evaluator.evaluate_with_fields(louder)
    assert scaled.solved_pairs == 0
    for a, b in zip(again.solutions, scaled.solutions, strict=True):
        assert b.current_A == pytest.approx(1.2 * a.current_A, rel=1e-9)


def test_needle_outside_the_grid_is_refused_by_name(case):
    evaluator = PlanEvaluator(case, load_protocol("ect"), nonlinear=False)
    plan = move_needle(square_plan("ect", 1100.0, 8, 5.0), 2, (0.0, 0.0, 500.0))
    with pytest.raises(PlanError, match="needle 2"):
        evaluator.evaluate(plan)


def test_needle_through_an_organ_is_flagged_with_the_organ(case):
    evaluator = PlanEvaluator(case, load_protocol("ect"), nonlinear=False)
    urethra = case.planning["urethra"]
    point = case.planning.grid.voxel_centres()[urethra.mask].mean(axis=0)
    plan = square_plan("ect", 1100.0, 8, 5.0)
    offset = tuple(point - np.asarray(plan.needles[0].tip_mm) + np.array([0.0, 0.0, 3.0]))
    evaluation = evaluator.evaluate(move_needle(plan, 0, offset))
    paths = next(r for r in evaluation.results if r.id == "insertion_paths")
    assert paths.status == "fail"
    assert "urethra" in paths.description and "needle 0" in paths.description


def test_an_exploration_evaluator_computes_the_search_metrics_with_the_same_criteria(case):
    plan = square_plan("ect", 1100.0, 8, 5.0)
    full = PlanEvaluator(case, load_protocol("ect"), nonlinear=False).evaluate(plan)
    lean = PlanEvaluator(
        case, load_protocol("ect"), nonlinear=False, metrics_detail="search"
    ).evaluate(plan)
    assert lean.metrics["detail"] == "search"
    for name, structure in lean.metrics["structures"].items():
        assert "field_volume_histogram_fraction" not in structure, name
        assert "field_volume_histogram_fraction" in full.metrics["structures"][name], name
    assert lean.metrics["totals"] == full.metrics["totals"]
    assert [r.to_dict() for r in lean.results] == [r.to_dict() for r in full.results]
    with pytest.raises(ValueError, match="metrics_detail"):
        PlanEvaluator(case, load_protocol("ect"), metrics_detail="brief")


def test_each_needle_is_voxelised_once_and_the_results_match_a_fresh_evaluator(
    case, monkeypatch
):
    import optimizer.evaluate.evaluator as evaluator_module

    calls: list[object] = []
    real_voxelise = evaluator_module.voxelise

    def counting(needle, grid):
        calls.append(needle)
        return real_voxelise(needle, grid)

    monkeypatch.setattr(evaluator_module, "voxelise", counting)
    warm = PlanEvaluator(case, load_protocol("ect"), nonlinear=False)
    plan = square_plan("ect", 1100.0, 8, 5.0)
    warm.evaluate(plan)
    assert len(calls) == 4  # four needles, six pairs: each needle voxelised once
    moved = move_needle(plan, 0, (-1.0, 0.0, 0.0))
    warm_result = warm.evaluate(moved)
    assert len(calls) == 5  # only the moved needle is new
    fresh_result = PlanEvaluator(case, load_protocol("ect"), nonlinear=False).evaluate(moved)
    assert [(r.id, r.status, r.value) for r in warm_result.results] == [
        (r.id, r.status, r.value) for r in fresh_result.results
    ]


def test_a_unit_solution_adopted_from_another_evaluator_is_a_cache_hit(case):
    solver_side = PlanEvaluator(case, load_protocol("ect"), nonlinear=False)
    plan = square_plan("ect", 1100.0, 8, 5.0)
    solved = solver_side.evaluate_with_fields(plan)
    assert len(solved.solved_units) == 6
    receiver = PlanEvaluator(case, load_protocol("ect"), nonlinear=False)
    for key in solved.solved_units:
        unit = solver_side.cached_unit(key)
        assert unit is not None and receiver.adopt_unit(key, unit)
    assert not receiver.adopt_unit(key, unit)  # held already: kept as it is
    again = receiver.evaluate_with_fields(plan)
    assert (again.solved_pairs, again.reused_pairs, again.solved_units) == (0, 6, ())
    assert receiver.cache_info()["adopted"] == 6
    for a, b in zip(solved.solutions, again.solutions, strict=True):
        np.testing.assert_array_equal(a.field_V_per_cm, b.field_V_per_cm)
