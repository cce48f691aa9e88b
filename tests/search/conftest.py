"""Shared search fixtures: one phantom case on the 2 mm grid and real evaluators on it."""

from __future__ import annotations

import optuna
import pytest

from optimizer.anatomy.phantom import make_phantom
from optimizer.case import PreparedCase, prepare_case
from optimizer.evaluate.evaluator import PlanEvaluator
from optimizer.evaluate.protocol import Protocol, load_protocol

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="session")
def phantom_case() -> PreparedCase:
    return prepare_case(make_phantom(seed=0), spacing_mm=2.0)


@pytest.fixture(scope="session")
def phantom_gland_case() -> PreparedCase:
    """The whole gland as target (the default scope plans the phantom's lesion alone)."""
    return prepare_case(make_phantom(seed=0), spacing_mm=2.0, target_scope="gland")


@pytest.fixture(scope="session")
def ect() -> Protocol:
    return load_protocol("ect")


@pytest.fixture(scope="session")
def irect() -> Protocol:
    return load_protocol("irect")


@pytest.fixture(scope="session")
def ect_coarse(phantom_case: PreparedCase, ect: Protocol) -> PlanEvaluator:
    """Linear conductivity, cached unit solutions: the exploration level."""
    return PlanEvaluator(phantom_case, ect, nonlinear=False)


@pytest.fixture(scope="session")
def ect_fine(phantom_case: PreparedCase, ect: Protocol) -> PlanEvaluator:
    """Nonlinear conductivity on the same 2 mm grid (the 1 mm grid is too slow for tests)."""
    return PlanEvaluator(phantom_case, ect, nonlinear=True)
