"""``kexechibctl saver …``: kernel B's initramfs, without the daemon.

``saver build`` writes it from the installed files (kexechibd.initramfs);
the kernel's postinst hook and the package's postinst run it.  ``saver
check`` says whether the one the daemon would use is there and fits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kexechibd import config as config_module
from kexechibd.ctl import exits

CONFIG_HELP = "the configuration to read [image] and [saver] from (default: /etc/kexechibd.conf)"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    saver = subparsers.add_parser(
        "saver",
        help="build or check kernel B's initramfs (no daemon needed)",
        description="Kernel B's initramfs: python3, kexechibd and the disk drivers of "
        "this system, which B boots to save the hibernated system.",
    )
    actions = saver.add_subparsers(dest="saver_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "build",
        help="write kernel B's initramfs from the installed files",
        description="Write kernel B's initramfs for a kernel release from the installed "
        "python3, kexechibd and its dependencies, and the kernel's disk drivers; print "
        "its size and the time it took.  Run again after kexechibd or the kernel changed "
        "(the package and the kernel's postinst hook do).",
    )
    p.add_argument(
        "--kernel-version",
        metavar="RELEASE",
        help="the kernel release to build for (default: the running kernel's, uname -r)",
    )
    p.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="where to write it (default: [saver] initrd of the configuration, with "
        f"{config_module.RELEASE} replaced by the release)",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    p = actions.add_parser(
        "remove",
        help="remove kernel B's initramfs of a kernel release (the kernel's postrm hook)",
        description="Remove the initramfs `saver build` wrote for RELEASE; one it did not "
        "write (without its manifest) is left alone.",
    )
    p.add_argument("--kernel-version", metavar="RELEASE", required=True)
    p.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    p = actions.add_parser("check", help="say whether kernel B's initramfs is there and fits")
    p.add_argument("--kernel-version", metavar="RELEASE", help="default: uname -r")
    p.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)


def summary(config_path: Path | None = None) -> str:
    """One line on kernel B's initramfs for `kexechibctl status` (read here:
    the configuration and the files are readable by everyone)."""
    from kexechibd.errors import ConfigError
    from kexechibd.initramfs.check import check_saver

    try:
        config = config_module.load(config_path)
    except ConfigError as e:
        return f"unknown ({e})"
    result = check_saver(*config.saver.files(os.uname().release))
    return "; ".join([result.summary, *result.problems])


def resume_summary(config_path: Path | None = None) -> str:
    """One line on what the next boot's initramfs resumes, for `kexechibctl
    status` (DESIGN §6.4; mapping the image file needs root)."""
    from kexechibd.errors import ConfigError
    from kexechibd.image.meta import ImageError
    from kexechibd.initramfs import record

    try:
        config = config_module.load(config_path)
    except ConfigError as e:
        return f"unknown ({e})"
    location = config.image.location
    initramfs = Path(record.INSTALLED_INITRAMFS.format(release=os.uname().release))
    try:
        problems = record.next_boot_problems(location, initramfs)
    except ImageError as e:
        return f"unknown ({e})"
    if problems is None:
        return f"no {initramfs}: not checked"
    return "; ".join(problems) or f"{initramfs} looks for the image at {location}"


def protection_summary(config_path: Path | None = None) -> str:
    """One line on what protects the image at rest, for `kexechibctl status`
    (kexechibd.encryption; sysfs and mountinfo are readable by everyone)."""
    from kexechibd import encryption
    from kexechibd.errors import ConfigError

    try:
        config = config_module.load(config_path)
    except ConfigError as e:
        return f"unknown ({e})"
    return encryption.protection_of(
        config.image.location, allow_plaintext=config.image.allow_plaintext
    )


def run(args: argparse.Namespace) -> int:
    from kexechibd.errors import ConfigError, KexechibError

    try:
        config = config_module.load(args.config)
    except ConfigError as e:
        print(f"kexechibctl: {e}", file=sys.stderr)
        return exits.FAILURE
    release = args.kernel_version or os.uname().release
    kernel, initrd = config.saver.files(release)
    if args.saver_command == "check":
        from kexechibd.initramfs.check import check_saver

        result = check_saver(kernel, initrd)
        print(result.summary)
        for problem in result.problems:
            print(f"kexechibctl: {problem}", file=sys.stderr)
        return exits.FAILURE if result.problems else exits.OK
    if args.saver_command == "remove":
        return _remove(initrd)
    from kexechibd.initramfs.build import build

    output = args.output or initrd
    try:
        built = build(
            output,
            release=release,
            kernel=kernel if kernel.exists() else None,
            image_location=config.image.location,
        )
    except (KexechibError, OSError) as e:
        print(f"kexechibctl: cannot build kernel B's initramfs: {e}", file=sys.stderr)
        return exits.FAILURE
    modules = len(built.manifest.modules)
    print(
        f"{built.path}: {built.size / 1e6:.1f} MB, {built.files} files, "
        f"{modules} kernel module{'s' if modules != 1 else ''} for {release}, "
        f"built in {built.seconds:.1f} s"
    )
    if not kernel.exists():
        print(f"kexechibctl: note: kernel B ({kernel}) is not there", file=sys.stderr)
    return exits.OK


def _remove(initrd: Path) -> int:
    from kexechibd.initramfs.manifest import HEAD_BYTES, read_manifest

    try:
        with open(initrd, "rb") as f:
            ours = read_manifest(f.read(HEAD_BYTES)) is not None
    except FileNotFoundError:
        return exits.OK
    except (OSError, ValueError) as e:
        print(f"kexechibctl: {initrd}: {e}", file=sys.stderr)
        return exits.FAILURE
    if not ours:
        print(f"kexechibctl: {initrd} was not built by `kexechibctl saver build`; left alone")
        return exits.OK
    initrd.unlink()
    print(f"removed {initrd}")
    return exits.OK
