"""Start a local Ray or connect to a cluster, failing fast and clearly instead of hanging.

- No address (and no ``RAY_ADDRESS``): a local Ray with ``num_cpus`` CPUs, no dashboard.
- ``--ray-address`` / ``RAY_ADDRESS``: ``host:port`` of a running cluster's GCS (``ray start
  --head`` prints it), or ``ray://host:port`` for Ray Client. The port is probed over TCP first
  and ``ray.init`` runs under a deadline: left alone, Ray retries an unreachable GCS for minutes.

Token authentication (Ray >= 2.60 turns it on for a new local cluster and writes a token to
``~/.ray/auth_token``): explicit settings win (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH``, or an existing ``~/.ray/auth_token``). Otherwise a local cluster gets a
fresh random token held only in this process's environment, which Ray's own processes inherit:
authentication stays on, and nothing is written under a home folder that may be read-only or
shared (CI runs as root in a fresh clone). A remote cluster with authentication needs its token
in ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` (``ray get-auth-token`` on the head prints it).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import ray

ADDRESS_ENV = "RAY_ADDRESS"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# Ray Client's default port (``ray://host`` without one).
RAY_CLIENT_PORT = 10001
# How long a TCP probe of the address may take, and how long ray.init may then take: together
# well under the 20 s a user waits for "cannot connect" before suspecting a hang.
PROBE_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 15.0
# How long a local start waits for Ray's GCS to bind its port (Ray's default: 30 s).
GCS_PORT_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
GCS_PORT_WAIT_S = 60


class ClusterError(RuntimeError):
    """Ray could not be started or reached; the message says which address and what to do."""


@dataclass(frozen=True)
class ClusterInfo:
    address: str  # the GCS address Ray reports
    local: bool  # started by this process
    started_here: bool  # this call initialised Ray (False: it was already initialised)
    cpus: int
    nodes: int
    auth: str  # "token (ephemeral)", "token", or "disabled"


def requested_address(address: str | None) -> str | None:
    """The address to connect to: the argument, else ``RAY_ADDRESS``, else None (local)."""
    chosen = address if address else os.environ.get(ADDRESS_ENV)
    return chosen.strip() if chosen and chosen.strip() else None


def _default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def _refresh_ray_config() -> None:
    # Ray reads RAY_* settings into a C++ config when it is imported; a change made afterwards
    # must be reloaded, as Ray itself does when it turns authentication on by default.
    from ray._raylet import (  # type: ignore[attr-defined]
        AuthenticationTokenLoader,
        Config,
    )

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def prepare_local_auth() -> str:
    """Decide the token setup of a new local cluster (see the module docstring)."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None:
        return "disabled" if mode.lower() == "disabled" else mode.lower()
    if os.environ.get(AUTH_TOKEN_ENV) or os.environ.get(AUTH_TOKEN_PATH_ENV):
        os.environ[AUTH_MODE_ENV] = "token"
        _refresh_ray_config()
        return "token"
    if _default_token_file().is_file():
        return "token"  # Ray's default picks that file up
    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[AUTH_TOKEN_ENV] = secrets.token_hex(32)
    _refresh_ray_config()
    return "token (ephemeral)"


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) to probe, or None when the address is not host:port (e.g. "auto")."""
    text = address
    default_port = None
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme == "ray":
            default_port = RAY_CLIENT_PORT
        text = parts.netloc
    if text in ("auto", "local", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ClusterError(
                f"Ray address {address!r} has no port; give host:port (the GCS address that "
                "`ray start --head` prints, e.g. 10.0.0.5:6379) or ray://host:10001"
            )
        return text, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ClusterError(f"Ray address {address!r}: port {port!r} is not a number") from None


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ClusterError unless something accepts TCP connections at the address."""
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({host}:{port}): {exc}. Check that the "
            "head node runs (`ray start --head` prints its address) and that the port is open, "
            f"or leave out --ray-address and unset {ADDRESS_ENV} to start a local Ray"
        ) from None


