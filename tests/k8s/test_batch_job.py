"""The plan-library RayJob: its entrypoint is an ``ectplan batch`` command line the real parser
accepts, its paths are the head's and workers' volumes, and its variables survive the two
shells between the manifest and the head (KubeRay's submitter, then Ray's job supervisor)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.main import build_parser
from tests.k8s.manifests import Doc, env_map, find, overlay, worker_group

STORAGE_ENV = "ECTPLAN_STORAGE_URL"
PRINT_ARGS = f"{shlex.quote(sys.executable)} -c 'import json,sys; print(json.dumps(sys.argv[1:]))'"


def _job(batch_docs: list[Doc]) -> Doc:
    return find(batch_docs, "RayJob")


def _head_argv(entrypoint: str, tmp_path: Path, head_env: dict[str, str]) -> list[str]:
    """What the batch driver receives on the head, by the same route as in the cluster.

    1. KubeRay's submitter runs ``bash -c "... ray job submit ... -- <entrypoint> ; ..."``
       (controllers/ray/common/job.go): the entrypoint is pasted into a bash command line.
    2. ``ray job submit`` joins its arguments with subprocess.list2cmdline and the job
       supervisor on the head runs that string with ``shell=True``.
    """
    fake_ray = f'ray() {{ {PRINT_ARGS} "$@"; }}'
    submitter = f"{fake_ray}; ray job submit --address http://head:8265 -- {entrypoint} ;"
    # The submitter pod has its own environment: nothing of the head's may leak in from it.
    first = subprocess.run(
        ["bash", "-c", submitter],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", STORAGE_ENV: "submitter-value"},
    )
    args = json.loads(first.stdout)
    command = subprocess.list2cmdline(args[args.index("--") + 1 :])
    fake = tmp_path / "bin" / "ectplan"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nexec {PRINT_ARGS} "$@"\n')
    fake.chmod(0o755)
    second = subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": f"{fake.parent}:/usr/bin:/bin", **head_env},
    )
    return [str(a) for a in json.loads(second.stdout)]


def test_the_entrypoint_reaches_the_head_with_the_heads_variables(
    batch_docs: list[Doc], tmp_path: Path
) -> None:
    entrypoint = _job(batch_docs)["spec"]["entrypoint"]
    url = "postgresql://ectplan:s3cret@ectplan-postgres:5432/ectplan"
    argv = _head_argv(entrypoint, tmp_path, {STORAGE_ENV: url})
    assert argv[0] == "batch"
    assert argv[argv.index("--storage") + 1] == url  # expanded on the head, not before
    # Every variable the entrypoint uses is one the head container defines.
    head = find(overlay("dev"), "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    defined = env_map(head["containers"][0])
    for name in {w.split("$", 1)[1].strip("{}") for w in entrypoint.split() if "$" in w}:
        assert name in defined, f"the entrypoint uses ${name}, which the head does not define"
    ref = defined[STORAGE_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ectplan-database", "key": "url"}


def test_the_entrypoint_is_an_ectplan_batch_command(batch_docs: list[Doc], tmp_path: Path) -> None:
    argv = _head_argv(_job(batch_docs)["spec"]["entrypoint"], tmp_path, {STORAGE_ENV: "url"})
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`ectplan {' '.join(argv)}` is refused by the ectplan command line")
    assert args.command == "batch"
    assert args.ray_address == "auto"  # the cluster the job runs on (Ray sets RAY_ADDRESS)
    assert args.trials and args.time_limit_per_case
    assert args.concurrency, "without --concurrency a batch never asks the autoscaler for more"


@pytest.mark.parametrize("overlay_name", ["dev", "prod"])
def test_batch_paths_are_the_clusters_volumes(
    batch_docs: list[Doc], tmp_path: Path, overlay_name: str
) -> None:
    job = _job(batch_docs)
    argv = _head_argv(job["spec"]["entrypoint"], tmp_path, {STORAGE_ENV: "url"})
    args = build_parser().parse_args(argv)
    cluster = find(overlay(overlay_name), "RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}

    def claims(spec: Doc) -> dict[str, tuple[str, bool]]:
        """mount path -> (claim, read-only) of the first container."""
        by_name = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        return {
            m["mountPath"]: (by_name[m["name"]], bool(m.get("readOnly")))
            for m in spec["containers"][0]["volumeMounts"]
            if m["name"] in by_name
        }

    head = claims(cluster["spec"]["headGroupSpec"]["template"]["spec"])
    # The driver on the head lists the cases and writes the library.
    assert head[args.input][0] == "ectplan-anatomy"
    library = str(Path(args.out).parent)
    assert head[library] == ("ectplan-library", False)
    # Each case's task loads its anatomy from the same path on whichever worker runs it.
    for group in ("cpu", "gpu"):
        mounted = claims(worker_group(cluster, group)["template"]["spec"])
        assert mounted[args.input] == ("ectplan-anatomy", True), group
    # The concurrency asks for no more cases than the CPU group can hold at its largest.
    cpu = worker_group(cluster, "cpu")
    capacity = cpu["maxReplicas"] * int(
        cpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    )
    if overlay_name == "prod":
        assert args.concurrency <= capacity
