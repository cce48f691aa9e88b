"""Island exploration, the driver's side: streams of trials in, the others' trials out.

Each live worker has up to ``PIPELINE_DEPTH`` calls out (``EvaluatorWorker.explore``: one
running, one queued behind it), each of at most ``TRIALS_PER_CALL`` trials. As a call streams
its trials, the driver keeps the best and, unless the islands share the study's journal
themselves (``journal_link``; then they are stored already and the driver adopts them into its
study as each call's trials arrive), adds each to the stored study (a new number there) and
queues it for every other worker's next call. The starting plans (the library's and the
geometric seeds) are dealt out to the calls in order, first come first served.

Budget: the trial budget counts trials handed to calls; those a call did not run (its island
stopped at the end of exploration, or its worker died) are handed back. A worker that dies
loses the trial it was evaluating: a failed trial without parameters stands for it in the
study (the island's own record of it died with the worker; with the journal shared, the
trials it appended that never reached the driver are read back from the journal); the
starting plans it had not begun go to the other calls; its replacement starts with the whole
study so far. A worker whose running call streams nothing for the stall grace is stopped as
in the driver's modes (under a time limit only past the end of exploration, without one at
any time), the trial it was running told FAIL and its call's other trials handed back;
cancellation kills the workers (their running trials are simply not recorded; with the
journal shared, the driver waits up to ``CANCEL_SETTLE_S`` for their processes to end and
records the trials they appended meanwhile; one appended later still is in the journal only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from optuna.trial import FrozenTrial
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError

from optimizer.search.local import SearchError
from optimizer.search.objective import ranking_key
from optimizer.search.study import TrialRecord, journal_path, record_of
from optimizer.search.write_through import WriteThroughStorage
from services.planner.actors import WORKER_ATTR
from services.planner.island import (
    TRIALS_PER_CALL,
    IslandSettings,
    IslandTrial,
    StopAt,
    lost_trial,
)
from services.planner.island_journal import JournalLink
from services.planner.pool import POLL_S, Worker
from services.planner.progress import InFlight
from services.planner.unit_folder import UnitFolderLink
from services.planner.unit_sharing import DEFAULT_SHARED_BYTES, SharedBundle

if TYPE_CHECKING:
    from services.planner.driver import DistributedSearch

# Calls out per worker: one running, one queued, so an actor never waits for the driver.
PIPELINE_DEPTH = 2
# How long a cancel waits for the killed islands' processes to end (of its 2 s).
CANCEL_SETTLE_S = 0.5


@dataclass
class _Call:
    worker: Worker
    handle: ActorHandle  # the actor it went to: a replaced worker has a new one
    count: int
    seeds: list[dict[str, Any]]
    received: int = 0
    heard_at: float = field(default_factory=time.monotonic)  # sent, or its last trial


def journal_link(search: DistributedSearch) -> JournalLink | None:
    """The study journal the islands can share directly: the search's storage is a journal
    file, every node of the cluster is this host (so every actor sees the file), and every
    stored trial is finished (so the journal's trial numbers are the driver's study's; a
    crashed run of an older version may have left one running). None otherwise: the driver
    relays the trials."""
    path = journal_path(search.storage_url) if search.storage_url else None
    storage = search.study._storage
    if path is None or not isinstance(storage, WriteThroughStorage) or not one_host():
        return None
    stored = storage.durable_trials(search.study._study_id)
    if len(stored) != len(search.study.get_trials(deepcopy=False)):
        return None
    return JournalLink.of(path, search.study.study_name)


def one_host() -> bool:
    """Every live node of the cluster is this host: every actor sees this host's files."""
    here = ray.util.get_node_ip_address()
    return all(n.get("NodeManagerAddress") == here for n in ray.nodes() if n.get("Alive"))


def unit_folder(search: DistributedSearch) -> UnitFolderLink | None:
    """A new folder for the islands' pair solutions when they share them and every actor runs
    on this host (``services.planner.unit_folder``); None: they share them in bundles through
    Ray's object store (also when no folder can be made: noted), or not at all."""
    if not search.share_units or search.workers < 2 or not one_host():
        return None
    try:
        return UnitFolderLink.create(DEFAULT_SHARED_BYTES, islands=search.workers)
    except OSError as exc:
        search.notes.append(
            f"the islands share pair solutions through Ray's object store: no folder could "
            f"be made for them ({type(exc).__name__}: {exc})"
        )
        return None


