"""Live progress of a distributed search: what the driver reports, and a rich view of it.

``ClusterProgress`` extends the search library's ``SearchProgress`` with the workers' side:
how many are alive, which trial each is working on (with the actor's process id) and how many
trials were lost. ``ProgressView`` renders it in a terminal (``ectplan plan``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from optimizer.search.local import SearchProgress


@dataclass(frozen=True)
class InFlight:
    """A trial being evaluated: on which worker (index, and its process id when known).
    ``trial`` is None for an island's trial (numbered in the study once it is told)."""

    trial: int | None
    worker: int
    pid: int | None
    fidelity: str


@dataclass(frozen=True)
class ClusterProgress(SearchProgress):
    """``phase`` is also "start" (building cases, connecting, starting workers)."""

    message: str = ""
    workers: int = 0
    workers_alive: int = 0
    failed_trials: int = 0
    worker_deaths: int = 0
    in_flight: tuple[InFlight, ...] = ()


def _score(p: SearchProgress) -> str:
    if p.best_score is None:
        return "-"
    verdict = "[green]passes[/]" if p.best_passed else "[yellow]fails[/]"
    return f"{p.best_score:.4g} (trial {p.best_trial}, {verdict})"


class ProgressView:
    """A rich Live panel updated from ``on_progress``; use as a context manager."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.started = time.monotonic()
        self.last: SearchProgress | None = None
        self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> ProgressView:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.update(self._render())
        self._live.__exit__(kind, value, traceback)
        if not self.console.is_terminal:
            self.console.line()  # a redirected Live ends without a newline

    def update(self, progress: SearchProgress) -> None:
        self.last = progress
        self._live.update(self._render())

    def _render(self) -> Group:
        p = self.last
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        elapsed = time.monotonic() - self.started
        if p is None:
            table.add_row("phase", "starting")
        else:
            budget = f" of {p.trials_budget}" if p.trials_budget is not None else ""
            phase = p.phase
            if isinstance(p, ClusterProgress) and p.message:
                phase = f"{phase}: {p.message}"
            table.add_row("phase", phase)
            table.add_row("trials", f"{p.trials_done}{budget} ({p.trials_per_s:.2f} per s)")
            table.add_row("best score", _score(p))
            if p.criteria_applicable:
                table.add_row("criteria met", f"{p.criteria_met} of {p.criteria_applicable}")
            if isinstance(p, ClusterProgress):
                workers = f"{p.workers_alive} of {p.workers} alive"
                if p.worker_deaths:
                    workers += f", {p.worker_deaths} died"
                table.add_row("workers", workers)
                if p.failed_trials:
                    table.add_row("failed trials", str(p.failed_trials))
        table.add_row("elapsed", f"{elapsed:.1f} s")
        return Group(Text(self.title, style="bold cyan"), table)
