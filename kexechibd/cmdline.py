"""Kernel command-line parameters kexechibd writes or reads (pure).

``memmap=`` and ``elfcorehdr=`` follow Documentation/admin-guide/kernel-parameters;
``kexec_jump_back_entry=`` is the userspace convention purgatory follows;
``kexechib.*`` are ours.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from kexechibd import ranges
from kexechibd.kernel.api import MemoryKind, MemoryRange

JUMP_BACK_ENTRY = "kexec_jump_back_entry"
ROLE_PARAMETER = "kexechib.role"
ROLE_SAVE = "save"
ENABLE_KEXEC_PARAMETER = "kexechib.enable_kexec"
# Either keeps a boot from resuming: the kernel's own (kernel-parameters.txt)
# and ours, for when only kexechib's resume is to be skipped.
NORESUME_PARAMETERS = ("noresume", "kexechib.noresume")
# A systemd B boots this target (systemd/kexechib-save.target) instead of
# default.target: the saver, and none of the mounts of A's filesystems.
SAVE_TARGET_PARAMETER = "systemd.unit=kexechib-save.target"

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^(0x[0-9a-fA-F]+|\d+)([KMGTkmgt]?)$")


class CmdlineError(ValueError):
    pass


def parse_size(text: str) -> int:
    """``memparse()``: a number (decimal or 0x hex) with an optional K/M/G/T suffix."""
    match = _SIZE.match(text.strip())
    if not match:
        raise CmdlineError(f"not a size: {text!r} (examples: 4096, 0x1000, 64K, 128M, 2G)")
    return int(match.group(1), 0) * _SUFFIX[match.group(2).upper()]


def format_size(value: int) -> str:
    for suffix in ("G", "M", "K"):
        unit = _SUFFIX[suffix]
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def split(cmdline: str) -> list[str]:
    try:
        return shlex.split(cmdline)
    except ValueError:
        return cmdline.split()


def values(cmdline: str, name: str) -> list[str]:
    """Every value of ``name=`` in order (the kernel lets the last one win for most)."""
    prefix = name + "="
    return [word[len(prefix) :] for word in split(cmdline) if word.startswith(prefix)]


def value(cmdline: str, name: str) -> str | None:
    found = values(cmdline, name)
    return found[-1] if found else None


def flag(cmdline: str, name: str) -> bool:
    return name in split(cmdline)


def jump_back_entry(cmdline: str) -> int | None:
    text = value(cmdline, JUMP_BACK_ENTRY)
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        raise CmdlineError(f"{JUMP_BACK_ENTRY}={text!r} is not a hex address") from None


@dataclass(frozen=True)
class ElfCoreHeaderParam:
    addr: int
    size: int | None


def elfcorehdr(cmdline: str) -> ElfCoreHeaderParam | None:
    """``elfcorehdr=[size@]offset`` (kernel/crash_dump.c)."""
    text = value(cmdline, "elfcorehdr")
    if text is None:
        return None
    if "@" in text:
        size, _, addr = text.partition("@")
        return ElfCoreHeaderParam(parse_size(addr), parse_size(size))
    return ElfCoreHeaderParam(parse_size(text), None)


def memmap_exactmap(ranges: Sequence[MemoryRange]) -> str:
    """``memmap=exactmap memmap=size@start …``: confine a kernel to ``ranges``."""
    parts = ["memmap=exactmap"]
    for r in ranges:
        sep = "@" if r.kind is MemoryKind.RAM else "$"
        parts.append(f"memmap={format_size(r.size)}{sep}{r.start:#x}")
    return " ".join(parts)


def apply_memmap(firmware: Sequence[MemoryRange], cmdline: str) -> list[MemoryRange]:
    """The RAM a kernel uses after ``memmap=`` options (x86 ``parse_memmap_one``):
    ``exactmap`` discards the firmware map; ``size@start`` adds RAM;
    ``size$start``/``size#start`` mark a range reserved."""
    ram = [r for r in firmware if r.kind is MemoryKind.RAM]
    for text in values(cmdline, "memmap"):
        for item in text.split(","):
            if item == "exactmap":
                ram = []
                continue
            match = re.match(r"^([^@$#!]+)([@$#!])(.+)$", item)
            if not match:
                raise CmdlineError(f"memmap={item!r} is not size@start, size$start or exactmap")
            size, kind, start = (
                parse_size(match.group(1)),
                match.group(2),
                parse_size(match.group(3)),
            )
            if kind == "@":
                ram.append(MemoryRange(start, start + size))
            else:
                ram = ranges.subtract(ram, [(start, start + size)])
    return ranges.merge(ram)


def noresume(cmdline: str) -> bool:
    """Whether the command line asks this boot not to resume."""
    return any(word in NORESUME_PARAMETERS for word in split(cmdline))
