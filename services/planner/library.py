"""A plan library: a folder of planned cases with an index, made by ``ectplan batch``.

Layout::

    LIBRARY/
      library.json          format, ectplan version, protocol(s), tissue table, dates, notice
      index.parquet         one row per case (services.planner.library_index)
      cases/<case_id>/      everything ``ectplan evaluate`` writes, plus plan.json, search.json
      studies/<case_id>.journal.log
                            the case's Optuna study (default journal storage; one file a case,
                            so parallel cases never share a lock, <case_id>.journal.log.flock
                            beside it; a library made by an earlier version keeps its SQLite
                            <case_id>.db)
      library_report.html   the library report (services.planner.library_report)

Query it from Python::

    lib = open_library("LIBRARY")
    lib.index                                     # pyarrow Table
    lib.cases(status="planned", criterion="rectum_irreversible")   # case ids
    plan = lib.plan("picai-10021")                # optimizer.evaluate.plan.Plan

``library_create`` makes a library, ``library_merge`` merges libraries, ``library_report``
writes the report. A library holds one row per case id. Every write (a case's files, then the
index, then library.json) goes through a temporary name and a rename, and only one process
writes a library at a time (an exclusive lock on ``LIBRARY/.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from optimizer import __version__
from optimizer.evaluate.plan import Plan
from services.planner.library_index import (
    FAILED,
    PLANNED,
    criteria_catalogue,
    criterion_column,
    read_index,
    rows_to_table,
    table_to_rows,
    write_index,
)

LIBRARY_FORMAT = "ectplan.library/1"
META_FILE = "library.json"
INDEX_FILE = "index.parquet"
CASES_DIR = "cases"
STUDIES_DIR = "studies"
LOCK_FILE = ".lock"


class LibraryError(ValueError):
    """A library cannot be opened, written or merged; the message names the folder."""


def now_utc() -> str:
    # Milliseconds: "the newer of two runs" must not tie for runs a second apart.
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_case_id(name: str, what: str = "case id") -> str:
    """Case ids name folders and case files name files in the library: refuse anything that
    is not one plain name."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise LibraryError(
            f"{what} {name!r} cannot name a file or folder in a library: use a plain name "
            "without slashes that does not start with a dot"
        )
    return name


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2, allow_nan=False))
    os.replace(temporary, path)


