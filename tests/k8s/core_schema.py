"""Kubernetes' own schemas, offline: the ``kubernetes-validate`` package ships the OpenAPI-derived
JSON schemas of every Kubernetes release; its strict variant also rejects unknown fields.

We check against the oldest Kubernetes we support (native gRPC probes are GA from 1.27; 1.30
is the oldest release still maintained by the big providers) and the newest the package knows.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

OLDEST_KUBERNETES = "1.30"
INSTALL_HINT = "pip install kubernetes-validate==1.37.0 (tests/k8s; .ci/run installs it)"


def _kv() -> Any:
    return pytest.importorskip("kubernetes_validate", reason=f"not installed: {INSTALL_HINT}")


@functools.cache
def kubernetes_versions() -> tuple[str, ...]:
    from kubernetes_validate import utils

    return (OLDEST_KUBERNETES, utils.major_minor(utils.latest_version()))


def core_errors(doc: dict[str, Any], version: str) -> str | None:
    """None when ``doc`` is valid for that Kubernetes version, else where and why it is not.

    A kind without a schema (a custom resource) is an error here: call it for core kinds only.
    """
    kv = _kv()
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(top level)"
        return f"{doc['kind']}/{doc['metadata'].get('name')}: {path}: {exc.message}"
    except kv.SchemaNotFoundError as exc:
        return str(exc.message)
    return None


def pod_template_errors(template: dict[str, Any], version: str) -> str | None:
    """Check a PodTemplateSpec (as embedded in a RayCluster or RayJob) with the core schema."""
    wrapper = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "embedded"},
        "template": template,
    }
    return core_errors(wrapper, version)


def container_fields_errors(fields: dict[str, Any], version: str) -> str | None:
    """Check container fields (resources, securityContext, env, ...) as they would sit in a
    container, e.g. the KubeRay autoscaler's options."""
    template = {"spec": {"containers": [{"name": "embedded", "image": "embedded", **fields}]}}
    return pod_template_errors(template, version)
