"""The RayCluster against the code and the pins: Ray version, where work may run, threads,
autoscaling bounds, and the GPU group that stays empty unless asked for."""

from __future__ import annotations

import re
import tomllib

import ray

from services.planner import pool
from tests.k8s.manifests import REPO, Doc, env_map, find, worker_group

# A worker group's pods need this long at most to join before a search gives up on its actors
# (image pull, node start): only warm workers are safe for the front's searches.
COLD_START_BUDGET_S = pool.STARTUP_TIMEOUT_S


def pinned(package: str) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        found = re.match(rf"^{re.escape(package)}(\[[^\]]*\])?==(\S+)$", spec)
        if found:
            return found.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def _ray_containers(cluster: Doc) -> list[tuple[str, Doc]]:
    spec = cluster["spec"]
    out = [("head", spec["headGroupSpec"]["template"]["spec"]["containers"][0])]
    out += [
        (g["groupName"], g["template"]["spec"]["containers"][0]) for g in spec["workerGroupSpecs"]
    ]
    return out


def test_ray_version_is_the_pinned_one_everywhere(docs: list[Doc]) -> None:
    cluster = find(docs, "RayCluster")
    assert cluster["spec"]["rayVersion"] == pinned("ray") == ray.__version__
    # A new image replaces all Ray pods together: one Ray version per cluster.
    assert cluster["spec"]["upgradeStrategy"] == {"type": "Recreate"}


def test_nothing_is_scheduled_on_the_head(docs: list[Doc]) -> None:
    head = find(docs, "RayCluster")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "num-gpus" not in head["rayStartParams"]


def test_numba_threads_follow_each_pods_cpus(docs: list[Doc]) -> None:
    cluster = find(docs, "RayCluster")
    for group, c in _ray_containers(cluster):
        threads = env_map(c)["NUMBA_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
        assert threads["resource"] == "limits.cpu", group
        # KubeRay passes limits.cpu to `ray start --num-cpus`: requests = limits keeps the
        # CPUs Ray schedules on the CPUs the pod gets.
        assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"], group
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"], group
        # Egress is closed: Ray must not try to report usage statistics.
        assert env_map(c)["RAY_USAGE_STATS_ENABLED"]["value"] == "0", group


def test_autoscaling_bounds(docs: list[Doc]) -> None:
    cluster = find(docs, "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    assert options["version"] == "v2"  # per-group idle timeouts need autoscaler v2
    assert 60 <= options["idleTimeoutSeconds"] <= 1800
    cpu = worker_group(cluster, "cpu")
    assert 1 <= cpu["minReplicas"] <= cpu["replicas"] <= cpu["maxReplicas"], (
        f"keep a CPU worker warm: a search's actors must start within {COLD_START_BUDGET_S:.0f} s"
    )
    cpus = int(cpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cpus >= 1  # evaluator actors take one CPU each (services/planner/pool.py)


def test_gpu_workers_start_at_zero_and_ask_for_one_gpu(docs: list[Doc]) -> None:
    cluster = find(docs, "RayCluster")
    gpu = worker_group(cluster, "gpu")
    assert gpu["replicas"] == 0 and gpu["minReplicas"] == 0
    assert gpu["idleTimeoutSeconds"] < cluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"]
    c = gpu["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["image"].split(":")[0].endswith("ectplan-gpu")
    tolerations = gpu["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # The CPU group never asks for GPUs.
    cpu = worker_group(cluster, "cpu")["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_ray_head_is_protected_from_voluntary_eviction(docs: list[Doc]) -> None:
    pdb = find(docs, "PodDisruptionBudget", "ectplan-ray-head")
    head_labels = find(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["metadata"]
    assert pdb["spec"]["minAvailable"] == 1
    for key, value in pdb["spec"]["selector"]["matchLabels"].items():
        assert head_labels["labels"][key] == value
