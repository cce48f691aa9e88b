"""Bearer tokens, TLS and mutual TLS, on real servers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.front.auth import AuthConfigError, TlsConfig, TokenAuth
from services.front.client import FrontClient
from services.front.server import BackgroundServer
from tests.services.front.conftest import make_config

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"


@pytest.fixture(scope="module")
def token_front(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("auth")
    tokens = folder / "tokens.txt"
    tokens.write_text(f"# client token\nalice {ALICE}\nbob {BOB}\n")
    cfg = make_config(folder / "data", auth=TokenAuth.load(tokens, env={}))
    with BackgroundServer(cfg) as server:
        yield server


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abcdef", ALICE[:-1], ""])
def test_calls_without_a_valid_token_are_unauthenticated(token_front, token):
    with FrontClient(token_front.target, token=token) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.list()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            list(client.watch("job-x", timeout_s=5))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Probes need no token.
        health = health_pb2_grpc.HealthStub(client.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )


def test_clients_see_only_their_own_jobs(token_front, phantom):
    with (
        FrontClient(token_front.target, token=ALICE) as alice,
        FrontClient(token_front.target, token=BOB) as bob,
    ):
        anatomy_id = alice.upload_anatomy(phantom).anatomy_id
        job = alice.submit(
            anatomy_id, trials=2, grid_spacing_mm=2.0, idempotency_key="shared-key"
        ).job
        assert job.client_id == "alice"
        with pytest.raises(grpc.RpcError) as caught:
            bob.get(job.job_id)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            bob.cancel(job.job_id)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert job.job_id not in [j.job_id for j in bob.list().jobs]
        # Idempotency keys are per client: bob's "shared-key" is a job of his own.
        bobs = bob.submit(anatomy_id, trials=2, grid_spacing_mm=2.0, idempotency_key="shared-key")
        assert not bobs.deduplicated and bobs.job.job_id != job.job_id
        for client, j in ((alice, job), (bob, bobs.job)):
            client.cancel(j.job_id)


def test_token_configuration_errors_name_the_problem(tmp_path):
    bad = tmp_path / "tokens.txt"
    bad.write_text("alice\n")
    with pytest.raises(AuthConfigError, match=r"tokens\.txt:1"):
        TokenAuth.load(bad, env={})
    with pytest.raises(AuthConfigError, match="too short"):
        TokenAuth.load(None, env={"ECTPLAN_FRONT_TOKENS": "alice:short"})
    auth = TokenAuth.load(None, env={"ECTPLAN_FRONT_TOKENS": f"alice:{ALICE},bob:{BOB}"})
    assert auth.client_for([("authorization", f"Bearer {BOB}")]) == "bob"
    assert auth.client_for([("authorization", BOB)]) is None
    with pytest.raises(AuthConfigError, match="client CA"):
        TlsConfig.load(None, None, str(bad), env={})


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    days = ("-days", "2")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=ectplan test CA",
        *days,
        cwd=d,
    )
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-extfile",
            "san.cnf",
            *days,
            cwd=d,
        )
    return d


def test_tls_and_mutual_tls(tmp_path, certificates):
    d = certificates
    tls = TlsConfig.load(str(d / "server.pem"), str(d / "server.key"), str(d / "ca.pem"), env={})
    assert tls is not None and tls.mutual
    with BackgroundServer(make_config(tmp_path, tls=tls, address="localhost")) as server:
        ca = (d / "ca.pem").read_bytes()
        with FrontClient(
            server.target,
            root_certificates=ca,
            client_certificate=(d / "client.pem").read_bytes(),
            client_key=(d / "client.key").read_bytes(),
        ) as client:
            assert client.list().jobs == []
        # Without a client certificate the handshake fails.
        with FrontClient(server.target, root_certificates=ca, timeout_s=5) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.list()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext to a TLS port fails too.
        with FrontClient(server.target, timeout_s=5) as client, pytest.raises(grpc.RpcError):
            client.list()
