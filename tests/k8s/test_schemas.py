"""The rendered resources against the schemas: Kubernetes' own for core kinds (offline, from the
kubernetes-validate package), ours for KubeRay's (tests/k8s/kuberay_schema.py). A misspelled
field must fail in both."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.k8s.core_schema import core_errors, kubernetes_versions
from tests.k8s.kuberay_schema import kuberay_errors
from tests.k8s.manifests import BATCH, Doc, find, overlay, render

KUBERAY_KINDS = ("RayCluster", "RayJob")


def _versions() -> tuple[str, ...]:
    return kubernetes_versions()


def test_core_resources_validate_against_kubernetes(docs: list[Doc]) -> None:
    core = [d for d in docs if d["kind"] not in KUBERAY_KINDS]
    assert len(core) >= 15
    for version in _versions():
        for d in core:
            problem = core_errors(d, version)
            assert problem is None, f"Kubernetes {version}: {problem}"


@pytest.mark.parametrize(
    ("kind", "name", "path", "field"),
    [
        ("Deployment", "ectplan-front", ["spec"], "replica"),
        (
            "Deployment",
            "ectplan-front",
            ["spec", "template", "spec", "containers", 0],
            "readinessProbes",
        ),
        ("NetworkPolicy", "ectplan-front", ["spec", "ingress", 0], "form"),
        ("HorizontalPodAutoscaler", "ectplan-front", ["spec"], "maxReplica"),
        ("PodDisruptionBudget", "ectplan-ray-head", ["spec"], "maxUnavaliable"),
        (
            "StatefulSet",
            "ectplan-postgres",
            ["spec", "volumeClaimTemplates", 0, "spec"],
            "storageClass",
        ),
    ],
)
def test_a_misspelled_core_field_is_rejected(
    kind: str, name: str, path: list[object], field: str
) -> None:
    doc = copy.deepcopy(find(overlay("dev"), kind, name))
    target: Any = doc
    for key in path:
        target = target[key]
    target[field] = 1
    problem = core_errors(doc, _versions()[0])
    assert problem is not None and repr(field) in problem


def test_ray_cluster_and_ray_job_validate_against_the_kuberay_fields(
    docs: list[Doc], batch_docs: list[Doc]
) -> None:
    for version in _versions():
        assert kuberay_errors(find(docs, "RayCluster"), version) == []
        assert kuberay_errors(find(batch_docs, "RayJob"), version) == []


def _cluster() -> Doc:
    return copy.deepcopy(find(overlay("prod"), "RayCluster"))


def _job() -> Doc:
    return copy.deepcopy(find(render(BATCH), "RayJob"))


def _set(doc: Doc, path: list[object], value: object) -> Doc:
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("make", "path", "expected"),
    [
        # Misspelled KubeRay fields, at each level.
        (_cluster, ["spec", "rayVerison"], "rayVerison"),
        (_cluster, ["spec", "autoscalerOptions", "idleTimeoutSecond"], "idleTimeoutSecond"),
        (_cluster, ["spec", "workerGroupSpecs", 0, "minReplica"], "minReplica"),
        (_cluster, ["spec", "headGroupSpec", "rayStartParam"], "rayStartParam"),
        (_cluster, ["spec", "authOptions", "secret"], "secret"),
        (_job, ["spec", "clusterSelectors"], "clusterSelectors"),
        (_job, ["spec", "submitterConfig", "backoffLimits"], "backoffLimits"),
        # Misspelled Kubernetes fields inside KubeRay objects.
        (
            _cluster,
            ["spec", "workerGroupSpecs", 1, "template", "spec", "tolerations", 0, "efect"],
            "efect",
        ),
        (
            _cluster,
            ["spec", "headGroupSpec", "template", "spec", "containers", 0, "volumeMount"],
            "volumeMount",
        ),
        (_job, ["spec", "submitterPodTemplate", "spec", "restartPolicyy"], "restartPolicyy"),
        (
            _cluster,
            ["spec", "autoscalerOptions", "securityContext", "runAsNonroot"],
            "runAsNonroot",
        ),
    ],
)
def test_a_misspelled_kuberay_field_is_rejected(make, path, expected) -> None:
    errors = kuberay_errors(_set(make(), path, True), _versions()[0])
    assert errors and any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    ("make", "path", "value", "expected"),
    [
        # rayStartParams are strings in the CRD: an unquoted YAML number is not.
        (_cluster, ["spec", "headGroupSpec", "rayStartParams", "num-cpus"], 0, "string"),
        (_cluster, ["spec", "workerGroupSpecs", 0, "maxReplicas"], "20", "integer"),
        (_cluster, ["spec", "workerGroupSpecs", 0, "minReplicas"], 30, "maxReplicas"),
        (_cluster, ["spec", "autoscalerOptions", "upscalingMode"], "Fast", "Conservative"),
        (_cluster, ["spec", "rayVersion"], "2.50.0", "2.52.0"),
        (_cluster, ["metadata", "name"], "Ectplan_Ray", "DNS-1035"),
        (_job, ["spec", "clusterSelector"], {}, "rayClusterSpec or clusterSelector"),
        (_job, ["spec", "shutdownAfterJobFinishes"], True, "borrows"),
        (_job, ["spec", "activeDeadlineSeconds"], 0, "greater than or equal to 1"),
    ],
)
def test_values_kuberay_refuses_are_rejected(make, path, value, expected) -> None:
    errors = kuberay_errors(_set(make(), path, value), _versions()[0])
    assert errors and any(expected in e for e in errors), errors
