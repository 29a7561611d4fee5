# Checks on files a command will write, made before the work so that minutes of reading or
# measuring are not lost to a path that cannot be written.
from __future__ import annotations

import os
from pathlib import Path

from cyncsim.replay.errors import CyncError

__all__ = ["check_writable"]


def check_writable(path: str | Path, label: str) -> None:
    """One clear line (CyncError) when ``path`` cannot be written as a file; ``label`` names
    it in the message (e.g. "--json out.json")."""
    target = Path(path)
    folder = target.resolve().parent
    if target.is_dir():
        raise CyncError(f"{label}: is a directory, not a file", reason="unwritable")
    if not folder.is_dir():
        raise CyncError(f"{label}: no such directory ({folder})", reason="unwritable")
    if not os.access(folder, os.W_OK):
        raise CyncError(f"{label}: directory {folder} is not writable", reason="unwritable")
