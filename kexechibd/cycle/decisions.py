"""The engine's decisions, pure (the engine does the I/O around them):
what A does when it is jumped back into, and whether the image location can
take A's memory before A hands it to B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kexechibd.cycle.window import Window
from kexechibd.image.meta import ImageState
from kexechibd.image.slots import size_for
from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.operation import Mode

# ---------------------------------------------------------------- after return


@dataclass(frozen=True)
class AfterReturn:
    """What A does, back from ``reboot_kexec``; ``failure`` is '' when A
    came back as it asked."""

    summary: str
    withdraw_image: bool  # invalidate it: resuming it later would roll A back
    unload: bool  # A's kexec image (B) is stale or unwanted
    peer_alive: bool  # B waits to be jumped back into (a checkpoint)
    failure: str = ""


RESUMED = AfterReturn("resumed from the image", withdraw_image=True, unload=True, peer_alive=False)
NOT_POWERED_OFF = AfterReturn(
    "kernel B saved the image but could not power off",
    withdraw_image=True,
    unload=True,
    peer_alive=False,
    failure=(
        "kernel B saved the image but could not power off and jumped back; the "
        "image was withdrawn and A carries on (B's log says why)"
    ),
)
CHECKPOINT = AfterReturn(
    "kernel B saved a checkpoint and jumped back",
    withdraw_image=False,
    unload=False,
    peer_alive=True,
)
NOTHING_SAVED = AfterReturn(
    "kernel B jumped back without saving an image",
    withdraw_image=False,
    unload=True,
    peer_alive=False,
    failure=(
        "kernel B jumped back without saving an image; A carries on unchanged "
        "(the saver's log in B's journal or console says why)"
    ),
)


def after_return(mine: bool, state: ImageState | None, mode: Mode) -> AfterReturn:
    """``mine``: the image at the location is this hibernation's (its id);
    ``state``: the image's state (None when there is none or it cannot be
    read); ``mode``: what A asked B for.

    Consumed: C resumed A from it, so it must never be resumed again and B,
    long gone, is stale.  Committed after a power-off request: B could not
    power off, and A carries on, so the image must go (resuming it would
    roll A's disks back).  Committed after a checkpoint: B waits.  Anything
    else: B saved nothing."""
    if mine and state is ImageState.CONSUMED:
        return RESUMED
    if mine and state is ImageState.COMMITTED:
        return NOT_POWERED_OFF if mode is Mode.POWEROFF else CHECKPOINT
    return NOTHING_SAVED


# ---------------------------------------------------------------- location sizing


def worst_case(memory_map: Sequence[MemoryRange], window: Window) -> int:
    """The bytes B saves when every page is incompressible: A's RAM outside
    B's window."""
    ram = [r for r in memory_map if r.kind is MemoryKind.RAM]
    return sum(r.size for r in window.outside(ram))


def slot_need(worst: int) -> int:
    """A slot that holds ``worst`` bytes of incompressible chunks, plus
    their headers and the index."""
    return worst + (worst >> 6)


def location_refusal(
    location: Path,
    worst: int,
    *,
    capacity: int | None,
    prepared_file: bool,
    successors_share_files: bool,
) -> str:
    """Why B could not write A's image at ``location`` ('' when it could):
    after the jump, B could only jump back with "cannot" or "no room".

    ``capacity``: one slot's bytes where B writes by block address (a
    partition, or a ``prepared_file``); None for a plain file, which B can
    write only where it shares A's files (the model)."""
    need = slot_need(worst)
    create = f"kexechibctl image create {location} --size {size_for(need) >> 20}M"
    if capacity is None:
        if successors_share_files:
            return ""
        return (
            f"{location} is not a block device: kernel B has only its initramfs and "
            "must not mount A's filesystems, so it can only write a file there by "
            f"block address, once the file is prepared: `{create}` (a new file, on "
            "ext4 or xfs on a plain partition), or set [image] location to a raw "
            "partition (DESIGN §1.3)"
        )
    if capacity >= need:
        return ""
    fix = (
        f"recreate it larger: rm {location}; {create}"
        if prepared_file
        else f"use a device at least {size_for(need) >> 20} MiB large (two slots)"
    )
    return (
        f"an image slot of {location} holds {capacity >> 20} MiB, but A's memory "
        f"outside B's window is {worst >> 20} MiB; {fix}"
    )
