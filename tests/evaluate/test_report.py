"""The plan's report: what the search said of the plan is among its notes, escaped."""

from __future__ import annotations

import html

from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import load_protocol
from optimizer.evaluate.report import write_evaluation_outputs
from optimizer.tissue.table import load_tissue_table
from tests.evaluate.cases import lesion_case, square_plan


def test_the_search_notes_are_in_the_report_and_only_when_given(tmp_path):
    case, protocol, table = lesion_case(spacing_mm=2.0), load_protocol("ect"), load_tissue_table()
    plan = square_plan("ect", 1100.0, 8, 5.0)
    evaluator = PlanEvaluator(case, protocol, nonlinear=False, table=table)
    evaluated = evaluator.evaluate_with_fields(plan)

    def report(folder: str, **kwargs) -> str:
        files = write_evaluation_outputs(
            evaluated, case, plan, protocol, table, tmp_path / folder, **kwargs
        )
        return files["report"].read_text()

    note = "voltage lowered to 88 % <of trial 9's> & kept"
    with_notes, without = report("a", search_notes=[note]), report("b")
    assert html.escape(f"search: {note}") in with_notes and note not in with_notes
    assert "search: " not in without
