"""The x86 boot protocol (Documentation/arch/x86/boot.rst), pure.

Reads the setup header of a bzImage, builds the ``boot_params`` ("zero page")
a 64-bit kexec entry hands to a kernel, and parses one back — the loader in A
and the machine model that boots B use the same layout.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kexechibd.kernel import abi
from kexechibd.kernel.api import MemoryKind, MemoryRange

SECTOR = 512
BOOT_PARAMS_SIZE = 4096
HEADER_MAGIC = b"HdrS"
SETUP_HEADER_OFFSET = 0x1F1
ENTRY64_OFFSET = 0x200  # the 64-bit entry is 0x200 past the protected-mode load address
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
LOADED_HIGH = 1 << 0
KEEP_SEGMENTS = 1 << 6
E820_MAX_ENTRIES = 128
E820_ENTRY = struct.Struct("<QQI")
MIN_PROTOCOL = 0x020C  # 2.12: xloadflags, 64-bit entry
ACPI_RSDP_PROTOCOL = 0x020E  # 2.14: boot_params.acpi_rsdp_addr

# Offsets inside boot_params (arch/x86/include/uapi/asm/bootparam.h).
OFF_ACPI_RSDP_ADDR = abi.BOOT_PARAMS_ACPI_RSDP_ADDR  # u64, protocol 2.14 and later
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_SETUP_SECTS = 0x1F1
OFF_JUMP = 0x200
OFF_VERSION = 0x206
OFF_KERNEL_VERSION = 0x20E
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_CODE32_START = 0x214
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_CMD_LINE_PTR = 0x228
OFF_INITRD_ADDR_MAX = 0x22C
OFF_KERNEL_ALIGNMENT = 0x230
OFF_RELOCATABLE = 0x234
OFF_XLOADFLAGS = 0x236
OFF_CMDLINE_SIZE = 0x238
OFF_PREF_ADDRESS = 0x258
OFF_INIT_SIZE = 0x260
OFF_E820_TABLE = 0x2D0


class BootProtocolError(ValueError):
    """A kernel image or boot_params block that does not follow the boot protocol."""


def _u8(buf: bytes | bytearray | memoryview, off: int) -> int:
    return buf[off]


def _u16(buf: bytes | bytearray | memoryview, off: int) -> int:
    return int(struct.unpack_from("<H", buf, off)[0])


def _u32(buf: bytes | bytearray | memoryview, off: int) -> int:
    return int(struct.unpack_from("<I", buf, off)[0])


def _u64(buf: bytes | bytearray | memoryview, off: int) -> int:
    return int(struct.unpack_from("<Q", buf, off)[0])


def kernel_banner(image: bytes | memoryview) -> str:
    """The version banner a bzImage carries (``6.1.0-13-amd64 (…) #1 SMP …
    Debian 6.1.55-1``; its first word is the release), '' when it has none:
    the setup header's ``kernel_version`` points at it, less 0x200."""
    data = memoryview(image)
    if len(data) < 0x268 or bytes(data[0x202:0x206]) != HEADER_MAGIC:
        return ""
    pointer = _u16(data, OFF_KERNEL_VERSION)
    if not pointer:
        return ""
    start = pointer + 0x200
    end = bytes(data[start : start + 512]).find(b"\0")
    return bytes(data[start : start + max(end, 0)]).decode(errors="replace").strip()


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage: its setup header bytes and its protected-mode kernel."""

    header: bytes  # bytes SETUP_HEADER_OFFSET .. end of the setup header
    kernel: memoryview  # the protected-mode part, loaded at code32_start
    version: int
    xloadflags: int
    kernel_alignment: int
    relocatable: bool
    pref_address: int
    init_size: int
    cmdline_size: int
    initrd_addr_max: int

    @classmethod
    def parse(cls, image: bytes | memoryview) -> BzImage:
        data = memoryview(image)
        if len(data) < 0x268:
            raise BootProtocolError(f"kernel image is {len(data)} bytes, too short for a bzImage")
        if bytes(data[0x202:0x206]) != HEADER_MAGIC:
            raise BootProtocolError("not a bzImage: no 'HdrS' setup header at offset 0x202")
        version = _u16(data, OFF_VERSION)
        if version < MIN_PROTOCOL:
            raise BootProtocolError(
                f"boot protocol {version >> 8}.{version & 0xFF} is too old; 2.12 or later needed"
            )
        xloadflags = _u16(data, OFF_XLOADFLAGS)
        if not xloadflags & XLF_KERNEL_64:
            raise BootProtocolError("the kernel has no 64-bit entry point (XLF_KERNEL_64 unset)")
        setup_sects = _u8(data, OFF_SETUP_SECTS) or 4
        kernel_offset = (setup_sects + 1) * SECTOR
        if kernel_offset >= len(data):
            raise BootProtocolError("bzImage has no protected-mode kernel after its setup sectors")
        header_end = OFF_JUMP + 2 + _u8(data, OFF_JUMP + 1)
        return cls(
            header=bytes(data[SETUP_HEADER_OFFSET:header_end]),
            kernel=data[kernel_offset:],
            version=version,
            xloadflags=xloadflags,
            kernel_alignment=_u32(data, OFF_KERNEL_ALIGNMENT),
            relocatable=bool(_u8(data, OFF_RELOCATABLE)),
            pref_address=_u64(data, OFF_PREF_ADDRESS),
            init_size=_u32(data, OFF_INIT_SIZE),
            cmdline_size=_u32(data, OFF_CMDLINE_SIZE),
            initrd_addr_max=_u32(data, OFF_INITRD_ADDR_MAX),
        )

    @property
    def load_size(self) -> int:
        """Memory the kernel needs at its load address (at least its file size)."""
        return max(self.init_size, len(self.kernel))


def build_boot_params(
    image: BzImage,
    *,
    kernel_addr: int,
    cmdline_addr: int,
    initrd_addr: int,
    initrd_size: int,
    e820: Sequence[MemoryRange],
    acpi_rsdp: int | None = None,
) -> bytearray:
    """The zero page for entering ``image`` at ``kernel_addr + 0x200`` in 64-bit mode.

    ``acpi_rsdp`` is where the firmware's ACPI RSDP is: a kernel booted by a
    loader rather than by the firmware finds ACPI only there on a UEFI
    machine (the legacy scan of 0xE0000-0xFFFFF finds nothing, and the zero
    page carries no EFI system table: the kernel runs without EFI), hence no
    ACPI power-off.  Kernels before boot protocol 2.14 do not read it.
    Nothing else of EFI is passed on (``efi_info`` stays zero): the kernel
    started must not call firmware runtime services set up for this one."""
    if len(e820) > E820_MAX_ENTRIES:
        raise BootProtocolError(f"{len(e820)} memory ranges exceed the e820 table's 128")
    params = bytearray(BOOT_PARAMS_SIZE)
    params[SETUP_HEADER_OFFSET : SETUP_HEADER_OFFSET + len(image.header)] = image.header
    params[OFF_TYPE_OF_LOADER] = 0xFF
    params[OFF_LOADFLAGS] |= LOADED_HIGH | KEEP_SEGMENTS
    struct.pack_into("<I", params, OFF_CODE32_START, kernel_addr & 0xFFFFFFFF)
    struct.pack_into("<I", params, OFF_RAMDISK_IMAGE, initrd_addr & 0xFFFFFFFF)
    struct.pack_into("<I", params, OFF_RAMDISK_SIZE, initrd_size & 0xFFFFFFFF)
    struct.pack_into("<I", params, OFF_EXT_RAMDISK_IMAGE, initrd_addr >> 32)
    struct.pack_into("<I", params, OFF_EXT_RAMDISK_SIZE, initrd_size >> 32)
    struct.pack_into("<I", params, OFF_CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", params, OFF_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if acpi_rsdp and image.version >= ACPI_RSDP_PROTOCOL:
        struct.pack_into("<Q", params, OFF_ACPI_RSDP_ADDR, acpi_rsdp)
    params[OFF_E820_ENTRIES] = len(e820)
    for i, r in enumerate(e820):
        E820_ENTRY.pack_into(
            params, OFF_E820_TABLE + i * E820_ENTRY.size, r.start, r.size, r.kind.e820_type
        )
    return params


@dataclass(frozen=True)
class BootParams:
    """What a kernel learns from its zero page."""

    code32_start: int
    cmdline_addr: int
    initrd_addr: int
    initrd_size: int
    e820: tuple[MemoryRange, ...]
    cmdline_size: int
    init_size: int
    acpi_rsdp: int = 0  # 0: none given

    @property
    def entry64(self) -> int:
        return self.code32_start + ENTRY64_OFFSET

    @classmethod
    def parse(cls, params: bytes | bytearray | memoryview) -> BootParams:
        if len(params) < BOOT_PARAMS_SIZE:
            raise BootProtocolError("boot_params is shorter than a page")
        if bytes(params[0x202:0x206]) != HEADER_MAGIC:
            raise BootProtocolError("boot_params has no 'HdrS' setup header")
        count = params[OFF_E820_ENTRIES]
        if count > E820_MAX_ENTRIES:
            raise BootProtocolError(f"boot_params claims {count} e820 entries (max 128)")
        e820 = []
        for i in range(count):
            start, size, kind = E820_ENTRY.unpack_from(params, OFF_E820_TABLE + i * E820_ENTRY.size)
            e820.append(MemoryRange(start, start + size, MemoryKind.from_e820(kind)))
        return cls(
            code32_start=_u32(params, OFF_CODE32_START),
            cmdline_addr=_u32(params, OFF_CMD_LINE_PTR) | _u32(params, OFF_EXT_CMD_LINE_PTR) << 32,
            initrd_addr=_u32(params, OFF_RAMDISK_IMAGE) | _u32(params, OFF_EXT_RAMDISK_IMAGE) << 32,
            initrd_size=_u32(params, OFF_RAMDISK_SIZE) | _u32(params, OFF_EXT_RAMDISK_SIZE) << 32,
            e820=tuple(e820),
            cmdline_size=_u32(params, OFF_CMDLINE_SIZE),
            init_size=_u32(params, OFF_INIT_SIZE),
            acpi_rsdp=_u64(params, OFF_ACPI_RSDP_ADDR),
        )
