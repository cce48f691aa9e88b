"""One search at a time per stored study: a lock held from opening the study to the search's end.

Why: a search keeps its study in memory and writes each finished trial through
(optimizer/search/write_through.py); it reads the stored trials once, when it opens the study.
A second search of the same study at the same time would not see the first's trials, and the
two would interleave their trial numbers in the storage, so a plan's trial number would no
longer name its stored trial. The second search is refused instead, naming who holds the study.

How, by storage:
- a journal file or a SQLite database: an exclusive ``flock`` on a file beside it
  (``<file>.<study>.search.lock``) that names its holder (host, pid, start). The kernel drops
  the lock with the process; the holder removes the file when it ends.
- PostgreSQL: a session advisory lock keyed by the study name, on a connection of its own
  whose ``application_name`` names the holder. The server drops it with the connection; TCP
  keepalives end the connection of a host that vanished within ``KEEPALIVE_S``. A search
  whose lock connection drops (the server restarting, a network cut, the session ended by an
  administrator) has lost the lock: ``confirm``, which the driver calls every
  ``CONFIRM_EVERY_S``, finds that out, takes the lock again on a new connection, or, when
  another search took the study meanwhile, stops the search naming it.
- any other database (MySQL) and studies in memory: not locked.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from optimizer.search.study import SearchStudyError, journal_path

# A lock connection whose peer stops answering is closed after idle + interval * count seconds.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 3
KEEPALIVE_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT
# How often a search makes sure it still holds its study (one small query on PostgreSQL).
CONFIRM_EVERY_S = 10.0
# Tries at a lock file that its holder removed between our open and our lock.
_FILE_TRIES = 5
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


class StudyBusyError(SearchStudyError):
    """Another search holds the study now."""


class StudyLostError(StudyBusyError):
    """A search lost its hold on the study and another search took it."""


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _busy(study_name: str, where: str, holder: str) -> StudyBusyError:
    return StudyBusyError(
        f"study {study_name!r} in {where} is being searched now by {holder}: a second search "
        "would not see its trials and would mix its trial numbers with them; wait for that "
        "search to end (or cancel it)"
    )


class StudyLock(ABC):
    """Held while a search may write its study."""

    @abstractmethod
    def release(self) -> None:
        """Let another search have the study (idempotent)."""

    def confirm(self) -> str | None:
        """Make sure the lock is still held: None when it is; a note when it had been lost
        and is held again; ``StudyLostError`` when another search holds the study now. A
        file lock cannot be lost while its process lives."""
        return None


class _FileLock(StudyLock):
    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        # Removed while still held: a search that opens it later makes a new file, and one
        # that opened this one just before finds it gone after locking it (``_lock_file``).
        # A file that cannot be removed stays, unlocked: it only names the last holder.
        try:
            with contextlib.suppress(OSError):
                self.path.unlink()
        finally:
            os.close(self.fd)
            self.fd = -1


def lock_file_path(store: Path, study_name: str) -> Path:
    """The lock file of study ``study_name`` stored in the file ``store``."""
    digest = hashlib.blake2b(study_name.encode(), digest_size=4).hexdigest()
    safe = _UNSAFE.sub("_", study_name)[:80]
    return store.with_name(f"{store.name}.{safe}-{digest}.search.lock")


def _lock_file(store: Path, study_name: str) -> _FileLock:
    path = lock_file_path(store, study_name)
    for _ in range(_FILE_TRIES):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SearchStudyError(
                f"cannot make the lock file {path} of study {study_name!r}: {exc}; the folder "
                f"of {store} must be writable"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            named = _read_holder(fd)
            os.close(fd)
            raise _busy(study_name, str(store), named) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed it after our open: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        return _FileLock(path, fd)
    raise SearchStudyError(
        f"could not lock study {study_name!r} in {store}: other searches kept replacing its lock "
        f"file {path}; try again"
    )


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"ectplan search pid {info['pid']} on {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class _AdvisoryLock(StudyLock):
    def __init__(
        self, engine: Engine, connection: Connection, key: int, study_name: str, where: str
    ) -> None:
        self.engine, self.connection = engine, connection
        self.key, self.study_name, self.where = key, study_name, where
        self.held = True

    def confirm(self) -> str | None:
        if not self.held:
            return None
        try:
            if self.connection.execute(_HELD_SQL, _key_params(self.key)).scalar():
                self.connection.commit()
                return None
        except Exception:  # the connection is gone (server restart, network cut, terminated)
            pass
        with contextlib.suppress(Exception):
            self.connection.close()
        try:
            connection = self.engine.connect()
        except Exception as exc:  # the database is down: its trial writes fail and say so
            return (
                f"lost the lock of study {self.study_name!r} in {self.where} (its connection "
                f"dropped) and could not connect again: {_reason(exc)}; trying again"
            )
        try:
            taken = _try_lock(connection, self.key)
            holder = None if taken else _advisory_holder(connection, self.key)
        except BaseException:
            connection.close()
            raise
        if taken:
            self.connection = connection
            return (
                f"the lock of study {self.study_name!r} in {self.where} was lost (its database "
                "connection dropped) and has been taken again; no other search holds the study"
            )
        connection.close()
        self.release()
        raise StudyLostError(
            f"study {self.study_name!r} in {self.where} was taken by {holder} after this "
            "search's lock connection to the database dropped: this search stopped so that the "
            "two do not mix their trial numbers. The trials it told are stored; plan again "
            "once that search has ended to resume the study"
        )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        # Closing the session drops its advisory locks (NullPool: the connection really ends).
        with contextlib.suppress(Exception):
            self.connection.close()
        self.engine.dispose()


def advisory_key(study_name: str) -> int:
    """The bigint advisory lock key of a study (a hash of its name)."""
    digest = hashlib.blake2b(f"ectplan-study:{study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _advisory_lock(storage: RDBStorage, study_name: str, where: str) -> _AdvisoryLock:
    me = _holder()
    name = f"ectplan search pid {me['pid']} on {me['host']}"[:63]
    engine = create_engine(
        storage.engine.url,
        poolclass=NullPool,
        connect_args={
            "application_name": name, "keepalives": 1, "keepalives_idle": KEEPALIVE_IDLE_S,
            "keepalives_interval": KEEPALIVE_INTERVAL_S, "keepalives_count": KEEPALIVE_COUNT,
            "connect_timeout": 5,
        },
    )  # fmt: skip
    key = advisory_key(study_name)
    try:
        connection = engine.connect()
    except Exception as exc:
        engine.dispose()
        raise SearchStudyError(
            f"cannot lock study {study_name!r} in {where}: {_reason(exc)}"
        ) from exc
    try:
        if not _try_lock(connection, key):
            raise _busy(study_name, where, _advisory_holder(connection, key))
    except BaseException:
        connection.close()
        engine.dispose()
        raise
    return _AdvisoryLock(engine, connection, key, study_name, where)


def _try_lock(connection: Connection, key: int) -> bool:
    """Take the session advisory lock ``key`` if it is free."""
    got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
    connection.commit()  # the session lock outlives the transaction
    return bool(got)


def _reason(exc: Exception) -> str:
    """The first line of a connection error (SQLAlchemy's OperationalError and friends wrap
    the driver's own)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _advisory_holder(connection: Connection, key: int) -> str:
    """The holding session's name and start, as pg_stat_activity shows it to this role."""
    try:
        row = _holding_session(connection, key)
    except Exception:  # the lock was refused all the same: say so without the name
        return "another database session"
    if row is None or not row[0]:
        return "another database session"
    started = row[1].isoformat(timespec="seconds") if row[1] is not None else "?"
    return f"{row[0]} (connected since {started})"


def _key_params(key: int) -> dict[str, int]:
    """A bigint advisory key as pg_locks shows it: high and low halves, unsigned."""
    return {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}


# The granted advisory lock of key (:hi, :lo) in pg_locks ``l``.
_KEY_HELD = (
    "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid::bigint = :hi AND l.objid::bigint = :lo"
)
# Whether this session holds the key (``_AdvisoryLock.confirm``).
_HELD_SQL = text(
    f"SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE {_KEY_HELD} AND l.pid = pg_backend_pid())"
)
# Who holds it: the holding session's name and start.
_HOLDER_SQL = text(
    "SELECT a.application_name, a.backend_start FROM pg_locks l "
    f"JOIN pg_stat_activity a ON a.pid = l.pid WHERE {_KEY_HELD}"
)


def _holding_session(connection: Connection, key: int) -> Any:
    return connection.execute(_HOLDER_SQL, _key_params(key)).first()


def lock_study(
    storage_url: str | Path | None, storage: BaseStorage | None, study_name: str, where: str
) -> StudyLock | None:
    """Hold study ``study_name`` of ``storage`` (opened from ``storage_url``; ``where``: how
    to name it in a message) for this search, or raise ``StudyBusyError``; None where this
    storage is not locked (in memory, a database other than PostgreSQL)."""
    if storage_url is None or storage is None:
        return None
    journal = journal_path(storage_url)
    if journal is not None:
        return _lock_file(Path(journal).resolve(), study_name)
    if isinstance(storage, RDBStorage):
        url = storage.engine.url
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            if database and database != ":memory:":
                return _lock_file(Path(database).resolve(), study_name)
            return None
        if url.get_backend_name() == "postgresql":
            return _advisory_lock(storage, study_name, where)
    return None
