"""``kexechibctl image …``: work on an image file without the daemon, with
the image library (``kexechibd.image``).  Like the daemon, these refuse an
image that is not root-owned or is group/world-writable: it holds all of a
system's memory."""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from kexechibd.ctl import discard, exits, humane

# What each resume state means for whoever wants to resume the image.
STATE_MEANING = {
    "committed": "resumable",
    "consumed": "resumed once; resuming it again needs force",
    "invalid": "consumed or withdrawn; not resumable",
}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = subparsers.add_parser(
        "image",
        help="work on an image file directly (no daemon needed)",
        description="Offline image tools: they read the file themselves.",
    )
    actions = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "info", aliases=["inspect"], help="print an image's metadata (checks the header)"
    )
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = actions.add_parser(
        "verify",
        help="read and check every chunk of an image",
        description="Read the whole image and check every checksum, then say whether "
        f"it is resumable.  Exit status: 0 intact and resumable; {exits.NOT_RESUMABLE} "
        "intact but not resumable (consumed or invalid); 1 damaged or unreadable.",
    )
    p.add_argument("image", type=Path)
    discard.add_arguments(
        actions.add_parser(
            "discard",
            help="make an image never resumable (root; a prepared file stays prepared)",
            description=discard.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    p = actions.add_parser("export", help="write a plain ELF core for readelf, gdb or crash")
    p.add_argument("image", type=Path)
    p.add_argument("output", help="the ELF core to write ('-': standard output)")
    p = actions.add_parser(
        "create",
        help="prepare a file that kernel B can write images into by block address",
        description="Create PATH (it must not exist) as an image file for a real machine: "
        "written out with zeros and fsynced, on ext4 or xfs on a plain partition.  Two "
        "slots, each must hold A's memory outside B's window, incompressible: the daemon "
        "names the size it needs when it refuses a file that is too small.",
    )
    p.add_argument("image", type=Path)
    p.add_argument(
        "--size",
        type=_size,
        required=True,
        help="bytes, or with K, M, G or T (powers of 1024), decimals allowed: 1.5G",
    )


def _size(text: str) -> int:
    """``text`` as bytes: ``4096``, ``64K``, ``1.5G`` (rounded up to a byte)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:].upper(), 1)
    try:
        value = decimal.Decimal(text[:-1] if scale > 1 else text)
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (bytes, or a number with K, M, G or T, e.g. 1.5G)"
        )
    return math.ceil(value * scale)


def describe(meta: object, summary: object) -> dict[str, object]:
    """Everything the image says about itself, printable."""
    info: dict[str, object] = {}
    for part in (meta, summary):
        assert dataclasses.is_dataclass(part) and not isinstance(part, type)
        for field in dataclasses.fields(part):
            value = getattr(part, field.name)
            if isinstance(value, bytes):
                value = f"{len(value)} bytes"
            elif field.name == "jump_back_entry" and isinstance(value, int):
                value = f"{value:#x}"
            info[field.name.replace("_", "-")] = value
    info.pop("window", None)  # B's window is not saved in the image
    return info


INITRAMFS_HOOK = Path("/usr/share/initramfs-tools/hooks/kexechibd")


def update_initramfs() -> int:
    """A new image file has new blocks: Debian's initramfs, which resumes
    before the root is mounted, must record them (DESIGN §6.4)."""
    from kexechibd.initramfs.record import UPDATE_COMMAND

    if not INITRAMFS_HOOK.exists() or shutil.which("update-initramfs") is None:
        # The file is made; a system without Debian's initramfs (or a test
        # machine) decides itself how the next boot finds it.
        print(
            f"kexechibctl: note: {INITRAMFS_HOOK} or update-initramfs is missing, so no "
            "initramfs records where the image is; with initramfs-tools installed, run "
            f"`{UPDATE_COMMAND}` (Hibernate refuses an image the next boot's initramfs "
            "would not look at)",
            file=sys.stderr,
        )
        return exits.OK
    print(f"running `{UPDATE_COMMAND}` to record it in the initramfs", flush=True)
    done = subprocess.run(UPDATE_COMMAND.split(), check=False)
    if done.returncode != 0:
        print(f"kexechibctl: `{UPDATE_COMMAND}` failed; run it again", file=sys.stderr)
        return exits.FAILURE
    return exits.OK


def run(args: argparse.Namespace) -> int:
    from kexechibd.image import (
        ImageError,
        export_elf_core,
        export_image,
        open_store,
        prepare_image_file,
    )

    try:
        if args.image_command == "discard":
            return discard.run(args)
        if args.image_command == "create":
            mapped = prepare_image_file(args.image, args.size)
            # What A will find there, as it finds it before a Hibernate.
            pinned = open_store(args.image).pin_for_saver()
            assert pinned is not None  # a prepared file is written by block address
            print(
                f"{args.image}: {mapped.size} bytes in {len(mapped.extents)} extents on "
                f"{mapped.device_name}: two slots, each for an image of up to "
                f"{pinned.capacity / (1 << 20):.1f} MiB"
                + (
                    "; sealed: its images are encrypted with a key of its own"
                    if pinned.seal
                    else ""
                )
            )
            return update_initramfs()
        with open_store(args.image).open() as reader:
            if args.image_command in ("info", "inspect"):
                info = describe(reader.meta, reader.summary)
                if args.json:
                    print(json.dumps(info, indent=2, sort_keys=True))
                else:
                    for key in sorted(info):
                        print(f"{key + ':':18} {humane.annotate(key, info[key])}")
                return exits.for_image_state(reader.summary.state)
            elif args.image_command == "verify":
                reader.verify()
                s = reader.summary
                chunks = f"{s.chunks} chunk" + ("s" if s.chunks != 1 else "")
                print(
                    f"{args.image}: checksums OK ({chunks}, {s.data_pages} data and "
                    f"{s.zero_pages} zero pages); state: {s.state} ({STATE_MEANING[s.state]})"
                )
                return exits.for_image_state(s.state)
            else:
                if args.output == "-":
                    export_elf_core(reader, sys.stdout.buffer)
                else:
                    export_image(reader, Path(args.output))
    except BrokenPipeError:
        raise  # a reader that went away is not the image's fault: main ends quietly
    except (ImageError, OSError) as e:  # ExportError too: its message says what to do
        print(f"kexechibctl: {e}", file=sys.stderr)
        return exits.FAILURE
    return exits.OK
