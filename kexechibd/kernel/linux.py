"""The Linux backend: the running kernel, through ``syscall(2)`` (cffi) and
``/proc``, ``/sys``.

The safety guard (DESIGN §9) is structural: ``kexec_load``, ``reboot_kexec``
and ``power_off`` raise ``GuardRefused`` before any syscall unless real kexec
was enabled explicitly — in the configuration (``enable_real_kexec``) or with
``kexechib.enable_kexec=1`` on the kernel command line, which only lab guests
and machines set up for kexechibd carry.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import cffi

from kexechibd.kernel import abi
from kexechibd.kernel.api import KernelIdentity, MemoryKind, MemoryRange, SupportReport

ENABLE_PARAMETER = "kexechib.enable_kexec=1"
CAP_SYS_BOOT = 22

_ffi = cffi.FFI()
_ffi.cdef(abi.KEXEC_SEGMENT_CDEF + "long syscall(long number, ...);")
_libc: Any = None


def ffi() -> cffi.FFI:
    """The cffi instance that knows ``struct kexec_segment``."""
    return _ffi


def _raw_syscall(number: int, *args: Any) -> tuple[int, int]:
    """``syscall(number, *args)`` → (return value, errno).  The only place
    that enters the kernel; every caller passes the guard first."""
    global _libc
    if _libc is None:
        _libc = _ffi.dlopen(None)
    _ffi.errno = 0
    ret = int(_libc.syscall(_ffi.cast("long", number), *args))
    return ret, _ffi.errno


# Indirection so that tests can prove the guard stops calls before this point.
syscall: Callable[..., tuple[int, int]] = _raw_syscall


def _ulong(value: int) -> Any:
    return _ffi.cast("unsigned long", value)


def pack_segments(segments: Sequence[abi.Segment]) -> tuple[Any, list[Any]]:
    """A C array of ``struct kexec_segment`` and the buffers it points into
    (keep them alive until the call returns)."""
    array = _ffi.new("struct kexec_segment[]", max(len(segments), 1))
    keep: list[Any] = []
    for i, seg in enumerate(segments):
        if seg.bufsz:
            buf = _ffi.from_buffer(seg.buf)
            keep.append(buf)
            array[i].buf = buf
        else:
            array[i].buf = _ffi.NULL
        array[i].bufsz = seg.bufsz
        array[i].mem = _ffi.cast("void *", seg.mem)
        array[i].memsz = seg.memsz
    return array, keep


def _read_text(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def parse_efi_systab_rsdp(text: str) -> int | None:
    """The RSDP address in ``/sys/firmware/efi/systab`` (``ACPI20=0x…``
    preferred over ``ACPI=0x…``, as the kernel prefers ACPI 2.0's table)."""
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in ("ACPI20", "ACPI"):
            try:
                found[name] = int(value.strip(), 16)
            except ValueError:
                continue
    return found.get("ACPI20") or found.get("ACPI") or None


def parse_iomem(text: str) -> list[MemoryRange]:
    """Top-level ranges of ``/proc/iomem`` (children are indented)."""
    kinds = {k.value: k for k in MemoryKind}
    ranges = []
    for line in text.splitlines():
        if not line or line[0] == " ":
            continue
        span, _, name = line.partition(" : ")
        start_s, _, end_s = span.partition("-")
        name = name.strip()
        kind = kinds.get(name)
        if kind is None:
            if name.startswith("System RAM"):
                kind = MemoryKind.RAM
            elif name.startswith("Reserved") or name.startswith("reserved"):
                kind = MemoryKind.RESERVED
            else:
                continue
        ranges.append(MemoryRange(int(start_s, 16), int(end_s, 16) + 1, kind))
    return ranges


def parse_firmware_memmap(root: Path) -> list[MemoryRange]:
    """``/sys/firmware/memmap/N/{start,end,type}``: the e820 map as the firmware gave it."""
    kinds = {k.value: k for k in MemoryKind}
    ranges = []
    for entry in root.iterdir():
        start = int((entry / "start").read_text(), 16)
        end = int((entry / "end").read_text(), 16) + 1
        kind = kinds.get((entry / "type").read_text().strip(), MemoryKind.RESERVED)
        ranges.append(MemoryRange(start, end, kind))
    return sorted(ranges)


def selected_lockdown(text: str) -> str:
    """``/sys/kernel/security/lockdown`` reads like ``[none] integrity confidentiality``."""
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else "none"


def gnu_build_id(notes: bytes) -> str:
    """The NT_GNU_BUILD_ID in ``/sys/kernel/notes`` (a raw ELF note section)."""
    offset = 0
    while offset + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, offset)
        name_start = offset + 12
        desc_start = name_start + ((namesz + 3) & ~3)
        name = notes[name_start : name_start + namesz].rstrip(b"\0")
        if ntype == 3 and name == b"GNU":
            return notes[desc_start : desc_start + descsz].hex()
        offset = desc_start + ((descsz + 3) & ~3)
    return ""


