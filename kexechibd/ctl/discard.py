"""``kexechibctl image discard``: make an image never resumable again.

For when a boot with ``noresume`` (or a failed resume) left an image that
nobody will resume: the next boot must not resume it either, since this
system has moved on.  The image is wiped (the image library's ``wipe``):
its bytes are overwritten with zeros, so none of the memory it held stays
on the disk, and a prepared file or a partition stays prepared for the next
hibernation.  Root only, with the same checks of the
file as a resume (root's, not group/world-writable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kexechibd import config as config_module
from kexechibd.ctl import exits
from kexechibd.errors import ConfigError

DESCRIPTION = """\
Make an image never resumable again: for an image a boot with noresume (or a
failed resume) left, which the next boot must not resume either, since this
system has moved on.  The image's bytes are overwritten with zeros, so none
of the memory it held stays on the disk; a prepared file or a partition stays
ready for the next hibernation.  Root only, with
the checks of a resume (the file is root's and not group/world-writable).
A running kexechibd notices when restarted (systemctl restart kexechibd).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "image",
        type=Path,
        nargs="?",
        help=f"default: [image] location of {config_module.DEFAULT_PATH}",
    )


def run(args: argparse.Namespace) -> int:
    from kexechibd.image import ImageError, open_store

    if os.geteuid() != 0:
        print("kexechibctl: image discard needs root (images are root's)", file=sys.stderr)
        return exits.FAILURE
    path = args.image
    if path is None:
        try:
            path = config_module.load(None).image.location
        except ConfigError as e:
            print(f"kexechibctl: {e}", file=sys.stderr)
            return exits.FAILURE
    try:
        wiped = open_store(path).wipe()
    except (ImageError, OSError) as e:
        print(f"kexechibctl: cannot discard {path}: {e}", file=sys.stderr)
        return exits.FAILURE
    print(
        f"{path}: discarded; {wiped >> 20} MiB of image overwritten with zeros, no boot will "
        "resume it (a prepared file or partition stays ready for the next hibernation).  "
        "A running kexechibd notices when restarted."
    )
    return exits.OK
