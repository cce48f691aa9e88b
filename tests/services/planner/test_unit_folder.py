"""Pair solutions handed between islands on one host through the search's unit folder."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optimizer.evaluate.evaluator import CachedUnit, PlanEvaluator
from optimizer.evaluate.protocol import load_protocol
from services.planner.unit_folder import (
    UnitFolder,
    UnitFolderLink,
    UnitFolderUnreachableError,
    read_unit,
    write_unit,
    writer_of,
)
from tests.evaluate.cases import lesion_case, square_plan


@pytest.fixture(scope="module")
def evaluators() -> tuple[PlanEvaluator, PlanEvaluator, PlanEvaluator]:
    case, ect = lesion_case(spacing_mm=2.0), load_protocol("ect")
    return tuple(PlanEvaluator(case, ect, nonlinear=False) for _ in range(3))  # type: ignore[return-value]


def _criteria(evaluator: PlanEvaluator, plan: object) -> list[tuple[str, str, float]]:
    return [(r.id, r.status, r.value) for r in evaluator.evaluate(plan).results]  # type: ignore[arg-type]


def _solved(solver: PlanEvaluator) -> tuple[str, CachedUnit]:
    """A pair of the square plan, solved: its key and its unit solution."""
    plan = square_plan("ect", 1100.0, 8, 5.0)
    solver.evaluate(plan)
    key = plan.pair_geometry_hash(0)
    cached = solver.cached_unit(key)
    assert cached is not None
    return key, cached


def _square_pairs(solver: PlanEvaluator) -> tuple[list[str], CachedUnit]:
    """The square plan's 6 pairs, solved: their keys and the first one's unit solution."""
    plan = square_plan("ect", 1100.0, 8, 5.0)
    solver.evaluate(plan)
    keys = plan.pair_geometry_hashes()
    one = solver.cached_unit(keys[0])
    assert one is not None
    return keys, one


def test_a_unit_reads_back_as_written(tmp_path: Path, evaluators):
    solver = evaluators[0]
    key, cached = _solved(solver)
    nbytes = write_unit(tmp_path, key, cached, writer=0, order=0)
    assert nbytes == (tmp_path / key).stat().st_size and nbytes > cached.nbytes
    assert [p.name for p in tmp_path.iterdir()] == [key]  # no temporary file left behind
    back = read_unit(tmp_path / key, key, solver.anatomy.grid.shape)
    assert back.anode_geometry == cached.anode_geometry
    assert back.solution.key == cached.solution.key
    assert back.solution.iterations == cached.solution.iterations
    assert back.solution.anode_current_A == cached.solution.anode_current_A
    for name in ("potential_V", "field_V_per_cm"):
        ours, theirs = getattr(back.solution, name), getattr(cached.solution, name)
        assert ours.dtype == theirs.dtype and ours.flags.writeable
        np.testing.assert_array_equal(ours, theirs)

    with pytest.raises(ValueError, match="does not hold pair 'other'"):
        read_unit(tmp_path / key, "other", solver.anatomy.grid.shape)
    with pytest.raises(ValueError, match="grid"):
        read_unit(tmp_path / key, key, (3, 3, 3))
    data = (tmp_path / key).read_bytes()
    (tmp_path / "short").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shorter"):
        read_unit(tmp_path / "short", key, solver.anatomy.grid.shape)
    (tmp_path / "junk").write_bytes(b"not a unit at all")
    with pytest.raises(ValueError, match="not a unit"):
        read_unit(tmp_path / "junk", key, solver.anatomy.grid.shape)


def test_islands_take_what_another_solved_and_solve_what_they_cannot_read(evaluators):
    solver, receiver, third = evaluators
    link = UnitFolderLink.create(max_bytes=1 << 30, islands=2)
    try:
        assert stat.S_IMODE(os.stat(link.path).st_mode) == 0o700  # private: one user's files
        ours, theirs = UnitFolder(link, slot=0), UnitFolder(link, slot=1)
        plan = square_plan("ect", 1100.0, 8, 5.0, shift_mm=(0.0, 2.0, 0.0))  # all pairs new
        keys = plan.pair_geometry_hashes()
        assert theirs.take(receiver, keys) == 0  # nothing written yet
        solved = solver.evaluate_with_fields(plan)
        ours.publish(solver, solved.solved_units)
        assert sorted(os.listdir(link.path)) == sorted(solved.solved_units)
        assert theirs.take(receiver, keys) == len(keys)
        before = receiver.cache_info()["solves"]
        assert _criteria(receiver, plan) == _criteria(solver, plan)
        assert receiver.cache_info()["solves"] == before  # every pair was a cache hit
        assert theirs.take(receiver, keys) == 0  # already held

        # A file that cannot be read is skipped: that pair is solved where it is needed.
        Path(link.path, keys[0]).write_bytes(b"torn")
        os.unlink(Path(link.path, keys[1]))
        assert theirs.take(third, keys) == len(keys) - 2
        before = third.cache_info()["solves"]
        assert _criteria(third, plan) == _criteria(solver, plan)
        assert third.cache_info()["solves"] == before + 2
    finally:
        link.remove()
    assert not os.path.exists(link.path)
    # Writing after the folder is gone (an island still running at the end) loses nothing.
    ours.publish(solver, solved.solved_units[:1])
    assert ours.write_errors == 0  # already written: not tried again
    ours.own.clear()
    ours.publish(solver, solved.solved_units[:1])
    assert ours.write_errors == 1


def test_an_island_keeps_its_share_of_the_budget(evaluators):
    solver = evaluators[0]
    keys, one = _square_pairs(solver)
    link = UnitFolderLink.create(max_bytes=2 * (one.nbytes + 4096), islands=1)
    try:
        folder = UnitFolder(link, slot=0)
        folder.publish(solver, keys)  # 6 pairs, room for 2: the oldest 4 removed
        assert sorted(os.listdir(link.path)) == sorted(keys[-2:])
        assert folder.own_bytes <= link.max_bytes_each and list(folder.own) == keys[-2:]
    finally:
        link.remove()


def test_a_replacement_island_takes_over_its_predecessors_files_and_share(evaluators):
    solver = evaluators[0]
    keys, one = _square_pairs(solver)
    link = UnitFolderLink.create(max_bytes=2 * 3 * (one.nbytes + 4096), islands=2)
    try:
        other, dead = UnitFolder(link, slot=0), UnitFolder(link, slot=1)
        other.publish(solver, keys[:2])
        dead.publish(solver, keys[2:5])  # its whole share: 3 pairs
        assert writer_of(Path(link.path, keys[2])) == (1, 0)
        assert writer_of(Path(link.path, keys[4])) == (1, 2)
        assert writer_of(Path(link.path, keys[0])) == (0, 0)
        # Its worker died: the replacement counts the 3 files as its own, oldest first, so
        # one more pair removes the oldest of them and the folder keeps within the budget.
        replacement = UnitFolder(link, slot=1)
        assert list(replacement.own) == keys[2:5] and replacement.own_bytes == dead.own_bytes
        assert replacement.written == 3
        replacement.publish(solver, keys[5:])
        assert list(replacement.own) == [*keys[3:5], keys[5]]
        assert sorted(os.listdir(link.path)) == sorted([*keys[:2], *keys[3:]])
        sizes = sum(f.stat().st_size for f in Path(link.path).iterdir())
        assert sizes <= 2 * link.max_bytes_each
    finally:
        link.remove()


def test_a_folder_on_another_host_is_a_clear_error(tmp_path: Path):
    link = UnitFolderLink.create(max_bytes=1 << 20, islands=2, root=str(tmp_path))
    link.remove()
    with pytest.raises(UnitFolderUnreachableError, match="worker 1 cannot see the driver's unit"):
        UnitFolder(link, slot=1)
    other = UnitFolderLink.create(max_bytes=1 << 20, islands=2, root=str(tmp_path))
    elsewhere = dataclasses.replace(other, identity=(other.identity[0], other.identity[1] + 1))
    with pytest.raises(UnitFolderUnreachableError, match="another host"):
        UnitFolder(elsewhere, slot=1)  # the same path, another folder
    assert UnitFolder(other, slot=1).path == Path(other.path)


def test_the_arrays_are_aligned_and_checked_against_the_grid(tmp_path: Path, evaluators):
    solver = evaluators[0]
    key, cached = _solved(solver)
    write_unit(tmp_path, key, cached, writer=0, order=0)
    back = read_unit(tmp_path / key, key, solver.anatomy.grid.shape)
    arrays = (back.solution.potential_V, back.solution.field_V_per_cm)
    assert all(a.flags.aligned and a.flags.writeable for a in arrays)
    header = (tmp_path / key).stat().st_size - sum(a.nbytes for a in arrays)
    assert header % 64 == 0  # the arrays start on a 64-byte boundary of the file
    wrong = dataclasses.replace(
        cached.solution, field_V_per_cm=cached.solution.field_V_per_cm[:, :, :-1]
    )
    write_unit(tmp_path, key, dataclasses.replace(cached, solution=wrong), writer=0, order=1)
    with pytest.raises(ValueError, match="field is <f4 on a"):
        read_unit(tmp_path / key, key, solver.anatomy.grid.shape)
    with pytest.raises(ValueError, match="not a pair geometry hash"):
        write_unit(tmp_path, "../elsewhere", cached, writer=0, order=2)


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path, evaluators, monkeypatch):
    solver = evaluators[0]
    plan = square_plan("ect", 1100.0, 8, 5.0)
    solver.evaluate(plan)
    keys = plan.pair_geometry_hashes()[:2]
    link = UnitFolderLink.create(max_bytes=1 << 30, islands=2, root=str(tmp_path))
    folder = UnitFolder(link, slot=0)

    def full_disk(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    folder.publish(solver, keys)
    assert folder.write_errors == 2 and folder.own_bytes == 0 and not folder.own
    assert os.listdir(link.path) == []


def test_a_killed_drivers_folders_are_removed_by_the_next(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is no process now (reused only after a wrap-around)
    stale = tmp_path / f"ectplan-units-{dead.pid}-abc"
    stale.mkdir()
    (stale / ("a" * 64)).write_bytes(b"x")
    alive = tmp_path / f"ectplan-units-{os.getpid()}-def"  # a running driver's: kept
    alive.mkdir()
    other = tmp_path / "ectplan-units-not-a-pid"  # not ours to judge: kept
    other.mkdir()
    link = UnitFolderLink.create(max_bytes=1 << 20, islands=2, root=str(tmp_path))
    assert not stale.exists() and alive.exists() and other.exists()
    assert Path(link.path).name.startswith(f"ectplan-units-{os.getpid()}-")
