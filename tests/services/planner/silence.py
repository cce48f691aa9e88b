"""A worker that stops answering, for the stall tests: SIGSTOP keeps its process alive, so Ray
never learns it died and its plans (or its island's stream) never return."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from optimizer.search.local import SearchProgress
from services.planner.driver import DistributedSearch
from services.planner.progress import ClusterProgress


def running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, not yet reaped by its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class StopWhenBusy:
    """A progress callback: SIGSTOP worker ``slot`` once, in exploration once ``after`` trials
    are told and it holds a plan; with ``phase="refine"`` at the report that starts the fine
    re-evaluation, before its candidates go out. ``stopped`` holds its pid after that."""

    def __init__(
        self, search: DistributedSearch, slot: int, after: int = 0, phase: str = "explore"
    ) -> None:
        self.search, self.slot, self.after, self.phase = search, slot, after, phase
        self.stopped: list[int] = []

    def __call__(self, p: SearchProgress) -> None:
        assert isinstance(p, ClusterProgress)
        busy = self.phase == "refine" or any(t.worker == self.slot for t in p.in_flight)
        if p.phase != self.phase or p.trials_done < self.after or not busy or self.stopped:
            return
        assert self.search.pool is not None
        pid = self.search.pool.workers[self.slot].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        self.stopped.append(pid)

    def kill(self, wait_s: float = 0.0) -> None:
        """Kill the stopped process outright (the search abandoned it), waiting up to
        ``wait_s`` for it to be gone."""
        deadline = time.monotonic() + wait_s
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[threading.Event]:
    """An event set after ``seconds``: passed as the search's cancel event, it turns a broken
    stall path, which would wait for ever, into a cancelled search the test can fail on."""
    event = threading.Event()
    timer = threading.Timer(seconds, event.set)
    timer.start()
    try:
        yield event
    finally:
        timer.cancel()