def _process_running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, not yet reaped). On this host: the
    islands share the journal only on a one-host cluster."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def unheard_trials(
    stored: Sequence[FrozenTrial], start: int, heard: Container[int], slot: int
) -> list[FrozenTrial]:
    """The journal's trials of this search (from ``start``) that worker slot ``slot``
    appended and the driver has not heard of. By slot, not process: a replacement's pid is
    learnt only from its first call's trials, and a resumed journal's earlier runs may have
    had the same pids."""
    return [
        t for t in stored[start:] if t.user_attrs.get(WORKER_ATTR) == slot and t.number not in heard
    ]


class IslandExploration:
    """The exploration phase of one ``DistributedSearch`` with ``islands=True``."""

    def __init__(self, search: DistributedSearch, starts: Sequence[dict[str, Any]]) -> None:
        assert search.pool is not None
        self.search = search
        self.pool = search.pool
        self.settings = IslandSettings(
            sampler=search.sampler_name,
            seed=search.seed,
            multi_objective=search.multi_objective,
            weights=search.weights,
            signature=search.space.signature(),
            share_units=search.share_units,
            journal=journal_link(search),
        )  # the unit folder is made when the exploration runs, and removed when it ends
        # Islands that append to the journal themselves: the driver relays no trial.
        self.direct = self.settings.journal is not None
        self.seeds: deque[dict[str, Any]] = deque(starts)
        self.streams: dict[Any, _Call] = {}
        self.calls: dict[int, list[_Call]] = {w.index: [] for w in self.pool.workers}
        # Per worker slot: finished trials its island has not been handed yet; a resumed
        # study's trials go to every island first.
        history = self._finished_trials()
        self.handed_at_start = len(history)
        self.outbox: dict[int, list[FrozenTrial]] = {
            w.index: [] if self.direct else list(history) for w in self.pool.workers
        }
        # With the journal shared: where this search's trials begin there, and the numbers
        # of those the driver has heard of (streamed, or written by it).
        self.journal_start = len(self._finished_trials()) if self.direct else 0
        self.heard: set[int] = set()
        # Per worker slot: the other islands' pair solutions not handed to it yet.
        self.bundles: dict[int, list[SharedBundle]] = {w.index: [] for w in self.pool.workers}
        self.bundles_handed = 0
        self.off_folder: set[int] = set()  # worker slots that share bundles, not the folder
        # Per worker slot: islands that died since its last call (their bundles are gone).
        self.dead_owners: dict[int, list[tuple[int, int]]] = {
            w.index: [] for w in self.pool.workers
        }
        # Per worker slot: trials its island sent, and how many trials its study held when it
        # asked its latest one (its own and the others'): what it learned from the others.
        self.told_by: Counter[int] = Counter()
        self.history_seen: dict[int, int] = {}

    def in_flight(self) -> tuple[InFlight, ...]:
        """One trial per worker with a call out: the one its island is evaluating."""
        return tuple(
            InFlight(None, w.index, w.pid, "coarse") for w in self.pool.alive if self.calls[w.index]
        )

    def _finished_trials(self) -> list[FrozenTrial]:
        trials = self.search.study.get_trials(deepcopy=False)
        return [t for t in trials if t.state.is_finished()]

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> str:
        """Explore until the budget, the time, a cancel or silent workers end it: "trials",
        "time", "cancelled" or "workers" (as ``DistributedSearch._explore``)."""
        try:
            self.settings = dataclasses.replace(self.settings, units=unit_folder(self.search))
            ended = self._loop()
        except BaseException:
            if self.direct:  # what the search reports next should see the told trials
                with contextlib.suppress(Exception):
                    self._adopt()
            raise
        finally:
            if self.settings.units is not None:  # an island still running fails to write
                self.settings.units.remove()
        if self.direct:
            self._adopt()
        return ended

    def settle_cancelled(self, wait_s: float = CANCEL_SETTLE_S) -> None:
        """After a cancel killed the workers (Ray kills asynchronously): with the journal
        shared, wait a moment for their processes to end, then record the trials they
        appended that never reached the driver, so the report counts what the study holds.
        The unit folder goes again: a killed island may have written to it meanwhile."""
        self._wait_for_exit(self.pool.workers, wait_s)
        if self.settings.units is not None:
            self.settings.units.remove()
        if not self.direct:
            return
        for worker in self.pool.workers:
            self._appended_unheard(worker)
        self._adopt()

    def _wait_for_exit(self, workers: Sequence[Worker], wait_s: float = CANCEL_SETTLE_S) -> None:
        """Wait (at most ``wait_s``) for these killed workers' processes on this host to end,
        so that what they appended is all there to read and nothing more is written."""
        pids = [w.pid for w in workers if w.pid is not None and self._here(w)]
        deadline = time.monotonic() + wait_s
        while any(_process_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _here(self, worker: Worker) -> bool:
        """The worker's process runs on this host, so its pid is one here. Sharing the journal,
        every worker does (an actor that cannot see the file fails the search); sharing the
        unit folder, the workers started on this host do (a replacement on a node that joined
        since would share bundles instead)."""
        if self.direct:
            return True
        return self.settings.units is not None and worker.host == socket.gethostname()

    def _adopt(self) -> None:
        """The islands' trials, from the journal into the driver's study."""
        self._storage().adopt_durable(self.search.study._study_id)

    def _loop(self) -> str:
        search = self.search
        while True:
            if search._cancelled():
                self.streams.clear()
                return "cancelled"
            self._fill()
            if not self.streams:
                break
            if search._stalled(search.explore_until, self._quiet_since()):
                self._stop_silent_workers()
                if not self.streams:
                    continue
            ready, _ = ray.wait(list(self.streams), num_returns=1, timeout=POLL_S)
            for stream in ready:
                if stream in self.streams:  # not already settled with its dead worker
                    self._take(stream)
        self.outbox.clear()  # no reference outlives the exploration
        self.bundles.clear()
        return search._exploration_stop()

    def _quiet_since(self) -> dict[int, float]:
        """Per live worker with a call out: when its running call last streamed a trial (or
        was sent; a replacement still starting, later: ``_starting_until``)."""
        return {w.index: max(self.calls[w.index][0].heard_at, self.search._starting_until(w.index))
                for w in self.pool.alive if self.calls[w.index]}  # fmt: skip

    def _fill(self) -> None:
        """Calls to every live worker up to ``PIPELINE_DEPTH``, one per worker in turn (a
        small budget is spread over the workers). Workers that came up after the end of
        exploration get one trial each, as in the driver's modes."""
        search = self.search
        late = search.explore_until is not None and time.monotonic() >= search.explore_until
        if late and search.asked == 0 and not search._late():
            for worker in self.pool.alive:
                if search.trials is None or search.asked < search.trials:
                    self._send(worker)
            return
        sent = True
        while sent:
            sent = False
            for worker in self.pool.alive:
                if len(self.calls[worker.index]) < PIPELINE_DEPTH and search._may_ask():
                    self._send(worker)
                    sent = True

    def _send(self, worker: Worker) -> None:
        search = self.search
        count = TRIALS_PER_CALL
        if search.trials is not None:
            count = min(count, search.trials - search.asked)
        stop_at: StopAt | None = None
        if search.explore_until is not None:
            left = search.explore_until - time.monotonic()
            if left > 0:  # the actor may be on another host: its own clocks (StopAt)
                stop_at = StopAt(time.time() + left, left)
            else:  # the first plans go out however late the workers came up (_fill)
                count = 1
        seeds = [self.seeds.popleft() for _ in range(min(count, len(self.seeds)))]
        incoming, self.outbox[worker.index] = self.outbox[worker.index], []
        bundles, self.bundles[worker.index] = self.bundles[worker.index], []
        dead, self.dead_owners[worker.index] = self.dead_owners[worker.index], []
        self.bundles_handed += len(bundles)
        method: Any = worker.handle.explore
        stream = method.options(num_returns="streaming").remote(
            self.settings, worker.index, worker.deaths, count, seeds, incoming, bundles, stop_at,
            dead,
        )  # fmt: skip
        call = _Call(worker, worker.handle, count, seeds)
        self.streams[stream] = call
        self.calls[worker.index].append(call)
        search.asked += count

    def _take(self, stream: Any) -> None:
        call = self.streams[stream]
        try:
            ref = next(stream)
        except StopIteration:
            self._finished(stream, call)
            return
        try:
            item: IslandTrial | list[IslandTrial] | SharedBundle = ray.get(ref)
        except RayActorError:
            self._died(call.worker)
            return
        except RayTaskError as exc:  # the island itself failed: every call would
            cause = exc.cause if exc.cause is not None else exc
            raise SearchError(f"worker {call.worker.index} could not explore: {cause}") from exc
        call.heard_at = time.monotonic()
        if isinstance(item, SharedBundle):
            if self.settings.units is not None and call.worker.index not in self.off_folder:
                self.off_folder.add(call.worker.index)  # it could not see the folder
                self.search.notes.append(
                    f"worker {call.worker.index} could not see the pair solutions' folder "
                    f"{self.settings.units.path}: it shares them through Ray's object store, "
                    "with the islands that cannot see it either"
                )
            for other in self.pool.alive:
                if other.index != call.worker.index:
                    self.bundles[other.index].append(item)
            return
        for trial in item if isinstance(item, list) else [item]:
            call.received += 1
            call.worker.pid = trial.pid
            self._record(trial, call.worker)
        if self.direct:  # a little at a time, so the end of exploration has little to read
            self._adopt()

    def _finished(self, stream: Any, call: _Call) -> None:
        """A call that ran out: the trials it did not run (its island reached the end of
        exploration) go back to the budget, their starting plans to the queue. The call
        queued behind it starts now."""
        del self.streams[stream]
        calls = self.calls[call.worker.index]
        calls.remove(call)
        if calls:
            calls[0].heard_at = time.monotonic()
        self.search.asked -= call.count - call.received
        self.seeds.extendleft(reversed(call.seeds[call.received :]))

    # ---- results -----------------------------------------------------------------------

    def _record(self, item: IslandTrial, worker: Worker) -> None:
        search = self.search
        if item.stored is not None:
            number = item.stored
            self.heard.add(number)
        else:
            assert item.trial is not None
            number = self._store(item.trial)
        record = dataclasses.replace(item.record, number=number, seconds=search._seconds())
        search.stats.pairs_solved += item.solved_pairs
        search.stats.pairs_reused += item.reused_pairs
        search.stats.pairs_adopted += item.adopted_pairs
        if item.unexpected:
            search.stats.unexpected_errors += 1
            if search.stats.unexpected_errors == 1:
                search.notes.append(f"trial {number}: {record.error}")
        if record.error is not None:
            search.stats.failed_trials += 1
        elif item.evaluation is not None and (
            search.best is None
            or ranking_key(record.passed, record.score)
            < ranking_key(search.best.passed, search.best.score)
        ):
            # Only an island's own best carries its evaluation, and the search's best is one.
            search.best = record
            search.best_evaluation = item.evaluation
        if item.trial is not None:
            for other in self.pool.alive:
                if other.index != worker.index:
                    self.outbox[other.index].append(item.trial)
        self.told_by[worker.index] += 1
        self.history_seen[worker.index] = item.seen
        self._told(record)

    def _store(self, trial: FrozenTrial) -> int:
        """Add a finished trial to the stored study (written through; with islands that
        append to the journal, to the journal only, beside theirs); its number there."""
        study = self.search.study
        if self.direct:
            number = self._storage().write_durable(study._study_id, trial)
            self.heard.add(number)
            return number
        storage = study._storage
        trial_id = storage.create_new_trial(study._study_id, template_trial=trial)
        return storage.get_trial_number_from_id(trial_id)

    def _storage(self) -> WriteThroughStorage:
        storage = self.search.study._storage
        assert isinstance(storage, WriteThroughStorage)  # journal_link() asked for one
        return storage

    def _told(self, record: TrialRecord) -> None:
        search = self.search
        search.stats.trials_told += 1
        search.history.append(record)
        search._report("explore", "")

    def _lost(self, message: str, worker: Worker) -> None:
        """The trial a worker was evaluating when it died or was stopped: failed, no params."""
        number = self._store(lost_trial(message, worker.index, worker.pid))
        seconds = self.search._seconds()
        self.search.stats.failed_trials += 1
        self._told(TrialRecord(number, None, float("inf"), False, 0, 0, (), seconds, message))

    # ---- faults ------------------------------------------------------------------------

    def _drop_calls(self, worker: Worker, message: str) -> None:
        """Settle a dead or stopped worker's calls: the trial it was running is lost, the
        trials not begun go back to the budget and its unbegun starting plans to the queue."""
        calls = self.calls[worker.index]
        self.calls[worker.index] = []
        for stream in [s for s, c in self.streams.items() if c.worker is worker]:
            del self.streams[stream]
        if not calls:
            return
        # Islands appending to the journal: trials it appended that never reached the driver
        # (it died in between) are read back from there, as received by their calls.
        unheard = self._appended_unheard(worker)
        for call in calls:
            take = min(unheard, call.count - call.received)
            call.received += take
            unheard -= take
        # The call it was running: the first with trials still to come (a call whose trials
        # all arrived may still be sharing its solutions, or the next has begun). None: it
        # died after its last trial, with nothing queued.
        running = next((i for i, c in enumerate(calls) if c.received < c.count), None)
        back: list[dict[str, Any]] = []
        if running is not None:
            self._lost(message, worker)
            for i, call in enumerate(calls[running:], start=running):
                begun = call.received + (1 if i == running else 0)  # the lost one counts
                self.search.asked -= call.count - begun
                back += call.seeds[begun:]
        self.seeds.extendleft(reversed(back))

    def _appended_unheard(self, worker: Worker) -> int:
        """Islands appending to the journal: the trials the worker's slot appended whose items
        never reached the driver (it died in between), recorded here from the journal."""
        if not self.direct:
            return 0
        stored = self._storage().durable_trials(self.search.study._study_id)
        unheard = unheard_trials(stored, self.journal_start, self.heard, worker.index)
        for trial in unheard:
            self.heard.add(trial.number)
            self.told_by[worker.index] += 1
            record = record_of(trial, self.search._seconds())
            if record.error is not None:
                self.search.stats.failed_trials += 1
            self._told(record)
        return len(unheard)

    def _died(self, worker: Worker) -> None:
        search = self.search
        search.stats.worker_deaths += 1
        self._forget_bundles(worker)
        self._drop_calls(
            worker,
            f"not evaluated: worker {worker.index} (pid {worker.pid}) died during the "
            "evaluation (RayActorError); its parameters died with it",
        )
        self.pool.died(worker)  # PoolError when it was the last: the search reports it
        # The replacement's island starts empty: it is handed the whole study so far (and the
        # live islands' bundles still pending for the slot), or reads it from the journal.
        self.outbox[worker.index] = [] if self.direct else self._finished_trials()

    def _forget_bundles(self, worker: Worker) -> None:
        """The pair solutions ``worker``'s actor put in Ray's object store died with it."""
        owner = (worker.index, worker.deaths)
        for index, pending in self.bundles.items():
            self.bundles[index] = [b for b in pending if b.owner != owner]
            if index != worker.index:
                self.dead_owners[index].append(owner)

    def _stop_silent_workers(self) -> None:
        """Past the grace (``_stalled``): stop the workers whose running call has not streamed
        a trial for a whole grace (a stopped process); without a time limit one that had
        answered since it started gets a new actor in its slot (``DistributedSearch``'s
        ``_replaces``), whose island starts as a dead worker's replacement does."""
        search = self.search
        assert search.stall_grace_s is not None
        while self.streams:  # first what has arrived: a worker that just answered is not silent
            ready, _ = ray.wait(list(self.streams), num_returns=len(self.streams), timeout=0)
            if not ready:
                break
            for stream in ready:
                if stream in self.streams:
                    self._take(stream)
        now = time.monotonic()
        quiet = self._quiet_since()
        silent = [w for w in self.pool.alive
                  if w.index in quiet and now - quiet[w.index] >= search.stall_grace_s]  # fmt: skip
        if not silent:
            return
        search._stall_seen = True
        message = search._stall_message("not evaluated")
        # All killed first: a stopped process may hold the journal's lock, which the lost
        # trials' writes then wait for (the kernel drops it with the process). Ray takes ~5 s
        # to end a stopped actor; on a one-host cluster (the journal or the unit folder
        # shared) the process is on this host, so it is killed at once as well.
        for worker in silent:
            self.pool.kill(worker)
            self._forget_bundles(worker)  # the search may go on without a time limit
            if worker.pid is not None and self._here(worker):
                with contextlib.suppress(OSError):
                    os.kill(worker.pid, signal.SIGKILL)
        self._wait_for_exit(silent)
        replaced: list[Worker] = []
        for worker in silent:
            self._drop_calls(worker, message)  # by the stopped actor's pid
            if not search._replaces(worker):
                self.pool.retire(worker)
            elif self.pool.replace_silent(worker):
                replaced.append(worker)
                self.outbox[worker.index] = [] if self.direct else self._finished_trials()
        for what, workers in (("replaced", replaced),
                              ("stopped", [w for w in silent if w not in replaced])):  # fmt: skip
            if workers:
                search.notes.append(
                    search._stall_message(
                        f"worker(s) {', '.join(str(w.index) for w in workers)} {what}: the "
                        "trial each was evaluating was told FAIL"
                    )
                )
