"""A file the driver shares with its actors is known by device and inode, not by path."""

from __future__ import annotations

import os
from pathlib import Path

from services.planner.host_files import identity, sees


def test_the_same_path_is_not_the_same_file(tmp_path: Path):
    path = tmp_path / "study.journal.log"
    path.write_text("one")
    first = identity(path)
    assert sees(path, first) and sees(str(path), first)
    os.link(path, tmp_path / "linked")  # another name of the very file
    assert sees(tmp_path / "linked", first)
    replacement = tmp_path / "replacement"
    replacement.write_text("two")
    os.replace(replacement, path)  # the path now names another file
    assert not sees(path, first)
    path.unlink()
    assert not sees(path, first)  # gone
