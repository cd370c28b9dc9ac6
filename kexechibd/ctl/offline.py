"""``kexechibctl image …``: work on an image file without the daemon.

These need the image format (``kexechibd.image``), which is written in
parallel; until it is installed they say so and exit 1.  The contract this
module expects from it is small and listed in ``IMAGE_API``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

IMAGE_MODULE = "kexechibd.image"
# Functions the image format offers to offline tools:
#   inspect(path) -> dict       metadata and verdict (as Engine.inspect)
#   verify(path) -> None        full check of every chunk; raises BadImage
#   export_elf(path, out) -> None   a plain ELF core (one PT_LOAD per run)
IMAGE_API = ("inspect", "verify", "export_elf")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = subparsers.add_parser(
        "image", help="work on an image file directly (no daemon needed)",
        description="Offline image tools: they read the file themselves.",
    )
    actions = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    p = actions.add_parser("inspect", help="print an image's metadata and verdict")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = actions.add_parser("verify", help="check every chunk of an image")
    p.add_argument("image", type=Path)
    p = actions.add_parser("export", help="write a plain ELF core for readelf, gdb or crash")
    p.add_argument("image", type=Path)
    p.add_argument("output", type=Path)


def _image_module() -> ModuleType | None:
    try:
        module = importlib.import_module(IMAGE_MODULE)
    except ImportError:
        return None
    if not all(hasattr(module, name) for name in IMAGE_API):
        return None
    return module


def run(args: argparse.Namespace) -> int:
    module = _image_module()
    if module is None:
        print(
            f"kexechibctl: image tools are not available in this installation "
            f"({IMAGE_MODULE} with {', '.join(IMAGE_API)} is missing); "
            "`kexechibctl inspect IMAGE` asks the daemon instead",
            file=sys.stderr,
        )
        return 1
    from kexechibd.errors import KexechibError

    try:
        if args.image_command == "inspect":
            info = module.inspect(args.image)
            if args.json:
                print(json.dumps(info, indent=2, sort_keys=True, default=str))
            else:
                for key in sorted(info):
                    print(f"{key}: {info[key]}")
        elif args.image_command == "verify":
            module.verify(args.image)
            print(f"{args.image}: valid")
        else:
            module.export_elf(args.image, args.output)
    except (KexechibError, OSError) as e:
        print(f"kexechibctl: {e}", file=sys.stderr)
        return 1
    return 0
