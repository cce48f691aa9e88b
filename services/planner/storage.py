"""Where a search keeps its trials: an Optuna journal file in the output folder, or a database.

Embedded default: a journal file, ``<out>/study.journal.log`` (Optuna's ``JournalStorage`` over
a ``JournalFileBackend``, appended under a ``flock`` on ``<out>/study.journal.log.flock``:
optimizer/search/journal_file.py). The search runs its study in memory and writes each finished
trial through in one ``create_new_trial`` (optimizer/search/write_through.py); per finished trial
that cost 0.6 ms as one appended, fsynced JSON line, against 22-48 ms as SQLite rows through
SQLAlchemy's ORM (one query per parameter). The driver is serial, so that difference is search
throughput.

Legacy: a folder holding the ``study.db`` (SQLite) of an earlier version, and no journal yet,
keeps that file (``study_path``), so re-running a plan into the same folder resumes its study.
An explicit ``sqlite:///path.db`` still works.

Reading a journal: it is JSON lines, one Optuna operation a line (append-only; readers never
block the search). ``optuna-dashboard <out>/study.journal.log`` watches it live (``pip
install optuna-dashboard``; not a dependency of ectplan). From Python (the dataframe needs
pandas)::

    storage = JournalStorage(JournalFileBackend("out/study.journal.log"))
    optuna.load_study(study_name=None, storage=storage).trials_dataframe()

PostgreSQL (``postgresql://user:password@host:5432/db``), for studies a cluster's searches
and batch jobs keep in one place (one search at a time per study: a search reads its stored
trials when it opens the study and does not see another's written later, so the driver holds
the study while it searches, services/planner/study_lock.py), needs the
``psycopg2-binary`` driver. Connections time out after ``CONNECT_TIMEOUT_S``, so an
unreachable database is an error within seconds, never a hang.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from sqlalchemy import event

from optimizer.search.journal_file import journal_backend
from optimizer.search.study import SearchStudyError, journal_path, resolve_storage

DEFAULT_STUDY_STEM = "study"
JOURNAL_SUFFIX = ".journal.log"  # .log: what optuna-dashboard and resolve_storage take as a journal
LEGACY_SUFFIX = ".db"  # the SQLite file earlier versions made
CONNECT_TIMEOUT_S = 5
# SQLite waits this long for a lock held by a reader (e.g. the dashboard) before failing.
SQLITE_BUSY_TIMEOUT_S = 30
DASHBOARD_PACKAGE = "optuna-dashboard"
# The driver module each database URL scheme needs, and what to install for it. SQLAlchemy 2.1
# maps a bare postgresql:// to psycopg 3; ectplan ships psycopg2 (as the job store does), so a
# bare URL is sent to psycopg2 unless psycopg 3 is installed.
_DRIVERS = {
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
}


class StorageError(ValueError):
    """A study storage cannot be opened; the message names the (password-masked) URL."""


def study_path(folder: str | Path, stem: str = DEFAULT_STUDY_STEM) -> Path:
    """The study file ``stem`` in ``folder``: ``<stem>.journal.log``, or the SQLite
    ``<stem>.db`` an earlier version left there when no journal exists yet (resumed as is)."""
    journal = Path(folder) / f"{stem}{JOURNAL_SUFFIX}"
    legacy = journal.with_name(f"{stem}{LEGACY_SUFFIX}")
    return legacy if legacy.is_file() and not journal.exists() else journal


def storage_url_for(path: str | Path) -> str:
    """What ``open_storage`` takes for a study file: ``sqlite:///`` and the absolute path for a
    .db file, else the absolute path itself (a journal; optuna-dashboard takes it as is)."""
    absolute = Path(path).resolve()
    return f"sqlite:///{absolute}" if absolute.suffix == LEGACY_SUFFIX else str(absolute)


def default_storage_url(folder: str | Path, stem: str = DEFAULT_STUDY_STEM) -> str:
    """The embedded default storage of a search writing into ``folder`` (see ``study_path``)."""
    return storage_url_for(study_path(folder, stem))


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to print and to write to search.json."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def study_name_for(
    case_id: str,
    protocol: str,
    seed: int | None,
    *,
    multi_objective: bool = False,
    target_scope: str = "gland",
) -> str:
    """The default study name: case, protocol, seed (-focal for a lesion-only target, -mo for
    multi-objective), so plans of another scope never resume each other's study."""
    parts = ["ectplan", case_id, protocol, f"seed{seed}" if seed is not None else "unseeded"]
    if target_scope == "lesion":
        parts.append("focal")
    if multi_objective:
        parts.append("mo")
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))


