"""Islands that share their trials through the study's journal file, with no driver between.

With the embedded journal storage on a one-host cluster, every actor can open the journal the
driver opened. Each island then appends each trial it tells to the journal itself (one line,
under the journal's file lock, as Optuna's JournalStorage does for several processes) and
reads the trials the other islands appended since its last trial before it asks. The driver
no longer adds every trial to the study and hands it to every other island (~3 ms of driver
CPU per trial, beside the workers on a small machine); it only keeps the budget, the best and
the faults, and adopts the journal's trials into its study when exploration ends
(``WriteThroughStorage.adopt_durable``). Elsewhere (a database, workers on other hosts) the
driver relays the trials (``services.planner.island_exploration``).

The journal's trial numbers are the study's: islands append finished trials only, and the
driver writes nothing to the journal while they explore except, through the same lock, the
failed trial that stands for one a dead worker was evaluating.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file  # Optuna is pinned
from optuna.trial import FrozenTrial


class _PageCacheFileBackend(JournalFileBackend):
    """Optuna's journal file, appended under its lock without ``fsync``: the line is in the
    kernel's page cache when ``write`` returns, so the other islands and the driver on this
    host read it at once and a worker's death loses nothing it wrote; only a crash of the host
    itself could lose the last lines (and the search with them). Why: an island waits for its
    own appends, and an fsync per trial cost a lone island 2-7 ms of a ~15 ms trial on the
    development machine's disk (the driver's own writes still sync)."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with get_lock_file(self._lock), open(self._file_path, "ab") as f:
            f.write(text.encode("utf-8"))


class JournalUnreachableError(RuntimeError):
    """An actor cannot open the study's journal file (it runs on another host)."""


@dataclass(frozen=True)
class JournalLink:
    """Where the islands' shared study is: the journal file and the study's name in it."""

    path: str
    study_name: str


class SharedJournal:
    """One island's access to the study journal: append its trials, read the others'."""

    def __init__(self, link: JournalLink, slot: int) -> None:
        # Optuna would create a missing file: on another host that is an empty journal that
        # no one else reads, so a missing file is an error here.
        if not Path(link.path).is_file():
            raise JournalUnreachableError(
                f"worker {slot} cannot see the study journal {link.path} (it runs on another "
                "host than the driver); island exploration shares trials through the journal "
                "only on a one-host cluster"
            )
        self.storage = JournalStorage(_PageCacheFileBackend(link.path))
        try:
            self.study_id = self.storage.get_study_id_from_name(link.study_name)
        except KeyError:
            raise JournalUnreachableError(
                f"worker {slot} found no study {link.study_name!r} in {link.path}"
            ) from None
        self.read = 0  # journal trials already looked at
        self.own: set[int] = set()  # trial ids this island appended

    def append(self, trial: FrozenTrial) -> int:
        """Append a finished trial; its number in the study."""
        trial_id = self.storage.create_new_trial(self.study_id, template_trial=trial)
        self.own.add(trial_id)
        return self.storage.get_trial_number_from_id(trial_id)

    def news(self) -> list[FrozenTrial]:
        """The finished trials others appended since the last call (a resumed study's
        earlier trials on the first)."""
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        new = trials[self.read :]
        self.read = len(trials)
        return [t for t in new if t._trial_id not in self.own and t.state.is_finished()]
