"""``python3 -m kexechibd.initramfs.hook DESTDIR``: what the initramfs-tools
hook (``/usr/share/initramfs-tools/hooks/kexechibd``) adds to Debian's own
initramfs, so that its ``local-premount/kexechib`` script resumes an image
before the root filesystem is checked or mounted (DESIGN §1.4, §6.4):

- python3 with kexechibd and its dependencies, collected as for kernel B's
  initramfs (``build.add_python``), into ``DESTDIR``;
- ``/etc/kexechibd.conf`` and ``/etc/machine-id`` (the image names the
  machine it was made on);
- the resume record (``record.PATH``): where the configured image is,
  without the filesystem.  When there is no image location yet (no
  prepared file, no partition) the hook says so and records nothing: that
  initramfs resumes nothing, and ``Hibernate`` refuses until
  ``update-initramfs -u -k all`` records one.

It never fails the initramfs build: a broken kexechibd must not stop a
kernel upgrade or leave the system without a bootable initramfs.  On any
failure it says why and records nothing (the record is written last), so
the script in local-premount does nothing and ``Hibernate`` refuses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kexechibd import config as config_module
from kexechibd.errors import ConfigError, KexechibError
from kexechibd.image.meta import ImageError
from kexechibd.initramfs import record
from kexechibd.initramfs.archive import Tree
from kexechibd.initramfs.build import PYTHON, add_python, add_seal_tools, installed_package
from kexechibd.initramfs.python import probe

COPIED = (config_module.DEFAULT_PATH, Path("/etc/machine-id"))


def add(destdir: Path, config_path: Path | None = None) -> str:
    """Fill ``destdir``; returns what it recorded, for the build's output."""
    config = config_module.load(config_path)
    tree = Tree(destdir)
    package = installed_package()
    add_python(tree, PYTHON, package, probe(PYTHON, package))
    add_seal_tools(tree)
    for path in COPIED:
        if config_path is not None and path == config_module.DEFAULT_PATH:
            path = config_path
        if path.exists():
            tree.file(f"etc/{path.name}", path.read_bytes(), 0o644)
    location = config.image.location
    try:
        made = record.make(location)
    except ImageError as e:
        return f"no resume record: {e.message}; this initramfs resumes nothing"
    tree.file(record.PATH, made.to_json(), 0o644)
    where = made.links[0] if made.links else f"{made.major}:{made.minor} {made.device_name}"
    detail = f", {len(made.extents)} extents" if made.kind in record.FILE_KINDS else ""
    return f"resume record: {location} ({made.kind} on {where}{detail})"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python3 -m kexechibd.initramfs.hook DESTDIR [CONFIG]", file=sys.stderr)
        return 2
    try:
        said = add(Path(args[0]), Path(args[1]) if len(args) == 2 else None)
    except (ConfigError, KexechibError, ImageError, OSError, subprocess.CalledProcessError) as e:
        print(
            f"kexechibd: W: not added to the initramfs, which will resume nothing: {e}",
            file=sys.stderr,
        )
        return 0
    print(f"kexechibd: {said}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
