"""Who may talk to whom under the rendered NetworkPolicies: clients -> front -> Ray -> database,
DNS for everyone, and nothing else (tests/k8s/netpol.py evaluates the policies)."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import BATCH, Doc, find, find_all, pod_templates, render
from tests.k8s.netpol import Endpoint, External, Pod, Policies

CLIENT = External("203.0.113.7", "a planning UI on the internet")
INTERNET = External("198.51.100.20", "somewhere on the internet")
API_SERVER = External("172.18.0.2", "the Kubernetes API server")
MANAGED_DB = External("10.20.30.40", "a managed PostgreSQL")
DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, "cluster DNS")
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, "Prometheus")
OPERATOR = Pod("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"}, "KubeRay")
STRANGER = Pod("other-team", {"app": "something"}, "a pod of another namespace")

World = tuple[Policies, dict[str, Pod], Endpoint]
Path = tuple[Endpoint, Endpoint, int]

FRONT_GRPC, FRONT_METRICS = 50051, 9090
RAY_CLIENT, RAY_GCS, RAY_DASHBOARD, RAY_METRICS, RAY_WORKER_PORT = 10001, 6379, 8265, 8080, 12001
POSTGRES = 5432


def _pods(docs: list[Doc], namespace: str) -> dict[str, Pod]:
    """One pod per component, labelled as its template labels it."""
    pods: dict[str, Pod] = {}
    for d in docs:
        for t in pod_templates(d):
            component = t.labels["app.kubernetes.io/component"]
            pods.setdefault(component, Pod(namespace, dict(t.labels), component))
    return pods


@pytest.fixture
def world(docs: list[Doc], overlay_name: str) -> World:
    namespace = find(docs, "Namespace")["metadata"]["name"]
    pods = _pods([*docs, *render(BATCH)], namespace)
    assert {"front", "ray-head", "ray-worker", "batch-submitter"} <= set(pods)
    database: Endpoint = pods["database"] if overlay_name == "dev" else MANAGED_DB
    return Policies.of(docs), pods, database


def test_the_allowed_paths(world: World) -> None:
    policies, pods, database = world
    front, head, worker = pods["front"], pods["ray-head"], pods["ray-worker"]
    allowed: list[Path] = [
        (CLIENT, front, FRONT_GRPC),
        (PROMETHEUS, front, FRONT_METRICS),
        (front, head, RAY_CLIENT),
        (front, database, POSTGRES),
        (head, database, POSTGRES),
        (worker, database, POSTGRES),  # a batch case's study, opened where the case runs
        (head, worker, RAY_WORKER_PORT),
        (worker, head, RAY_GCS),
        (worker, worker, RAY_WORKER_PORT),
        (pods["batch-submitter"], head, RAY_DASHBOARD),
        (OPERATOR, head, RAY_DASHBOARD),
        (head, API_SERVER, 6443),  # the autoscaler sidecar
    ]
    for src, dst, port in allowed:
        assert policies.allows(src, dst, port), f"{src.name} -> {dst.name}:{port} is blocked"
    for pod in pods.values():
        assert policies.allows(pod, DNS, 53, "UDP"), f"{pod.name} cannot resolve names"


def test_everything_else_is_blocked(world: World) -> None:
    policies, pods, database = world
    front, head, worker = pods["front"], pods["ray-head"], pods["ray-worker"]
    blocked: list[Path] = [
        (CLIENT, front, FRONT_METRICS),
        (CLIENT, head, RAY_CLIENT),
        (CLIENT, head, RAY_DASHBOARD),
        (STRANGER, head, RAY_GCS),
        (STRANGER, front, FRONT_METRICS),
        (front, head, RAY_GCS),  # the front is no Ray node: Ray Client only
        (front, head, RAY_DASHBOARD),
        (front, worker, RAY_WORKER_PORT),
        (front, INTERNET, 443),
        (worker, INTERNET, 443),  # no usage statistics, no downloads
        (worker, API_SERVER, 443),
        (head, front, FRONT_GRPC),
        (pods["batch-submitter"], worker, RAY_WORKER_PORT),
        (pods["batch-submitter"], database, POSTGRES),
        (PROMETHEUS, head, RAY_METRICS),
    ]
    if "database" in pods:
        db = pods["database"]
        blocked += [
            (CLIENT, db, POSTGRES),
            (db, front, FRONT_GRPC),
            (db, INTERNET, 443),
            (pods["batch-submitter"], db, POSTGRES),
        ]
    else:
        blocked += [(front, MANAGED_DB, 443)]  # the managed database's port only
    for src, dst, port in blocked:
        assert not policies.allows(src, dst, port), f"{src.name} -> {dst.name}:{port} is open"


def test_every_pod_is_isolated_both_ways(docs: list[Doc]) -> None:
    deny = [
        p
        for p in find_all(docs, "NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
