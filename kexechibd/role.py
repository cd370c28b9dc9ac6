"""Which kernel the daemon runs in (DESIGN §1): ``detect_role``, the one
function that decides it, from the kernel command line, the image at the
configured location and this boot's id.  The daemon decides at its start and
hands the decision to the engine (``Engine.assume_role``); an engine used
without a daemon decides with the same function.

The rule, in order:

1. ``kexechib.role=save`` on the command line → **saver** (B).  Purgatory
   appends ``kexec_jump_back_entry=0x…``; without a valid one B cannot reach
   A again, so the decision carries ``problem`` and the daemon refuses to
   save (it reports the problem instead of acting as an origin: this is not
   the user's system).
2. ``kexec_jump_back_entry=`` *without* ``kexechib.role=save`` → **origin**:
   some other kexec-jump user booted this kernel; it is not ours to save.
3. A **valid** (committed) image whose boot id differs from this boot's
   → **restorer** (C): it holds some earlier A that has not been resumed.
4. Otherwise → **origin** (A).  This includes a valid image made by *this*
   boot (a checkpoint: B saved A and jumped back, and the daemon was
   restarted since), a consumed image (invalidated after its resume), an
   invalid one (partial, corrupt, foreign, unsafe — the reason is logged)
   and none at all.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kexechibd import cmdline
from kexechibd.operation import ImageReport, Role, RoleDecision


class ImageVerdict(enum.Enum):
    ABSENT = "absent"  # nothing at the location
    VALID = "valid"  # committed and intact: it can be resumed
    CONSUMED = "consumed"  # resumed once and marked so
    INVALID = "invalid"  # partial, corrupt, foreign, unsafe or invalidated


@dataclass(frozen=True)
class ImageFinding:
    """The image at the configured location, as far as role detection cares."""

    verdict: ImageVerdict
    boot_id: str = ""
    reason: str = ""
    # The image could not be read or checked (not merely invalidated).
    damaged: bool = False

    @classmethod
    def from_report(cls, report: ImageReport) -> ImageFinding:
        if report.absent:
            return cls(ImageVerdict.ABSENT)
        details = report.details
        if details is None:
            return cls(ImageVerdict.INVALID, "", report.error or "unreadable", damaged=True)
        if report.valid:
            return cls(ImageVerdict.VALID, details.boot_id)
        if details.state == "consumed":
            return cls(ImageVerdict.CONSUMED, details.boot_id, "it was resumed already")
        return cls(ImageVerdict.INVALID, details.boot_id, f"its state is {details.state!r}")


def image_at(
    location: Path, inspect: Callable[[Path], ImageReport], *, by_block_address: bool
) -> ImageFinding:
    """What is at ``location``: nothing when no such file exists, else what
    ``inspect`` says.  ``by_block_address``: the image is reached through a
    resume record (Debian's initramfs), not through a mounted filesystem, so
    the path need not exist here."""
    if by_block_address or os.path.lexists(location):
        return ImageFinding.from_report(inspect(location))
    return ImageFinding(ImageVerdict.ABSENT)


def detect_role(kernel_cmdline: str, image: ImageFinding, boot_id: str) -> RoleDecision:
    role = cmdline.value(kernel_cmdline, cmdline.ROLE_PARAMETER)
    entry_text = cmdline.value(kernel_cmdline, cmdline.JUMP_BACK_ENTRY)
    try:
        entry = cmdline.jump_back_entry(kernel_cmdline)
        bad_entry = ""
    except cmdline.CmdlineError as e:
        entry, bad_entry = None, str(e)
    if role == cmdline.ROLE_SAVE:
        said = f"{cmdline.ROLE_PARAMETER}={cmdline.ROLE_SAVE} on the command line"
        if entry is None:
            missing = bad_entry or f"{cmdline.JUMP_BACK_ENTRY}= is missing"
            return RoleDecision(
                Role.SAVER,
                said,
                problem=(
                    f"{missing}: purgatory did not hand over A's re-entry point, so A "
                    "cannot be saved or jumped back to from here"
                ),
            )
        return RoleDecision(
            Role.SAVER, f"{said} with {cmdline.JUMP_BACK_ENTRY}={entry:#x}", jump_back_entry=entry
        )
    if entry_text is not None:
        return RoleDecision(
            Role.ORIGIN,
            f"{cmdline.JUMP_BACK_ENTRY}= without {cmdline.ROLE_PARAMETER}={cmdline.ROLE_SAVE}: "
            "not a kexechib saver",
        )
    if image.verdict is ImageVerdict.VALID:
        if image.boot_id and image.boot_id == boot_id:
            return RoleDecision(Role.ORIGIN, "the valid image was made by this boot (a checkpoint)")
        return RoleDecision(Role.RESTORER, "a valid image of an earlier boot awaits resume")
    if image.verdict is ImageVerdict.ABSENT:
        return RoleDecision(Role.ORIGIN, "no image")
    detail = f": {image.reason}" if image.reason else ""
    return RoleDecision(
        Role.ORIGIN,
        f"the image is {image.verdict.value}{detail}",
        damaged_image=image.reason if image.damaged else "",
    )
