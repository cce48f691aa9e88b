"""Making a plan library: a new, empty one, or the one a batch resumes.

A batch may resume a library only when it was planned with the same protocol definition
(name and content hash) and tissue table: rows planned under other criteria or tissue
properties are not comparable, and a rerun would silently mix them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimizer import RESEARCH_USE_NOTICE, __version__
from services.planner.library import (
    LIBRARY_FORMAT,
    META_FILE,
    Library,
    LibraryError,
    check_folder,
    now_utc,
    open_library,
)
from services.planner.library_index import FAILED, PLANNED


def create_library(
    path: str | Path, *, tissue_table: str, protocols: Mapping[str, str] | None = None
) -> Library:
    """A new, empty library in ``path`` (which must be absent or an empty folder)."""
    folder = Path(path)
    check_folder(folder, "library")
    if folder.is_dir() and any(folder.iterdir()):
        raise LibraryError(
            f"{folder} exists and is not empty, and it is not a plan library: choose a new or "
            "empty folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    stamp = now_utc()
    meta: dict[str, Any] = {
        "format": LIBRARY_FORMAT,
        "research_use_notice": RESEARCH_USE_NOTICE,
        "library_id": uuid.uuid4().hex,
        "ectplan_version": __version__,
        "created": stamp,
        "updated": stamp,
        "tissue_table": tissue_table,
        "protocols": dict(protocols or {}),
        "criteria": {},
        "cases": {"total": 0, PLANNED: 0, FAILED: 0},
    }
    library = Library(folder, meta, [])
    library.save()
    return library


def open_or_create_library(
    path: str | Path, *, protocol: str, protocol_sha256: str, tissue_table: str
) -> Library:
    """The library for a batch of ``protocol``: an existing one must have been planned with
    the same protocol definition and tissue table (a rerun); else a new one."""
    folder = Path(path)
    check_folder(folder, "--out")
    if not (folder / META_FILE).is_file():
        return create_library(
            folder, tissue_table=tissue_table, protocols={protocol: protocol_sha256}
        )
    library = open_library(folder)
    have = library.protocols
    if have and have != {protocol: protocol_sha256}:
        if protocol in have and len(have) == 1:
            why = f"protocol {protocol!r} differs from the definition it was planned with"
        else:
            why = f"it was planned with protocol(s) {', '.join(sorted(have))}, not {protocol!r}"
        raise LibraryError(
            f"library {folder}: {why}; plan into another --out (libraries of different "
            "protocols can be combined with `ectplan library merge`)"
        )
    if library.meta.get("tissue_table") != tissue_table:
        raise LibraryError(
            f"library {folder} was planned with tissue table {library.meta.get('tissue_table')!r}"
            f", this ectplan uses {tissue_table!r}: plan into another --out"
        )
    library.meta["protocols"] = {protocol: protocol_sha256}
    return library
