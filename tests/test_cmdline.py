"""Kernel command-line parameters kexechibd writes and reads."""

import pytest

from kexechibd import cmdline
from kexechibd.kernel.api import MemoryKind, MemoryRange

FIRMWARE = [
    MemoryRange(0, 0x9F000),
    MemoryRange(0x9F000, 0x100000, MemoryKind.RESERVED),
    MemoryRange(0x100000, 0x40000000),
]


def test_exactmap_confines_a_kernel_to_its_window() -> None:
    window = [MemoryRange(0, 0x9F000), MemoryRange(0x30000000, 0x38000000)]
    text = cmdline.memmap_exactmap(window)
    assert text == "memmap=exactmap memmap=636K@0x0 memmap=128M@0x30000000"
    assert cmdline.apply_memmap(FIRMWARE, text) == window


def test_without_memmap_the_firmware_ram_is_usable() -> None:
    assert cmdline.apply_memmap(FIRMWARE, "quiet") == [FIRMWARE[0], FIRMWARE[2]]


def test_reserved_memmap_punches_a_hole() -> None:
    usable = cmdline.apply_memmap(FIRMWARE, "memmap=1M$0x200000")
    assert MemoryRange(0x100000, 0x200000) in usable
    assert MemoryRange(0x300000, 0x40000000) in usable


def test_jump_back_entry_and_role_are_read() -> None:
    text = "console=ttyS0 kexechib.role=save kexec_jump_back_entry=0x1a2b000"
    assert cmdline.jump_back_entry(text) == 0x1A2B000
    assert cmdline.value(text, cmdline.ROLE_PARAMETER) == cmdline.ROLE_SAVE


def test_elfcorehdr_forms() -> None:
    assert cmdline.elfcorehdr("elfcorehdr=786432K") == cmdline.ElfCoreHeaderParam(768 << 20, None)
    assert cmdline.elfcorehdr("elfcorehdr=4K@0x1000") == cmdline.ElfCoreHeaderParam(0x1000, 4096)


@pytest.mark.parametrize("text", ["", "12Q", "M", "0xZZ"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(cmdline.CmdlineError):
        cmdline.parse_size(text)
