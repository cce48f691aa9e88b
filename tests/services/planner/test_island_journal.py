"""Islands' access to the study journal: each appends its trials, reads the others', and a
journal it cannot see is a clear error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from optimizer.search.study import record_of
from optimizer.search.write_through import WriteThroughStorage
from services.planner.actors import WORKER_ATTR, WORKER_PID_ATTR
from services.planner.island_exploration import unheard_trials
from services.planner.island_journal import JournalLink, JournalUnreachableError, SharedJournal
from services.planner.storage import default_storage_url, open_storage


def _trial(value: float, worker: int) -> optuna.trial.FrozenTrial:
    return create_trial(
        params={"x": value},
        distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
        value=value,
        user_attrs={"worker": worker},
    )


@pytest.fixture
def journal(tmp_path) -> tuple[WriteThroughStorage, int, JournalLink]:
    """The driver's study on a journal file, as DistributedSearch opens it."""
    url = default_storage_url(tmp_path)
    storage = WriteThroughStorage(open_storage(url))
    study = optuna.create_study(storage=storage, study_name="shared")
    return storage, study._study_id, JournalLink.of(Path(url.removeprefix("journal:")), "shared")


def test_islands_read_each_others_trials_and_the_driver_adopts_them(journal):
    storage, study_id, link = journal
    first, second = SharedJournal(link, 0), SharedJournal(link, 1)
    assert first.news() == [] and second.news() == []
    assert first.append(_trial(1.0, 0)) == 0
    assert second.append(_trial(2.0, 1)) == 1
    assert first.append(_trial(3.0, 0)) == 2
    # Each sees the others' trials once, never its own.
    assert [t.params["x"] for t in second.news()] == [1.0, 3.0]
    assert [t.params["x"] for t in first.news()] == [2.0]
    assert first.news() == [] and second.news() == []
    # The driver's failed trial for a dead worker goes beside theirs, numbered in turn.
    lost = create_trial(state=TrialState.FAIL, user_attrs={"error": "died"})
    assert storage.write_durable(study_id, lost) == 3
    assert [t.state for t in first.news()] == [TrialState.FAIL]
    # Adopted into the driver's study with the journal's numbers, not written again.
    assert storage.adopt_durable(study_id) == 4
    trials = storage.get_all_trials(study_id)
    assert [(t.number, t.params.get("x")) for t in trials] == [
        (0, 1.0), (1, 2.0), (2, 3.0), (3, None),
    ]  # fmt: skip
    assert len(storage.durable_trials(study_id)) == 4
    # The driver's next trial is written through after them.
    storage.create_new_trial(study_id, template_trial=_trial(4.0, -1))
    assert [t.number for t in storage.durable_trials(study_id)] == [0, 1, 2, 3, 4]
    assert storage.adopt_durable(study_id) == 0
    assert record_of(trials[3], 1.0).error == "died"


def test_a_journal_on_another_host_or_without_the_study_is_a_clear_error(journal, tmp_path):
    _, _, link = journal
    elsewhere = dataclasses.replace(link, path=str(tmp_path / "not-here" / "study.journal.log"))
    with pytest.raises(JournalUnreachableError, match="worker 2 cannot see the study journal"):
        SharedJournal(elsewhere, 2)
    assert not (tmp_path / "not-here").exists()  # nothing made where the driver is not
    # Another file at the same path (another host's filesystem, say) is not the driver's.
    other = tmp_path / "other.journal.log"
    other.write_bytes(Path(link.path).read_bytes())
    with pytest.raises(JournalUnreachableError, match="worker 0 cannot see"):
        SharedJournal(dataclasses.replace(link, path=str(other)), 0)
    with pytest.raises(JournalUnreachableError, match="no study 'other'"):
        SharedJournal(dataclasses.replace(link, study_name="other"), 0)


def test_a_dead_workers_unheard_trials_are_found_by_slot_past_this_searchs_start():
    def trial(number: int, slot: int, pid: int) -> FrozenTrial:
        t = _trial(float(number), slot)
        t.number = number
        t.set_user_attr(WORKER_ATTR, slot)
        t.set_user_attr(WORKER_PID_ATTR, pid)
        return t

    # Trials 0-1 are a resumed run's (slot 1 had pid 7 then too); this search's begin at 2.
    stored = [trial(0, 1, 7), trial(1, 0, 8), trial(2, 1, 7), trial(3, 0, 9), trial(4, 1, 7),
              trial(5, 1, 11)]  # fmt: skip
    # Heard: 2 (streamed) and 4 (a lost trial the driver wrote). Slot 1's replacement (pid 11,
    # not known yet) appended 5 before it died too.
    assert [t.number for t in unheard_trials(stored, 2, {2, 4}, 1)] == [5]
    assert [t.number for t in unheard_trials(stored, 2, {2, 4}, 0)] == [3]
    assert unheard_trials(stored, 2, {2, 3, 4, 5}, 1) == []
