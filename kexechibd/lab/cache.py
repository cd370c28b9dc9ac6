"""Entries of the lab cache (``cache_root()``) are built once.

Test runs and worktrees share the cache, so an entry is built under an
exclusive lock beside it, after looking again whether another run built it
meanwhile; the builders make it appear by a rename, so a half-built entry is
never seen.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path


def build_once(
    directory: Path, name: str, done: Callable[[], bool], build: Callable[[], None]
) -> None:
    """Run ``build`` unless ``done()``, holding ``directory/.lock-<name>``."""
    if done():
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".lock-{name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done():
            build()
