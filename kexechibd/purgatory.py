"""Loading the purgatory: relocate ``purgatory/purgatory.ro`` to a physical
address, fill in its variables, and hand back one kexec segment.

The purgatory (``purgatory/``, DESIGN §1.2) runs between the kernel's
relocation code and kernel B: it records the jump-back entry the kernel left
at ``0(%rsp)``, verifies the SHA-256 of B's segments (and spins forever on a
mismatch), appends ``kexec_jump_back_entry=0x…`` to B's command line and
enters B with the registers given here.

It is built as a relocatable object (``gcc -r``, large code model, no PIC).
This module does what a linker would do for it, for one fixed address: lay
out its allocatable sections, resolve its symbols and apply its x86-64
relocations, then write its variables by symbol name, each checked against
the size the object declares for it.  Anything it does not understand is
refused with a :class:`PurgatoryError` that names the problem.

Pure: no I/O besides reading the object when given a path.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_RELOC_TYPE_x64
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableSection

from kexechibd.kernel.abi import PAGE_SIZE, Segment, page_align_up

# Where the object is looked for, in this order (default_purgatory_path):
# the environment; the package's own data (a wheel carries it there, built by
# setup.py); the Debian package's /usr/lib/kexechibd (`make install`); the
# source tree (`make purgatory`).  The package data comes before
# /usr/lib so that a wheel installed next to the Debian package uses the
# object built with its own code.  Package data is read as a file next to the
# modules: a zipped installation is not supported.
ENV_PURGATORY = "KEXECHIB_PURGATORY"
PACKAGED_PURGATORY = Path(__file__).resolve().parent / "data" / "purgatory.ro"
INSTALLED_PURGATORY = Path("/usr/lib/kexechibd/purgatory.ro")
SOURCE_PURGATORY = Path(__file__).resolve().parent.parent / "purgatory" / "purgatory.ro"

# The command-line parameter purgatory appends for kernel B (a user-space
# convention of kexec-tools; no kernel parses it).
JUMP_BACK_PARAM = "kexec_jump_back_entry"
# Its longest form with the leading space and the final NUL (purgatory/cmdline.h).
JUMP_BACK_PARAM_MAX = len(f" {JUMP_BACK_PARAM}=0x") + 16 + 1
# What a loader should reserve after B's command line (kexec-tools' figure).
CMDLINE_ROOM = 64

ENTRY_SYMBOL = "purgatory_start"
STACK_END_SYMBOL = "stack_end"

_U64 = struct.Struct("<Q")
_REGION = struct.Struct("<QQ")
_ZEROS = bytes(1 << 20)


class PurgatoryError(ValueError):
    """A purgatory object this loader cannot use; the message names why."""


@dataclass(frozen=True)
class EntryRegs:
    """The 64-bit registers purgatory loads before jumping to ``rip``.

    ``rsp == 0`` means purgatory's own stack top (``stack_end``).  For a Linux
    kernel B: ``rsi`` = boot_params, ``rip`` = kernel + 0x200 (64-bit entry).
    """

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0 <= value < 1 << 64:
                raise ValueError(f"register {f.name} = {value:#x} is not a 64-bit value")

    def pack(self, stack_end: int) -> bytes:
        """``entry64_regs`` as purgatory reads it (purgatory/purgatory.h)."""
        values = [getattr(self, f.name) for f in fields(self)]
        if self.rsp == 0:
            values[[f.name for f in fields(self)].index("rsp")] = stack_end
        return struct.pack(f"<{len(values)}Q", *values)


@dataclass(frozen=True)
class Purgatory:
    """The relocated purgatory: one segment at ``segment.mem`` (page aligned),
    entered at ``entry``; ``symbols`` = addresses of its global symbols."""

    segment: Segment
    entry: int
    symbols: Mapping[str, int]


def default_purgatory_path() -> Path:
    """``$KEXECHIB_PURGATORY``, else the package's data (a wheel), else the
    installed object (the Debian package), else the one built in this source
    tree."""
    env = os.environ.get(ENV_PURGATORY)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{ENV_PURGATORY}={env} does not name a file")
        return path
    searched = (PACKAGED_PURGATORY, INSTALLED_PURGATORY, SOURCE_PURGATORY)
    for path in searched:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no purgatory object: none of {', '.join(map(str, searched))} exists; "
        f"run `make purgatory` in the source tree (or set {ENV_PURGATORY})"
    )


def segments_digest(segments: Sequence[Segment]) -> bytes:
    """SHA-256 over each segment's bytes followed by its zero padding up to
    ``memsz``, in order: exactly what purgatory hashes once the kernel has
    placed the segments."""
    h = hashlib.sha256()
    for seg in segments:
        if seg.bufsz > seg.memsz:
            raise ValueError(f"{seg!r}: bufsz exceeds memsz")
        h.update(seg.buf)
        pad = seg.memsz - seg.bufsz
        while pad:
            n = min(pad, len(_ZEROS))
            h.update(_ZEROS[:n])
            pad -= n
    return h.digest()


# A purgatory built by gcc 12 -O2 executes about 54 instructions per hashed
# byte (measured under unicorn); twice that, plus the rest of its work with
# a wide margin.
_INSTRUCTIONS_PER_HASHED_BYTE = 110
_INSTRUCTIONS_BESIDES_HASHING = 1_000_000


def instruction_budget(hashed: Sequence[Segment]) -> int:
    """An instruction budget for emulating purgatory over ``hashed``
    (``kexechibd.model.cpu.run_x86_64``): about twice what a correct run
    needs, so that exhausting it means purgatory is spinning on a bad digest."""
    return _INSTRUCTIONS_BESIDES_HASHING + _INSTRUCTIONS_PER_HASHED_BYTE * sum(
        s.memsz for s in hashed
    )


def build_purgatory(
    obj: Path | bytes,
    *,
    base: int,
    hashed: Sequence[Segment],
    regs: EntryRegs,
    cmdline_end: int,
    cmdline_room: int,
) -> Purgatory:
    """Relocate the purgatory object to physical ``base`` and configure it.

    ``hashed``: the segments purgatory verifies (their ``buf`` plus zero
    padding to ``memsz``), at most as many as the object has regions for (16).
    ``cmdline_end``: physical address of B's command line's terminating NUL;
    ``cmdline_room``: bytes reserved from there on for the append, the final
    NUL included (at least :data:`JUMP_BACK_PARAM_MAX`).
    """
    if base % PAGE_SIZE or base < 0:
        raise ValueError(f"purgatory base {base:#x} is not a page-aligned address")
    if cmdline_room < JUMP_BACK_PARAM_MAX:
        raise ValueError(
            f"{cmdline_room} bytes after the command line cannot hold "
            f"{JUMP_BACK_PARAM}=; reserve at least {JUMP_BACK_PARAM_MAX} (kexec-tools "
            f"reserves {CMDLINE_ROOM})"
        )
    if cmdline_end <= 0:
        raise ValueError(f"command line end {cmdline_end:#x} is not an address")

    image = _Image.load(obj, base)
    end = base + image.memsz

    regions_size = image.symbol_size("sha256_regions")
    max_regions = regions_size // _REGION.size
    if len(hashed) > max_regions:
        raise ValueError(f"purgatory verifies at most {max_regions} segments, {len(hashed)} given")
    for seg in hashed:
        if seg.bufsz > seg.memsz:
            raise ValueError(f"hashed {seg!r}: bufsz exceeds memsz")
        if seg.memsz and seg.mem < end and base < seg.end:
            raise ValueError(f"hashed {seg!r} overlaps the purgatory at {base:#x}-{end:#x}")
    if cmdline_end < end and base < cmdline_end + cmdline_room:
        raise ValueError(
            f"command line room {cmdline_end:#x}+{cmdline_room} overlaps the purgatory"
        )

    regions = b"".join(_REGION.pack(s.mem, s.memsz) for s in hashed)
    image.set("sha256_regions", regions.ljust(regions_size, b"\0"))
    image.set("sha256_digest", segments_digest(hashed))
    image.set("entry64_regs", regs.pack(image.address(STACK_END_SYMBOL)))
    image.set("cmdline_end", _U64.pack(cmdline_end))
    image.set("cmdline_room", _U64.pack(cmdline_room))
    image.set("jump_back_entry", _U64.pack(0))

    return Purgatory(
        segment=Segment(bytes(image.data), base, image.memsz),
        entry=image.address(ENTRY_SYMBOL),
        symbols=MappingProxyType(dict(image.symbols)),
    )


# --------------------------------------------------------------------------
# The relocatable-object linker
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Symbol:
    name: str
    address: int
    size: int
    section: Section | None  # None for SHN_ABS


def _fits_u32(v: int) -> bool:
    return 0 <= v < 1 << 32


def _fits_s32(v: int) -> bool:
    return -(1 << 31) <= v < 1 << 31


# type -> (width, value from (S + A, P), range check, what the range is)
_RelocRule = tuple[int, Callable[[int, int], int], Callable[[int], bool], str]
_RELOCS: dict[int, _RelocRule] = {
    ENUM_RELOC_TYPE_x64["R_X86_64_64"]: (8, lambda sa, p: sa, lambda v: True, ""),
    ENUM_RELOC_TYPE_x64["R_X86_64_32"]: (4, lambda sa, p: sa, _fits_u32, "below 4 GiB"),
    ENUM_RELOC_TYPE_x64["R_X86_64_32S"]: (4, lambda sa, p: sa, _fits_s32, "below 2 GiB"),
    # No PLT here: a PLT32 call goes straight to the symbol, like PC32.
    ENUM_RELOC_TYPE_x64["R_X86_64_PC32"]: (4, lambda sa, p: sa - p, _fits_s32, "within ±2 GiB"),
    ENUM_RELOC_TYPE_x64["R_X86_64_PLT32"]: (4, lambda sa, p: sa - p, _fits_s32, "within ±2 GiB"),
}
_R_X86_64_NONE = ENUM_RELOC_TYPE_x64["R_X86_64_NONE"]
_RELOC_NAMES = {v: k for k, v in ENUM_RELOC_TYPE_x64.items() if isinstance(v, int)}


class _Image:
    """The laid-out, relocated bytes of one purgatory object."""

    def __init__(self, elf: ELFFile, base: int) -> None:
        self.elf = elf
        self.base = base
        self.section_addr: dict[int, int] = {}
        self.data = bytearray()
        self.memsz = 0
        self.symbols: dict[str, int] = {}
        self.symtab_index = -1
        self._globals: dict[str, _Symbol] = {}

    @classmethod
    def load(cls, obj: Path | bytes, base: int) -> _Image:
        raw = Path(obj).read_bytes() if isinstance(obj, Path) else bytes(obj)
        try:
            elf = ELFFile(io.BytesIO(raw))
            image = cls(elf, base)
            image._check_header()
            image._layout()
            symtab = image._symtab()
            # Relocations first: an unsupported one says more about a
            # wrongly built object than the undefined symbols it drags in.
            image._relocate(symtab)
            image._collect_globals(symtab)
        except ELFError as e:
            raise PurgatoryError(f"purgatory object is not a valid ELF file: {e}") from e
        return image

    # ---------------------------------------------------------------- checks
    def _check_header(self) -> None:
        h = self.elf.header
        machine = h["e_machine"]
        if machine != "EM_X86_64":
            raise PurgatoryError(f"purgatory object is for machine {machine}, not EM_X86_64")
        if self.elf.elfclass != 64 or not self.elf.little_endian:
            raise PurgatoryError("purgatory object is not 64-bit little-endian ELF")
        if h["e_type"] != "ET_REL":
            raise PurgatoryError(
                f"purgatory object is {h['e_type']}, not a relocatable object (ET_REL)"
            )

    # ---------------------------------------------------------------- layout
    def _layout(self) -> None:
        """Allocatable sections in file order, bytes first, then NOBITS (the
        stack): NOBITS past the buffer cost nothing, the kernel zero-fills
        up to ``memsz``."""
        alloc = [
            (i, s)
            for i, s in enumerate(self.elf.iter_sections())
            if s["sh_flags"] & SH_FLAGS.SHF_ALLOC
        ]
        offset = 0
        for nobits in (False, True):
            for i, s in alloc:
                if (s["sh_type"] == "SHT_NOBITS") != nobits:
                    continue
                align = max(s["sh_addralign"], 1)
                offset = (offset + align - 1) // align * align
                self.section_addr[i] = self.base + offset
                if not nobits:
                    self.data[len(self.data) :] = bytes(offset - len(self.data))
                    self.data += s.data()
                offset += s["sh_size"]
        self.memsz = page_align_up(max(offset, 1))

    def _symtab(self) -> SymbolTableSection:
        for i, s in enumerate(self.elf.iter_sections()):
            if isinstance(s, SymbolTableSection) and s["sh_type"] == "SHT_SYMTAB":
                self.symtab_index = i
                return s
        raise PurgatoryError("purgatory object has no symbol table")

    def _section_name(self, index: int) -> str:
        return str(self.elf.get_section(index).name)

    def _resolve(self, symtab: SymbolTableSection, index: int, where: str) -> int:
        """Address of symbol ``index`` (S), for a relocation in ``where``."""
        sym = symtab.get_symbol(index)
        shndx = sym["st_shndx"]
        name = sym.name or f"#{index}"
        if shndx == "SHN_UNDEF":
            if index == 0:
                return 0
            raise PurgatoryError(f"undefined symbol {name!r} (referenced from {where})")
        if shndx == "SHN_ABS":
            return int(sym["st_value"])
        if shndx == "SHN_COMMON":
            raise PurgatoryError(f"common symbol {name!r}: build the purgatory with -fno-common")
        if not isinstance(shndx, int) or shndx not in self.section_addr:
            raise PurgatoryError(
                f"symbol {name!r} (referenced from {where}) is in a section that is not "
                f"loaded ({shndx})"
            )
        return self.section_addr[shndx] + int(sym["st_value"])

    def _collect_globals(self, symtab: SymbolTableSection) -> None:
        for sym in symtab.iter_symbols():
            if sym["st_info"]["bind"] not in ("STB_GLOBAL", "STB_WEAK") or not sym.name:
                continue
            shndx = sym["st_shndx"]
            if shndx == "SHN_UNDEF":
                # Purgatory runs alone: nothing outside it could satisfy this.
                raise PurgatoryError(
                    f"undefined symbol {sym.name!r}: purgatory must be self-contained"
                )
            if shndx == "SHN_ABS":
                section = None
                address = int(sym["st_value"])
            elif isinstance(shndx, int) and shndx in self.section_addr:
                section = self.elf.get_section(shndx)
                address = self.section_addr[shndx] + int(sym["st_value"])
            else:
                continue  # in a section that is not loaded (debug info)
            self._globals[sym.name] = _Symbol(sym.name, address, int(sym["st_size"]), section)
            self.symbols[sym.name] = address

    # ------------------------------------------------------------ relocation
    def _relocate(self, symtab: SymbolTableSection) -> None:
        for rel in self.elf.iter_sections():
            if rel["sh_type"] not in ("SHT_RELA", "SHT_REL"):
                continue
            target_index = rel["sh_info"]
            if target_index not in self.section_addr:
                continue  # relocates debug info or the like: not loaded
            if not isinstance(rel, RelocationSection) or not rel.is_RELA():
                raise PurgatoryError(
                    f"relocation section {rel.name} is SHT_REL; x86-64 objects use SHT_RELA"
                )
            if rel["sh_link"] != self.symtab_index:
                raise PurgatoryError(f"relocation section {rel.name} uses another symbol table")
            target = self.elf.get_section(target_index)
            self._apply(rel, target, self.section_addr[target_index], symtab)

    def _apply(
        self, rel: RelocationSection, target: Section, target_addr: int, symtab: SymbolTableSection
    ) -> None:
        nobits = target["sh_type"] == "SHT_NOBITS"
        for r in rel.iter_relocations():
            rtype = r["r_info_type"]
            if rtype == _R_X86_64_NONE:
                continue
            rule = _RELOCS.get(rtype)
            if rule is None:
                name = _RELOC_NAMES.get(rtype, "unknown")
                raise PurgatoryError(
                    f"unsupported relocation {name} (type {rtype}) in section {rel.name} "
                    f"(against {target.name})"
                )
            width, compute, fits, range_text = rule
            offset = r["r_offset"]
            if nobits or offset + width > target["sh_size"]:
                raise PurgatoryError(
                    f"relocation at {target.name}+{offset:#x} in {rel.name} lies outside "
                    f"the section's bytes"
                )
            where = f"{rel.name}+{offset:#x}"
            place = target_addr + offset
            value = compute(self._resolve(symtab, r["r_info_sym"], where) + r["r_addend"], place)
            if not fits(value):
                raise PurgatoryError(
                    f"relocation {_RELOC_NAMES[rtype]} at {where} overflows: the value "
                    f"{value:#x} must be {range_text}; load the purgatory lower"
                )
            at = place - self.base
            self.data[at : at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(
                width, "little"
            )

    # ------------------------------------------------------------- variables
    def address(self, name: str) -> int:
        if name not in self.symbols:
            raise PurgatoryError(f"purgatory object has no global symbol {name!r}")
        return self.symbols[name]

    def symbol_size(self, name: str) -> int:
        self.address(name)
        return self._globals[name].size

    def set(self, name: str, value: bytes) -> None:
        """Write a variable of the object, by name, checking its declared size."""
        address = self.address(name)
        sym = self._globals[name]
        if sym.section is None or sym.section["sh_type"] == "SHT_NOBITS":
            raise PurgatoryError(
                f"symbol {name!r} has no bytes in the object (absolute or in .bss); "
                "loader-set variables must live in .data"
            )
        if sym.size != len(value):
            raise PurgatoryError(
                f"symbol {name!r} is {sym.size} bytes in the object, the loader writes "
                f"{len(value)}: purgatory and loader disagree"
            )
        at = address - self.base
        self.data[at : at + len(value)] = value
