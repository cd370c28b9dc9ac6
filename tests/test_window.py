"""B's memory window (DESIGN §1.1): how it is written in the configuration,
and the checks A makes against the machine's memory map before loading B.
Each refusal names the window as configured and what is wrong with it."""

from __future__ import annotations

import pytest

from kexechibd.config import MemoryWindow, parse
from kexechibd.cycle.window import choose_window
from kexechibd.errors import ConfigError
from kexechibd.kernel.api import MemoryKind, MemoryRange
from tests.sizes import MIB

# A PC's e820 with 1 GiB: low RAM, the BIOS hole, RAM with ACPI tables on top.
FIRMWARE = [
    MemoryRange(0, 0x9F000),
    MemoryRange(0x9F000, MIB, MemoryKind.RESERVED),
    MemoryRange(MIB, 1024 * MIB - 0x20000),
    MemoryRange(1024 * MIB - 0x20000, 1024 * MIB, MemoryKind.ACPI),
]
USABLE = "[0x0-0x9efff] System RAM, [0x100000-0x3ffdffff] System RAM"


def refusal(start: int, size: int, **kw: int) -> str:
    with pytest.raises(ConfigError) as info:
        choose_window(start, size, FIRMWARE, low_memory=True, **kw)
    return str(info.value)


# -- choose_window ----------------------------------------------------------------


def test_a_window_inside_ram_is_chosen_with_the_low_memory_below_640k() -> None:
    window = choose_window(256 * MIB, 64 * MIB, FIRMWARE, low_memory=True)
    assert window.spans == ((0, 0x9F000), (256 * MIB, 320 * MIB))


def test_a_window_starting_off_a_2_mib_boundary_is_refused() -> None:
    assert refusal(257 * MIB, 64 * MIB) == (
        "window '64M@257M' must start and end on a 2 MiB boundary (kernel alignment)"
    )


def test_a_window_ending_off_a_2_mib_boundary_is_refused() -> None:
    assert refusal(256 * MIB, 65 * MIB) == (
        "window '65M@256M' must start and end on a 2 MiB boundary (kernel alignment)"
    )


def test_a_window_smaller_than_b_needs_is_refused() -> None:
    assert refusal(256 * MIB, 16 * MIB) == "window '16M@256M' is 16 MiB; B needs at least 32 MiB"


def test_the_minimum_size_is_the_callers_to_set() -> None:
    assert refusal(256 * MIB, 64 * MIB, min_size=128 * MIB) == (
        "window '64M@256M' is 64 MiB; B needs at least 128 MiB"
    )


def test_a_window_running_into_the_acpi_tables_is_refused_naming_usable_ram() -> None:
    assert refusal(960 * MIB, 64 * MIB) == (
        f"window '64M@960M' is not inside one range of usable RAM; usable RAM is: {USABLE}"
    )


def test_a_window_spanning_the_bios_hole_is_refused() -> None:
    # Both sides are RAM, but B's kernel needs one contiguous range.
    assert refusal(0, 64 * MIB) == (
        f"window '64M@0' is not inside one range of usable RAM; usable RAM is: {USABLE}"
    )


def test_a_window_beyond_the_end_of_ram_is_refused() -> None:
    assert refusal(2048 * MIB, 128 * MIB) == (
        f"window '128M@2G' is not inside one range of usable RAM; usable RAM is: {USABLE}"
    )


# -- the configured spelling --------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("128M", "'128M' is not SIZE@START (for example 128M@768M)"),
        ("128M@", "not a size: '' (examples: 4096, 0x1000, 64K, 128M, 2G)"),
        ("12Q@1G", "not a size: '12Q' (examples: 4096, 0x1000, 64K, 128M, 2G)"),
        ("0@1G", "the window size must not be zero"),
        ("128M@1000", "size and start must be multiples of the page size (4096)"),
        ("1000@1G", "size and start must be multiples of the page size (4096)"),
    ],
)
def test_a_window_that_does_not_parse_says_why(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        MemoryWindow.parse(text)
    assert str(info.value) == message


def test_a_window_parse_error_in_the_configuration_names_file_key_and_form() -> None:
    with pytest.raises(ConfigError) as info:
        parse("[saver]\nwindow = 128M@1000\n", "/etc/kexechibd.conf")
    assert str(info.value) == (
        "/etc/kexechibd.conf: [saver] window = '128M@1000': size and start must be "
        "multiples of the page size (4096); allowed: SIZE@START, page aligned, e.g. 128M@768M"
    )
