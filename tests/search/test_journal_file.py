"""Appending to a journal study file: an exclusive lock between processes that dies with a
process killed holding it, a bounded wait for a stopped holder, and a torn last line cut off
before the next append."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from optimizer.search.journal_file import (
    FlockJournalLock,
    JournalFile,
    JournalLockTimeoutError,
    journal_backend,
)

HOLD = """
import sys, time
from optimizer.search.journal_file import FlockJournalLock
FlockJournalLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""
TAKE = """
import sys
from optimizer.search.journal_file import FlockJournalLock
lock = FlockJournalLock(sys.argv[1])
print("ready", flush=True)
lock.acquire()
print("took", flush=True)
"""


def _hold(journal: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, journal], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _stop(*processes: subprocess.Popen[str] | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def test_a_writer_killed_holding_the_lock_does_not_block_the_others(tmp_path):
    journal = str(tmp_path / "study.journal.log")
    holder = _hold(journal)
    waiting: subprocess.Popen[str] | None = None
    try:
        # While it holds the lock, another writer waits.
        waiting = subprocess.Popen([sys.executable, "-c", TAKE, journal], stdout=subprocess.PIPE,
                                   text=True)  # fmt: skip
        assert waiting.stdout is not None and waiting.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # past its imports: trying to take the lock
        assert waiting.poll() is None
        # Killed holding it: the kernel drops its lock, and the waiting writer has it at once
        # (Optuna's symlink lock would make it wait 30 s).
        os.kill(holder.pid, signal.SIGKILL)
        out, _ = waiting.communicate(timeout=10)
        assert waiting.returncode == 0 and out.strip() == "took"
    finally:
        _stop(holder, waiting)


def test_a_holder_that_never_lets_go_is_an_error_after_the_timeout(tmp_path):
    journal = str(tmp_path / "study.journal.log")
    holder = _hold(journal)
    try:
        os.kill(holder.pid, signal.SIGSTOP)  # a stopped worker
        started = time.monotonic()
        with pytest.raises(JournalLockTimeoutError, match=r"held the journal lock .* over 0\.5 s"):
            FlockJournalLock(journal, timeout_s=0.5).acquire()
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        _stop(holder)


def test_appends_take_ectplans_lock_and_cut_a_torn_last_line(tmp_path):
    journal = tmp_path / "study.journal.log"
    backend = journal_backend(journal)
    assert isinstance(backend, JournalFile) and backend.fsync
    assert isinstance(backend._lock, FlockJournalLock)
    assert not journal_backend(journal, fsync=False).fsync
    backend.append_logs([{"op": 1}, {"op": 2}])
    assert list(backend.read_logs(0)) == [{"op": 1}, {"op": 2}]
    # A writer killed mid-line: Optuna's reader skips the torn line while it is last ...
    with journal.open("ab") as f:
        f.write(b'{"op":3,"half')
    fresh = journal_backend(journal)
    assert list(fresh.read_logs(0)) == [{"op": 1}, {"op": 2}]
    # ... and the next append cuts it off instead of gluing onto it.
    fresh.append_logs([{"op": 4}])
    assert list(journal_backend(journal).read_logs(0)) == [{"op": 1}, {"op": 2}, {"op": 4}]
    torn = len(b'{"op":3,"half')
    assert journal.read_bytes().split(b"\n")[-3:] == [b'{"op":2}', b'{"op":4}'.ljust(torn + 1), b""]
    # The line after a cut is padded past the torn length: no reader can splice the two.
    with journal.open("ab") as f:
        f.write(b'{"op":5,"a torn line longer than the next"')
    fresh.append_logs([{"op": 6}])
    last = journal.read_bytes().split(b"\n")[-2]
    assert last.startswith(b'{"op":6}') and len(last) > len(b'{"op":5,"a torn line longer than')
    assert list(journal_backend(journal).read_logs(0))[-1] == {"op": 6}
    with pytest.raises(RuntimeError, match="is not held"):
        FlockJournalLock(journal).release()


def test_a_torn_line_longer_than_a_chunk_or_the_whole_file_is_cut(tmp_path):
    journal = tmp_path / "study.journal.log"
    journal.write_bytes(b'{"op":1}\n' + b"x" * (3 * 65536 + 7))
    journal_backend(journal).append_logs([{"op": 2}])
    assert [log["op"] for log in journal_backend(journal).read_logs(0)] == [1, 2]
    alone = tmp_path / "alone.journal.log"
    alone.write_bytes(b'{"op":1,"ha')
    journal_backend(alone).append_logs([{"op": 3}])
    assert list(journal_backend(alone).read_logs(0)) == [{"op": 3}]


def test_writers_naming_the_journal_through_a_link_share_its_lock(tmp_path):
    journal = tmp_path / "study.journal.log"
    journal.touch()
    link = tmp_path / "link.journal.log"
    link.symlink_to(journal)
    assert FlockJournalLock(link).path == FlockJournalLock(journal).path
