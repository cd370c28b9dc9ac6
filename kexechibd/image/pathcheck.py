"""Which paths may name an image: one rule for Hibernate, Resume and Inspect,
applied before any operation starts.

An image holds all of memory, so the daemon (root) writes and reads it only
where nobody else could have put, changed or read it: a regular file or a
block device, reached by its real name, owned by root and closed to others,
in a directory only root may change.  The decision is pure (``refusal``:
the path's text plus what ``lstat`` said of it and of its directory);
``check_image_path`` gathers those facts.

This is a check before starting, not the guard itself: the stores open with
``O_NOFOLLOW`` and check owner and mode again on what they opened, so a
path changed between the two is still caught.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

# Pseudo-filesystems whose files are not storage: /proc/<pid>/mem is a
# root-owned 0600 regular file, and so are many files under /sys.
_NOT_STORAGE = ("/proc", "/sys")
# udev names disks by symlinks here (/dev/disk/by-uuid/…), made by root in
# directories only root may change: the one place a symlink may name an image.
_DEVICE_LINKS = "/dev/disk/"


class ImagePathRefused(ValueError):
    """The path may not name an image; the message says why."""


@dataclass(frozen=True)
class Facts:
    """What the file system says about a path, for ``refusal``."""

    path: str
    real: str  # os.path.realpath(path)
    target: os.stat_result | None  # stat of the real path; None: it does not exist
    parent: os.stat_result | None  # stat of the real parent directory
    trusted_groups: frozenset[int] = frozenset({0})


@dataclass(frozen=True)
class ImagePath:
    """A path that passed: where it leads, and what is there."""

    path: str
    exists: bool
    block_device: bool


def text_refusal(path: str) -> str:
    """Why the text of ``path`` cannot name an image ('' when it can)."""
    if not path.startswith("/"):
        return "it must be an absolute path"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "it contains a control character (a newline, a tab, …)"
    if path.rstrip("/") == "":
        return "it is the root directory"
    if ".." in PurePosixPath(path).parts:
        return "it contains '..'; name the image by its real path"
    return ""


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def owner_mode_refusal(
    st: os.stat_result, *, trusted_groups: frozenset[int] = frozenset({0}), path: str = ""
) -> str:
    """Why the file or device ``st`` may not hold an image by its owner and
    mode ('' when it may): root-owned, a file 0600, a device at most
    root:disk 0660.  The one rule, checked before an operation (``refusal``)
    and again on every open (``fileio.check_private``).  ``path`` names the
    fix in the message."""
    mode = stat.S_IMODE(st.st_mode)
    name = path or "it"
    if st.st_uid != 0:
        return f"it is owned by uid {st.st_uid}, not root (chown root {name} if it is trusted)"
    if stat.S_ISBLK(st.st_mode):
        # Debian's device nodes are root:disk 0660: the disk group may read
        # and write every disk anyway.
        if mode & 0o007 or (mode & 0o070 and st.st_gid not in trusted_groups):
            return (
                f"it has mode {mode:04o} and group {st.st_gid}: only root and the disk "
                "group may have access to a device that holds images"
            )
        return ""
    if mode & 0o077:
        return (
            f"it has mode {mode:04o}: others may read or change it "
            f"(it must be 0600: chmod 600 {name} if it is trusted)"
        )
    return ""


def refusal(facts: Facts) -> str:
    """Why ``facts.path`` may not name an image ('' when it may)."""
    problem = text_refusal(facts.path)
    if problem:
        return problem
    path, real, target = facts.path.rstrip("/") or "/", facts.real, facts.target
    block = target is not None and stat.S_ISBLK(target.st_mode)
    if real != path and not (path.startswith(_DEVICE_LINKS) and block):
        return (
            f"it is not its real path {real} (a symlink, or a redundant '/' or '.'); "
            "name the image by its real path"
        )
    if any(_under(real, top) for top in _NOT_STORAGE):
        return f"{real} is not storage but a kernel interface"
    if target is not None:
        if not (stat.S_ISREG(target.st_mode) or block):
            return "it is neither a regular file nor a block device"
        problem = owner_mode_refusal(target, trusted_groups=facts.trusted_groups, path=real)
        if problem:
            return problem
        if block:
            return ""
    parent = facts.parent
    if parent is None or not stat.S_ISDIR(parent.st_mode):
        return f"its directory {os.path.dirname(real)} does not exist"
    if parent.st_uid != 0 or stat.S_IMODE(parent.st_mode) & 0o022:
        return (
            f"its directory {os.path.dirname(real)} is not root's alone (owner uid "
            f"{parent.st_uid}, mode {stat.S_IMODE(parent.st_mode):04o}): others could "
            "replace the image"
        )
    return ""


def trusted_groups() -> frozenset[int]:
    """Root, and ``disk``: its members may read and write every disk already."""
    try:
        return frozenset({0, grp.getgrnam("disk").gr_gid})
    except KeyError:
        return frozenset({0})


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def facts(path: str) -> Facts:
    """What ``refusal`` needs to know about ``path`` (reads the file system)."""
    real = os.path.realpath(path)
    return Facts(
        path=path,
        real=real,
        target=_stat(real),
        parent=_stat(os.path.dirname(real)),
        trusted_groups=trusted_groups(),
    )


def _shown(path: str, limit: int = 200) -> str:
    """The caller's path in a message: quoted, and cut when long."""
    text = repr(path)
    return text if len(text) <= limit else f"{text[:limit]}…"


def check_image_path(path: str) -> ImagePath:
    """``path`` as an image location, or ``ImagePathRefused`` saying why not.
    A path that does not exist yet passes when its directory does (Hibernate
    creates the image there; Resume and Inspect then find no image)."""
    problem = text_refusal(path)
    if not problem:
        try:
            found = facts(path)
        except OSError as e:
            problem = f"it cannot be examined ({e.strerror or e})"
        else:
            problem = refusal(found)
    if problem:
        raise ImagePathRefused(f"{_shown(path)} cannot hold an image: {problem}")
    target = found.target
    return ImagePath(
        path=path,
        exists=target is not None,
        block_device=target is not None and stat.S_ISBLK(target.st_mode),
    )
