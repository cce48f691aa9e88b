"""Fixtures of the manifest tests: each rendered overlay once per session, and the batch job."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import BATCH, OVERLAYS, Doc, overlay, render


@pytest.fixture(params=OVERLAYS)
def overlay_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docs(overlay_name: str) -> list[Doc]:
    return overlay(overlay_name)


@pytest.fixture
def batch_docs() -> list[Doc]:
    return render(BATCH)
