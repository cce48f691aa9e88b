"""Every overlay and the batch job render, with the resources, labels and pod hardening the
deployment promises (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

from tests.k8s.manifests import (
    K8S,
    Doc,
    find,
    find_all,
    overlay,
    pod_templates,
    render,
    require_renderer,
)

NAMESPACES = {"dev": "ectplan-dev", "prod": "ectplan"}
CLUSTER_SCOPED = {"Namespace"}
COMMON_KINDS = {
    "Namespace",
    "ServiceAccount",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "RayCluster",
    "NetworkPolicy",
}


def test_every_overlay_renders_with_its_parts(docs: list[Doc], overlay_name: str) -> None:
    kinds = {d["kind"] for d in docs}
    assert kinds >= COMMON_KINDS, f"missing: {COMMON_KINDS - kinds}"
    # dev runs its own PostgreSQL; prod uses an external one named by the secret.
    has_database = any(d["kind"] == "StatefulSet" for d in docs)
    assert has_database == (overlay_name == "dev")
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"]["namespace"] == NAMESPACES[overlay_name], d["metadata"]["name"]
    namespace = find(docs, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACES[overlay_name]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_batch_job_renders_alone(batch_docs: list[Doc]) -> None:
    assert [d["kind"] for d in batch_docs] == ["RayJob"]
    assert "namespace" not in batch_docs[0]["metadata"]  # the overlay's, given at create time


def test_no_secret_is_committed() -> None:
    require_renderer()
    for name in ("dev", "prod"):
        assert not find_all(overlay(name), "Secret")
    assert not find_all(render(K8S / "batch"), "Secret")
    for path in K8S.rglob("*.yaml"):
        text = path.read_text()
        assert "kind: Secret" not in text, f"{path}: secrets are created by hand, never committed"


def test_resources_and_pods_carry_the_recommended_labels(docs: list[Doc]) -> None:
    for d in docs:
        labels = d["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "ectplan", d["metadata"]["name"]
        assert labels.get("app.kubernetes.io/part-of") == "ectplan", d["metadata"]["name"]
        for t in pod_templates(d):
            assert t.labels.get("app.kubernetes.io/name") == "ectplan", t.where
            assert t.labels.get("app.kubernetes.io/component"), t.where


def _containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_pod_is_hardened_non_root_and_read_only(
    docs: list[Doc], batch_docs: list[Doc]
) -> None:
    templates = [t for d in [*docs, *batch_docs] for t in pod_templates(d)]
    assert len(templates) >= 5  # front, Ray head, CPU and GPU workers, submitter (+ database)
    for t in templates:
        pod = t.spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, t.where
        assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, t.where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", t.where
        tmp_volumes = {v["name"] for v in t.spec.get("volumes", []) if "emptyDir" in v}
        for c in _containers(t.spec):
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{t.where} {c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{t.where} {c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{t.where} {c['name']}"
            # A read-only root needs somewhere to write temporary files.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{t.where} {c['name']}: no /tmp emptyDir"
    cluster = find(docs, "RayCluster")
    options = cluster["spec"]["autoscalerOptions"]
    sc = options["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    head_volumes = cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    head_tmp = {v["name"] for v in head_volumes if "emptyDir" in v}
    assert {m["name"] for m in options["volumeMounts"] if m["mountPath"] == "/tmp"} <= head_tmp
    assert any(m["mountPath"] == "/tmp" for m in options["volumeMounts"])


def test_every_container_has_requests_and_limits(docs: list[Doc], batch_docs: list[Doc]) -> None:
    for d in [*docs, *batch_docs]:
        for t in pod_templates(d):
            for c in _containers(t.spec):
                resources = c.get("resources", {})
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(part, {})), (
                        f"{t.where} {c['name']}: {part}"
                    )


def test_only_the_ray_head_gets_a_service_account_token(
    docs: list[Doc], batch_docs: list[Doc]
) -> None:
    for d in [*docs, *batch_docs]:
        if d["kind"] == "ServiceAccount":
            assert d["automountServiceAccountToken"] is False, d["metadata"]["name"]
        for t in pod_templates(d):
            if t.labels["app.kubernetes.io/component"] == "ray-head":
                # KubeRay gives the head its own account: its autoscaler sidecar patches the
                # RayCluster through the API.
                assert "automountServiceAccountToken" not in t.spec, t.where
                assert "serviceAccountName" not in t.spec, t.where
                assert d["spec"]["enableInTreeAutoscaling"] is True
            else:
                assert t.spec.get("automountServiceAccountToken") is False, t.where


def test_every_yaml_file_is_used_by_a_kustomization() -> None:
    # A stray file under k8s/ would look deployed while it is not.
    require_renderer()
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        text = kustomization.read_text()
        for path in kustomization.parent.glob("**/*.yaml"):
            rel = path.relative_to(kustomization.parent).as_posix()
            if rel in text:
                listed.add(path.resolve())
    for path in K8S.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path.resolve() in listed, f"{path} is not used by any kustomization"
