"""The ``--target`` option every planning command shares (optimizer/anatomy/target_scope.py)."""

from __future__ import annotations

import argparse

from optimizer.anatomy.target_scope import TARGET_SCOPES


def add_target_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default="auto",
        choices=list(TARGET_SCOPES),
        help="what is treated: the segmented lesion(s) (focal), the whole gland, or auto: "
        "lesions when segmented, else the gland (default)",
    )
