"""One call from solved pair fields to metrics and criteria: what the CLI and report consume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.structures import Anatomy
from optimizer.evaluate.criteria import CriterionResult, all_required_pass, evaluate_criteria
from optimizer.evaluate.exposure import Exposure
from optimizer.evaluate.metrics import compute_metrics
from optimizer.evaluate.plan import Plan
from optimizer.evaluate.protocol import Protocol
from optimizer.tissue.kill import KillModels
from optimizer.tissue.table import TissueTable

EVALUATION_SCHEMA = "ectplan.evaluation/1"


@dataclass(frozen=True)
class PlanEvaluation:
    plan: Plan
    protocol: Protocol
    metrics: dict[str, Any]
    results: list[CriterionResult]

    @property
    def passed(self) -> bool:
        """All required criteria and limits pass (not-applicable ones are ignored)."""
        return all_required_pass(self.results)

    @property
    def failures(self) -> list[CriterionResult]:
        return [r for r in self.results if r.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": EVALUATION_SCHEMA,
            "plan_name": self.plan.name,
            "protocol": self.protocol.name,
            "modality": self.protocol.modality.value,
            "passed": self.passed,
            "failed_required": [r.id for r in self.failures if r.severity == "required"],
            "criteria": [r.to_dict() for r in self.results],
            "metrics": self.metrics,
        }


def evaluate_plan(
    plan: Plan,
    protocol: Protocol,
    anatomy: Anatomy,
    fields_V_per_cm: Sequence[npt.NDArray[np.float32]],
    currents_A: Sequence[float] | None = None,
    *,
    table: TissueTable | None = None,
    kill_models: KillModels | None = None,
    metrics_detail: str = "full",
) -> PlanEvaluation:
    """Metrics and criteria of ``plan`` from its pairs' solved |E| (V/cm) and currents (A).

    Each pair's repetition rate is that of the protocol's default train closest in pulse count.
    ``metrics_detail="search"``: only the metrics a search ranks by (``compute_metrics``).
    """
    rates = [protocol.pulses.train_for(p.pulses).repetition_rate_Hz for p in plan.pairs]
    exposure = Exposure.from_plan(
        plan, anatomy, fields_V_per_cm, currents_A, repetition_rates_Hz=rates, table=table,
        kill_models=kill_models,
    )  # fmt: skip
    return PlanEvaluation(
        plan, protocol, compute_metrics(exposure, detail=metrics_detail),
        evaluate_criteria(protocol, exposure, plan),
    )
