"""Synthetic fine levels: a real coarse evaluation with required criteria set to pass or fail,
as the fine grid can judge a plan differently from the coarse one."""

from __future__ import annotations

import dataclasses

from optimizer.search.fidelity import plan_identity
from optimizer.search.objective import criterion_class


def passing_only(evaluate, keep: set[str]):
    """A fine level on which exactly the plans in ``keep`` pass: the others fail a required
    criterion (as the coarse grid's misjudged heat or organ sliver can on the fine one)."""

    def fine(plan):
        e = evaluate(plan)
        status = "pass" if plan_identity(plan) in keep else "fail"
        results = [
            dataclasses.replace(r, status=status) if r.severity == "required" else r
            for r in e.results
        ]
        return dataclasses.replace(e, results=results)

    return fine


def organ_limited(evaluate, max_V: float):
    """A fine level on which every required criterion passes, except one organ-at-risk
    criterion, which fails while any pair is above ``max_V``."""

    def fine(plan):
        e = evaluate(plan)
        organ = next(
            r.id for r in e.results
            if r.severity == "required" and r.status != "not_applicable"
            and criterion_class(r) == "organ_at_risk"
        )  # fmt: skip
        hot = max(p.voltage_V for p in plan.pairs) > max_V
        results = [
            dataclasses.replace(r, status="fail" if hot and r.id == organ else "pass")
            if r.severity == "required" and r.status != "not_applicable" else r
            for r in e.results
        ]  # fmt: skip
        return dataclasses.replace(e, results=results)

    return fine


def lowered_voltage_passes(evaluate, fraction: float = 0.93):
    """A fine level on which every plan fails one organ-at-risk criterion at the voltages it
    was first seen with, and passes everything once no pair is above ``fraction`` of them."""
    first_seen: dict[str, float] = {}

    def fine(plan):
        geometry = plan.model_dump_json(include={"needles"})
        top = max(p.voltage_V for p in plan.pairs)
        full = first_seen.setdefault(geometry, top)
        return organ_limited(evaluate, fraction * full)(plan)

    return fine
