"""Files the driver shares with its actors on one host, known by device and inode.

A path alone does not say an actor sees the driver's file: on another host (or in another
container with the driver's address) the same path can be another file or none. The study's
journal (``island_journal``) and the pair solutions' folder (``unit_folder``) are handed to
the actors with their identity, which each actor checks before it uses them.
"""

from __future__ import annotations

import os

Identity = tuple[int, int]  # (st_dev, st_ino)


def identity(path: str | os.PathLike[str]) -> Identity:
    """The device and inode of ``path`` (OSError when it does not exist)."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def sees(path: str | os.PathLike[str], expected: Identity) -> bool:
    """Whether ``path`` here is the very file or folder of ``expected``."""
    try:
        return identity(path) == expected
    except OSError:
        return False
