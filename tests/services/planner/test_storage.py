"""Study storage: SQLite by default, database URLs with fast, password-free errors."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.storages import RDBStorage

from services.planner.storage import (
    StorageError,
    dashboard_command,
    default_storage_url,
    mask_url,
    open_storage,
    study_name_for,
)


def test_default_is_a_sqlite_file_in_the_output_folder(tmp_path):
    url = default_storage_url(tmp_path / "out")
    assert url == f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}"
    storage = open_storage(url)
    assert isinstance(storage, RDBStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.set_user_attr("score", 1.5)
    study.tell(trial, 1.5)
    again = optuna.load_study(study_name="s", storage=url)
    assert again.trials[0].user_attrs["score"] == 1.5
    assert dashboard_command(url) == f"optuna-dashboard {url}"


def test_an_unwritable_sqlite_location_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot open the SQLite study file"):
        open_storage(f"sqlite:///{blocker / 'study.db'}")
    not_a_db = tmp_path / "text.db"
    not_a_db.write_text("hello, I am not a database" * 100)
    with pytest.raises(StorageError, match=r"text\.db"):
        open_storage(f"sqlite:///{not_a_db}")


@pytest.mark.parametrize("host", ["127.0.0.1:1", "198.51.100.7:5432"])
def test_an_unreachable_postgresql_fails_within_seconds_without_the_password(host):
    pytest.importorskip("psycopg2")
    url = f"postgresql://planner:s3cret@{host}/ectplan"
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_storage(url)
    assert time.monotonic() - started < 15.0
    message = str(caught.value)
    assert "s3cret" not in message and "planner:***@" in message
    assert "check the host, port" in message
    # The database itself answered (refused, or timed out), not a missing driver.
    assert "DB access module" not in message and "pip install" not in message


def test_journal_files_and_nonsense_urls():
    assert open_storage(None) is None
    with pytest.raises(StorageError, match="neither an RDB URL"):
        open_storage("my-study")
    with pytest.raises(StorageError, match="empty"):
        open_storage(" ")


def test_masking_and_study_names():
    assert mask_url("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert study_name_for("prostatex-0000", "ect", 7) == "ectplan-prostatex-0000-ect-seed7"
    assert study_name_for("a b/c", "ire", None, multi_objective=True) == (
        "ectplan-a_b_c-ire-unseeded-mo"
    )


POSTGRES_ENV = "ECTPLAN_TEST_POSTGRES_URL"


def test_a_distributed_search_keeps_its_trials_in_postgresql(ray_cluster, lesion, ect):
    """Runs where CI provides a database: ECTPLAN_TEST_POSTGRES_URL=postgresql://.../db."""
    import os

    from services.planner.driver import plan_distributed
    from tests.services.planner.conftest import QUICK

    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = f"pg-{time.time_ns()}"
    result = plan_distributed(lesion, ect, trials=6, workers=2, storage_url=url,
                              study_name=name, refine_top_k=1, **QUICK)  # fmt: skip
    storage = open_storage(url)  # a bare postgresql:// URL goes through psycopg2
    stored = optuna.load_study(study_name=name, storage=storage)
    assert len(stored.trials) == result.trials_run == 6
    assert stored.trials[result.trial_number].params == result.params
    optuna.delete_study(study_name=name, storage=storage)


def test_focal_studies_get_their_own_default_name():
    focal = study_name_for("picai-10032", "ect", 0, target_scope="lesion")
    assert focal == "ectplan-picai-10032-ect-seed0-focal"
    assert study_name_for("picai-10032", "ect", 0, target_scope="gland") != focal
