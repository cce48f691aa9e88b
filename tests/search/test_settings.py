"""The search data files load, and a broken copy is refused with the key named."""

from __future__ import annotations

from importlib import resources

import pytest

from optimizer.search.settings import (
    SearchSettingsError,
    load_score_weights,
    load_space_settings,
)


def shipped(name: str) -> str:
    return resources.files("optimizer.search").joinpath(f"data/{name}").read_text()


def test_shipped_files_load():
    space = load_space_settings()
    assert space.exposures_mm[0] == space.exposure_min_mm
    assert space.exposures_mm[-1] == space.exposure_max_mm
    weights = load_score_weights()
    assert weights.scale("ml") > 0 and weights.scale("unknown unit") == weights.default_scale


def test_missing_key_is_named(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(shipped("space.toml").replace("adjacent_factor = 1.25", ""))
    with pytest.raises(SearchSettingsError, match=r"space.toml: missing key pairs.adjacent_factor"):
        load_space_settings(path)


def test_range_must_be_whole_steps(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(shipped("space.toml").replace("max_mm = 40.0", "max_mm = 42.0"))
    with pytest.raises(SearchSettingsError, match=r"exposure range 10\.0\.\.42\.0"):
        load_space_settings(path)


def test_negative_weight_is_refused(tmp_path):
    path = tmp_path / "score.toml"
    path.write_text(shipped("score.toml").replace("heat = 1.0", "heat = -1.0"))
    with pytest.raises(SearchSettingsError, match=r"weight\.heat must be >= 0"):
        load_score_weights(path)
