"""Kernel B of the lab bench with kexechibd's code: load the jump-back helper
(DESIGN §1.5) and jump back to A, again every time A jumps to B.

Run by jumpback.sh inside a lab guest (/usr/lib/kexechib-lab/jumpback.py).
"""

from __future__ import annotations

from kexechibd import cmdline
from kexechibd.cycle import kexec_ops
from kexechibd.kernel.linux import LinuxKernel


def say(text: str) -> None:
    print(f"KEXECHIB-LAB {text}", flush=True)


def main() -> int:
    kernel = LinuxKernel()
    entry = cmdline.jump_back_entry(kernel.cmdline())
    if entry is None:
        say("b-error=no-jump-back-entry")
        return 1
    kexec_ops.load_jump_back_helper(kernel, entry)
    round_ = 1
    while True:
        say(f"b-jump round={round_}")
        kernel.reboot_kexec()
        round_ += 1
        say(f"b-back round={round_}")


if __name__ == "__main__":
    raise SystemExit(main())
