"""How every ectplan process appends to a journal study file: under a ``flock`` on a lock file
beside it (``<journal>.flock``, kept between appends), after cutting off any torn last line,
with or without ``fsync``.

Why not Optuna's default lock, a symbolic link made and removed around each append: a process
killed while it holds the link leaves it behind, and every other writer then waits Optuna's
30 s grace before breaking it. With island exploration the workers append too, and a search
kills its workers on a fault or a cancel (which must end within 2 s). The kernel drops a
``flock`` with its process. Every writer of one journal must take the same lock, so ectplan
opens journals only through ``journal_backend``. Readers take none; optuna-dashboard writes
(notes, feedback) with Optuna's own lock, so write from it only while no search runs. Lines
go in append mode, so even such a writer's line is not overwritten.

A torn line: a process killed in the middle of a write can leave a last line without its
newline. Optuna's reader skips such a last line, but the next append would glue onto it and
make the journal unreadable from then on, so each append first cuts it off (it was never a
whole operation, and no reader ever applied it) and pads its first line past the torn length
(so a reader that had read part of the torn line cannot splice the two).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock, get_lock_file  # Optuna is pinned

LOCK_SUFFIX = ".flock"
# An append holds the lock for a millisecond or so; a holder past this is a stopped process.
LOCK_TIMEOUT_S = 60.0
_POLL_S = 0.002
_TAIL_BYTES = 1 << 16  # chunks in which to look back for the last whole line


class JournalLockTimeoutError(OSError):
    """Another process held the journal's lock for longer than ``LOCK_TIMEOUT_S``."""


class FlockJournalLock(BaseJournalFileLock):
    """An exclusive ``flock`` on ``<journal>.flock`` (the journal's real path, so writers
    that name it through a link share one lock). One holder per object at a time: each
    Optuna JournalStorage serialises its own appends."""

    def __init__(self, journal: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = os.path.realpath(journal) + LOCK_SUFFIX
        self.timeout_s = timeout_s
        self._fd: int | None = None

    def acquire(self) -> bool:
        # Read-only is enough for flock; 0o666 lets the umask decide, as for the journal.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise JournalLockTimeoutError(
                            errno.ETIMEDOUT,
                            f"another process held the journal lock {self.path} for over "
                            f"{self.timeout_s:g} s (a stopped worker?); stop it and plan again",
                        ) from None
                    time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"the journal lock {self.path} is not held")
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class JournalFile(JournalFileBackend):
    """Optuna's journal file backend, appended as the module docstring says. ``fsync=False``
    (the islands): the line is in the kernel's page cache when ``write`` returns, so readers
    on this host see it at once and a writer's death loses nothing it wrote; only a crash of
    the host could lose the last lines (and the search with them)."""

    def __init__(self, journal: str | Path, *, fsync: bool = True) -> None:
        super().__init__(str(journal), lock_obj=FlockJournalLock(journal))
        self.fsync = fsync

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        lines = [json.dumps(log, separators=(",", ":")) for log in logs]
        # Append mode: a line always lands at the end, even beside a writer without our lock.
        with get_lock_file(self._lock), open(self._file_path, "a+b") as f:
            torn = _cut_torn_tail(f)
            if torn and lines:
                # A reader that had read part of the torn line could splice it to the start of
                # a shorter new line; padded (JSON allows trailing blanks) past the torn
                # length, such a splice is longer than what that reader may read, so dropped.
                lines[0] = lines[0].ljust(torn + 1)
            f.write("".join(line + "\n" for line in lines).encode("utf-8"))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())


def _cut_torn_tail(f: Any) -> int:
    """Cut a last line without its newline off the file; its length (0: none)."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return 0
    end = size  # look back chunk by chunk for the last newline (only when a line is torn)
    while end > 0:
        start = max(0, end - _TAIL_BYTES)
        f.seek(start)
        cut = f.read(end - start).rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    else:
        keep = 0  # the whole file is one torn line
    f.truncate(keep)
    return size - keep


def journal_backend(journal: str | Path, *, fsync: bool = True) -> JournalFile:
    """The backend every ectplan journal storage uses."""
    return JournalFile(journal, fsync=fsync)
