"""Where a distributed search keeps its trials: SQLite in the output folder, or a database URL.

Embedded default: SQLite (``sqlite:///<out>/study.db``) rather than Optuna's journal file.
One driver process writes (the actors never touch the study), so SQLite's single-writer lock
costs nothing; and the file is a plain database that ``optuna-dashboard``, the ``sqlite3``
shell and pandas all read while the search runs. Shared file systems (NFS) are the journal
backend's one advantage, and a cluster has PostgreSQL for that.

PostgreSQL (``postgresql://user:password@host:5432/db``) needs the ``psycopg2-binary``
driver. Connections time out after ``CONNECT_TIMEOUT_S``, so an unreachable database is an
error within seconds, never a hang. Journal files (``journal:path``, ``*.log``) go through
``optimizer.search.study.resolve_storage``.

Watch a search live: ``optuna-dashboard sqlite:///out/study.db`` (``pip install
optuna-dashboard``; not a dependency of ectplan).
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy import event

from optimizer.search.study import SearchStudyError, resolve_storage

DEFAULT_DB_NAME = "study.db"
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


def default_storage_url(out_dir: str | Path) -> str:
    return f"sqlite:///{(Path(out_dir) / DEFAULT_DB_NAME).resolve()}"


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
    return f"{DASHBOARD_PACKAGE} {mask_url(url)}"


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
    """An Optuna storage for ``url`` (None: in memory, nothing kept after the process)."""
    if url is None:
        return None
    text = str(url).strip()
    if not text:
        raise StorageError("the storage URL is empty; leave it out for the default")
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
