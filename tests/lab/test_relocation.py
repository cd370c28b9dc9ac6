"""A kexec jump into an image loaded in place returns with A intact, on the
real patched kernel (kernel/patches 0016: swap_pages skips a page that is its
own source).

The guest stages preserve-context images whose entry page holds a single
`ret`: relocation swaps every destination with its source, calls the entry,
which returns at once, and swaps back. The destinations are [BASE, BASE + N
MiB): free pages are loaded in place (their own source), pages A uses are
not, so both kinds are swapped out and back. A 32 MiB buffer of A's, checked
by digest, must survive every jump.

Nothing is timed in the asserts: each jump's duration is printed (KEXECHIB-LAB
jump ... ms=...) for docs/kernel.md, which compares kernels with and without
0016 (`KEXECHIB_LAB_KERNEL=<bzImage> pytest -s tests/lab/test_relocation.py`).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SIZE, Segment, Stage
from kexechibd.lab import GuestResult, GuestSpec, new_workdir, run_guest
from tests.lab.staged_support import BASE, call, errno_name, markers, say
from tests.sizes import MIB

pytestmark = pytest.mark.lab

TOP = Path(__file__).resolve().parents[2]
SIZES_MIB = (0, 128)  # the stub alone, and 128 MiB in place
ROUNDS = 3
RET = b"\xc3"  # x86 `ret`: back into relocate_kernel, which swaps back


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    workdir = new_workdir("reloc")
    spec = GuestSpec(
        command=f"cd {TOP}\nexec {sys.executable} -m tests.lab.test_relocation guest\n",
        kernel=lab,
        memory_mib=512,
        append="kexechib.enable_kexec=1",
        timeout=600,
        name="reloc",
    )
    result = run_guest(spec, workdir)
    assert result.exit_status == 0, result.describe()
    for line in result.lines:
        if line.text.startswith("KEXECHIB-LAB jump "):
            print(line.text)
    return result


def test_every_jump_into_an_in_place_image_returns(guest: GuestResult) -> None:
    got = markers(guest, "relocation")
    assert got["jumps"] == str(len(SIZES_MIB) * ROUNDS), got
    assert got["failed"] == "none", got


def test_a_survives_every_jump_intact(guest: GuestResult) -> None:
    assert markers(guest, "relocation")["intact"] == "1"


# ============================================================== guest side


def _stage(npages: int) -> int:
    """A preserve-context image: the `ret` page at BASE, then ``npages``
    pages of data after it; 0 or the errno of the first call that failed."""
    flags = {s: abi.load_flags(s, preserve_context=True) for s in Stage}
    err = call(0, [Segment(RET, BASE, PAGE_SIZE)], flags[Stage.START])
    chunk = 16 * MIB
    for offset in range(0, npages * PAGE_SIZE, chunk):
        size = min(chunk, npages * PAGE_SIZE - offset)
        data = Segment(b"\x5a" * size, BASE + PAGE_SIZE + offset, size)
        err = err or call(0, [data], flags[Stage.MID])
    return err or call(BASE, [], flags[Stage.FINAL])


def _jump() -> int:
    from kexechibd.kernel.linux import LinuxKernel

    try:
        return LinuxKernel().reboot_kexec()
    except abi.KernelError as exc:
        return exc.errno


def _guest() -> int:
    own = random.Random(6).randbytes(32 * MIB)
    digest = hashlib.sha256(own).hexdigest()
    failed = []
    jumps = 0
    for rnd in range(ROUNDS):
        for mib in SIZES_MIB:
            err = _stage(mib * MIB // PAGE_SIZE)
            if err:
                failed.append(f"stage-{mib}:{errno_name(err)}")
                continue
            started = time.monotonic()
            err = _jump()
            ms = round((time.monotonic() - started) * 1000)
            if err:
                failed.append(f"jump-{mib}:{errno_name(err)}")
                continue
            jumps += 1
            say("jump", mib=mib, round=rnd, ms=ms)
    call(0, [], abi.load_flags(Stage.FULL))
    intact = hashlib.sha256(own).hexdigest() == digest
    say("relocation", jumps=jumps, failed=",".join(failed) or "none", intact=int(intact))
    os.sync()
    return 0


def main(argv: Sequence[str]) -> int:  # pragma: no cover - runs inside lab guests
    if argv == ["guest"]:
        return _guest()
    raise SystemExit(f"unknown guest step {argv}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
