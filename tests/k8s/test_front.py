"""The front's Deployment against the code it runs: every ECTPLAN_FRONT_* variable is one that
``ectplan serve`` reads, and ports, probes, volumes, secrets and the Ray address agree with
services/cli/serve_cmd.py, services/front and services/planner/cluster.py."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from services.cli import serve_cmd
from services.front import auth
from services.front.server import FrontConfig
from services.planner import cluster
from tests.k8s.manifests import Doc, container, env_map, find

SECRET_PLACEHOLDER = "from-a-secret"
# KubeRay's key in the token secret (ray-operator utils: RAY_AUTH_TOKEN_SECRET_KEY).
KUBERAY_TOKEN_KEY = "auth_token"
# services/front/server.py FrontServer.stop: searches get up to grace + 60 s to stop.
QUEUE_STOP_EXTRA_S = 60.0
AUTH_ENV = (auth.TOKENS_ENV, auth.TLS_CERT_ENV, auth.TLS_KEY_ENV, auth.TLS_CLIENT_CA_ENV)


def _front(docs: list[Doc]) -> tuple[Doc, Doc]:
    deployment = find(docs, "Deployment", "ectplan-front")
    spec = deployment["spec"]["template"]["spec"]
    return spec, container(spec, "front")


def _values(c: Doc) -> dict[str, str]:
    """The container's environment as the process sees it (secrets as a placeholder)."""
    return {name: e.get("value", SECRET_PLACEHOLDER) for name, e in env_map(c).items()}


