"""Kernel modules for kernel B: the drivers of the image's disk, with what
they depend on, in the order B loads them.

A kernel with its disk drivers built in (the lab's) needs none: then
``/lib/modules/<release>`` may not even exist.  A distribution kernel
(Debian's) has them as modules, which B cannot find without help: it has no
udev, so nothing loads a driver for the hardware it sees.  The builder takes
the drivers of the device under the configured image location, read from
this system's sysfs (``drivers_of``), plus the common disk drivers
(``DISK_DRIVERS``) that exist for the release, so that the image may move to
another disk of the same machine; ``resolve`` adds their dependencies from
``modules.dep`` (pure).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

# Disk drivers whose modules go in whenever the kernel has them as modules:
# virtual machines (virtio), NVMe, SATA/AHCI and the SCSI disk layer over
# them.  (USB and MMC disks are left out: an image there is a bad idea.)
DISK_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_scsi", "nvme", "ahci", "sd_mod")
# What a sealed image file's mapping needs (DESIGN §1.6): device-mapper's
# linear and crypt targets and the seal's cipher, aes-xts-plain64 (B loads
# modules itself: nothing answers the crypto API's module requests; the
# generic xts template needs ecb(aes)).
SEAL_DRIVERS = ("dm_mod", "dm_crypt", "xts", "ecb", "aes_generic", "aesni_intel")

# Compressed modules: the builder stores them decompressed, so that B's
# init loads each with a plain finit_module() whatever the kernel supports.
COMPRESSED_SUFFIXES = (".xz", ".zst", ".gz")


class ModuleError(ValueError):
    """modules.dep is unreadable or names a module that is not there."""


def module_name(path: str) -> str:
    """``kernel/drivers/block/virtio_blk.ko.xz`` → ``virtio_blk`` (as modprobe
    names modules: dashes are underscores)."""
    name = os.path.basename(path)
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` → {name: (path, [paths of its dependencies])}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        path, sep, deps = line.partition(":")
        if not sep:
            raise ModuleError(f"modules.dep line {number} has no ':': {line!r}")
        out[module_name(path.strip())] = (path.strip(), deps.split())
    return out


def parse_builtin(text: str) -> frozenset[str]:
    """``modules.builtin`` → the names of the modules built into the kernel."""
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def resolve(
    wanted: Iterable[str], deps: Mapping[str, tuple[str, list[str]]], builtin: frozenset[str]
) -> list[str]:
    """The paths (relative to ``/lib/modules/<release>``) of the ``wanted``
    modules and of everything they depend on, each after its dependencies:
    the order to load them in.  Built-in and unknown names are left out (an
    unknown driver name is not an error: the kernel may not have it at all)."""
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in builtin or name not in deps:
            return
        if name in chain:
            raise ModuleError(f"modules.dep has a dependency cycle: {' -> '.join((*chain, name))}")
        path, needs = deps[name]
        for dep in needs:
            visit(by_path.get(dep, module_name(dep)), (*chain, name))
        done.add(name)
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def drivers_of(location: Path, sys_root: Path = Path("/sys")) -> list[str]:
    """The kernel modules that drive the block device under ``location`` (a
    block device, or a file or directory on one; the nearest existing parent
    of a path that does not exist yet), from sysfs: each device on the way
    from the disk up to its bus that has a driver with a module, and for a
    device-mapper device (a LUKS root) those of the devices it is built on
    (``slaves/``).  Empty when nothing is known (a built-in driver has no
    module)."""
    path = location
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    try:
        st = os.stat(path)
    except OSError:
        return []
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    node = sys_root / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}"
    try:
        here = node.resolve(strict=True)
    except OSError:
        return []
    devices = (sys_root / "devices").resolve()
    found: list[str] = []
    pending, seen = [here], set()
    while pending:
        here = pending.pop(0)
        if here in seen:
            continue
        seen.add(here)
        with contextlib.suppress(OSError):
            pending.extend(sorted(p.resolve(strict=True) for p in (here / "slaves").iterdir()))
        while here.is_relative_to(devices) and here != devices:
            with contextlib.suppress(OSError):
                module = (here / "driver" / "module").resolve(strict=True).name
                if module not in found:
                    found.append(module)
            here = here.parent
    return found
