"""The ``ectplan`` command: one sub-command per module in services/cli."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from optimizer import RESEARCH_USE_NOTICE, __version__


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from services.cli import (
        anatomy_cmd,
        batch_cmd,
        demo_cmd,
        evaluate_cmd,
        jobs_cmd,
        library_cmd,
        plan_cmd,
        serve_cmd,
    )

    parser = argparse.ArgumentParser(
        prog="ectplan",
        description="Electroporation treatment planning (ECT, IRE, IRECT). " + RESEARCH_USE_NOTICE,
    )
    parser.add_argument("--version", action="version", version=f"ectplan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (demo_cmd, anatomy_cmd, evaluate_cmd, plan_cmd, batch_cmd, library_cmd,
                   serve_cmd, jobs_cmd):  # fmt: skip
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a refused argument (argparse printed why), --help, --version
        return exc.code if isinstance(exc.code, int) else 2
    from optimizer.anatomy.errors import AnatomyError

    try:
        code: int = args.handler(args)
    except (CliError, AnatomyError, ValueError, FileNotFoundError) as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    return code


if __name__ == "__main__":
    # Run the importable module's main: under ``python -m`` this file is ``__main__`` and its
    # CliError would be another class than the one the command modules raise.
    from services.cli.main import main as package_main

    sys.exit(package_main())
