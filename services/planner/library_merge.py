"""Merging plan libraries into a new one (``ectplan library merge A B --out C``).

A case id found in several libraries is resolved by these rules, in order:
1. the same run (same ``run_id``: a library merged twice) is one entry;
2. a plan beats a failure: a failed entry never replaces a planned one;
3. of failures only, the newest is kept (the latest reason);
4. two or more different plans of one case are a conflict: the merge is refused and names
   them, unless ``prefer="newer"`` keeps the plan that finished last.

The sources must share the tissue table, and a protocol name must mean the same definition in
all of them (a protocol edited between runs would make their rows incomparable). Case folders
and per-case study files of the kept entries are copied; the sources are not changed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from services.planner.library import Library, LibraryError, open_library
from services.planner.library_create import create_library
from services.planner.library_index import PLANNED

Prefer = Literal["newer"]


def _protocols(sources: Sequence[Library]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for lib in sources:
        for name, sha in lib.protocols.items():
            if merged.get(name, sha) != sha:
                raise LibraryError(
                    f"protocol {name!r} has different definitions in the libraries being merged "
                    f"(see {lib.path / 'library.json'}); merge only libraries planned with the "
                    "same protocol files"
                )
            merged[name] = sha
    return merged


def _resolve(
    case_id: str, entries: list[tuple[Library, dict[str, Any]]], prefer: Prefer | None
) -> tuple[Library, dict[str, Any]] | str:
    """The kept entry, or a description of the conflict."""
    distinct: dict[str, tuple[Library, dict[str, Any]]] = {}
    for lib, row in entries:
        distinct.setdefault(str(row.get("run_id") or id(row)), (lib, row))
    options = list(distinct.values())
    planned = [e for e in options if e[1].get("status") == PLANNED]
    newest = sorted(planned or options, key=lambda e: str(e[1].get("finished_at", "")))
    if len(planned) > 1 and prefer != "newer":
        where = ", ".join(f"{lib.path} ({row.get('finished_at', 'undated')})"
                          for lib, row in planned)  # fmt: skip
        return f"{case_id}: planned in {where}"
    return newest[-1]


def merge_libraries(
    sources: Sequence[str | Path], out: str | Path, *, prefer: Prefer | None = None
) -> Library:
    """A new library at ``out`` holding the cases of all ``sources`` (see the module rules)."""
    if len(sources) < 2:
        raise LibraryError("give at least two libraries to merge")
    libraries = [open_library(p) for p in sources]
    target = Path(out).resolve()
    for lib in libraries:
        if lib.path.resolve() == target:
            raise LibraryError(f"--out {out} is one of the libraries being merged; give a new "
                               "folder")  # fmt: skip
    tables = {str(lib.meta.get("tissue_table")) for lib in libraries}
    if len(tables) > 1:
        raise LibraryError(
            f"the libraries were planned with different tissue tables ({', '.join(sorted(tables))}"
            "); their figures are not comparable, so they are not merged"
        )
    protocols = _protocols(libraries)
    by_case: dict[str, list[tuple[Library, dict[str, Any]]]] = {}
    for lib in libraries:
        for case_id in lib.case_ids:
            by_case.setdefault(case_id, []).append((lib, lib.row(case_id)))
    kept: dict[str, tuple[Library, dict[str, Any]]] = {}
    conflicts: list[str] = []
    for case_id, entries in sorted(by_case.items()):
        outcome = _resolve(case_id, entries, prefer)
        if isinstance(outcome, str):
            conflicts.append(outcome)
        else:
            kept[case_id] = outcome
    if conflicts:
        raise LibraryError(
            f"{len(conflicts)} case(s) were planned in more than one library: "
            + "; ".join(conflicts)
            + ". Pass --prefer newer to keep the plan that finished last"
        )
    merged = create_library(target, tissue_table=tables.pop(), protocols=protocols)
    with merged.locked():
        for lib in libraries:
            merged.add_criteria(lib.meta.get("criteria", {}))
        merged.meta["merged_from"] = [
            {"library_id": lib.meta.get("library_id"), "path": str(lib.path),
             "cases": len(lib)} for lib in libraries
        ]  # fmt: skip
        for case_id, (lib, row) in kept.items():
            study = lib.study_file(case_id)
            if study.is_file():
                merged.study_file(case_id).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(study, merged.study_file(case_id).with_name(study.name))
            if row.get("status") == PLANNED:
                source = lib.case_dir(case_id)
                files = {p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.is_file()}
                merged.record(row, files, save=False)
            else:
                merged.record(row, save=False)
        merged.save()
    return merged
