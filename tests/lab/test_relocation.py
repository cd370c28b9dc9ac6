"""A kexec jump into an image loaded in place returns with A intact, on the
real patched kernel (kernel/patches 0020: swap_pages skips a page that is its
own source).

`tests/lab/programs/jump_in_place.c` (static, built here with gcc) stages
preserve-context images whose entry page holds a single `ret`: relocation
swaps every destination with its source, calls the entry, which returns at
once, and swaps back. The destinations are [BASE, BASE + N MiB): free pages
are loaded in place (their own source), pages A uses are not, so both kinds
are swapped out and back. A 32 MiB buffer of the program's must survive every
jump.

The guest runs from the RAM root (`kexechib.lab.root=none`): a jump that
comes back without a second kernel leaves the virtio-9p device unusable (its
freeze and restore assume the device was reset meanwhile), so the program is
copied to tmpfs and 9p unmounted before the first jump.

Nothing is timed in the asserts: each jump's duration by the host's clock is
printed for docs/kernel.md, which compares kernels with and without 0020
(`KEXECHIB_LAB_KERNEL=<bzImage> pytest -s tests/lab/test_relocation.py`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import Stage
from kexechibd.lab import GuestResult, GuestSpec, new_workdir, run_guest
from tests.lab.staged_support import BASE, markers

pytestmark = pytest.mark.lab

PROGRAM = Path(__file__).resolve().parent / "programs" / "jump_in_place.c"
SIZES_MIB = (0, 128) * 5  # the stub alone, and 128 MiB in place, 5 times


def _build(workdir: Path) -> Path:
    out = workdir / "bin"
    out.mkdir()
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(out / "jump_in_place"), PROGRAM],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    workdir = new_workdir("reloc")
    stages = (Stage.START, Stage.MID, Stage.FINAL)
    flags = " ".join(str(abi.load_flags(s, preserve_context=True)) for s in stages)
    sizes = " ".join(map(str, SIZES_MIB))
    spec = GuestSpec(
        command=(
            "mkdir -p /mnt/prog && mount -t 9p -o trans=virtio,version=9p2000.L,ro prog /mnt/prog\n"
            "cp /mnt/prog/jump_in_place /tmp/ && umount /mnt/prog\n"
            f"/tmp/jump_in_place {flags} {BASE} {sizes}\n"
        ),
        kernel=lab,
        memory_mib=512,
        append="kexechib.lab.root=none kexechib.enable_kexec=1",
        extra_virtfs=(("prog", _build(workdir)),),
        timeout=600,
        name="reloc",
    )
    result = run_guest(spec, workdir)
    assert result.exit_status == 0, result.describe()
    for mib, ms in jump_times(result):
        print(f"relocation: jump with {mib} MiB in place took {ms} ms (host clock)")
    return result


def jump_times(result: GuestResult) -> list[tuple[int, int]]:
    """Each jump's (MiB in place, milliseconds) by the host's clock, from the
    kernel's "Freezing user space processes" before it to "Restarting tasks"
    after it. The guest's own clocks cannot time it: the kernel restores its
    sched_clock and suspends timekeeping around the jump."""
    times = []
    started = ended = None
    for line in result.lines:
        if line.text.startswith("Freezing user space processes") and "completed" not in line.text:
            started = line.seconds
        elif line.text.startswith("Restarting tasks"):
            ended = line.seconds
        elif line.text.startswith("KEXECHIB-LAB jump ") and started and ended:
            fields = dict(w.split("=", 1) for w in line.text.split()[2:])
            times.append((int(fields["mib"]), round((ended - started) * 1000)))
            started = ended = None
    return times


def test_every_jump_into_an_in_place_image_returns(guest: GuestResult) -> None:
    got = markers(guest, "relocation")
    assert (got["jumps"], got["failed"]) == (str(len(SIZES_MIB)), "0"), got


def test_the_jumping_process_survives_intact(guest: GuestResult) -> None:
    assert markers(guest, "relocation")["intact"] == "1"


def test_each_jump_is_timed_by_the_host(guest: GuestResult) -> None:
    assert [mib for mib, _ in jump_times(guest)] == list(SIZES_MIB)
