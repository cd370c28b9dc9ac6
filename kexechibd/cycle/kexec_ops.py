"""Small kexec operations every role uses, each in one place."""

from __future__ import annotations

import contextlib

from kexechibd.kernel import abi
from kexechibd.kernel.api import Kernel


def discard_staged(kernel: Kernel) -> None:
    """``KS_start`` with no segments: drop an unfinished staged image (never fails)."""
    with contextlib.suppress(abi.KernelError):
        kernel.kexec_load(0, [], abi.load_flags(abi.Stage.START))


def unload(kernel: Kernel) -> None:
    """``KS_full`` with no segments: unload the loaded image."""
    kernel.kexec_load(0, [], abi.load_flags())


def load_jump_back_helper(kernel: Kernel, entry: int) -> None:
    """One empty segment, preserve-context, ``entry`` = the peer's re-entry
    point: ``reboot_kexec`` then returns control to the peer (DESIGN §1.5)."""
    kernel.kexec_load(entry, [abi.Segment.zero(0, 0)], abi.load_flags(preserve_context=True))
