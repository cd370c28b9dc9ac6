"""The model's x86-64 CPU (unicorn): how runs end, the instruction budget,
memory mapping and faults.  Programs are assembled with GNU as and ld."""

from __future__ import annotations

import mmap
import os

import pytest

from kexechibd.model import cpu
from kexechibd.model.cpu import run_x86_64
from tests.purgatory_support import flat_binary

CODE = 0x10000
STACK = 0x8000
OUTSIDE = 0x30000  # mapped, never executable in these tests
MEMORY = 0x40000


def machine(source: str) -> bytearray:
    memory = bytearray(MEMORY)
    code = flat_binary(source, base=CODE)
    memory[CODE : CODE + len(code)] = code
    return memory


def run(memory, *, budget=1_000_000, regs=None, executable=((CODE, CODE + 0x1000),)):
    regs = {"rsp": STACK, **(regs or {})}
    return run_x86_64(memory, entry=CODE, executable=list(executable), regs=regs, budget=budget)


# ---------------------------------------------------------------- how runs end


def test_jump_outside_the_executable_ranges_is_left_at_the_target():
    exit = run(machine("mov $0x30000, %rax\njmp *%rax\n"))
    assert (exit.reason, exit.rip) == ("left", OUTSIDE)


def test_emulated_call_returns_to_the_address_at_rsp():
    # The caller writes the return address at [rsp]; `ret` leaves through it.
    memory = machine("ret\n")
    memory[STACK : STACK + 8] = (0x30123).to_bytes(8, "little")
    exit = run(memory)
    assert (exit.reason, exit.rip, exit.regs["rsp"]) == ("left", 0x30123, STACK + 8)


def test_entry_outside_the_executable_ranges_leaves_at_once():
    exit = run(bytearray(MEMORY), executable=[(OUTSIDE, OUTSIDE + 0x1000)])
    assert (exit.reason, exit.rip) == ("left", CODE)


def test_jump_beyond_memory_is_left():
    exit = run(machine("mov $0x7000000000, %rax\njmp *%rax\n"))
    assert (exit.reason, exit.rip) == ("left", 0x7000000000)


def test_hlt_is_a_halt_at_the_hlt():
    exit = run(machine("nop\nnop\nhlt\nud2\n"))
    assert (exit.reason, exit.rip) == ("halt", CODE + 2)


def test_hlt_at_the_entry_halts_at_once():
    assert run(machine("hlt\n")).reason == "halt"


def test_instruction_containing_an_f4_byte_is_not_a_halt():
    exit = run(machine("mov $0xf4f4f4f4, %eax\nmov $0x30000, %rbx\njmp *%rbx\n"))
    assert (exit.reason, exit.regs["rax"]) == ("left", 0xF4F4F4F4)


def test_hlt_written_at_run_time_is_a_hang():
    # Not among the hlt bytes known at the start; with interrupts off the
    # CPU never wakes.
    exit = run(machine("lea 1f(%rip), %rbx\nmovb $0xf4, (%rbx)\njmp 1f\n1: nop\nud2\n"))
    assert exit.reason == "hang" and "written at run time" in exit.detail


def test_endless_loop_is_a_hang():
    exit = run(machine("1: jmp 1b\n"), budget=500_000)
    assert (exit.reason, exit.rip) == ("hang", CODE)


