"""Who may call: bearer tokens, and the server's TLS / mutual-TLS credentials.

Tokens (``authorization: Bearer <token>`` metadata) map to client names, used for per-client
limits, idempotency keys and job visibility. They come from ``--tokens-file`` (lines
``client_name token``; '#' starts a comment) or ``ECTPLAN_FRONT_TOKENS``
(``name:token,name:token``). Only their sha256 digests are kept in memory, compared in
constant time. Without tokens the front is open and every caller is "anonymous".

TLS: ``--tls-cert``/``--tls-key`` (PEM files) or ``ECTPLAN_FRONT_TLS_CERT``/``_KEY``; adding
``--tls-client-ca`` (``ECTPLAN_FRONT_TLS_CLIENT_CA``) requires and verifies client
certificates (mTLS). Health checks and reflection need no token (probes carry none).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ANONYMOUS = "anonymous"
TOKENS_ENV = "ECTPLAN_FRONT_TOKENS"
TLS_CERT_ENV = "ECTPLAN_FRONT_TLS_CERT"
TLS_KEY_ENV = "ECTPLAN_FRONT_TLS_KEY"
TLS_CLIENT_CA_ENV = "ECTPLAN_FRONT_TLS_CLIENT_CA"
# Methods any caller may use: load balancers and kubelets probe without credentials.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthConfigError(ValueError):
    """A token file or TLS setting cannot be used; the message names the file or variable."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenAuth:
    """Token digests -> client names. Empty: authentication is off."""

    digests: Mapping[bytes, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]]) -> TokenAuth:
        digests: dict[bytes, str] = {}
        for client, token in pairs:
            if not client or len(token) < 16:
                raise AuthConfigError(
                    f"token for client {client!r} is too short ({len(token)} characters); use "
                    "16 or more random characters"
                )
            digests[_digest(token)] = client
        return cls(digests)

    @classmethod
    def load(
        cls, tokens_file: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> TokenAuth:
        env = os.environ if env is None else env
        pairs: list[tuple[str, str]] = []
        if tokens_file is not None:
            path = Path(tokens_file)
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise AuthConfigError(f"cannot read tokens file {path}: {exc}") from None
            for n, line in enumerate(lines, 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                parts = text.split()
                if len(parts) != 2:
                    raise AuthConfigError(f"{path}:{n}: expected 'client_name token'")
                pairs.append((parts[0], parts[1]))
        for item in filter(None, (s.strip() for s in env.get(TOKENS_ENV, "").split(","))):
            client, sep, token = item.partition(":")
            if not sep:
                raise AuthConfigError(f"{TOKENS_ENV}: expected name:token items, got {item[:8]}…")
            pairs.append((client, token))
        return cls.from_pairs(pairs)

    def client_for(self, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
        """The client name for a call's metadata; None when the token is missing or wrong."""
        if not self.enabled:
            return ANONYMOUS
        value = next((v for k, v in metadata or () if k == "authorization"), None)
        if not isinstance(value, str) or not value.startswith("Bearer "):
            return None
        digest = _digest(value.removeprefix("Bearer ").strip())
        found = None
        for known, client in self.digests.items():  # constant time in the token's content
            if hmac.compare_digest(known, digest):
                found = client
        return found


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @classmethod
    def load(
        cls,
        cert: str | None,
        key: str | None,
        client_ca: str | None,
        env: Mapping[str, str] | None = None,
    ) -> TlsConfig | None:
        env = os.environ if env is None else env
        cert = cert or env.get(TLS_CERT_ENV) or None
        key = key or env.get(TLS_KEY_ENV) or None
        client_ca = client_ca or env.get(TLS_CLIENT_CA_ENV) or None
        if cert is None and key is None:
            if client_ca is not None:
                raise AuthConfigError(
                    "a client CA (mTLS) needs the server's --tls-cert and --tls-key too"
                )
            return None
        if cert is None or key is None:
            raise AuthConfigError("give both --tls-cert and --tls-key (PEM files)")
        for label, p in (("certificate", cert), ("key", key), ("client CA", client_ca)):
            if p is not None and not Path(p).is_file():
                raise AuthConfigError(f"TLS {label} file {p} does not exist")
        return cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)

    def server_credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer token (UNAUTHENTICATED) before any handler runs."""

    def __init__(self, auth: TokenAuth) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = str(details.method)
        if handler is None or not self._auth.enabled or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if self._auth.client_for(details.invocation_metadata) is not None:
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "missing or invalid bearer token; send 'authorization: Bearer <token>' metadata"

    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield None  # pragma: no cover - abort raises

    args = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, *args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, *args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, *args)
    return grpc.stream_stream_rpc_method_handler(stream, *args)
