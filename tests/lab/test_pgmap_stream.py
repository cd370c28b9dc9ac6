"""/proc/kexec_pgmap is produced as it is read (kernel patch 0014, issue 13
finding 7; docs/kernel.md §1), on the real patched kernel.

One guest stages an image of 1000 isolated data pages (one record each, about
24 KB of map: many read() buffers, so many holds of the kexec lock) and reads
the map in several ways:

- in one pass, in 100-byte reads (records split across reads) and in 4096-byte
  reads: the same bytes every time, a header and 1000 records sorted by
  destination;
- from an offset in the middle after a seek: the bytes the whole file has there;
- a read after a staged call changed the image (a reader that read offset 0
  before the call): ESTALE; after a seek to 0 the reader gets the new map.

Lockdown (the open refused with EPERM) is not tried: the lab kernel has no
lockdown LSM (`kernel/lab.config`).

The guest side is this module run as a program:
`python -m tests.lab.test_pgmap_stream guest`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import Segment, Stage
from kexechibd.lab import GuestResult
from tests.lab.staged_support import guest_main, markers, run_guest_program, say
from tests.sizes import MIB

pytestmark = pytest.mark.lab

BASE = 64 * MIB  # destinations: RAM of the 512 MiB guest; nothing is jumped to
PAGES = 1000  # isolated data pages, one record each
RECORDS_BYTES = PAGES * abi.PGMAP_RECORD.size


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    return run_guest_program(lab, "tests.lab.test_pgmap_stream", "pgmap")


def test_the_map_read_whole_lists_every_page_in_order(guest: GuestResult) -> None:
    got = markers(guest, "whole")
    assert got == {"records": str(PAGES), "sorted": "1", "bytes": str(16 + RECORDS_BYTES)}


def test_small_reads_give_the_same_bytes_as_one_pass(guest: GuestResult) -> None:
    assert markers(guest, "chunked") == {"same_100": "1", "same_4096": "1"}


def test_a_read_after_a_seek_gives_the_bytes_at_that_offset(guest: GuestResult) -> None:
    assert markers(guest, "seek") == {"same": "1"}


def test_a_read_after_the_image_changed_is_estale_until_a_seek_to_0(
    guest: GuestResult,
) -> None:
    got = markers(guest, "stale")
    assert got == {"read": "ESTALE", "again_records": str(PAGES + 1)}


# ============================================================== guest side


def _read_in(size: int) -> bytes:
    fd = os.open(abi.PGMAP_PATH, os.O_RDONLY)
    try:
        parts = []
        while part := os.read(fd, size):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def _guest() -> int:
    from kexechibd.kernel.linux import LinuxKernel

    kernel = LinuxKernel()
    page = abi.PAGE_SIZE
    segments = [Segment(b"x" * page, BASE + 2 * i * page, page) for i in range(PAGES)]
    kernel.kexec_load(0, segments, abi.load_flags(Stage.START))

    whole = kernel.kexec_pgmap()
    runs = abi.decode_page_map(whole)  # validates: sorted, no overlap
    dests = [r.dest_pfn for r in runs]
    say("whole", records=len(runs), sorted=int(dests == sorted(dests)), bytes=len(whole))
    say(
        "chunked",
        same_100=int(_read_in(100) == whole),
        same_4096=int(_read_in(4096) == whole),
    )

    offset = 16 + 600 * abi.PGMAP_RECORD.size + 7  # inside a record, several buffers in
    fd = os.open(abi.PGMAP_PATH, os.O_RDONLY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        got = b""
        while len(got) < 5000 and (part := os.read(fd, 5000 - len(got))):
            got += part
    finally:
        os.close(fd)
    say("seek", same=int(got == whole[offset : offset + 5000]))

    fd = os.open(abi.PGMAP_PATH, os.O_RDONLY)
    try:
        os.read(fd, 4096)
        one_more = Segment(b"y" * page, BASE + 2 * PAGES * page, page)
        kernel.kexec_load(0, [one_more], abi.load_flags(Stage.MID))
        read = "0"  # end of file reached without an error
        try:
            while os.read(fd, 4096):  # what this read() buffered before the call comes first
                pass
        except OSError as exc:
            read = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        os.lseek(fd, 0, os.SEEK_SET)
        parts = []
        while part := os.read(fd, 65536):
            parts.append(part)
        again = abi.decode_page_map(b"".join(parts))
    finally:
        os.close(fd)
    say("stale", read=read, again_records=len(again))
    kernel.kexec_load(0, [], abi.load_flags(Stage.START))  # discard the staging
    return 0


if __name__ == "__main__":  # pragma: no cover - runs inside lab guests
    guest_main(_guest)
