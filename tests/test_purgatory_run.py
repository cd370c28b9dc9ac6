"""The purgatory, built from source with gcc and relocated by the loader,
executed with unicorn the way the kernel's relocate_kernel calls it."""

from __future__ import annotations

import os

import pytest

from kexechibd.purgatory import JUMP_BACK_PARAM_MAX, EntryRegs, instruction_budget
from tests.purgatory_support import (
    CMDLINE,
    CMDLINE_AT,
    GUARD,
    JUMP_BACK,
    Machine,
    random_segment,
    setup_segment,
)
from tests.sizes import MIB

# Enough for the default machine's ~50 KiB of hashing (~3M instructions) with
# a wide margin, small enough that a hang is detected quickly.
HANG_BUDGET = 20_000_000

ALL_REGS = EntryRegs(
    rax=0x1111111111111111, rbx=0x2222222222222222, rcx=0x3333333333333333,
    rdx=0x4444444444444444, rsi=0x10000, rdi=0x6666666666666666,
    rsp=0x8F000, rbp=0x8888888888888888, r8=0x0808080808080808,
    r9=0x0909090909090909, r10=0x1010101010101010, r11=0x1111000011110000,
    r12=0x1212121212121212, r13=0x1313131313131313, r14=0x1414141414141414,
    r15=0xFFFFFFFFFFFFFFFF, rip=0x1000200,
)  # fmt: skip


def test_correct_segments_reach_the_kernel_entry():
    machine = Machine.build()
    exit = machine.call()
    assert (exit.reason, exit.rip) == ("left", machine.regs.rip), exit.detail


def test_kernel_is_entered_with_every_register_it_was_given():
    machine = Machine.build(regs=ALL_REGS)
    exit = machine.call()
    assert exit.reason == "left", exit.detail
    for name in ALL_REGS.__dataclass_fields__:
        assert exit.regs[name] == getattr(ALL_REGS, name), name


def test_kernel_is_entered_with_the_boot_protocol_segments():
    # Linux's 64-bit boot protocol: CS = __BOOT_CS (0x10), DS/ES/SS = __BOOT_DS (0x18).
    exit = Machine.build().call()
    assert exit.reason == "left", exit.detail
    assert exit.regs["cs"] == 0x10
    assert exit.regs["ds"] == exit.regs["es"] == exit.regs["ss"] == 0x18


def test_rsp_zero_means_the_purgatory_stack():
    machine = Machine.build(regs=EntryRegs(rip=0x1000200, rsp=0))
    exit = machine.call()
    assert exit.regs["rsp"] == machine.symbol("stack_end")


def test_return_address_is_recorded_as_the_jump_back_entry():
    machine = Machine.build()
    machine.call(return_address=0x3F0A1000)
    assert machine.read_u64(machine.symbol("jump_back_entry")) == 0x3F0A1000


def test_the_caller_stack_is_not_written():
    machine = Machine.build()
    below = bytes(machine.memory[0x70000:0x80000])
    machine.call()
    assert bytes(machine.memory[0x70000:0x80000]) == below


def test_jump_back_entry_is_appended_to_the_command_line():
    machine = Machine.build()
    machine.call(return_address=0x7FE5A123)
    assert machine.cmdline() == CMDLINE + b" kexec_jump_back_entry=0x7fe5a123"


@pytest.mark.parametrize("entry", [0x1, 0x9F000, 0xFFFFFFFF80001000, 0xFFFFFFFFFFFFFFFF])
def test_jump_back_entry_is_written_in_lowercase_hex_without_padding(entry):
    machine = Machine.build()
    machine.call(return_address=entry)
    assert machine.cmdline() == CMDLINE + f" kexec_jump_back_entry=0x{entry:x}".encode()


def test_append_stays_inside_the_reserved_room():
    machine = Machine.build(room=JUMP_BACK_PARAM_MAX)
    machine.call(return_address=0xFFFFFFFFFFFFFFFF)  # the longest parameter
    assert machine.cmdline().endswith(b"=0xffffffffffffffff")
    assert machine.after_room() == GUARD


def test_a_room_too_small_gets_no_parameter_and_no_write():
    # The loader refuses such a room; purgatory must still hold its bound.
    machine = Machine.build()
    machine.write_u64(machine.symbol("cmdline_room"), 20)
    before = bytes(machine.memory[CMDLINE_AT : CMDLINE_AT + 0x200])
    exit = machine.call()
    assert exit.reason == "left", exit.detail
    assert bytes(machine.memory[CMDLINE_AT : CMDLINE_AT + 0x200]) == before


