"""docs/operations.md tells how to create every secret the manifests reference, with every key
they read, and keeps the sections the operators rely on."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from tests.k8s.kuberay_schema import CLUSTER_SELECTOR_KEY
from tests.k8s.manifests import BATCH, REPO, Doc, find, overlay, pod_templates, render

OPERATIONS = REPO / "docs" / "operations.md"
# KubeRay's key in the Ray token secret (ray-operator utils: RAY_AUTH_TOKEN_SECRET_KEY).
KUBERAY_TOKEN_KEY = "auth_token"
TLS_SECRET_KEYS = {"tls.crt", "tls.key"}  # what `kubectl create secret tls` writes


def referenced_secrets(docs: list[Doc]) -> dict[str, set[str]]:
    """secret name -> keys the pods read (env references, and files read from secret mounts)."""
    found: dict[str, set[str]] = {}
    for d in docs:
        if d["kind"] == "RayCluster":
            auth = d["spec"].get("authOptions", {})
            if auth.get("secretName"):
                found.setdefault(auth["secretName"], set()).add(KUBERAY_TOKEN_KEY)
        for t in pod_templates(d):
            secret_volumes = {
                v["name"]: v["secret"]["secretName"]
                for v in t.spec.get("volumes", [])
                if "secret" in v
            }
            for c in t.spec["containers"]:
                mounts = {
                    m["mountPath"]: secret_volumes[m["name"]]
                    for m in c.get("volumeMounts", [])
                    if m["name"] in secret_volumes
                }
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        found.setdefault(ref["name"], set()).add(ref["key"])
                    value = PurePosixPath(e.get("value", "") or "/")
                    if str(value.parent) in mounts:
                        found.setdefault(mounts[str(value.parent)], set()).add(value.name)
                for secret in mounts.values():
                    found.setdefault(secret, set())
    return found


def create_commands() -> list[str]:
    """The `kubectl ... create secret ...` commands of the docs, continuation lines joined."""
    text = OPERATIONS.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if "create secret" in line]


def test_every_referenced_secret_has_a_documented_create_command() -> None:
    docs = [*overlay("dev"), *overlay("prod"), *render(BATCH)]
    secrets = referenced_secrets(docs)
    assert {
        "ectplan-database",
        "ectplan-ray-auth",
        "ectplan-front-tokens",
        "ectplan-front-tls",
    } <= set(secrets)
    commands = create_commands()
    for name, keys in secrets.items():
        mine = [c for c in commands if re.search(rf"create secret \w+ {re.escape(name)}\b", c)]
        assert mine, f"docs/operations.md does not say how to create secret {name}"
        for key in keys:
            documented = any(
                re.search(rf"--from-(literal|file)={re.escape(key)}=", c)
                or (key in TLS_SECRET_KEYS and "create secret tls" in c)
                for c in mine
            )
            assert documented, f"secret {name}: key {key} is not in its create command"


def test_the_operations_guide_keeps_its_sections() -> None:
    text = OPERATIONS.read_text()
    headings = set(re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE))
    for needed in (
        "Secrets",
        "Deploy",
        "Scaling",
        "What the KubeRay autoscaler does",
        "Upgrades without losing jobs",
        "TLS",
        "Backups",
        "Capacity (measured)",
    ):
        assert needed in headings, f"docs/operations.md lost its section {needed!r}"
    assert "research software" in text.lower()


def test_commands_in_the_guide_name_the_real_objects() -> None:
    text = OPERATIONS.read_text()
    dev = overlay("dev")
    cluster = find(dev, "RayCluster")["metadata"]["name"]
    assert f"ray.io/cluster={cluster}" in text and f"{cluster}-head-svc" in text
    assert find(render(BATCH), "RayJob")["spec"]["clusterSelector"][CLUSTER_SELECTOR_KEY] == cluster
    for kind, name in (
        ("Deployment", "ectplan-front"),
        ("PodDisruptionBudget", "ectplan-ray-head"),
        ("RayJob", "ectplan-batch"),
    ):
        source = render(BATCH) if kind == "RayJob" else dev
        assert find(source, kind, name)
        assert name in text
    for namespace in ("ectplan-dev", "ectplan"):
        assert f"-n {namespace} " in text or f"NS={namespace}" in text
