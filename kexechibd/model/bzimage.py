"""Synthetic bzImages for the machine model.

The model boots a kernel from what the x86 boot protocol says (setup header,
boot_params, command line, initrd, e820); it never executes the kernel's own
code.  These images carry a valid setup header, a protected-mode part of the
requested size, and a marker the model reads the kernel's release from.
"""

from __future__ import annotations

import hashlib
import random
import struct

from kexechibd import bootproto

MARKER = b"KXHMODEL"
DEFAULT_RELEASE = "6.1.0-kexechib-model"


def make_bzimage(
    *,
    release: str = DEFAULT_RELEASE,
    kernel_size: int = 256 << 10,
    init_size: int = 8 << 20,
    seed: int = 0,
) -> bytes:
    setup_sects = 4
    boot = bytearray(512 * (setup_sects + 1))
    boot[bootproto.OFF_SETUP_SECTS] = setup_sects
    struct.pack_into("<H", boot, 0x1FE, 0xAA55)
    boot[bootproto.OFF_JUMP] = 0xEB
    boot[bootproto.OFF_JUMP + 1] = 0x268 - 0x202
    boot[0x202:0x206] = bootproto.HEADER_MAGIC
    struct.pack_into("<H", boot, bootproto.OFF_VERSION, 0x020F)
    boot[bootproto.OFF_LOADFLAGS] = bootproto.LOADED_HIGH
    struct.pack_into("<I", boot, bootproto.OFF_CODE32_START, 0x100000)
    struct.pack_into("<I", boot, bootproto.OFF_INITRD_ADDR_MAX, 0x7FFFFFFF)
    struct.pack_into("<I", boot, bootproto.OFF_KERNEL_ALIGNMENT, 0x200000)
    boot[bootproto.OFF_RELOCATABLE] = 1
    struct.pack_into(
        "<H",
        boot,
        bootproto.OFF_XLOADFLAGS,
        bootproto.XLF_KERNEL_64 | bootproto.XLF_CAN_BE_LOADED_ABOVE_4G,
    )
    struct.pack_into("<I", boot, bootproto.OFF_CMDLINE_SIZE, 2047)
    struct.pack_into("<Q", boot, bootproto.OFF_PREF_ADDRESS, 0x1000000)
    struct.pack_into("<I", boot, bootproto.OFF_INIT_SIZE, max(init_size, kernel_size))

    kernel = bytearray(random.Random(seed).randbytes(kernel_size))
    build_id = hashlib.sha1(bytes(kernel) + release.encode()).hexdigest()
    stamp = b"\x0f\x0b" + MARKER + release.encode() + b"\0" + build_id.encode() + b"\0"
    entry = bootproto.ENTRY64_OFFSET
    kernel[entry : entry + len(stamp)] = stamp
    return bytes(boot + kernel)


def read_marker(kernel_bytes: bytes) -> tuple[str, str] | None:
    """``(release, build_id)`` from a loaded model kernel, if it has the marker."""
    at = kernel_bytes.find(MARKER)
    if at < 0:
        return None
    fields = kernel_bytes[at + len(MARKER) :].split(b"\0", 2)
    if len(fields) < 2:
        return None
    return fields[0].decode(errors="replace"), fields[1].decode(errors="replace")
