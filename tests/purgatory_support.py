"""Test support for the purgatory and the CPU: assembling snippets with the
real GNU toolchain, and a small synthetic machine that loads a purgatory the
way the kernel would and runs it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kexechibd.kernel.abi import Segment, page_align_up
from kexechibd.model.cpu import CpuExit, run_x86_64
from kexechibd.purgatory import CMDLINE_ROOM, EntryRegs, Purgatory, build_purgatory
from tests.sizes import MIB

ROOT = Path(__file__).resolve().parent.parent
PURGATORY_OBJECT = ROOT / "purgatory" / "purgatory.ro"
HOST_HELPERS = ROOT / "purgatory" / "host" / "libpurgatory_helpers.so"


def _run(*argv: str | Path) -> None:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed:\n{done.stderr}")


def assemble(source: str, *, flags: Sequence[str] = ("--64",)) -> bytes:
    """An ELF relocatable object from GNU assembler source."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj = Path(tmp, "t.s"), Path(tmp, "t.o")
        src.write_text(source)
        _run("as", *flags, "-o", obj, src)
        return obj.read_bytes()


def link_exec(source: str, *, base: int) -> bytes:
    """An ET_EXEC from assembler source, text at ``base``."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, exe = Path(tmp, "t.s"), Path(tmp, "t.o"), Path(tmp, "t")
        src.write_text(source)
        _run("as", "--64", "-o", obj, src)
        _run("ld", "-e", "0", f"-Ttext={base:#x}", "-o", exe, obj)
        return exe.read_bytes()


def flat_binary(source: str, *, base: int) -> bytes:
    """Raw machine code for ``source`` placed at ``base`` (``.text`` only)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, binary = Path(tmp, "t.s"), Path(tmp, "t.o"), Path(tmp, "t.bin")
        src.write_text(source)
        _run("as", "--64", "-o", obj, src)
        _run("ld", "-e", "0", f"-Ttext={base:#x}", "--oformat=binary", "-o", binary, obj)
        return binary.read_bytes()


def purgatory_object() -> bytes:
    if not PURGATORY_OBJECT.is_file():
        raise FileNotFoundError(f"{PURGATORY_OBJECT} is missing: run `make purgatory`")
    return PURGATORY_OBJECT.read_bytes()


# ---------------------------------------------------------------- a machine

MEMORY_SIZE = 32 * MIB
PURGATORY_BASE = 0x100000
STACK_TOP = 0x80000  # the caller's (relocate_kernel's) stack
JUMP_BACK = 0x7FE5A123  # the return address the caller leaves at [rsp]
SETUP = 0x10000  # "boot params" page, then the command line
CMDLINE = b"console=ttyS0 kexechib.role=save"
CMDLINE_AT = SETUP + 0x1000
GUARD = b"\xa5" * 64  # right after the reserved room: must never change


def random_segment(mem: int, bufsz: int, pad: int) -> Segment:
    """``bufsz`` random bytes at ``mem``, zero padding to a page boundary
    plus ``pad`` bytes."""
    return Segment(os.urandom(bufsz), mem, page_align_up(bufsz + pad))


def setup_segment(room: int = CMDLINE_ROOM) -> Segment:
    buf = os.urandom(0x1000) + CMDLINE + b"\0" + bytes(room - 1) + GUARD
    return Segment(buf, SETUP, 0x3000)


@dataclass
class Machine:
    """Physical memory with B's segments and a purgatory placed in it as
    the kernel places them, ready to be ``call``ed."""

    hashed: list[Segment]
    regs: EntryRegs
    purgatory: Purgatory
    memory: bytearray = field(repr=False)
    cmdline_end: int = CMDLINE_AT + len(CMDLINE)
    room: int = CMDLINE_ROOM

    @classmethod
    def build(
        cls,
        hashed: Sequence[Segment] | None = None,
        regs: EntryRegs | None = None,
        *,
        room: int = CMDLINE_ROOM,
    ) -> Machine:
        if hashed is None:
            hashed = [
                random_segment(0x1000000, 40_000, 0x2000),  # kernel: partial page + padding
                setup_segment(room),
                random_segment(0x1400000, 9_000, 0),  # initrd
            ]
        if regs is None:
            regs = EntryRegs(rip=0x1000200, rsi=SETUP)
        cmdline_end = CMDLINE_AT + len(CMDLINE)
        purgatory = build_purgatory(
            purgatory_object(),
            base=PURGATORY_BASE,
            hashed=hashed,
            regs=regs,
            cmdline_end=cmdline_end,
            cmdline_room=room,
        )
        # What was in memory before the kernel placed the segments.
        memory = bytearray(b"\xcc") * MEMORY_SIZE
        machine = cls(list(hashed), regs, purgatory, memory, cmdline_end, room)
        for seg in [*hashed, purgatory.segment]:
            machine.place(seg)
        machine.write_u64(STACK_TOP - 8, JUMP_BACK)
        return machine

    def place(self, seg: Segment) -> None:
        """As the kernel does: the buffer, then zeros up to ``memsz``."""
        self.memory[seg.mem : seg.mem + seg.bufsz] = seg.buf
        self.memory[seg.mem + seg.bufsz : seg.end] = bytes(seg.memsz - seg.bufsz)

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.memory[address : address + 8], "little")

    def write_u64(self, address: int, value: int) -> None:
        self.memory[address : address + 8] = value.to_bytes(8, "little")

    def symbol(self, name: str) -> int:
        return self.purgatory.symbols[name]

    def call(self, *, budget: int = 200_000_000, return_address: int = JUMP_BACK) -> CpuExit:
        """``call`` purgatory as relocate_kernel does: return address at
        ``[rsp]``, interrupts off, junk in every other register."""
        self.write_u64(STACK_TOP - 8, return_address)
        junk = {f"r{i}": 0x5A5A0000 + i for i in range(8, 16)}
        return run_x86_64(
            self.memory,
            entry=self.purgatory.entry,
            executable=[(self.purgatory.segment.mem, self.purgatory.segment.end)],
            regs={"rsp": STACK_TOP - 8, "rax": 0xBAD, "rbp": 0xBAD, **junk},
            budget=budget,
        )

    def cmdline(self) -> bytes:
        """The command line as B will read it: up to the first NUL."""
        end = self.memory.index(b"\0", CMDLINE_AT)
        return bytes(self.memory[CMDLINE_AT:end])

    def after_room(self) -> bytes:
        start = self.cmdline_end + self.room
        return bytes(self.memory[start : start + len(GUARD)])