def _parse(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> argparse.Namespace:
    for name in list(os.environ):
        if name.startswith(serve_cmd.ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    return parser.parse_args([])


def test_every_front_variable_is_read_by_ectplan_serve(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in _values(_front(docs)[1]).items() if k.startswith(serve_cmd.ENV_PREFIX)}
    assert len(env) >= 10
    defaults = vars(_parse(monkeypatch, {}))
    for name in env:
        if name in AUTH_ENV:
            continue  # read by services/front/auth.py when the flags are absent
        # A value no option has by default: a variable that is read changes the options or
        # is refused (not a number, ...); one that is ignored changes nothing.
        try:
            changed = vars(_parse(monkeypatch, {name: "ectplan-probe-value"}))
        except (SystemExit, ValueError):
            continue
        assert changed != defaults, f"{name} changes nothing: ectplan serve does not read it"


def test_the_front_configuration_builds_from_the_manifest(
    docs: list[Doc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, front = _front(docs)
    env = {k: v for k, v in _values(front).items() if k.startswith(serve_cmd.ENV_PREFIX)}
    mounts = {m["mountPath"]: m for m in front["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # Files the front reads must come from mounted secrets: recreate them under tmp_path.
    for name, value in list(env.items()):
        if value.startswith("/etc/ectplan/"):
            folder = str(Path(value).parent)
            assert folder in mounts and "secret" in volumes[mounts[folder]["name"]], name
            local = tmp_path / Path(value).relative_to("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("front-client 0123456789abcdef0123456789\n")
            env[name] = str(local)
    config = serve_cmd.config_from_args(_parse(monkeypatch, env))
    assert isinstance(config, FrontConfig)
    assert config.address == "0.0.0.0"
    assert config.runner == "ray"
    assert config.auth.enabled
    assert config.database_url == SECRET_PLACEHOLDER  # from the secret, never a literal
    assert (config.tls is not None) == (auth.TLS_CERT_ENV in env)
    assert config.data_dir.as_posix() in mounts
    data = volumes[mounts[config.data_dir.as_posix()]["name"]]
    assert "persistentVolumeClaim" in data  # uploads and studies outlive the pod
    assert config.metrics_address == "0.0.0.0" and config.metrics_port is not None


def test_ports_probes_and_services_agree_with_the_server(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, front = _front(docs)
    args = _parse(
        monkeypatch, {k: v for k, v in _values(front).items() if k.startswith(serve_cmd.ENV_PREFIX)}
    )
    ports = {p["name"]: p["containerPort"] for p in front["ports"]}
    assert ports["grpc"] == args.port
    assert ports["metrics"] == args.metrics_port
    tls = auth.TLS_CERT_ENV in env_map(front)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = front[probe]
        if tls:
            # Kubelet's gRPC probes cannot speak TLS: with TLS they must check the port.
            assert "grpc" not in spec and spec["tcpSocket"]["port"] in ("grpc", args.port)
        else:
            assert spec["grpc"]["port"] == args.port
            assert spec["grpc"].get("service", "") == ""  # the server-wide health status
    grpc_service = find(docs, "Service", "ectplan-front")
    assert [(p["port"], p["targetPort"]) for p in grpc_service["spec"]["ports"]] == [
        (args.port, "grpc")
    ]
    metrics_service = find(docs, "Service", "ectplan-front-metrics")
    assert metrics_service["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in metrics_service["spec"]["ports"]] == ["metrics"]


def test_the_front_reaches_ray_through_the_head_service(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, front = _front(docs)
    args = _parse(
        monkeypatch, {k: v for k, v in _values(front).items() if k.startswith(serve_cmd.ENV_PREFIX)}
    )
    ray_cluster = find(docs, "RayCluster")
    # KubeRay names the head service <cluster>-head-svc; Ray Client listens on 10001.
    head_service = f"{ray_cluster['metadata']['name']}-head-svc"
    assert args.ray_address == f"ray://{head_service}:{cluster.RAY_CLIENT_PORT}"
    host, port = cluster._host_port(args.ray_address) or ("", 0)
    assert (host, port) == (head_service, cluster.RAY_CLIENT_PORT)
    head = ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "client", "containerPort": cluster.RAY_CLIENT_PORT} in head["ports"]
    # Token authentication: the front sends the RayCluster's own token.
    env = env_map(front)
    assert env[cluster.AUTH_MODE_ENV]["value"] == "token"
    ref = env[cluster.AUTH_TOKEN_ENV]["valueFrom"]["secretKeyRef"]
    auth_options = ray_cluster["spec"]["authOptions"]
    assert auth_options["mode"] == "token"
    assert ref == {"name": auth_options["secretName"], "key": KUBERAY_TOKEN_KEY}


def test_one_front_replaced_only_after_it_drained(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = find(docs, "Deployment", "ectplan-front")
    spec, front = _front(docs)
    # A single writer (services/front/runner.py JobQueue.start re-queues every unfinished
    # job): never two fronts, not even during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    hpa = find(docs, "HorizontalPodAutoscaler", "ectplan-front")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ectplan-front",
    }
    assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1
    args = _parse(
        monkeypatch, {k: v for k, v in _values(front).items() if k.startswith(serve_cmd.ENV_PREFIX)}
    )
    # SIGTERM to SIGKILL must cover the drain: calls in flight, then searches stopping.
    assert spec["terminationGracePeriodSeconds"] > 2 * args.grace + QUEUE_STOP_EXTRA_S
    pdb = find(docs, "PodDisruptionBudget", "ectplan-front")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert find(docs, "Service", "ectplan-front")["spec"]["selector"] == selector


def test_front_and_batch_see_the_same_plan_libraries(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, front = _front(docs)
    args = _parse(
        monkeypatch, {k: v for k, v in _values(front).items() if k.startswith(serve_cmd.ENV_PREFIX)}
    )
    mounts = {m["mountPath"]: m for m in front["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    library = mounts[args.libraries_dir]
    assert library["readOnly"] is True
    claim = volumes[library["name"]]["persistentVolumeClaim"]["claimName"]
    head = find(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    head_claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in head["volumes"]
    }
    head_mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    written_at = [head_mounts[n] for n, c in head_claims.items() if c == claim]
    assert written_at == [args.libraries_dir]