def kernel_config_value(config_text: str, option: str) -> str | None:
    """``y``/``m``/value of ``CONFIG_<option>``, or None when unset."""
    match = re.search(rf"^CONFIG_{option}=(.*)$", config_text, re.M)
    return match.group(1) if match else None


class LinuxKernel:
    """The running Linux kernel (DESIGN §2.3)."""

    backend = "linux"
    successors_share_files = False

    def __init__(
        self,
        *,
        enable_real_kexec: bool = False,
        proc: Path = Path("/proc"),
        sys: Path = Path("/sys"),
        boot: Path = Path("/boot"),
        etc: Path = Path("/etc"),
    ) -> None:
        self._proc = proc
        self._sys = sys
        self._boot = boot
        self._etc = etc
        self._enabled_by = ""
        if enable_real_kexec:
            self._enabled_by = "configuration (enable_real_kexec)"
        elif ENABLE_PARAMETER in self.cmdline().split():
            self._enabled_by = f"kernel command line ({ENABLE_PARAMETER})"

    @property
    def real_kexec_enabled(self) -> bool:
        return bool(self._enabled_by)

    def _guard(self, operation: str) -> None:
        if not self._enabled_by:
            raise abi.GuardRefused(
                operation,
                0,
                "refused: real kexec is not enabled on this machine",
                "set enable_real_kexec = yes in [kexec] of /etc/kexechibd.conf, or boot "
                f"with {ENABLE_PARAMETER}; until then use the machine model (backend = model)",
            )

    # ------------------------------------------------------------ dangerous

    def kexec_load(self, entry: int, segments: Sequence[abi.Segment], flags: int) -> None:
        self._guard("kexec_load")
        array, keep = pack_segments(segments)
        ret, err = syscall(
            abi.SYS_KEXEC_LOAD, _ulong(entry), _ulong(len(segments)), array, _ulong(flags)
        )
        del keep
        if ret != 0:
            raise abi.kexec_load_error(err, flags, len(segments))

    def _reboot(self, command: int) -> tuple[int, int]:
        """``reboot(MAGIC1, MAGIC2, command, NULL)`` after syncing."""
        os.sync()
        return syscall(
            abi.SYS_REBOOT,
            _ffi.cast("int", abi.LINUX_REBOOT_MAGIC1),
            _ffi.cast("int", abi.LINUX_REBOOT_MAGIC2),
            _ffi.cast("unsigned int", command),
            _ffi.NULL,
        )

    def reboot_kexec(self) -> int:
        self._guard("reboot(LINUX_REBOOT_CMD_KEXEC)")
        ret, err = self._reboot(abi.LINUX_REBOOT_CMD_KEXEC)
        if ret != 0:
            raise abi.reboot_error(err, "KEXEC")
        return 0

    def power_off(self) -> NoReturn:
        self._guard("reboot(LINUX_REBOOT_CMD_POWER_OFF)")
        _, err = self._reboot(abi.LINUX_REBOOT_CMD_POWER_OFF)
        raise abi.reboot_error(err, "POWER_OFF")

    # ------------------------------------------------------------ reading

    def kexec_loaded(self) -> bool:
        return _read_text(self._sys / "kernel/kexec_loaded", "0").strip() == "1"

    def kexec_pgmap(self) -> bytes:
        # ESTALE: the image changed between two read()s of one pass; a pass
        # from offset 0 again reads one consistent state.
        for _ in range(abi.PGMAP_READ_ATTEMPTS):
            try:
                return (self._proc / "kexec_pgmap").read_bytes()
            except OSError as e:
                if e.errno != errno.ESTALE:
                    raise abi.pgmap_error(e.errno or 0) from None
        raise abi.pgmap_error(errno.ESTALE)

    def vmcore(self) -> BinaryIO:
        return open(self._proc / "vmcore", "rb")

    def cmdline(self) -> str:
        return _read_text(self._proc / "cmdline").strip()

    def memory_map(self) -> list[MemoryRange]:
        firmware = self._sys / "firmware/memmap"
        if firmware.is_dir():
            return parse_firmware_memmap(firmware)
        ranges = parse_iomem(_read_text(self._proc / "iomem"))
        if ranges and all(r.start == 0 and r.end == 1 for r in ranges):
            # Since 4.15 /proc/iomem shows every address as 0 to a process
            # without CAP_SYS_ADMIN (kernel/resource.c), e.g. kexechibd.service.
            raise abi.KernelError(
                "read the memory map",
                errno.EPERM,
                "/proc/iomem hides its addresses from this process (no CAP_SYS_ADMIN) and "
                "the kernel has no /sys/firmware/memmap",
                "boot a kernel with CONFIG_FIRMWARE_MEMMAP=y (Debian's has it), or give "
                "the daemon CAP_SYS_ADMIN",
            )
        return ranges

    def vmcoreinfo(self) -> tuple[int, int] | None:
        fields = _read_text(self._sys / "kernel/vmcoreinfo").split()
        if len(fields) != 2:
            return None
        return int(fields[0], 16), int(fields[1], 16)

    def acpi_rsdp(self) -> int | None:
        # The kernel's own copy of its zero page has the RSDP its
        # decompressor found (from the loader, the EFI system table or the
        # BIOS area); kexec-tools reads it the same way.  Failing that, the
        # EFI system table's entries as /sys/firmware/efi/systab lists them.
        try:
            with open(self._sys / Path(abi.BOOT_PARAMS_PATH).relative_to("/sys"), "rb") as f:
                f.seek(abi.BOOT_PARAMS_ACPI_RSDP_ADDR)
                raw = f.read(8)
        except OSError:
            raw = b""
        if len(raw) == 8 and int.from_bytes(raw, "little"):
            return int.from_bytes(raw, "little")
        systab = self._sys / Path(abi.EFI_SYSTAB_PATH).relative_to("/sys")
        return parse_efi_systab_rsdp(_read_text(systab))

    def identity(self) -> KernelIdentity:
        try:
            notes = (self._sys / "kernel/notes").read_bytes()
        except OSError:
            notes = b""
        return KernelIdentity(
            release=_read_text(self._proc / "sys/kernel/osrelease").strip(),
            build_id=gnu_build_id(notes),
            boot_id=_read_text(self._proc / "sys/kernel/random/boot_id").strip(),
            machine_id=_read_text(self._etc / "machine-id").strip(),
        )

    def rootfs(self) -> Path:
        return Path("/")

    # ------------------------------------------------------------ probing

    def _kernel_config(self) -> str:
        try:
            return gzip.decompress((self._proc / "config.gz").read_bytes()).decode()
        except OSError:
            pass
        release = _read_text(self._proc / "sys/kernel/osrelease").strip()
        return _read_text(self._boot / f"config-{release}")

    def _has_cap_sys_boot(self) -> bool:
        for line in _read_text(self._proc / "self/status").splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_BOOT & 1)
        return False

    def _flags_accepted(self, flags: int) -> bool | None:
        """Ask the kernel whether it accepts ``flags`` without loading anything:
        one segment at a NULL address fails with EFAULT once the flags passed
        (the kernel copies the segment list before touching any state), and
        with EINVAL when they did not.  Only when real kexec is enabled."""
        if not self._enabled_by:
            return None
        ret, err = syscall(abi.SYS_KEXEC_LOAD, _ulong(0), _ulong(1), _ffi.NULL, _ulong(flags))
        if ret == 0 or err not in (errno.EFAULT, errno.EINVAL):
            return None
        return err == errno.EFAULT

    def probe(self) -> SupportReport:
        kexec = (self._sys / "kernel/kexec_loaded").exists()
        config = self._kernel_config()
        notes = []
        jump: bool | None = None
        if kexec:
            value = kernel_config_value(config, "KEXEC_JUMP") if config else None
            if config:
                jump = value == "y"
                notes.append("CONFIG_KEXEC_JUMP read from the kernel configuration")
            else:
                jump = self._flags_accepted(abi.load_flags(preserve_context=True))
                if jump is not None:
                    notes.append("CONFIG_KEXEC_JUMP probed with a preserve-context kexec_load")
        staged = (self._proc / "kexec_pgmap").exists()
        return SupportReport(
            backend=self.backend,
            kexec=kexec,
            cap_sys_boot=self._has_cap_sys_boot(),
            lockdown=selected_lockdown(_read_text(self._sys / "kernel/security/lockdown")),
            kexec_load_disabled=_read_text(
                self._proc / "sys/kernel/kexec_load_disabled", "0"
            ).strip()
            == "1",
            kexec_jump=jump,
            staged_load=staged,
            guard="" if self._enabled_by else "real kexec is not enabled (safety guard)",
            notes=tuple(notes),
        )
