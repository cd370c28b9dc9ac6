"""The engine's decisions as tables (``kexechibd.cycle.decisions`` and the
support rule ``kexechibd.operation.hibernate_refusal``): what A does when it
is jumped back into, whether the image location can take A's memory, and
whether this kernel can hibernate in a mode."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kexechibd.cycle.decisions import (
    CHECKPOINT,
    NOT_POWERED_OFF,
    NOTHING_SAVED,
    RESUMED,
    after_return,
    location_refusal,
    slot_need,
    worst_case,
)
from kexechibd.cycle.window import Window
from kexechibd.image.meta import ImageState
from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.operation import Mode, hibernate_refusal
from tests.dbus.scripted_engine import NO_KEXEC, SUPPORTED
from tests.sizes import MIB

# ---------------------------------------------------------------- after return


@pytest.mark.parametrize(
    "mine, state, mode, outcome",
    [
        # This hibernation's image, consumed: C resumed A from it.
        (True, ImageState.CONSUMED, Mode.POWEROFF, RESUMED),
        (True, ImageState.CONSUMED, Mode.CHECKPOINT, RESUMED),
        # Committed: B saved; after a power-off request it failed to power off.
        (True, ImageState.COMMITTED, Mode.POWEROFF, NOT_POWERED_OFF),
        (True, ImageState.COMMITTED, Mode.CHECKPOINT, CHECKPOINT),
        # Anything else: B saved nothing A asked for.
        (True, ImageState.INVALID, Mode.POWEROFF, NOTHING_SAVED),
        (True, ImageState.INVALID, Mode.CHECKPOINT, NOTHING_SAVED),
        (False, ImageState.COMMITTED, Mode.POWEROFF, NOTHING_SAVED),  # an older image
        (False, ImageState.COMMITTED, Mode.CHECKPOINT, NOTHING_SAVED),
        (False, ImageState.CONSUMED, Mode.POWEROFF, NOTHING_SAVED),
        (False, None, Mode.POWEROFF, NOTHING_SAVED),  # none there, or unreadable
        (False, None, Mode.CHECKPOINT, NOTHING_SAVED),
    ],
)
def test_what_a_does_when_it_is_jumped_back_into(mine, state, mode, outcome) -> None:
    assert after_return(mine, state, mode) is outcome


@pytest.mark.parametrize(
    "outcome, withdraw, unload, peer, fails",
    [
        (RESUMED, True, True, False, False),
        (NOT_POWERED_OFF, True, True, False, True),
        (CHECKPOINT, False, False, True, False),
        (NOTHING_SAVED, False, True, False, True),
    ],
)
def test_each_outcome_says_what_to_undo(outcome, withdraw, unload, peer, fails) -> None:
    got = (outcome.withdraw_image, outcome.unload, outcome.peer_alive, bool(outcome.failure))
    assert got == (withdraw, unload, peer, fails)


# ---------------------------------------------------------------- location sizing

WINDOW = Window(main=MemoryRange(256 * MIB, 320 * MIB), low=None)
RAM = [
    MemoryRange(0, 0x9F000),
    MemoryRange(0xF0000, 0x100000, MemoryKind.RESERVED),
    MemoryRange(MIB, 512 * MIB),
]


def test_the_worst_case_is_a_s_ram_outside_b_s_window() -> None:
    assert worst_case(RAM, WINDOW) == 0x9F000 + (255 + 192) * MIB


def test_a_slot_needs_room_for_headers_and_the_index() -> None:
    assert slot_need(64 * MIB) == 65 * MIB


LOCATION = Path("/var/lib/kexechib/image")
WORST = 448 * MIB


@pytest.mark.parametrize(
    "capacity, prepared, shares, words",
    [
        # A plain file: only where B shares A's files (the model).
        (None, False, True, ""),
        (None, False, False, "is not a block device"),
        # A partition or a prepared file: a slot must hold the worst case.
        (slot_need(WORST), False, False, ""),
        (slot_need(WORST), True, False, ""),
        (slot_need(WORST) - 1, False, False, "use a device at least"),
        (slot_need(WORST) - 1, True, False, "recreate it larger: rm /var/lib/kexechib/image;"),
        (0, True, True, "holds 0 MiB, but A's memory outside B's window is 448 MiB"),
    ],
)
def test_whether_the_location_can_take_a_s_memory(capacity, prepared, shares, words) -> None:
    refusal = location_refusal(
        LOCATION,
        WORST,
        capacity=capacity,
        prepared_file=prepared,
        successors_share_files=shares,
    )
    assert (words in refusal) if words else refusal == ""


def test_a_refusal_names_the_command_that_prepares_a_big_enough_file() -> None:
    refusal = location_refusal(
        LOCATION, WORST, capacity=None, prepared_file=False, successors_share_files=False
    )
    assert f"kexechibctl image create {LOCATION} --size " in refusal


# ---------------------------------------------------------------- support

NO_STAGED = dataclasses.replace(SUPPORTED, staged_load=False)
JUMP_UNKNOWN = dataclasses.replace(SUPPORTED, kexec_jump=None)


@pytest.mark.parametrize(
    "report, mode, refused",
    [
        (SUPPORTED, Mode.POWEROFF, False),
        (SUPPORTED, Mode.CHECKPOINT, False),
        # A checkpoint needs kexec jump only; power-off also staged loads.
        (NO_STAGED, Mode.CHECKPOINT, False),
        (NO_STAGED, Mode.POWEROFF, True),
        # Jump support that cannot be known without a real load: neither.
        (JUMP_UNKNOWN, Mode.CHECKPOINT, True),
        (JUMP_UNKNOWN, Mode.POWEROFF, True),
        (NO_KEXEC, Mode.CHECKPOINT, True),
        (NO_KEXEC, Mode.POWEROFF, True),
    ],
)
def test_whether_this_kernel_can_hibernate_in_a_mode(report, mode, refused) -> None:
    assert bool(hibernate_refusal(report, mode)) is refused


def test_a_refusal_names_what_is_missing() -> None:
    assert hibernate_refusal(NO_STAGED, Mode.POWEROFF) == NO_STAGED.summary
    assert "CONFIG_KEXEC_JUMP" in hibernate_refusal(JUMP_UNKNOWN, Mode.POWEROFF)
