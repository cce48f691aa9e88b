"""EvaluationService: score an edited plan in seconds, reusing cached pair solutions."""

from __future__ import annotations

import asyncio
import math

import grpc

from optimizer.anatomy.errors import AnatomyError
from optimizer.anatomy.target_scope import TARGET_SCOPES
from optimizer.evaluate.plan import PlanError
from optimizer.search.objective import score
from services.front.convert import evaluation_to_proto, plan_from_json, plan_from_proto
from services.front.errors import invalid, not_found
from services.front.gen.ectplan.v1 import (
    evaluation_service_pb2,
    evaluation_service_pb2_grpc,
    plan_pb2,
)
from services.front.logging import log_event
from services.front.servicers.common import unary
from services.front.state import FrontState
from services.front.validation import GRID_SPACING_RANGE_MM, resolve_protocol

DEFAULT_SPACING_MM = 1.0


class EvaluationServicer(evaluation_service_pb2_grpc.EvaluationServiceServicer):
    def __init__(self, state: FrontState) -> None:
        self.state = state

    @unary
    async def EvaluatePlan(
        self, request: evaluation_service_pb2.EvaluatePlanRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_service_pb2.EvaluatePlanResponse:
        state = self.state
        state.refuse_if_draining()
        source = request.WhichOneof("plan_source")
        if source == "plan":
            plan = plan_from_proto(request.plan, "plan")
        elif source == "plan_json":
            plan = plan_from_json(request.plan_json, "plan_json")
        else:
            raise invalid("plan", "give the plan (message or plan_json)")
        if request.HasField("protocol"):
            protocol = resolve_protocol(request.protocol)
        else:
            protocol = resolve_protocol(plan_pb2.ProtocolRef(name=plan.protocol), "plan.protocol")
        spacing = request.grid_spacing_mm or DEFAULT_SPACING_MM
        lo, hi = GRID_SPACING_RANGE_MM
        if not (math.isfinite(spacing) and lo <= spacing <= hi):
            raise invalid("grid_spacing_mm", f"must lie in {lo}..{hi} mm (0: 1 mm), got {spacing}")
        scope = request.target_scope or "auto"
        if scope not in TARGET_SCOPES:
            raise invalid(
                "target_scope", f"unknown {scope[:40]!r}; use one of {', '.join(TARGET_SCOPES)}"
            )
        if not await asyncio.to_thread(state.anatomies.has, request.anatomy_id):
            raise not_found("anatomy", request.anatomy_id, "upload it first with UploadAnatomy")
        try:
            evaluated, case = await state.run_evaluation(
                lambda: state.evaluators.evaluate(
                    request.anatomy_id,
                    plan,
                    protocol,
                    spacing_mm=spacing,
                    nonlinear=not request.linear,
                    target_scope=scope,
                )
            )
        except PlanError as exc:
            raise invalid("plan", str(exc)) from None
        except AnatomyError as exc:  # e.g. no gland to place the model organs around
            raise invalid("anatomy_id", f"this anatomy cannot be planned on: {exc}") from None
        state.metrics.evaluator_cache.set(len(state.evaluators))
        evaluation = evaluated.evaluation
        log_event(
            "plan evaluated",
            anatomy_id=request.anatomy_id,
            solved_pairs=evaluated.solved_pairs,
            reused_pairs=evaluated.reused_pairs,
            seconds=round(evaluated.seconds, 3),
        )
        return evaluation_service_pb2.EvaluatePlanResponse(
            evaluation=evaluation_to_proto(
                evaluation,
                score=score(evaluation).total,
                fidelity="fine" if not request.linear else "linear",
                modelled=case.modelled_structures,
            ),
            solved_pairs=evaluated.solved_pairs,
            reused_pairs=evaluated.reused_pairs,
            seconds=evaluated.seconds,
            plan_json=plan.to_json(),
        )
