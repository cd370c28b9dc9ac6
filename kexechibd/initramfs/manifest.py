"""What kernel B's initramfs was built from, and whether it still fits.

The builder writes a manifest as the archive's first entry
(``kexechib-saver.json``), so that reading it costs one small read of the
archive's head.  It names the kexechibd version and a hash of kexechibd's
files that went in, and the kernel it was built for: its release and, when
the kernel file was there, its full version banner (which differs between
two builds of one release).  ``problems`` compares it with what is
installed now (pure); the daemon refuses to hibernate while there is one,
and ``kexechibctl status`` shows it.

An initrd without a manifest was not built by ``kexechibctl saver build``
(a custom kernel B, for example one that boots systemd): kexechibd cannot
check it, and only its presence counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kexechibd import cpio

NAME = "kexechib-saver.json"
FORMAT = 1
# The manifest is the first entry: a few hundred bytes of header and JSON.
HEAD_BYTES = 64 << 10
BUILD_COMMAND = "kexechibctl saver build"


@dataclass(frozen=True)
class Manifest:
    kexechibd_version: str
    package_hash: str  # package_hash() of kexechibd's files in the archive
    kernel_release: str
    kernel_version: str  # the kernel file's banner; "" when it was not there
    python: str
    modules: tuple[str, ...]  # paths under /lib/modules/<release>, in load order
    built: float

    def to_json(self) -> bytes:
        data = asdict(self)
        data["format"] = FORMAT
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Raises ValueError for anything but a manifest of this format."""
        try:
            data = json.loads(raw)
            if data.pop("format", None) != FORMAT:
                raise ValueError("unknown manifest format")
            data["modules"] = tuple(data["modules"])
            return cls(**data)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"incomplete manifest: {e}") from None


def package_hash(files: list[tuple[str, bytes]]) -> str:
    """SHA-256 over (relative path, contents) of kexechibd's files."""
    h = hashlib.sha256()
    for name, data in sorted(files):
        for part in (name.encode(), data):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def read_manifest(head: bytes) -> Manifest | None:
    """The manifest from the first bytes of an archive; None when the
    archive has none (not ours, or compressed). Raises ValueError when it
    has one that cannot be read."""
    try:
        for entry in cpio.read_newc(head):
            if entry.name == NAME:
                return Manifest.from_json(entry.data)
            if entry.is_file:
                return None
    except cpio.CpioError:
        return None
    return None


@dataclass(frozen=True)
class Installed:
    """What is installed now, for comparison with a manifest."""

    kexechibd_version: str
    package_hash: str
    kernel_release: str  # of kernel B's file ("" unknown)
    kernel_version: str  # its banner ("" unknown)


def problems(path: Path, manifest: Manifest | None, installed: Installed) -> list[str]:
    """Why the initramfs at ``path`` (built as ``manifest`` says) does not
    fit what is installed; empty when it does or cannot be checked."""
    if manifest is None:
        return []
    fix = f"rebuild it with `{BUILD_COMMAND}`"
    out = []
    if manifest.package_hash != installed.package_hash:
        if manifest.kexechibd_version != installed.kexechibd_version:
            what = f"kexechibd {installed.kexechibd_version} is installed"
        else:
            what = "the installed kexechibd's files have changed since"
        out.append(f"{path} holds kexechibd {manifest.kexechibd_version} but {what}; {fix}")
    if installed.kernel_release and manifest.kernel_release != installed.kernel_release:
        out.append(
            f"{path} was built for kernel {manifest.kernel_release} but kernel B is "
            f"{installed.kernel_release}; {fix} --kernel-version {installed.kernel_release}"
        )
    elif (
        installed.kernel_version
        and manifest.kernel_version
        and manifest.kernel_version != installed.kernel_version
    ):
        out.append(
            f"{path} was built for another build of kernel {manifest.kernel_release} "
            f"({manifest.kernel_version!r}; kernel B is {installed.kernel_version!r}); {fix}"
        )
    return out


def missing(path: Path) -> str:
    return f"kernel B's initramfs {path} is missing; build it with `{BUILD_COMMAND}`"
