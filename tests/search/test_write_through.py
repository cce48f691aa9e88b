"""The in-memory study written through to a durable storage, on real SQLite and journal files."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages import JournalStorage, get_storage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from optimizer.search.write_through import (
    DurableWriteError,
    WriteThroughStorage,
    finished_template,
)

DISTRIBUTIONS = {"x": FloatDistribution(0.0, 1.0), "n": IntDistribution(2, 6)}


def _durable(kind: str, tmp_path: Path) -> optuna.storages.BaseStorage:
    if kind == "sqlite":
        return get_storage(f"sqlite:///{tmp_path / 'study.db'}")
    return JournalStorage(JournalFileBackend(str(tmp_path / "study.journal.log")))


def _study(storage: optuna.storages.BaseStorage, name: str = "s") -> optuna.Study:
    return optuna.create_study(
        storage=storage, study_name=name, load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=1),
    )  # fmt: skip


def _stored(durable: optuna.storages.BaseStorage, name: str = "s") -> list:
    return optuna.load_study(study_name=name, storage=durable).trials


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_finished_trials_reach_the_durable_storage_whole(kind, tmp_path):
    durable = _durable(kind, tmp_path)
    study = _study(WriteThroughStorage(durable))
    study.set_user_attr("case", "prostatex-0000")
    for i in range(4):
        trial = study.ask(DISTRIBUTIONS)
        trial.set_user_attr("score", float(i))
        trial.set_constraint("coverage", -1.0)
        if i == 2:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, trial.params["x"])
    stored = _stored(durable)
    assert [t.number for t in stored] == [0, 1, 2, 3]
    assert [t.state for t in stored] == [TrialState.COMPLETE] * 2 + [
        TrialState.FAIL, TrialState.COMPLETE
    ]  # fmt: skip
    for mine, theirs in zip(study.trials, stored, strict=True):
        assert theirs.params == mine.params and theirs.values == mine.values
        assert theirs.user_attrs == mine.user_attrs
        assert theirs.system_attrs == mine.system_attrs  # constraints live there
    assert optuna.load_study(study_name="s", storage=durable).user_attrs["case"] == "prostatex-0000"


def test_a_trial_finishing_early_waits_for_the_earlier_ones(tmp_path):
    durable = _durable("sqlite", tmp_path)
    study = _study(WriteThroughStorage(durable))
    first, second, third = (study.ask(DISTRIBUTIONS) for _ in range(3))
    study.tell(third, 0.3)
    assert _stored(durable) == []  # held back: the numbers on disk stay the run's
    study.tell(first, 0.1)
    assert [t.number for t in _stored(durable)] == [0]
    study.tell(second, 0.2)
    assert [(t.number, t.value) for t in _stored(durable)] == [(0, 0.1), (1, 0.2), (2, 0.3)]


def test_flush_writes_what_an_abandoned_trial_held_back(tmp_path):
    durable = _durable("journal", tmp_path)
    storage = WriteThroughStorage(durable)
    study = _study(storage)
    study.ask(DISTRIBUTIONS)  # never told
    study.tell(study.ask(DISTRIBUTIONS), 0.5)
    assert _stored(durable) == []
    assert storage.flush() == 1
    assert [t.value for t in _stored(durable)] == [0.5]
    assert storage.flush() == 0


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_reopening_loads_finished_trials_and_numbers_on(kind, tmp_path):
    durable = _durable(kind, tmp_path)
    first_run = _study(WriteThroughStorage(durable))
    first_run.enqueue_trial({"x": 0.25, "n": 3})
    first_run.enqueue_trial({"x": 0.75, "n": 4})  # never asked: not written
    first_run.tell(first_run.ask(DISTRIBUTIONS), 1.0)
    first_run.ask(DISTRIBUTIONS)  # left RUNNING by a "crash": not written
    assert len(_stored(durable)) == 1

    again = _study(WriteThroughStorage(_durable(kind, tmp_path)))
    assert [(t.number, t.params, t.state) for t in again.trials] == [
        (0, {"x": 0.25, "n": 3}, TrialState.COMPLETE)
    ]
    assert again.best_value == 1.0
    again.tell(again.ask(DISTRIBUTIONS), 0.5)
    assert [t.number for t in _stored(durable)] == [0, 1]
    assert again.best_value == 0.5


def test_add_trial_of_a_finished_trial_is_written(tmp_path):
    durable = _durable("sqlite", tmp_path)
    study = _study(WriteThroughStorage(durable))
    study.add_trial(
        optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": DISTRIBUTIONS["x"]},
                                  value=2.0)
    )  # fmt: skip
    assert [t.value for t in _stored(durable)] == [2.0]


def test_a_missing_study_is_a_key_error_as_with_any_storage(tmp_path):
    storage = WriteThroughStorage(_durable("journal", tmp_path))
    with pytest.raises(KeyError):
        optuna.load_study(study_name="nope", storage=storage)


def test_a_failed_write_is_kept_for_a_retry_in_number_order(tmp_path):
    path = tmp_path / "study.journal.log"
    durable = JournalStorage(JournalFileBackend(str(path)))
    study = _study(WriteThroughStorage(durable))
    study.tell(study.ask(DISTRIBUTIONS), 0.5)
    path.rename(tmp_path / "aside.log")
    path.mkdir()  # every write now fails as on a lost volume
    trial = study.ask(DISTRIBUTIONS)
    with pytest.raises(DurableWriteError, match="trial 1 could not be written") as err:
        study.tell(trial, 0.25)
    assert not isinstance(err.value, RuntimeError)  # not taken for Optuna's "already finished"
    with pytest.raises(DurableWriteError, match="trial 1"):  # tried again first, in order
        study.tell(study.ask(DISTRIBUTIONS), 0.75)
    path.rmdir()
    (tmp_path / "aside.log").rename(path)
    assert study._storage.flush() == 2
    stored = _stored(JournalStorage(JournalFileBackend(str(path))))
    assert [(t.number, t.value) for t in stored] == [(0, 0.5), (1, 0.25), (2, 0.75)]


def test_a_finished_template_copies_into_memory_cheaply_and_whole():
    trial = optuna.trial.create_trial(
        params={"x": 0.5, "n": 3},
        distributions={"x": FloatDistribution(0, 1), "n": IntDistribution(2, 6)},
        values=[1.25],
        user_attrs={"score_parts": {"coverage": 1.0}, "failed_required": ["rectum"]},
        system_attrs={"fixed_params": {"n": 3}},
        intermediate_values={0: 2.0},
    )
    memory = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    memory.add_trial(finished_template(trial))
    memory.add_trial(trial)  # Optuna's own deep copy, for comparison
    cheap, deep = memory.trials
    assert type(cheap) is FrozenTrial and cheap.number == 0 and deep.number == 1
    for name in ("state", "values", "params", "distributions", "user_attrs", "system_attrs",
                 "intermediate_values", "datetime_start", "datetime_complete"):  # fmt: skip
        assert getattr(cheap, name) == getattr(deep, name) == getattr(trial, name), name
    # Its own dictionaries: the study's trial and the template's source change apart.
    assert cheap.params is not trial.params and cheap.user_attrs is not trial.user_attrs
    trial.user_attrs["late"] = True
    assert "late" not in cheap.user_attrs