def test_straight_line_code_runs_within_its_budget_and_hangs_beyond_it():
    n = 5000
    source = ".rept 5000\nnop\n.endr\nmov $0x30000, %rax\njmp *%rax\n"
    assert run(machine(source), budget=n + 2 + 512).reason == "left"
    assert run(machine(source), budget=n // 2).reason == "hang"


def test_tight_loop_runs_within_its_budget_and_hangs_beyond_it(monkeypatch):
    # Two-instruction blocks: the budget is kept by unicorn's count, in
    # slices made small here so that the run switches modes many times.
    monkeypatch.setattr(cpu, "_COUNT_SLICE", 10_000)
    k = 200_000
    source = f"mov ${k}, %rcx\n1: dec %rcx\njnz 1b\nmov $0x30000, %rax\njmp *%rax\n"
    needed = 1 + 2 * k + 2
    done = run(machine(source), budget=needed + 512)
    assert (done.reason, done.regs["rcx"]) == ("left", 0)
    hung = run(machine(source), budget=needed // 2)
    assert hung.reason == "hang"
    assert 0 < hung.regs["rcx"] < k


def test_loop_of_long_blocks_then_tight_loop_keeps_one_budget(monkeypatch):
    monkeypatch.setattr(cpu, "_COUNT_SLICE", 7_000)
    source = (
        "mov $300, %rdx\n"
        "2: .rept 100\nnop\n.endr\n"
        "mov $50, %rcx\n1: dec %rcx\njnz 1b\n"
        "dec %rdx\njnz 2b\n"
        "mov $0x30000, %rax\njmp *%rax\n"
    )
    needed = 1 + 300 * (100 + 1 + 100 + 2) + 2
    assert run(machine(source), budget=needed + 512).reason == "left"
    assert run(machine(source), budget=needed - 5_000).reason == "hang"


# ---------------------------------------------------------------- faults


def test_invalid_opcode_is_a_fault():
    exit = run(machine("ud2\n"))
    assert exit.reason == "fault" and "#UD" in exit.detail


def test_division_by_zero_is_a_fault():
    exit = run(machine("xor %ecx, %ecx\ndiv %ecx\n"))
    assert exit.reason == "fault" and "#DE" in exit.detail


def test_read_beyond_memory_is_a_fault_naming_the_address():
    exit = run(machine("mov $0x7000000000, %rax\nmov (%rax), %rbx\n"))
    assert exit.reason == "fault"
    assert "read of unmapped memory at 0x7000000000" in exit.detail


def test_write_beyond_memory_is_a_fault_naming_the_address():
    exit = run(machine("mov $0x40000, %rax\nmovq $1, (%rax)\n"))
    assert exit.reason == "fault"
    assert "write to unmapped memory at 0x40000" in exit.detail


def test_loading_a_selector_without_a_gdt_is_a_fault():
    # The kernel invalidates the GDT before calling purgatory: code must
    # install its own, and the CPU must notice when it does not.
    exit = run(machine("mov $0x18, %eax\nmov %eax, %ds\n"))
    assert exit.reason == "fault" and "#GP" in exit.detail


# ---------------------------------------------------------------- the CPU state


GDT_PROGRAM = """
    lgdt gdt_ptr(%rip)
    mov $0x18, %eax
    mov %eax, %ss
    lea 1f(%rip), %rax
    pushq $0x10
    pushq %rax
    lretq
1:  mov $0x30000, %rax
    jmp *%rax
    .balign 16
gdt: .quad 0, 0, 0x00af9b000000ffff, 0x00cf93000000ffff
gdt_ptr: .word 31
    .quad gdt
"""


def test_lgdt_and_far_return_reload_the_segments():
    exit = run(machine(GDT_PROGRAM))
    assert exit.reason == "left", exit.detail
    assert (exit.regs["cs"], exit.regs["ss"]) == (0x10, 0x18)


def test_given_registers_are_loaded_and_reported():
    regs = {
        name: 0x1000 + i for i, name in enumerate(cpu.REGISTERS) if name not in ("rip", "rflags")
    }
    regs["rsp"] = STACK
    exit = run(machine("mov $0x30000, %r15\njmp *%r15\n"), regs=regs)
    assert exit.reason == "left"
    for name, value in regs.items():
        assert exit.regs[name] == (0x30000 if name == "r15" else value), name


def test_interrupts_start_disabled():
    exit = run(machine("mov $0x30000, %rax\njmp *%rax\n"))
    assert exit.regs["rflags"] & 0x200 == 0


def test_writes_land_in_the_callers_buffer_even_after_a_fault():
    memory = machine("movabs $0x1122334455667788, %rax\nmov %rax, 0x20000\nud2\n")
    run(memory)
    assert memory[0x20000:0x20008] == (0x1122334455667788).to_bytes(8, "little")


def test_code_can_write_to_its_own_executable_range():
    memory = machine("lea data(%rip), %rbx\nmovq $7, (%rbx)\nhlt\ndata: .quad 0\n")
    assert run(memory).reason == "halt"
    assert memory.find((7).to_bytes(8, "little"), CODE, CODE + 0x100) > CODE


def test_eight_gib_sparse_file_mapping(tmp_path):
    # The model's physical memory: a sparse file, mapped shared, used in place.
    size = 8 << 30
    path = tmp_path / "memory"
    with open(path, "w+b") as f:
        f.truncate(size)
        mem = mmap.mmap(f.fileno(), size)
    top = size - 0x1000
    code = flat_binary(
        "movabs $0x1c0000000, %rbx\nmovq $0x4242, (%rbx)\nmov $0x30000, %rax\njmp *%rax\n",
        base=top,
    )
    mem[top : top + len(code)] = code
    exit = run_x86_64(mem, entry=top, executable=[(top, size)], regs={"rsp": 0x9000})
    assert (exit.reason, exit.rip) == ("left", 0x30000), exit.detail
    assert mem[0x1C0000000:0x1C0000008] == (0x4242).to_bytes(8, "little")
    mem.close()  # the run holds no reference to the buffer any more
    assert os.stat(path).st_blocks * 512 < 1 << 20  # still sparse


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"memory": bytearray(0x1234)}, "whole number of pages"),
        ({"budget": 0}, "not positive"),
        ({"executable": [(0, MEMORY + 0x1000)]}, "not inside memory"),
        ({"executable": [(0x2000, 0x1000)]}, "not inside memory"),
        ({"regs": {"rip": 5}}, "rip"),
        ({"regs": {"eax": 5}}, "eax"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    args = {
        "memory": bytearray(MEMORY),
        "entry": CODE,
        "executable": [(CODE, CODE + 0x1000)],
        "regs": {},
        "budget": 1000,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        run_x86_64(args.pop("memory"), **args)
