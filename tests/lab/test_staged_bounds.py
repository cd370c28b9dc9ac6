"""A staged image is bounded by memory (DESIGN §2.2, issue 13 finding 2), on
the real patched kernel (kernel/patches 0018 and 0019).

One 512 MiB guest runs the scenarios below in order:

- a zero-fill segment of 160 GiB far above RAM is EADDRNOTAVAIL and costs
  nothing (it used to be accepted after 24 s with 374 MB of placement map);
- one data segment over all of the largest RAM range asks for more data pages
  than the RAM the allocator manages: ENOMEM at once, MemFree as before, no
  process OOM-killed;
- a loader in a memory cgroup is charged for what it stages: 64 MiB staged
  raise the cgroup's memory.current by at least that much, and killing the
  loader gives it back;
- a loader whose cgroup allows 32 MiB more than it already uses gets ENOMEM
  staging 64 MiB, nobody is OOM-killed, and the memory is back.

Nothing is timed: each call's duration is printed for the record only.
The guest side is this module run as a program:
`python -m tests.lab.test_staged_bounds guest`; its loaders are
`tests/lab/staged_support.py`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SIZE, Segment, Stage
from kexechibd.lab import GuestResult
from tests.lab.staged_support import (
    Loader,
    call,
    errno_name,
    guest_main,
    largest_ram_range,
    markers,
    mem_free_kib,
    memory_back,
    oom_kills,
    pgmap,
    run_guest_program,
    say,
)
from tests.sizes import GIB, MIB

pytestmark = pytest.mark.lab

START = abi.load_flags(Stage.START)


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    return run_guest_program(lab, "tests.lab.test_staged_bounds", "bounds")


def test_zero_fill_far_above_ram_is_refused_and_costs_nothing(guest: GuestResult) -> None:
    got = markers(guest, "above-ram")
    assert got["err"] == "EADDRNOTAVAIL", got
    assert got["map_bytes"] == "0", got
    assert memory_back(got), got


def test_data_beyond_ram_is_enomem_at_once_and_pins_nothing(guest: GuestResult) -> None:
    got = markers(guest, "beyond-ram")
    assert got["err"] == "ENOMEM", got
    assert memory_back(got), got
    assert got["map_bytes"] == "0", got


def test_data_beyond_ram_kills_no_process(guest: GuestResult) -> None:
    assert markers(guest, "beyond-ram")["oom_kills"] == "0"


def test_a_staged_image_is_charged_to_the_loaders_cgroup(guest: GuestResult) -> None:
    got = markers(guest, "charged")
    assert got["err"] == "0", got
    assert int(got["charged_kib"]) >= 64 * 1024, got
    assert memory_back(got), got


def test_a_cgroup_limit_bounds_what_a_loader_can_stage(guest: GuestResult) -> None:
    got = markers(guest, "limited")
    assert got["err"] == "ENOMEM", got
    assert got["oom_kills"] == "0", got
    assert memory_back(got), got


# ============================================================== guest side


def _timed(action: Callable[[], int]) -> tuple[int, int]:
    """``action``'s errno and its duration in milliseconds (for the record)."""
    started = time.monotonic()
    err = action()
    return err, round((time.monotonic() - started) * 1000)


def _above_ram() -> None:
    before = mem_free_kib()
    err, ms = _timed(lambda: call(0, [Segment.zero(1 << 40, 160 * GIB)], START))
    say(
        "above-ram",
        err=errno_name(err),
        ms=ms,
        map_bytes=len(pgmap()),
        free_before_kib=before,
        free_after_kib=mem_free_kib(),
    )


def _beyond_ram() -> None:
    start, end = largest_ram_range()
    kills = oom_kills()
    before = mem_free_kib()
    data = [Segment(b"\x5a" * PAGE_SIZE, start, end - start)]
    err, ms = _timed(lambda: call(0, data, START))
    say(
        "beyond-ram",
        err=errno_name(err),
        ms=ms,
        range_mib=(end - start) // MIB,
        map_bytes=len(pgmap()),
        oom_kills=oom_kills() - kills,
        free_before_kib=before,
        free_after_kib=mem_free_kib(),
    )


@contextmanager
def _cgroup(name: str) -> Iterator[Path]:
    """A child cgroup of a cgroup2 hierarchy mounted for the test, with the
    memory controller on."""
    root = Path(tempfile.mkdtemp(prefix="kexechib-cg-"))
    subprocess.run(["mount", "-t", "cgroup2", "none", str(root)], check=True)
    try:
        (root / "cgroup.subtree_control").write_text("+memory\n")
        group = root / name
        group.mkdir()
        try:
            yield group
        finally:
            group.rmdir()
    finally:
        subprocess.run(["umount", str(root)], check=True)
        root.rmdir()


def _current_kib(group: Path) -> int:
    return int((group / "memory.current").read_text()) // 1024


def _joined(group: Path) -> Loader:
    """A loader in ``group`` that has imported what it needs (its probe)."""
    loader = Loader()
    (group / "cgroup.procs").write_text(f"{loader.pid}\n")
    loader.do("probe")
    return loader


def _charged() -> None:
    with _cgroup("charged") as group:
        before = mem_free_kib()
        loader = _joined(group)
        baseline = _current_kib(group)
        err, ms = _timed(lambda: loader.do("start 64"))
        charged = _current_kib(group) - baseline
        loader.kill()
        say(
            "charged",
            err=errno_name(err),
            ms=ms,
            charged_kib=charged,
            free_before_kib=before,
            free_after_kib=mem_free_kib(),
        )


def _limited() -> None:
    with _cgroup("limited") as group:
        before = mem_free_kib()
        kills = oom_kills()
        loader = _joined(group)
        (group / "memory.max").write_text(f"{(_current_kib(group) + 32 * 1024) * 1024}\n")
        err, ms = _timed(lambda: loader.do("start 64"))
        loader.end()
        say(
            "limited",
            err=errno_name(err),
            ms=ms,
            oom_kills=oom_kills() - kills,
            free_before_kib=before,
            free_after_kib=mem_free_kib(),
        )


def _guest() -> int:
    # Warm the page cache with what a loader reads, so MemFree compares pages.
    Loader().end()
    _above_ram()
    _beyond_ram()
    _charged()
    _limited()
    os.sync()
    return 0


if __name__ == "__main__":  # pragma: no cover - runs inside lab guests
    guest_main(_guest)
