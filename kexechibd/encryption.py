"""Whether storage is encrypted with dm-crypt, and the rule that an image of
an encrypted system is never written in the clear (issue 16, point 2).

An image holds all of memory, disk-encryption keys included.  If any of the
system's filesystems or swap is on dm-crypt, its owner expects data at rest
to be encrypted; an image written to a location that is not would undo that.
The kernel's own hibernation writes to swap, which is encrypted on such
systems, so refusing is what makes kexechibd at least as safe.

The facts come from sysfs: a device-mapper device shows its target's kind in
``dm/uuid`` (cryptsetup names dm-crypt mappings ``CRYPT-<type>-...``), and
the devices it is built on in ``slaves/``.  A device is encrypted if it or
anything below it is a dm-crypt mapping (LVM on LUKS counts).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kexechibd.image.seal import is_sealed
from kexechibd.mounts import Mount, holds_data, read_mounts, unescape

SYSFS = Path("/sys")
PROC_SWAPS = Path("/proc/swaps")
# Device-mapper UUIDs of dm-crypt mappings (cryptsetup's lib/utils_dm.c).
CRYPT_UUID_PREFIX = "CRYPT-"
OVERRIDE = "[image] allow_plaintext = yes"


@dataclass(frozen=True)
class Storage:
    """Something of the system's that keeps data on a block device."""

    what: str  # for messages: "/ (ext4 on /dev/mapper/root)", "swap /dev/dm-1"
    device: int  # the block device (dev_t) it lives on; 0 when unknown


def crypt_mapping(device: int, sysfs: Path = SYSFS) -> str:
    """The name of the dm-crypt mapping that block device ``device`` is or is
    built on ('' when there is none, or the device is unknown to sysfs)."""
    if not device:
        return ""
    start = sysfs / "dev/block" / f"{os.major(device)}:{os.minor(device)}"
    pending, seen = [start], set()
    while pending:
        node = pending.pop()
        try:
            real = node.resolve(strict=True)
        except OSError:
            continue
        if real in seen:
            continue
        seen.add(real)
        uuid = _read(real / "dm/uuid")
        if uuid.startswith(CRYPT_UUID_PREFIX):
            return _read(real / "dm/name") or real.name
        slaves = real / "slaves"
        if slaves.is_dir():
            pending.extend(sorted(slaves.iterdir()))
    return ""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def parse_swaps(text: str) -> list[str]:
    """The paths of ``/proc/swaps`` (a partition or a file each)."""
    return [unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


def swap_storage(paths: Iterable[str]) -> list[Storage]:
    """Where each active swap area lives: a partition is its own device, a
    swap file lives on its filesystem's."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(Storage(f"swap {path}", 0))
            continue
        device = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
        found.append(Storage(f"swap {path}", device))
    return found


def mount_storage(mounts: Iterable[Mount]) -> list[Storage]:
    """The block devices of the mounts that hold data.  A filesystem whose
    st_dev is not its disk (btrfs gives each subvolume an anonymous device,
    major 0) is found through its source."""
    found = []
    for m in mounts:
        if not holds_data(m):
            continue
        device = m.device
        if os.major(device) == 0 and m.source.startswith("/dev/"):
            try:
                device = os.stat(m.source).st_rdev
            except OSError:
                device = 0
        found.append(Storage(f"{m.mount_point} ({m.fstype} on {m.source})", device))
    return found


def system_storage() -> list[Storage]:
    """What the running system keeps on disk: its data mounts and its swap."""
    try:
        swaps = parse_swaps(PROC_SWAPS.read_text())
    except OSError:
        swaps = []
    return [*mount_storage(read_mounts()), *swap_storage(swaps)]


def location_device(location: Path) -> int:
    """The block device an image at ``location`` is written to: a partition
    itself, or the filesystem a file is on (its directory's, if the file does
    not exist yet); 0 when neither can be read."""
    for path in (location, location.parent):
        try:
            st = os.stat(path)
        except OSError:
            continue
        return st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    return 0


def plaintext_refusal(
    location: Path,
    location_mapping: str,
    encrypted: Iterable[tuple[Storage, str]],
    *,
    allow_plaintext: bool,
) -> str:
    """Why an image must not be written at ``location`` ('' when it may):
    ``encrypted`` are the system's storage on dm-crypt with their mappings,
    ``location_mapping`` the mapping under the location ('' for none)."""
    if location_mapping or allow_plaintext:
        return ""
    named = [f"{s.what} is on the dm-crypt mapping {mapping}" for s, mapping in encrypted]
    if not named:
        return ""
    more = f" (and {len(named) - 2} more)" if len(named) > 2 else ""
    return (
        f"{'; '.join(named[:2])}{more}, but the image at {location} would not be "
        "encrypted: it holds all of memory, the disk encryption keys included, and "
        "would leave them on the disk in the clear; use an image file on a dm-crypt "
        "filesystem (`kexechibctl image create` seals it), or accept this with "
        f"{OVERRIDE} in /etc/kexechibd.conf"
    )


def protection(
    location: Path,
    location_mapping: str,
    encrypted: Iterable[tuple[Storage, str]],
    *,
    allow_plaintext: bool,
    sealed: bool = False,
) -> str:
    """What protects the image at ``location`` at rest, in one line (for
    ``kexechibctl status``); ``sealed``: a sealed image file (DESIGN §1.6)."""
    mappings = sorted({mapping for _, mapping in encrypted})
    if location_mapping and sealed:
        return (
            f"encrypted: {location} is sealed (its images are encrypted with a key of its "
            f"own, which is kept in the file, on the dm-crypt mapping {location_mapping})"
        )
    if location_mapping:
        return f"encrypted: {location} is on the dm-crypt mapping {location_mapping}"
    if not mappings:
        return (
            f"not encrypted, like the rest of this system (nothing is on dm-crypt); "
            f"{location} is kept for root alone (owner root, mode 0600)"
        )
    system = f"this system's storage is on dm-crypt ({', '.join(mappings)})"
    if allow_plaintext:
        return f"NOT encrypted, although {system}: allowed by {OVERRIDE}"
    return f"hibernation refused: {system} and {location} is not"


def _facts(location: Path, sysfs: Path) -> tuple[str, list[tuple[Storage, str]]]:
    encrypted = [
        (s, mapping) for s in system_storage() if (mapping := crypt_mapping(s.device, sysfs))
    ]
    return crypt_mapping(location_device(location), sysfs), encrypted


def protection_of(location: Path, *, allow_plaintext: bool, sysfs: Path = SYSFS) -> str:
    """``protection`` for the running system and ``location``."""
    return protection(
        location,
        *_facts(location, sysfs),
        allow_plaintext=allow_plaintext,
        sealed=is_sealed(location),
    )


def plaintext_refusal_of(location: Path, *, allow_plaintext: bool, sysfs: Path = SYSFS) -> str:
    """``plaintext_refusal`` for the running system and ``location``."""
    if allow_plaintext:
        return ""
    return plaintext_refusal(location, *_facts(location, sysfs), allow_plaintext=allow_plaintext)
