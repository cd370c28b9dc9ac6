"""Is kernel B's initramfs there, and does it fit what is installed?

Read by the daemon before every ``Hibernate`` and ``CanHibernate`` (a
missing or stale initramfs means ``na``: B would boot a saver that does not
match A's kexechibd, or no saver at all) and by ``kexechibctl status``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import kexechibd
from kexechibd.initramfs import manifest as m
from kexechibd.initramfs.build import banner_of, installed_package, package_sources


@dataclass(frozen=True)
class SaverCheck:
    summary: str  # one line for `kexechibctl status`
    problems: tuple[str, ...]  # why Hibernate is refused; empty: fine


def check_saver(kernel: Path, initrd: Path) -> SaverCheck:
    try:
        with open(initrd, "rb") as f:
            head = f.read(m.HEAD_BYTES)
    except FileNotFoundError:
        return SaverCheck(f"{initrd}: missing", (m.missing(initrd),))
    except OSError as e:
        problem = f"cannot read kernel B's initramfs {initrd}: {e.strerror}"
        return SaverCheck(f"{initrd}: unreadable", (problem,))
    try:
        found = m.read_manifest(head)
    except ValueError as e:
        problem = f"{initrd} has a manifest that cannot be read ({e}); rebuild it with "
        return SaverCheck(f"{initrd}: damaged", (problem + f"`{m.BUILD_COMMAND}`",))
    if found is None:
        return SaverCheck(f"{initrd}: custom (not built by `{m.BUILD_COMMAND}`; not checked)", ())
    banner = banner_of(kernel)
    installed = m.Installed(
        kexechibd_version=kexechibd.__version__,
        package_hash=m.package_hash(package_sources(installed_package())),
        kernel_release=banner.split()[0] if banner else "",
        kernel_version=banner,
    )
    problems = tuple(m.problems(initrd, found, installed))
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(found.built))
    state = "stale" if problems else "ok"
    summary = (
        f"{initrd}: {state} (kexechibd {found.kexechibd_version}, kernel "
        f"{found.kernel_release}, built {built})"
    )
    return SaverCheck(summary, problems)
