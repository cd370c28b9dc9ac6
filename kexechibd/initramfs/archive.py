"""Building initramfs archives from host files: the newc writer with
directories, symlinks and device nodes (``kexechibd.cpio`` writes the
entries), and the shared libraries a program needs (ldd).

Kernel B's initramfs (``kexechibd.initramfs.build``) and the lab's guests
(``kexechibd.lab``) are both built with these; ``Tree`` takes the same
calls and writes the files into a directory instead, for Debian's
initramfs (initramfs-tools' ``$DESTDIR``, ``kexechibd.initramfs.hook``).
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kexechibd import cpio


class Sink(Protocol):
    """Where the files of an initramfs go: a ``Cpio`` or a ``Tree``."""

    names: set[str]

    def directory(self, name: str, mode: int = 0o755) -> None: ...

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None: ...

    def host_file(self, name: str, path: Path, mode: int | None = None) -> None: ...

    def symlink(self, name: str, target: str) -> None: ...


@dataclass
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    mtime: int = 0  # the kernel restores it (INITRAMFS_PRESERVE_MTIME); .pyc files check it


@dataclass
class Cpio:
    """A newc ("070701") archive, the format the kernel unpacks as initramfs."""

    entries: list[_Entry] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def _add(self, entry: _Entry) -> None:
        name = entry.name.strip("/")
        parent = os.path.dirname(name)
        if parent and parent not in self.names:
            self.directory(parent)
        if name in self.names:
            raise ValueError(f"{name} is already in the archive")
        self.names.add(name)
        entry.name = name
        self.entries.append(entry)

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._add(_Entry(name, stat.S_IFDIR | mode))

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self._add(_Entry(name, stat.S_IFREG | mode, data, mtime=mtime))

    def host_file(self, name: str, path: Path, mode: int | None = None) -> None:
        """A copy of the host's file `path` (symlinks followed), with its mtime."""
        st = path.stat()
        self.file(
            name,
            path.read_bytes(),
            stat.S_IMODE(st.st_mode) if mode is None else mode,
            int(st.st_mtime),
        )

    def symlink(self, name: str, target: str) -> None:
        self._add(_Entry(name, stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(_Entry(name, stat.S_IFCHR | mode, rdev=(major, minor)))

    def to_bytes(self) -> bytes:
        parts = [
            cpio.newc_entry(
                entry.name,
                entry.mode,
                entry.data,
                ino=ino,
                nlink=2 if stat.S_ISDIR(entry.mode) else 1,
                mtime=entry.mtime,
                rdev=entry.rdev,
            )
            for ino, entry in enumerate(self.entries, start=1)
        ]
        return b"".join([*parts, cpio.newc_trailer(len(self.entries) + 1)])


@dataclass
class Tree:
    """The files of an initramfs written into the directory ``root`` (as
    initramfs-tools' hooks do into ``$DESTDIR``).  A file already there
    (initramfs-tools copied the same library) is left as it is."""

    root: Path
    names: set[str] = field(default_factory=set)

    def _target(self, name: str) -> Path:
        name = name.strip("/")
        self.names.add(name)
        target = self.root / name
        # realpath: through the tree's own symlinks (lib -> usr/lib) even
        # before what they point to exists
        os.makedirs(os.path.realpath(target.parent), exist_ok=True)
        return target

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._target(name).mkdir(mode, exist_ok=True)

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        target = self._target(name)
        target.unlink(missing_ok=True)
        target.write_bytes(data)
        os.chmod(target, mode)
        if mtime:
            os.utime(target, (mtime, mtime))

    def host_file(self, name: str, path: Path, mode: int | None = None) -> None:
        target = self._target(name)
        if os.path.lexists(target):
            return
        st = path.stat()
        self.file(name, path.read_bytes(), stat.S_IMODE(st.st_mode) if mode is None else mode)
        os.utime(target, (st.st_atime, st.st_mtime))  # .pyc files check their source's

    def symlink(self, name: str, target: str) -> None:
        link = self._target(name)
        if not os.path.lexists(link):
            os.symlink(target, link)


def shared_libraries(program: Path) -> list[Path]:
    """The shared libraries `program` loads, the dynamic loader included (from ldd)."""
    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target == "not":
                raise FileNotFoundError(f"{program} needs {parts[0]}, which is not installed")
            if target.startswith("/"):
                libs.append(Path(target))
        elif parts and parts[0].startswith("/"):
            libs.append(Path(parts[0]))
    return libs


def add_programs(archive: Sink, programs: Mapping[str, Path], root: str = "") -> None:
    """Each program at `root/name`, with the shared libraries and loader ldd
    names at their usual paths, so that it runs unchanged in `chroot root`."""
    for name, program in sorted(programs.items()):
        archive.host_file(f"{root}/{name.strip('/')}".strip("/"), program, 0o755)
    add_libraries(archive, programs.values(), root)


def add_libraries(archive: Sink, binaries: Iterable[Path], root: str = "") -> None:
    """The shared libraries (and the loader) that `binaries` (programs or
    shared objects) load, at the paths ldd names, unless already there."""
    libs = {str(lib): lib for binary in binaries for lib in shared_libraries(binary)}
    for name, lib in sorted(libs.items()):
        entry = f"{root}/{name.strip('/')}".strip("/")
        if entry not in archive.names:
            archive.host_file(entry, lib.resolve(), 0o755)
