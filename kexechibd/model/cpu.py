"""An x86-64 CPU for the machine model: runs real machine code (the
purgatory) on the model's physical memory with unicorn.

The CPU starts in 64-bit mode with paging off in the unicorn sense (linear =
physical), i.e. what code sees under the kernel's identity map, interrupts
off (``rflags`` = 0x2) and at privilege level 0, so ``lgdt``, segment loads
and far returns work as on hardware.  The descriptor tables code installs
must lie in memory, as they must on hardware.

It emulates being *called*: the caller (a test, or the model's relocation
code) writes the return address at ``[rsp]`` itself before the run and
passes ``rsp`` in ``regs``.

A run ends when the CPU
- fetches from outside the ``executable`` ranges — ``"left"``, ``rip`` = the
  target (how the model sees purgatory jump into a kernel, or return);
- is about to execute ``hlt`` — ``"halt"``, ``rip`` = the ``hlt``.  Recognised
  for every unprefixed ``hlt`` byte that is in an executable range when the
  run starts; one written at run time halts the CPU too and, with interrupts
  off, is reported as the hang it is (reliably only outside tight loops,
  where the budget is kept by counting and the two cannot be told apart);
- has executed ``budget`` instructions — ``"hang"`` (checked at block
  boundaries: a run may go up to one translation block, at most 512
  instructions, past the budget);
- faults in any other way — ``"fault"``, ``detail`` says how.

Memory is mapped zero-copy, so what the code writes is in the caller's buffer
when the run returns (also after a fault).
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_HOOK_BLOCK,
    UC_HOOK_INTR,
    UC_HOOK_MEM_INVALID,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_PROT,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_READ,
    UC_PROT_WRITE,
)
from unicorn import x86_const as x86
from unicorn.unicorn import Uc, UcError

from kexechibd.kernel.abi import PAGE_SIZE, page_align_down, page_align_up

REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags",
)  # fmt: skip
# Reported at exit besides REGISTERS (a kernel's boot protocol wants them).
SELECTORS = ("cs", "ds", "es", "fs", "gs", "ss")
_UC_REG = {name: getattr(x86, f"UC_X86_REG_{name.upper()}") for name in REGISTERS + SELECTORS}
# Uc's constructor carries no annotations; this gives it a type.
_new_uc: Callable[[int, int], Any] = Uc

RFLAGS_RESERVED = 0x2  # bit 1 is always set; IF (bit 9) clear: interrupts off
HLT = 0xF4

_VECTORS = {
    0: "#DE divide error",
    1: "#DB debug",
    2: "NMI",
    3: "#BP breakpoint",
    4: "#OF overflow",
    5: "#BR bound range",
    6: "#UD invalid opcode",
    7: "#NM device not available",
    8: "#DF double fault",
    10: "#TS invalid TSS",
    11: "#NP segment not present",
    12: "#SS stack-segment fault",
    13: "#GP general protection",
    14: "#PF page fault",
    16: "#MF x87 floating-point error",
    17: "#AC alignment check",
    18: "#MC machine check",
    19: "#XM SIMD floating-point error",
}
_ACCESS = {
    UC_MEM_READ_UNMAPPED: "read of unmapped memory",
    UC_MEM_WRITE_UNMAPPED: "write to unmapped memory",
    UC_MEM_READ_PROT: "read of protected memory",
    UC_MEM_WRITE_PROT: "write to protected memory",
    UC_MEM_FETCH_UNMAPPED: "fetch from unmapped memory",
    UC_MEM_FETCH_PROT: "fetch from non-executable memory",
}


@dataclass(frozen=True)
class CpuExit:
    """Why and where a run stopped, and the registers at that point:
    :data:`REGISTERS` and the segment :data:`SELECTORS`."""

    reason: str  # "left" | "halt" | "hang" | "fault"
    rip: int
    regs: Mapping[str, int]
    detail: str


def run_x86_64(
    memory: mmap.mmap | bytearray,
    *,
    entry: int,
    executable: Sequence[tuple[int, int]],
    regs: Mapping[str, int] = MappingProxyType({}),
    budget: int = 200_000_000,
) -> CpuExit:
    """Execute from ``entry`` until the code leaves ``executable``, halts,
    faults or exhausts ``budget`` instructions.

    ``memory``: writable buffer, physical address 0 at offset 0, a whole
    number of pages (a sparse mmap of several GiB is fine: nothing is copied).
    ``executable``: ``[start, end)`` ranges the CPU may execute (rounded out
    to pages); elsewhere memory is readable and writable only.
    ``regs``: initial values for any of :data:`REGISTERS` but ``rip``
    (others start at 0, ``rflags`` at 0x2).  To emulate a ``call``, write the
    return address at ``[rsp]`` in ``memory`` first.
    """
    size = len(memory)
    if size == 0 or size % PAGE_SIZE:
        raise ValueError(f"memory of {size:#x} bytes is not a whole number of pages")
    if budget <= 0:
        raise ValueError(f"instruction budget {budget} is not positive")
    ranges = []
    for start, end in executable:
        if not 0 <= start < end <= size:
            raise ValueError(f"executable range {start:#x}-{end:#x} is not inside memory")
        ranges.append((page_align_down(start), min(page_align_up(end), size)))
    unknown = set(regs) - (set(REGISTERS) - {"rip"})
    if unknown:
        raise ValueError(f"unknown or non-settable registers: {', '.join(sorted(unknown))}")

    # The export pins the buffer for as long as unicorn may touch it.
    anchor = ctypes.c_char.from_buffer(memory)
    uc = _new_uc(UC_ARCH_X86, UC_MODE_64)
    try:
        return _run(uc, ctypes.addressof(anchor), size, entry, ranges, regs, budget, memory)
    finally:
        # Free unicorn's state now rather than whenever the garbage collector
        # gets to it (its translation buffer is large); the finalizer is what
        # Uc itself registers, so it runs exactly once.
        finalize = getattr(uc, "_Uc__finalizer", None)
        if finalize is not None:
            finalize()
        del uc, anchor


# How the budget is kept.  Unicorn's own instruction count calls a hook
# before every instruction and makes straight-line code (SHA-256) some 20
# times slower; charging each translation block's instruction count from a
# block hook costs one Python call per block, cheap for long blocks but
# ruinous for a spin loop, where every block is an instruction or two.  So
# blocks are charged by default, and a long run of tiny blocks switches to
# unicorn's count for a slice before going back.
_TINY_BLOCK = 4  # instructions
_TINY_RUN = 4096  # consecutive tiny blocks before switching to counting
_COUNT_SLICE = 20_000_000  # instructions per counted slice


class _Budget:
    """Charges executed blocks against the instruction budget."""

    def __init__(self, budget: int) -> None:
        self.remaining = budget
        self.exhausted = False
        self.tiny = False
        self._tiny_run = 0
        self._icount: dict[int, int] = {}

    def on_block(self, uc: Any, address: int, size: int, data: object) -> None:
        if self.remaining <= 0:
            self.exhausted = True
            uc.emu_stop()
            return
        n = self._icount.get(address)
        if n is None:
            n = self._icount[address] = max(1, int(uc.ctl_request_cache(address)[1]))
        self.remaining -= n
        self._tiny_run = self._tiny_run + 1 if n <= _TINY_BLOCK else 0
        if self._tiny_run >= _TINY_RUN:
            self._tiny_run = 0
            self.tiny = True
            uc.emu_stop()

    def forget_blocks(self) -> None:
        """Translations were flushed: block boundaries may differ now."""
        self._icount.clear()


def _run(
    uc: Any,
    address: int,
    size: int,
    entry: int,
    ranges: list[tuple[int, int]],
    regs: Mapping[str, int],
    budget: int,
    memory: mmap.mmap | bytearray,
) -> CpuExit:
    uc.mem_map_ptr(0, size, UC_PROT_READ | UC_PROT_WRITE, address)
    for start, end in ranges:
        uc.mem_protect(start, end - start, UC_PROT_ALL)

    # Stop *before* every hlt: unicorn would otherwise end the run after it
    # exactly as when an instruction count runs out, and the two must be
    # told apart.
    halts = sorted({a for start, end in ranges for a in _find_byte(memory, HLT, start, end)})
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits(halts)

    for name, value in regs.items():
        uc.reg_write(_UC_REG[name], value)
    if "rflags" not in regs:
        uc.reg_write(_UC_REG["rflags"], RFLAGS_RESERVED)

    events: list[str] = []

    def on_invalid_memory(
        uc: Any, access: int, addr: int, size: int, value: int, data: object
    ) -> bool:
        events.append(f"{_ACCESS.get(access, f'memory access {access}')} at {addr:#x}")
        return False

    def on_interrupt(uc: Any, vector: int, data: object) -> None:
        events.append(f"exception {vector}: {_VECTORS.get(vector, 'interrupt')}")
        uc.emu_stop()

    uc.hook_add(UC_HOOK_MEM_INVALID, on_invalid_memory)
    uc.hook_add(UC_HOOK_INTR, on_interrupt)

    charge = _Budget(budget)
    rip = entry
    result: tuple[str, str] | None = None
    while result is None:
        counting = charge.tiny
        charge.tiny = False
        # Hooks are compiled into translations: start every phase afresh.
        block_hook = None if counting else uc.hook_add(UC_HOOK_BLOCK, charge.on_block)
        uc.ctl_flush_tb()
        charge.forget_blocks()
        slice_ = min(charge.remaining, _COUNT_SLICE) if counting else 0
        try:
            uc.emu_start(rip, 0, count=slice_)
        except UcError as e:
            result = _classify_error(e.errno, events, str(e))
        else:
            rip = uc.reg_read(_UC_REG["rip"])
            if events:
                result = "fault", events[-1]
            elif rip in halts and memory[rip] == HLT:
                result = "halt", "hlt"
            elif counting:
                charge.remaining -= slice_
                charge.exhausted = charge.remaining <= 0
            elif not charge.tiny and not charge.exhausted:
                # Unicorn ends a run after an hlt it was not told to stop at.
                result = (
                    ("hang", f"hlt at {rip - 1:#x}, written at run time, with interrupts off")
                    if 0 < rip <= size and memory[rip - 1] == HLT
                    else ("fault", "emulation stopped for no known reason")
                )
            if charge.exhausted:
                result = "hang", f"instruction budget of {budget} exhausted"
        if block_hook is not None:
            uc.hook_del(block_hook)

    state = {name: int(uc.reg_read(reg)) for name, reg in _UC_REG.items()}
    return CpuExit(result[0], state["rip"], MappingProxyType(state), result[1])


def _classify_error(errno: int, events: list[str], text: str) -> tuple[str, str]:
    if errno in (UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED):
        return "left", "fetch outside the executable ranges"
    if errno == UC_ERR_INSN_INVALID:
        return "fault", "exception 6: #UD invalid opcode"
    return "fault", events[-1] if events else text


def _find_byte(memory: mmap.mmap | bytearray, byte: int, start: int, end: int) -> list[int]:
    found = []
    needle = bytes([byte])
    at = memory.find(needle, start, end)
    while at != -1:
        found.append(at)
        at = memory.find(needle, at + 1, end)
    return found