def test_a_room_one_byte_short_gets_no_parameter():
    machine = Machine.build()
    text = b" kexec_jump_back_entry=0x7fe5a123"
    machine.write_u64(machine.symbol("cmdline_room"), len(text))  # no room for the NUL
    machine.call()
    assert machine.cmdline() == CMDLINE


def test_zero_return_address_appends_nothing():
    # A caller that does not preserve context leaves 0: there is no way back.
    machine = Machine.build()
    exit = machine.call(return_address=0)
    assert exit.reason == "left", exit.detail
    assert machine.cmdline() == CMDLINE


def test_running_again_leaves_the_parameter_exactly_once():
    # Re-entry cannot happen (the command line is hashed), but if the command
    # line were not hashed, a second run must replace, not add.
    machine = Machine.build(hashed=[random_segment(0x1000000, 5000, 0)])
    machine.place(setup_segment())
    machine.call(return_address=0xAAAA000)
    machine.call(return_address=0xB000)
    assert machine.cmdline() == CMDLINE + b" kexec_jump_back_entry=0xb000"
    assert machine.after_room() == GUARD


def _flip(machine: Machine, address: int) -> None:
    machine.memory[address] ^= 0x01


@pytest.mark.parametrize(
    "where",
    [
        "kernel first byte",
        "kernel last buffer byte",
        "kernel zero padding",
        "setup page",
        "command line",
        "reserved room",
        "initrd last byte",
    ],
)
def test_a_flipped_byte_in_any_region_hangs_before_the_kernel(where):
    machine = Machine.build()
    kernel, setup, initrd = machine.hashed
    address = {
        "kernel first byte": kernel.mem,
        "kernel last buffer byte": kernel.mem + kernel.bufsz - 1,
        "kernel zero padding": kernel.end - 1,
        "setup page": setup.mem + 0x10,
        "command line": CMDLINE_AT + 3,
        "reserved room": machine.cmdline_end + 10,
        "initrd last byte": initrd.end - 1,
    }[where]
    _flip(machine, address)
    cmdline_before = bytes(machine.memory[CMDLINE_AT : CMDLINE_AT + 0x100])
    exit = machine.call(budget=HANG_BUDGET)
    assert exit.reason == "hang", exit
    assert machine.purgatory.segment.mem <= exit.rip < machine.purgatory.segment.end
    assert bytes(machine.memory[CMDLINE_AT : CMDLINE_AT + 0x100]) == cmdline_before


def test_a_corrupted_digest_hangs():
    machine = Machine.build()
    _flip(machine, machine.symbol("sha256_digest") + 31)
    assert machine.call(budget=HANG_BUDGET).reason == "hang"


def test_sixteen_regions_are_all_verified():
    hashed = [random_segment(0x1000000 + i * 0x10000, 100 + 37 * i, 0) for i in range(16)]
    machine = Machine.build(hashed=hashed)
    machine.place(setup_segment())
    assert machine.call().reason == "left"
    _flip(machine, hashed[15].mem + hashed[15].bufsz - 1)
    assert machine.call(budget=HANG_BUDGET).reason == "hang"


def test_empty_and_zero_fill_segments_verify():
    hashed = [
        random_segment(0x1000000, 0, 0),  # memsz 0: nothing to hash
        random_segment(0x1100000, 0, 0x5000),  # all zero padding
        setup_segment(),
    ]
    assert Machine.build(hashed=hashed).call().reason == "left"


def test_megabytes_of_segments_verify():
    kernel = random_segment(0x1000000, 3 * MIB + 123, 0x1000)
    machine = Machine.build(hashed=[kernel, setup_segment()])
    exit = machine.call(budget=instruction_budget(machine.hashed))
    assert (exit.reason, exit.rip) == ("left", machine.regs.rip), exit.detail
    assert machine.cmdline().endswith(f"=0x{JUMP_BACK:x}".encode())


def test_a_flip_deep_inside_megabytes_hangs():
    kernel = random_segment(0x1000000, 1 * MIB, 0)
    machine = Machine.build(hashed=[kernel, setup_segment()])
    _flip(machine, kernel.mem + int.from_bytes(os.urandom(3), "little") % kernel.bufsz)
    assert machine.call(budget=instruction_budget(machine.hashed)).reason == "hang"


def test_the_suggested_budget_covers_a_correct_run_with_room_to_spare():
    kernel = random_segment(0x1000000, 2 * MIB, 0)
    machine = Machine.build(hashed=[kernel, setup_segment()])
    assert machine.call(budget=instruction_budget(machine.hashed) * 2 // 3).reason == "left"
