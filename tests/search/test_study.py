"""Storage resolution and the ask/tell helpers a Ray driver uses."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage

from optimizer.search.samplers import make_sampler
from optimizer.search.space import SearchSpace
from optimizer.search.study import (
    SearchStudyError,
    ask,
    completed,
    open_study,
    record_of,
    resolve_storage,
    tell,
    tell_error,
)


def test_storage_strings(tmp_path):
    assert resolve_storage(None) is None
    assert resolve_storage("sqlite:///x.db") == "sqlite:///x.db"
    assert isinstance(resolve_storage(tmp_path / "a.jsonl"), JournalStorage)
    assert isinstance(resolve_storage(f"journal:{tmp_path / 'b'}"), JournalStorage)
    with pytest.raises(SearchStudyError, match="neither an RDB URL"):
        resolve_storage("study.txt")


def test_batch_ask_then_tell_sets_constraints_and_attributes(phantom_case, ect, ect_coarse):
    space = SearchSpace(phantom_case, ect)
    study = open_study(space, make_sampler("tpe", seed=0))
    batch = ask(study, space, 3)
    assert len({p.number for p in batch}) == 3
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
    record = tell(study, batch[0], ect_coarse.evaluate(batch[0].plan), seconds=0.1)
    failed = tell_error(study, batch[1], "needle outside the grid", seconds=0.2)
    tell(study, batch[2], ect_coarse.evaluate(batch[2].plan), seconds=0.3)
    done = completed(study)
    assert [t.number for t in done] == [batch[0].number, batch[2].number]
    trial = done[0]
    assert set(trial.constraints) == {*study.user_attrs["constraint_names"]}
    assert trial.user_attrs["score"] == pytest.approx(record.score)
    assert all(v <= 0 for v in trial.constraints.values()) == record.passed
    assert failed.error == "needle outside the grid" and failed.values is None
    # What another process told reads back as the record its tell returned.
    stored = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert record_of(stored[batch[0].number], 0.1) == record
    assert record_of(stored[batch[1].number], 0.2) == failed
