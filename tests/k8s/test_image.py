"""The Dockerfile against the manifests and the project: one image, the pinned Python and Ray,
the user, ports, command and writable paths the pods expect (read statically: no docker here)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from typing import Any

from services.cli import serve_cmd
from services.cli.main import build_parser
from tests.k8s.manifests import REPO, Doc, container, find, pod_templates
from tests.k8s.test_ray import pinned

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args() -> dict[str, str]:
    found = {}
    for word, rest in _instructions():
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            found[name] = value.strip('"')
    return found


def _env() -> dict[str, str]:
    found: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                found[name] = value
    return found


def _project() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _ectplan_containers(docs: list[Doc]) -> list[tuple[str, Doc, Doc]]:
    out = []
    for d in docs:
        for t in pod_templates(d):
            for c in t.spec["containers"]:
                if c["image"].split(":")[0].split("/")[-1] in ("ectplan", "ectplan-gpu"):
                    out.append((f"{t.where} {c['name']}", t.spec, c))
    return out


def test_the_image_runs_the_pinned_python() -> None:
    requires = str(_project()["requires-python"])
    lower = re.search(r">=\s*(\d+\.\d+)", requires)
    assert lower is not None
    assert _args()["PYTHON_VERSION"] == lower.group(1)
    stages = [rest for word, rest in _instructions() if word == "FROM"]
    assert len(stages) == 2
    assert all(s.split()[0] == "python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}" for s in stages)


def test_the_image_installs_this_repository_with_its_pins() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the image must `pip install .` the repo"
    copied = {
        source
        for word, rest in _instructions()
        if word == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    project = _project()
    needed = {"pyproject.toml", str(project["readme"])}
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed |= {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    assert needed <= copied, f"not copied into the build: {needed - copied}"
    ignored = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for path in needed:
        assert not any(fnmatch.fnmatch(path, p) for p in ignored), f".dockerignore drops {path}"
    assert ".venv" in ignored and ".git" in ignored


def test_the_gpu_variant_pins_numba_cuda() -> None:
    args = _args()
    assert args["GPU"] == "false"
    assert re.fullmatch(r"numba-cuda\[cu1[23]\]==\d+\.\d+\.\d+", args["NUMBA_CUDA"])
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    # Installed under the constraints of the CPU install: numba and numpy keep their pins.
    assert '--constraint /opt/ectplan/constraints.txt "$NUMBA_CUDA"' in runs


def test_image_names_and_tags_match_the_project_version(
    docs: list[Doc], batch_docs: list[Doc]
) -> None:
    version = str(_project()["version"])
    found = _ectplan_containers([*docs, *batch_docs])
    assert len(found) >= 5
    for where, _, c in found:
        assert c["image"].rsplit(":", 1)[-1] == version, where
    for d in docs:
        assert d["metadata"]["labels"].get("app.kubernetes.io/version", version) == version


def test_pods_run_as_the_image_user_with_writable_caches(
    docs: list[Doc], batch_docs: list[Doc]
) -> None:
    user = next(rest for word, rest in _instructions() if word == "USER")
    uid, gid = (int(x) for x in user.split(":"))
    env = _env()
    assert "/opt/ectplan/bin" in env["PATH"].split(":")[0]
    writable = [env["NUMBA_CACHE_DIR"], env["MPLCONFIGDIR"]]
    for where, pod, c in _ectplan_containers([*docs, *batch_docs]):
        assert pod["securityContext"]["runAsUser"] == uid, where
        assert pod["securityContext"]["runAsGroup"] == gid, where
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        mounts = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in empty_dirs]
        for path in writable:
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (
                f"{where}: {path} is not on a writable volume"
            )


def test_the_image_command_and_ports_are_the_fronts(docs: list[Doc]) -> None:
    front = container(
        find(docs, "Deployment", "ectplan-front")["spec"]["template"]["spec"], "front"
    )
    cmd = json.loads(next(rest for word, rest in _instructions() if word == "CMD"))
    assert cmd == front["command"]
    assert cmd[0] in _project()["scripts"]
    assert build_parser().parse_args(cmd[1:]).handler is serve_cmd.run
    exposed = {int(p) for word, rest in _instructions() if word == "EXPOSE" for p in rest.split()}
    ports = {p["containerPort"] for p in front["ports"]}
    head = find(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports |= {p["containerPort"] for p in head["ports"]}
    assert ports <= exposed, f"not exposed: {ports - exposed}"


def test_ray_containers_have_what_kuberay_runs() -> None:
    # KubeRay starts Ray with `/bin/bash -c -- "ulimit -n ...; ray start ..."`, probes it over
    # HTTP (Ray >= 2.53) and has the RayJob submitter run `ray job submit` after waiting with
    # `python -c ...`: bash is in the slim image, ray and python in the virtual environment
    # first on PATH, and ray[default] brings the dashboard that serves the job API.
    assert _env()["PATH"].startswith("/opt/ectplan/bin:")
    deps = [str(d) for d in _project()["dependencies"]]
    assert f"ray[default]=={pinned('ray')}" in deps