class Library:
    """An open library (see the module docstring); ``open_library`` or ``create_library``."""

    def __init__(self, path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        self.path = path
        self.meta = meta
        self._rows = {str(r["case_id"]): r for r in rows}

    # ---- reading -----------------------------------------------------------------------

    @property
    def index(self) -> pa.Table:
        return rows_to_table([self._rows[k] for k in sorted(self._rows)])

    @property
    def case_ids(self) -> list[str]:
        return sorted(self._rows)

    @property
    def protocols(self) -> dict[str, str]:
        """Protocol name -> sha256 of its definition, for every protocol in the library."""
        return dict(self.meta.get("protocols", {}))

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def row(self, case_id: str) -> dict[str, Any]:
        try:
            return dict(self._rows[case_id])
        except KeyError:
            known = ", ".join(self.case_ids) or "none"
            raise LibraryError(
                f"library {self.path} has no case {case_id!r} (cases: {known})"
            ) from None

    def rows(self, **filters: Any) -> list[dict[str, Any]]:
        """Index rows matching the filters of ``cases`` (as dicts, nulls left out)."""
        return [self.row(c) for c in self.cases(**filters)]

    def cases(
        self,
        *,
        status: str | None = None,
        protocol: str | None = None,
        passed: bool | None = None,
        criterion: str | None = None,
        criterion_status: str = "pass",
    ) -> list[str]:
        """Case ids, sorted, with the given ``status`` ("planned" or "failed"), ``protocol``,
        overall verdict ``passed``, and ``criterion`` (its id, e.g. "rectum_irreversible" or
        "device.voltage_max") in ``criterion_status`` ("pass", "fail", "not_applicable")."""
        if status is not None and status not in (PLANNED, FAILED):
            raise LibraryError(f"status must be {PLANNED!r} or {FAILED!r}, not {status!r}")
        column = None if criterion is None else criterion_column(criterion, "status")
        if column is not None and not any(column in r for r in self._rows.values()):
            known = sorted({k.removeprefix("crit_").removesuffix("_status")
                            for r in self._rows.values() for k in r
                            if k.startswith("crit_") and k.endswith("_status")})  # fmt: skip
            raise LibraryError(
                f"no case in library {self.path} has criterion {criterion!r}; known: "
                + (", ".join(known) or "none (no planned case)")
            )
        out = []
        for case_id in self.case_ids:
            r = self._rows[case_id]
            if status is not None and r.get("status") != status:
                continue
            if protocol is not None and r.get("protocol") != protocol:
                continue
            if passed is not None and r.get("passed") is not passed:
                continue
            if column is not None and r.get(column) != criterion_status:
                continue
            out.append(case_id)
        return out

    def case_dir(self, case_id: str) -> Path:
        return self.path / CASES_DIR / check_case_id(case_id)

    def study_file(self, case_id: str) -> Path:
        """The case's study: ``studies/<case>.journal.log``, or the ``<case>.db`` (SQLite) an
        earlier version made, kept while no journal exists (services.planner.storage)."""
        # Imported here: storage pulls in Optuna and SQLAlchemy, which reading a library
        # does not need.
        from services.planner.storage import study_path

        return study_path(self.path / STUDIES_DIR, check_case_id(case_id))

    def is_planned(self, case_id: str) -> bool:
        """Planned and its outputs are present (a rerun skips it)."""
        r = self._rows.get(case_id)
        return (
            r is not None and r.get("status") == PLANNED
            and (self.case_dir(case_id) / "plan.json").is_file()
        )  # fmt: skip

    def plan(self, case_id: str) -> Plan:
        r = self.row(case_id)
        if r.get("status") != PLANNED:
            raise LibraryError(
                f"case {case_id!r} in library {self.path} has no plan: it failed "
                f"({r.get('reason', 'no reason recorded')})"
            )
        return Plan.load(self.case_dir(case_id) / "plan.json")

    def metrics(self, case_id: str) -> dict[str, Any]:
        self.plan(case_id)  # the same checks and messages
        document: dict[str, Any] = json.loads((self.case_dir(case_id) / "metrics.json").read_text())
        return document

    def to_pandas(self) -> Any:
        """The index as a pandas DataFrame (needs pandas, which ectplan does not require)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise LibraryError(
                "to_pandas() needs pandas, which is not installed: pip install pandas, or use "
                "the pyarrow table in .index"
            ) from None
        return self.index.to_pandas()

    # ---- writing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[Library]:
        """Hold the library's write lock; a second writer gets a clear error at once."""
        handle = (self.path / LOCK_FILE).open("a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LibraryError(
                    f"library {self.path} is being written by another process (ectplan batch "
                    "or library merge); wait for it to finish or choose another --out"
                ) from None
            yield self
        finally:
            handle.close()

    def record(
        self,
        row: Mapping[str, Any],
        files: Mapping[str, bytes] | None = None,
        *,
        save: bool = True,
    ) -> None:
        """Add or replace a case: its files (replacing the case folder whole), then the index
        (unless ``save`` is False: a caller recording many cases saves once at the end). A
        failed case's row replaces the old one and its folder is removed."""
        case_id = check_case_id(str(row["case_id"]))
        folder = self.case_dir(case_id)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if files is not None:
            if "metrics.json" in files:
                criteria = json.loads(files["metrics.json"])["criteria"]
                self.add_criteria(criteria_catalogue(criteria))
            staging = folder.with_name(f".{case_id}.{os.getpid()}.new")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for name, data in files.items():
                target = staging / check_case_id(name, "case file")
                target.write_bytes(data)
            old = folder.with_name(f".{case_id}.{os.getpid()}.old")
            if folder.exists():
                os.replace(folder, old)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        elif row.get("status") != PLANNED:
            shutil.rmtree(folder, ignore_errors=True)
        self._rows[case_id] = dict(row)
        if save:
            self.save()

    def save(self) -> None:
        """Write the index, then library.json (counts, protocols, date)."""
        write_index(list(self._rows.values()), self.path / INDEX_FILE)
        statuses = [r.get("status") for r in self._rows.values()]
        self.meta["updated"] = now_utc()
        self.meta["ectplan_version"] = __version__
        self.meta["cases"] = {
            "total": len(statuses),
            PLANNED: statuses.count(PLANNED),
            FAILED: statuses.count(FAILED),
        }
        _write_json(self.path / META_FILE, self.meta)

    def add_criteria(self, catalogue: Mapping[str, Mapping[str, Any]]) -> None:
        """Remember what each criterion is (kind, unit, limit, description) for the report."""
        known = self.meta.setdefault("criteria", {})
        for cid, entry in catalogue.items():
            known[cid] = dict(entry)


def check_folder(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise LibraryError(f"{what} {path} is a file, not a folder: give a folder path")


def open_library(path: str | Path) -> Library:
    """An existing library; LibraryError names what is missing or unreadable."""
    folder = Path(path)
    check_folder(folder, "library")
    meta_file = folder / META_FILE
    if not meta_file.is_file():
        raise LibraryError(
            f"{folder} is not an ectplan plan library (no {META_FILE}); `ectplan batch --out "
            f"{folder}` makes one"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LibraryError(f"{meta_file} cannot be read: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != LIBRARY_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise LibraryError(
            f"{meta_file}: format {found!r} is not {LIBRARY_FORMAT!r}; this ectplan "
            f"({__version__}) reads {LIBRARY_FORMAT} libraries only"
        )
    index_file = folder / INDEX_FILE
    rows: list[dict[str, Any]] = []
    if index_file.is_file():
        try:
            rows = table_to_rows(read_index(index_file))
        except (OSError, pa.ArrowException) as exc:
            raise LibraryError(f"{index_file} cannot be read as Parquet: {exc}") from exc
    return Library(folder, meta, rows)
