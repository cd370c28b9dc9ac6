"""A staged image belongs to the process that started it (DESIGN §2.2, issue 13
finding 1), on the real patched kernel.

One guest runs the scenarios below in order; a loader is a child process the
guest program drives over a pipe, so it can be killed between its calls:

- the loader killed after `KS_start` (64 MiB of preserve-context pages): the
  staged memory is back (MemFree within 1% of before), nothing is staged;
- the loader killed after `KS_start` and 100 `KS_mid` calls: the same;
- the loader killed *during* a `KS_start` call that stages 256 MiB (about two
  seconds of copying here): the call stops at the fatal signal, the staged
  memory is back and nothing is staged;
- another process's `KS_mid`, `KS_final` and `KS_start` are EBUSY and change
  nothing; its unload (`KS_full`, no segments, as `kexec -u`) discards the
  staging, and the loader's next `KS_mid` is EINVAL;
- the flag probe (one segment at NULL) with stage bits is EFAULT and changes
  nothing: the loader finishes its image afterwards;
- `kexec_load_disabled` raised during a staging (every later kexec_load is
  EPERM): the loader's exit still gives the memory back.

The guest side is this module run as a program:
`python -m tests.lab.test_staged_owner guest`; its loaders are
`tests/lab/staged_support.py`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import Stage
from kexechibd.lab import GuestResult
from tests.lab.staged_support import (
    BASE,
    KEEP,
    Loader,
    call,
    errno_name,
    guest_main,
    markers,
    mem_free_kib,
    memory_back,
    mib_segments,
    pgmap,
    run_guest_program,
    say,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    return run_guest_program(lab, "tests.lab.test_staged_owner", "owner")


def test_killing_the_loader_after_start_gives_the_stagedmemory_back(
    guest: GuestResult,
) -> None:
    got = markers(guest, "killed-after-start")
    assert int(got["staged_kib"]) >= 60 * 1024, got  # it did pin its 64 MiB
    assert memory_back(got), got
    assert got["map_bytes"] == "0", got


def test_killing_the_loader_after_100_mid_calls_gives_the_stagedmemory_back(
    guest: GuestResult,
) -> None:
    got = markers(guest, "killed-after-mid")
    assert int(got["staged_kib"]) >= 90 * 1024, got
    assert memory_back(got), got
    assert got["map_bytes"] == "0", got


def test_killing_the_loader_during_a_call_gives_the_staged_memory_back(
    guest: GuestResult,
) -> None:
    got = markers(guest, "killed-during-call")
    assert got["answered_before_kill"] == "0", got  # the kill came during the call
    assert memory_back(got), got
    assert got["map_bytes"] == "0", got


def test_another_process_gets_ebusy_and_changes_nothing(guest: GuestResult) -> None:
    got = markers(guest, "other-process")
    assert (got["mid"], got["final"], got["start"]) == ("EBUSY", "EBUSY", "EBUSY"), got
    assert got["map_unchanged"] == "1", got


def test_an_unload_by_another_process_discards_the_staging(guest: GuestResult) -> None:
    got = markers(guest, "unload")
    assert got["unload"] == "0" and got["map_bytes"] == "0", got
    assert got["loader_mid_after"] == "EINVAL", got
    assert memory_back(got), got


def test_the_flag_probe_with_stage_bits_changes_nothing(guest: GuestResult) -> None:
    got = markers(guest, "probe")
    assert got["probe"] == "EFAULT", got
    assert got["final"] == "0" and got["loaded"] == "1", got


def test_the_loader_exit_frees_its_staging_after_kexec_load_disabled(
    guest: GuestResult,
) -> None:
    got = markers(guest, "disabled")
    assert got["refused"] == "EPERM", got  # kexec_load is refused from now on
    assert memory_back(got), got


# ============================================================== guest side


def _killed(kind: str, mids: int) -> None:
    before = mem_free_kib()
    loader = Loader()
    assert loader.do("start 64") == 0
    for _ in range(mids):
        assert loader.do("mid") == 0
    staged = before - mem_free_kib()
    loader.kill()
    say(
        kind,
        staged_kib=staged,
        free_before_kib=before,
        free_after_kib=mem_free_kib(),
        map_bytes=len(pgmap()),
    )


def _killed_during_call() -> None:
    loader = Loader()
    assert loader.do("start 0") == 0  # imports done, nothing staged
    before = mem_free_kib()
    loader.send("start 256")
    time.sleep(0.3)
    answered = loader.answered()
    killed = time.monotonic()
    loader.kill()
    say(
        "killed-during-call",
        answered_before_kill=int(answered),
        exit_ms=round((time.monotonic() - killed) * 1000),
        free_before_kib=before,
        free_after_kib=mem_free_kib(),
        map_bytes=len(pgmap()),
    )


def _other_process() -> None:
    loader = Loader()
    assert loader.do("start 4") == 0
    map_before = pgmap()
    mid = call(0, mib_segments(32, 1), abi.load_flags(Stage.MID, preserve_context=KEEP))
    final = call(BASE, [], abi.load_flags(Stage.FINAL, preserve_context=KEEP))
    start = call(0, mib_segments(32, 1), abi.load_flags(Stage.START, preserve_context=KEEP))
    say(
        "other-process",
        mid=errno_name(mid),
        final=errno_name(final),
        start=errno_name(start),
        map_unchanged=int(pgmap() == map_before),
    )
    loader.end()


def _unload() -> None:
    loader = Loader()
    # The loader runs on: count only what it stages, once it has started
    # (KS_start without segments stages nothing).
    assert loader.do("start 0") == 0
    before = mem_free_kib()
    assert loader.do("start 64") == 0
    unload = call(0, [], abi.load_flags(Stage.FULL))
    after = mem_free_kib()
    map_bytes = len(pgmap())
    say(
        "unload",
        unload=errno_name(unload),
        map_bytes=map_bytes,
        loader_mid_after=errno_name(loader.do("mid")),
        free_before_kib=before,
        free_after_kib=after,
    )
    loader.end()


def _probe() -> None:
    from kexechibd.kernel.linux import LinuxKernel

    loader = Loader()
    assert loader.do("start 1") == 0
    probe = loader.do("probe")
    final = loader.do("final")
    say(
        "probe",
        probe=errno_name(probe),
        final=errno_name(final),
        loaded=int(LinuxKernel().kexec_loaded()),
    )
    loader.end()
    call(0, [], abi.load_flags(Stage.FULL))


def _disabled() -> None:
    before = mem_free_kib()
    loader = Loader()
    assert loader.do("start 64") == 0
    Path("/proc/sys/kernel/kexec_load_disabled").write_text("1\n")
    refused = loader.do("mid")
    loader.end()
    say(
        "disabled",
        refused=errno_name(refused),
        free_before_kib=before,
        free_after_kib=mem_free_kib(),
    )


def _guest() -> int:
    # Warm the page cache with what a loader reads, so MemFree compares pages.
    Loader().end()
    _killed("killed-after-start", 0)
    _killed("killed-after-mid", 100)
    _killed_during_call()
    _other_process()
    _unload()
    _probe()
    _disabled()  # last: kexec_load_disabled cannot be lowered again
    os.sync()
    return 0


if __name__ == "__main__":  # pragma: no cover - runs inside lab guests
    guest_main(_guest)
