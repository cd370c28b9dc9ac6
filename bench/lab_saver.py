"""Kernel B from the lab userspace vs from the product's initramfs.

The hibernate cycle of tests/lab/test_cycle.py (the lab kernel as A, B and
C, 512 MiB, TCG), once with B booting the lab userspace (busybox /init,
saver.sh, a system bus and the daemon) and once with B booting what
`kexechibctl saver build` writes (kexechibd/initramfs/), one after the
other so that both see the same host.  Prints, from B's console (host
clock): the archive size the kernel frees after unpacking it, B's kernel
start -> /init and -> `save started`, and the cycle's phases.

Run: ``.venv/bin/python -m bench.lab_saver [lab] [product]``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Sequence

from kexechibd.lab import GuestResult, lab_kernel, new_workdir
from kexechibd.lab.cycle import hibernate_cycle
from kexechibd.lab.userspace import saver_build


def _last(result: GuestResult, text: str) -> tuple[float, str]:
    line = [line for line in result.lines if text in line.text][-1]
    return line.seconds, line.text


def main(argv: Sequence[str]) -> int:
    kernel = lab_kernel()
    for which in argv or ("lab", "product"):
        workdir = new_workdir(f"bench-saver-{which}")
        initrd = saver_build(kernel, workdir / "b.img") if which == "product" else None
        run = asyncio.run(hibernate_cycle(kernel, workdir, saver_initrd=initrd))
        one = run.hibernate
        jump, _ = _last(one, "jumping to kernel B")
        start, _ = _last(one, "Linux version")  # B's: the last kernel to boot
        init, _ = _last(one, "Run /init")
        _, freed = _last(one, "Freeing initrd memory")
        saving, _ = _last(one, "save started")
        print(f"== B boots the {which} initramfs: {freed.split('] ')[-1]}")
        print(f"  B's kernel start -> /init          {init - start:6.2f} s")
        print(f"  B's kernel start -> save started   {saving - start:6.2f} s")
        print(f"  A's jump -> save started           {saving - jump:6.2f} s")
        for name, seconds in run.times():
            print(f"  {name:44} {seconds:6.2f} s")
        resumed = run.resume is not None and run.resume.exit_status == 0
        print(f"  resumed: {resumed}", flush=True)
        if resumed:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
