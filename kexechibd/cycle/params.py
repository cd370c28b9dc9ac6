"""What A tells B (DESIGN §3), and how it travels: a newc archive in the
placeholder after B's initrd, unpacked by B's kernel into its rootfs (pure
apart from ``read_params``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kexechibd import cpio
from kexechibd.errors import Failed
from kexechibd.image.extents import FileExtents
from kexechibd.image.seal import Seal
from kexechibd.kernel.api import KernelIdentity

PARAMS_DIR = "kexechib"
PARAMS_FILE = f"{PARAMS_DIR}/params.json"
PGMAP_FILE = f"{PARAMS_DIR}/pgmap"
VERSION = 1


@dataclass(frozen=True)
class SaveParams:
    hibernate_id: str
    mode: str
    image_location: str
    compression: str
    level: int
    chunk_size: int
    origin: KernelIdentity
    created: float
    window: tuple[tuple[int, int], ...]
    vmcoreinfo: tuple[int, int] | None = None
    # The image location is a prepared file: where its bytes are on its
    # device, which B writes by block address (it cannot see the file).
    image_file: FileExtents | None = None
    # A sealed file (DESIGN §1.6): its dm-crypt mapping and key.  These
    # parameters live in B's memory only (its rootfs), never on a disk.
    image_seal: Seal | None = None

    def to_json(self) -> bytes:
        data = asdict(self)
        data["version"] = VERSION
        if self.image_file is not None:
            data["image_file"] = self.image_file.to_dict()  # extents as triples
        if self.image_seal is not None:
            data["image_seal"] = self.image_seal.to_dict()
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SaveParams:
        try:
            data = json.loads(raw)
            if data.pop("version") != VERSION:
                raise ValueError("unknown parameter version")
            data["origin"] = KernelIdentity(**data["origin"])
            data["window"] = tuple(tuple(w) for w in data["window"])
            if data.get("vmcoreinfo") is not None:
                data["vmcoreinfo"] = tuple(data["vmcoreinfo"])
            if data.get("image_file") is not None:
                data["image_file"] = FileExtents.from_dict(data["image_file"])
            if data.get("image_seal") is not None:
                data["image_seal"] = Seal.from_dict(data["image_seal"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise Failed(f"B's parameters are unreadable: {exc}") from None


def pack_params(params: SaveParams, page_map: bytes) -> bytes:
    """The archive that goes into the placeholder."""
    return cpio.build_newc({PARAMS_FILE: params.to_json(), PGMAP_FILE: page_map})


def read_params(rootfs: Path) -> tuple[SaveParams, bytes]:
    """B's side: the files its kernel unpacked."""
    try:
        raw = (rootfs / PARAMS_FILE).read_bytes()
        page_map = (rootfs / PGMAP_FILE).read_bytes()
    except OSError as exc:
        raise Failed(
            f"no parameters from A in {rootfs / PARAMS_DIR}: {exc.strerror}; "
            "was this kernel started by kexechibd's Hibernate?"
        ) from None
    return SaveParams.from_json(raw), page_map
