"""Lockdown raised during a staging (issue 13 finding 1), on the real patched
kernel with the lockdown LSM (kernel/lab.config).

A loader stages 64 MiB of preserve-context pages; then the guest raises
`/sys/kernel/security/lockdown` to `integrity`, which forbids kexec_load
(LOCKDOWN_KEXEC) from then on and cannot be lowered again:

- the loader's next `KS_mid` is EPERM (refused before the kexec lock, so it
  changes nothing: kernel/patches "a staged call refused before the kexec
  lock changes nothing");
- `/proc/kexec_pgmap` cannot be opened (EPERM): it holds physical addresses;
- another process's unload (`KS_full`, no segments) is EPERM too;
- the loader's exit still discards its staging: the staged memory is back.

Before the image's owner was its process, such a staging could never be
freed: every call that could discard it was refused. The guest side is this
module run as a program: `python -m tests.lab.test_staged_lockdown guest`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PGMAP_PATH, Stage
from kexechibd.lab import GuestResult
from tests.lab.staged_support import (
    Loader,
    call,
    errno_name,
    guest_main,
    markers,
    mem_free_kib,
    memory_back,
    run_guest_program,
    say,
)

pytestmark = pytest.mark.lab

LOCKDOWN = Path("/sys/kernel/security/lockdown")


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    return run_guest_program(lab, "tests.lab.test_staged_lockdown", "lockdown")


def test_the_guest_raised_lockdown_during_the_staging(guest: GuestResult) -> None:
    assert markers(guest, "lockdown")["level"] == "integrity"


def test_a_staged_call_under_lockdown_is_eperm(guest: GuestResult) -> None:
    assert markers(guest, "lockdown")["mid"] == "EPERM"


def test_the_page_map_under_lockdown_is_eperm(guest: GuestResult) -> None:
    assert markers(guest, "lockdown")["pgmap"] == "EPERM"


def test_an_unload_under_lockdown_is_eperm(guest: GuestResult) -> None:
    assert markers(guest, "lockdown")["unload"] == "EPERM"


def test_the_loader_exit_frees_its_staging_under_lockdown(guest: GuestResult) -> None:
    got = markers(guest, "lockdown")
    assert int(got["staged_kib"]) >= 64 * 1024, got
    assert memory_back(got), got


# ============================================================== guest side


def _raise_lockdown() -> str:
    """Raise lockdown to integrity; the level now in force."""
    if not LOCKDOWN.exists():
        subprocess.run(["mount", "-t", "securityfs", "none", "/sys/kernel/security"], check=True)
    LOCKDOWN.write_text("integrity\n")
    return next(w[1:-1] for w in LOCKDOWN.read_text().split() if w.startswith("["))


def _pgmap_errno() -> int:
    try:
        os.close(os.open(PGMAP_PATH, os.O_RDONLY))
    except OSError as e:
        return e.errno or 0
    return 0


def _guest() -> int:
    # Warm the page cache with what a loader reads, so free memory compares pages.
    Loader().end()
    before = mem_free_kib()
    loader = Loader()
    assert loader.do("start 64") == 0
    staged = before - mem_free_kib()
    level = _raise_lockdown()
    mid = loader.do("mid")
    pgmap = _pgmap_errno()
    unload = call(0, [], abi.load_flags(Stage.FULL))
    loader.end()
    say(
        "lockdown",
        level=level,
        mid=errno_name(mid),
        pgmap=errno_name(pgmap),
        unload=errno_name(unload),
        staged_kib=staged,
        free_before_kib=before,
        free_after_kib=mem_free_kib(),
    )
    os.sync()
    return 0


if __name__ == "__main__":  # pragma: no cover - runs inside lab guests
    guest_main(_guest)