def dashboard_command(url: str) -> str:
    """The optuna-dashboard command line for this storage: a journal by its bare file path
    (the dashboard opens an existing file as a journal; it knows no ``journal:`` prefix), a
    database by its password-masked URL."""
    journal = journal_path(url)
    return f"{DASHBOARD_PACKAGE} {shlex.quote(str(journal) if journal else mask_url(url))}"


def _journal(path: Path) -> JournalStorage:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):  # what JournalFileBackend does; here for a clear message
            pass
        # Every append locks a file made next to the journal (path.flock: journal_file).
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(f"the folder {path.parent} is not writable")
    except OSError as exc:
        raise StorageError(
            f"cannot open the journal study file {path}: {exc}; choose a writable output "
            "folder or pass --storage"
        ) from exc
    try:
        return JournalStorage(journal_backend(path))
    except ValueError as exc:  # json.JSONDecodeError, "Invalid log format."
        raise StorageError(
            f"{path} is not an Optuna journal file ({exc}); move it away or choose another "
            "output folder"
        ) from exc


def _sqlite(url: str) -> RDBStorage:
    path_text = url.removeprefix("sqlite:///")
    if path_text and path_text != ":memory:" and not url.startswith("sqlite:///:memory:"):
        path = Path(path_text)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Open it once directly: a clear message for an unwritable folder or a file that is
            # not a database, instead of SQLAlchemy's wrapped one.
            sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S).execute(
                "pragma schema_version"
            ).connection.close()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"cannot open the SQLite study file {path}: {exc}; choose a writable output "
                "folder or pass --storage"
            ) from exc
    storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}})
    event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()  # reconnect with the pragmas
    return storage


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # Optuna commits every user attribute separately (~15 per trial); with SQLite's default
    # rollback journal each commit waits for an fsync (~0.3 s a trial here). WAL with
    # synchronous=NORMAL commits without waiting (still safe if the process crashes; the last
    # commits can be lost only if the machine loses power) and lets readers such as
    # optuna-dashboard read while the driver writes.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _with_driver(url: str, scheme: str) -> tuple[str, str]:
    if scheme in ("postgresql", "postgres"):
        driver = "psycopg" if importlib.util.find_spec("psycopg") is not None else "psycopg2"
        scheme = f"postgresql+{driver}"
        url = scheme + url[url.index("://") :]
    return url, scheme


def _database(given: str, scheme: str) -> RDBStorage:
    url, scheme = _with_driver(given, scheme)
    module, package = _DRIVERS.get(scheme, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise StorageError(
            f"storage {mask_url(given)} needs the {module} driver: pip install {package}"
        )
    connect_args: dict[str, object] = {}
    if scheme.startswith(("postgresql", "mysql")):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return RDBStorage(url, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True})
    except Exception as exc:  # SQLAlchemy's OperationalError and friends, driver-specific
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StorageError(
            f"cannot open the study database {mask_url(given)}: "
            f"{reason[0] if reason else type(exc).__name__}; check the host, port, database "
            "name and credentials, and that the server accepts connections"
        ) from exc


def open_storage(url: str | Path | None) -> BaseStorage | None:
    """An Optuna storage for ``url`` (None: in memory, nothing kept after the process): a
    journal file (a path ending in .log, .jsonl or .journal, or ``journal:path``; its folder
    is made), ``sqlite:///path.db`` or a database URL."""
    if url is None:
        return None
    text = str(url).strip()
    if not text:
        raise StorageError("the storage URL is empty; leave it out for the default")
    journal = journal_path(text)
    if journal is not None:
        return _journal(journal)
    scheme = text.split(":", 1)[0].lower() if "://" in text else ""
    if scheme == "sqlite":
        return _sqlite(text)
    if scheme:
        return _database(text, scheme)
    try:
        resolved = resolve_storage(text)
    except SearchStudyError as exc:
        raise StorageError(str(exc)) from exc
    assert resolved is None or isinstance(resolved, BaseStorage)
    return resolved
