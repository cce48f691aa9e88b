"""The driver's fine confirmation: rounds and the voltage back-off run in parallel batches, and
the result replays exactly what ran. The fine level is evaluated in this process (a synthetic
one that a real case's solves would give only by chance); the Ray path is test_search's."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

from optimizer.evaluate.evaluation import PlanEvaluation
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.search.fidelity import Candidate, plan_identity
from optimizer.search.study import ask, tell
from services.planner.driver import DistributedSearch
from tests.search.fine_levels import lowered_voltage_passes, organ_limited, passing_only
from tests.services.planner.conftest import QUICK


class FineInProcess(DistributedSearch):
    """``DistributedSearch`` whose fine evaluations run here, batch by batch as sent."""

    def __init__(self, *args, fine: Callable[..., PlanEvaluation] | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fine_level = fine
        self.batches_sent: list[list[Candidate]] = []

    def _fine_evaluations(self, picked: Sequence[Candidate]) -> dict[str, PlanEvaluation | str]:
        self.batches_sent.append(list(picked))
        assert self.fine_level is not None
        return {plan_identity(c.plan): self.fine_level(c.plan) for c in picked}


def _explored(lesion, ect, make_fine, trials: int = 8) -> FineInProcess:
    """A search prepared and explored in this process (coarse evaluations told as the
    driver tells them), ready for ``_refine``; its fine level is ``make_fine`` of the coarse
    evaluation."""
    search = FineInProcess(lesion, ect, trials=trials, seed=0, refine_top_k=2, fine=None, **QUICK)
    search.prepare()
    coarse = PlanEvaluator(search.case_coarse, ect, nonlinear=False)
    search.fine_level = make_fine(coarse.evaluate)
    search.history = [
        tell(search.study, p, coarse.evaluate(p.plan), seconds=0.0)
        for p in ask(search.study, search.space, trials)
    ]
    search.pool = SimpleNamespace(alive=[SimpleNamespace(index=0)])  # rounds need a live worker
    search.started = time.monotonic()
    search.deadline = None
    search.cancel_event = threading.Event()
    search.on_progress = None
    return search


def test_rounds_then_a_lower_voltage_and_the_result_replays_them(lesion, ect):
    search = _explored(lesion, ect, lowered_voltage_passes)
    result = search._refine("trials")
    sent = search.batches_sent
    # Three rounds of two plans (none passes at full voltage), then the back-off ladder.
    assert [len(b) for b in sent] == [2, 2, 2, 4]
    assert {c.voltage_factor for b in sent[:3] for c in b} == {1.0}
    assert [c.voltage_factor for c in sent[3]] == [0.98, 0.95, 0.92, 0.88]
    assert result.passed and result.voltage_factor in (0.92, 0.88)
    assert any("lowered to" in n for n in result.notes)
    assert result.trial_number == sent[3][0].trial_number
    # The result holds exactly the plans that were evaluated: nothing asked twice or missed.
    assert sorted(plan_identity(r.candidate.plan) for r in result.refined) == sorted(
        plan_identity(c.plan) for b in sent for c in b
    )
    assert all(r.error is None for r in result.refined)


def test_no_back_off_when_a_plan_passes_or_when_the_failures_need_more_field(lesion, ect):
    passes = _explored(lesion, ect, lambda evaluate: organ_limited(evaluate, math.inf))
    first = passes._refine("trials")
    assert len(passes.batches_sent) == 1 and first.passed and first.voltage_factor == 1.0
    # Every required criterion failing (coverage among them): rounds only.
    failing = _explored(lesion, ect, lambda evaluate: passing_only(evaluate, set()))
    result = failing._refine("trials")
    assert [len(b) for b in failing.batches_sent] == [2, 2, 2]
    assert not result.passed and result.voltage_factor == 1.0
    assert len(result.refined) == 6 and all(r.error is None for r in result.refined)