def _init_with_deadline(address: str, timeout_s: float) -> None:
    outcome: dict[str, BaseException | None] = {}

    def target() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            outcome["error"] = None
        except BaseException as exc:  # handed over to the calling thread below
            outcome["error"] = exc

    # ray.init blocks in C++ retries when the port answers but is no Ray GCS; a daemon thread
    # lets us give up on time (it does not keep the process alive).
    thread = threading.Thread(target=target, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ClusterError(
            f"no Ray cluster answered at {address!r} within {timeout_s:.0f} s (the port is open "
            "but does not behave like a Ray GCS); check the address and port (default 6379)"
        )
    error = outcome.get("error")
    if error is None:
        return
    if type(error).__name__ == "AuthenticationError":
        raise ClusterError(
            f"the Ray cluster at {address!r} requires token authentication: set "
            f"{AUTH_TOKEN_ENV} (or {AUTH_TOKEN_PATH_ENV}) to the cluster's token "
            "(`ray get-auth-token` on the head node prints it)"
        ) from error
    raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {error}") from error


def _check_same_cluster(wanted: str | None) -> None:
    """Refuse an explicit address other than the cluster this process already uses."""
    if wanted is None or wanted.startswith("ray://") or wanted in ("auto", "local"):
        return
    current = str(ray.get_runtime_context().gcs_address)
    want, have = _host_port(wanted), _host_port(current)
    if want is None or have is None:
        return
    local_names = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
    same_host = want[0] == have[0] or want[0] in local_names
    if want[1] != have[1] or not same_host:
        raise ClusterError(
            f"this process is already connected to the Ray cluster at {current}; it cannot also "
            f"use {wanted!r} (run the search in a fresh process, or drop the address)"
        )


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> ClusterInfo:
    """Use the Ray this process is connected to, else connect to ``address`` (or
    ``RAY_ADDRESS``), else start a local Ray with ``num_cpus`` CPUs (default: all)."""
    wanted = requested_address(address)
    started_here = False
    auth = "token" if os.environ.get(AUTH_MODE_ENV, "").lower() == "token" else "disabled"
    if ray.is_initialized():
        _check_same_cluster(wanted)
    else:
        started_here = True
        if wanted is None:
            auth = prepare_local_auth()
            # Ray waits 30 s for its GCS to bind a port. Right after the whole test suite the
            # first `./run main` missed that twice in a row (2026-11-28; a minute later Ray
            # started in 5 s), so a local start waits longer unless the user says otherwise.
            # The likely cause, since fixed: gRPC's fork handlers aborted the GCS's process
            # before its exec (services/__init__.py).
            os.environ.setdefault(GCS_PORT_WAIT_ENV, str(GCS_PORT_WAIT_S))
            started = time.perf_counter()
            # A loaded machine can miss Ray's own start-up deadline once (and did, while gRPC's
            # fork handlers could abort a Ray process before its exec: services/__init__.py);
            # a second start almost always succeeds, so try twice before giving up.
            for attempt in (1, 2):
                try:
                    ray.init(
                        num_cpus=num_cpus,
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                    break
                except Exception as exc:
                    ray.shutdown()
                    if attempt == 2:
                        raise ClusterError(f"cannot start a local Ray: {exc}") from exc
                    # Says why a start took ~30 s longer (the first `./run main` right after CI).
                    logging.getLogger(__name__).warning(
                        "local Ray did not start (%s: %s); starting it once more",
                        type(exc).__name__, exc,
                    )  # fmt: skip
            logging.getLogger(__name__).debug(
                "local Ray started in %.1f s", time.perf_counter() - started
            )
        else:
            probe(wanted)
            _init_with_deadline(wanted, connect_timeout_s)
    resources = ray.cluster_resources()
    context = ray.get_runtime_context()
    return ClusterInfo(
        address=str(context.gcs_address),
        local=wanted is None,
        started_here=started_here,
        cpus=int(resources.get("CPU", 0)),
        nodes=len([n for n in ray.nodes() if n.get("Alive")]),
        auth=auth,
    )


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
