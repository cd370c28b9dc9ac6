"""``kexechibctl image …``: work on an image file without the daemon, with
the image library (``kexechibd.image``).  Like the daemon, these refuse an
image that is not root-owned or is group/world-writable: it holds all of a
system's memory."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# ``image verify`` of an image whose checksums are fine but that will not be
# resumed as it is: scripts can tell it from damage (1) without parsing text.
EXIT_NOT_RESUMABLE = 3

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
        f"it is resumable.  Exit status: 0 intact and resumable; {EXIT_NOT_RESUMABLE} "
        "intact but not resumable (consumed or invalid); 1 damaged or unreadable.",
    )
    p.add_argument("image", type=Path)
    p = actions.add_parser("export", help="write a plain ELF core for readelf, gdb or crash")
    p.add_argument("image", type=Path)
    p.add_argument("output", help="the ELF core to write ('-': standard output)")


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


@contextlib.contextmanager
def _output(name: str) -> Iterator[BinaryIO]:
    if name == "-":
        yield sys.stdout.buffer
        return
    with open(name, "xb") as out:  # never overwrite: it may be another image
        yield out


def run(args: argparse.Namespace) -> int:
    from kexechibd.image import ImageError, ImageStore, export_elf_core

    try:
        with ImageStore(args.image).open() as reader:
            if args.image_command in ("info", "inspect"):
                info = describe(reader.meta, reader.summary)
                if args.json:
                    print(json.dumps(info, indent=2, sort_keys=True))
                else:
                    for key in sorted(info):
                        print(f"{key + ':':18} {info[key]}")
            elif args.image_command == "verify":
                reader.verify()
                s = reader.summary
                chunks = f"{s.chunks} chunk" + ("s" if s.chunks != 1 else "")
                print(
                    f"{args.image}: checksums OK ({chunks}, {s.data_pages} data and "
                    f"{s.zero_pages} zero pages); state: {s.state} ({STATE_MEANING[s.state]})"
                )
                if s.state != "committed":
                    return EXIT_NOT_RESUMABLE
            else:
                with _output(args.output) as out:
                    export_elf_core(reader, out)
    except (ImageError, OSError) as e:
        print(f"kexechibctl: {e}", file=sys.stderr)
        return 1
    return 0
