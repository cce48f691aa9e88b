"""``ectplan serve``: run the gRPC front (jobs, uploads, evaluation, health, metrics).

Every option also reads an environment variable (ECTPLAN_FRONT_<OPTION>), so a container
needs no command line: flags win over the environment, which wins over the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ENV_PREFIX = "ECTPLAN_FRONT_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_int(name: str) -> int | None:
    value = _env(name)
    return int(value) if value else None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gRPC front (plan jobs, uploads, evaluation)")
    add_arguments(p)
    p.set_defaults(handler=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=_env("ADDRESS", "127.0.0.1"),
        help="listen address (0.0.0.0 for all interfaces); env ECTPLAN_FRONT_ADDRESS",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", "50051") or 50051),
        help="gRPC port (0: any free one, printed at start)",
    )
    p.add_argument(
        "--data-dir",
        default=_env("DATA_DIR", "./ectplan-front"),
        help="uploads, job outputs, studies and the SQLite job store",
    )
    p.add_argument(
        "--libraries-dir",
        default=_env("LIBRARIES_DIR"),
        help="folder of plan libraries (ectplan batch) that jobs may name for warm starts; "
        "env ECTPLAN_FRONT_LIBRARIES_DIR",
    )
    p.add_argument(
        "--database-url",
        default=_env("DATABASE_URL"),
        help="SQLAlchemy URL of the job store (e.g. postgresql+psycopg2://...); "
        "default: SQLite under --data-dir",
    )
    p.add_argument(
        "--runner",
        choices=["auto", "ray", "local"],
        default=_env("RUNNER", "auto"),
        help="search runner: the Ray driver, or in-process (auto: Ray)",
    )
    p.add_argument(
        "--ray-address",
        default=_env("RAY_ADDRESS"),
        help="Ray cluster to use (default: RAY_ADDRESS or a local Ray)",
    )
    p.add_argument(
        "--workers", type=int, default=int(_env("WORKERS", "1") or 1), help="jobs searched at once"
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=int(_env("MAX_QUEUED", "100") or 100),
        help="jobs waiting before submissions are refused (RESOURCE_EXHAUSTED)",
    )
    p.add_argument(
        "--per-client-running",
        type=int,
        default=int(_env("PER_CLIENT_RUNNING", "1") or 1),
        help="jobs one client may have running at once",
    )
    p.add_argument(
        "--per-client-queued",
        type=int,
        default=int(_env("PER_CLIENT_QUEUED", "20") or 20),
        help="jobs one client may have waiting",
    )
    p.add_argument(
        "--refine-top-k",
        type=int,
        default=int(_env("REFINE_TOP_K", "3") or 3),
        help="best explored plans confirmed at clinical quality (fine grid, sigma(E)) per job",
    )
    p.add_argument(
        "--tokens-file",
        default=_env("TOKENS_FILE"),
        help="bearer tokens, lines 'client_name token' (also ECTPLAN_FRONT_TOKENS="
        "name:token,...); none: no authentication",
    )
    p.add_argument(
        "--tls-cert", default=None, help="server certificate (PEM); env ECTPLAN_FRONT_TLS_CERT"
    )
    p.add_argument("--tls-key", default=None, help="server key (PEM); env ECTPLAN_FRONT_TLS_KEY")
    p.add_argument(
        "--tls-client-ca",
        default=None,
        help="CA of client certificates: requires mutual TLS; env ECTPLAN_FRONT_TLS_CLIENT_CA",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env_int("METRICS_PORT"),
        help="serve Prometheus metrics on this port (/metrics)",
    )
    p.add_argument("--metrics-address", default=_env("METRICS_ADDRESS", "127.0.0.1"))
    p.add_argument(
        "--grace",
        type=float,
        default=float(_env("GRACE_S", "10") or 10),
        help="seconds in-flight calls get to finish on SIGTERM",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )


def config_from_args(args: argparse.Namespace) -> object:
    from services.front.auth import TlsConfig, TokenAuth
    from services.front.runner import QueueLimits
    from services.front.server import FrontConfig

    return FrontConfig(
        data_dir=Path(args.data_dir),
        address=args.address,
        port=args.port,
        database_url=args.database_url,
        runner=args.runner,
        ray_address=args.ray_address,
        queue=QueueLimits(
            max_queued=args.max_queued,
            per_client_queued=args.per_client_queued,
            per_client_running=args.per_client_running,
            workers=args.workers,
            refine_top_k=args.refine_top_k,
        ),
        auth=TokenAuth.load(args.tokens_file),
        tls=TlsConfig.load(args.tls_cert, args.tls_key, args.tls_client_ca),
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        grace_s=args.grace,
        libraries_dir=Path(args.libraries_dir) if args.libraries_dir else None,
    )


def run(args: argparse.Namespace) -> int:
    from services.front import logging as front_logging
    from services.front.server import FrontConfig, serve

    front_logging.configure(args.log_level)
    # Optuna's per-study info lines are not JSON; the front logs what matters itself.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = config_from_args(args)
    assert isinstance(config, FrontConfig)
    asyncio.run(serve(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.cli.serve_cmd`` (the same options as ``ectplan serve``)."""
    parser = argparse.ArgumentParser(prog="ectplan serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
