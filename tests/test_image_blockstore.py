"""Images on a raw block device: two slots that alternate, the newest
published image wins, a failed save leaves the previous image whole, state
changes land in place, and reads see what another kernel wrote even when this
kernel's page cache holds the device's old blocks.

The device is a loop device over a sparse file (reached through a device node
of our own, so that no test touches the nodes in /dev), and, with the same
tests, a regular file opened through the same direct-I/O code path
(``allow_regular_file``).  Where loop devices cannot be set up, the loop
variant is skipped with the reason and the file variant still runs."""

from __future__ import annotations

import dataclasses
import io
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kexechibd.image import (
    DeviceImageStore,
    FileImageStore,
    ImageError,
    ImageReader,
    ImageWriter,
    directio,
    open_store,
    slots,
)
from kexechibd.image import format as fmt
from tests.blockdev_support import DISK_SIZE, Disk, make_disk
from tests.image_support import PS, layout, make_meta, newest, page, save
from tests.sizes import KIB, MIB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="block devices and ownership need root")

SLOT = DISK_SIZE // 2


@pytest.fixture(params=["loop", "file"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    with make_disk(tmp_path, request.param) as d:
        yield d


def records(store: DeviceImageStore) -> list[tuple[int, int] | None]:
    return [(r.slot, r.sequence) if r else None for r in store.records()]


def state_word(disk: Disk, slot: int) -> bytes:
    return disk.read(slot * SLOT + fmt.STATE_OFFSET, 8)


# -- which store -------------------------------------------------------------------


def test_open_store_picks_the_device_store_for_a_block_device(
    loop_disk: Disk, tmp_path: Path
) -> None:
    assert type(open_store(loop_disk.path)) is DeviceImageStore
    assert type(open_store(loop_disk.backing)) is FileImageStore
    assert type(open_store(tmp_path / "absent")) is FileImageStore
    link = tmp_path / "by-partlabel"  # udev names devices with symlinks
    link.symlink_to(loop_disk.path)
    assert type(open_store(link)) is DeviceImageStore


def test_the_device_store_refuses_what_is_not_a_block_device(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(bytes(4 * MIB))
    with pytest.raises(ImageError, match="is not a block device"):
        DeviceImageStore(path).open()
    with pytest.raises(ImageError, match="no image device at"):
        DeviceImageStore(tmp_path / "absent").open()


# -- slots ------------------------------------------------------------------------------


def test_an_empty_device_has_no_image(disk: Disk) -> None:
    store = disk.store()
    assert not store.exists() and records(store) == [None, None]
    with pytest.raises(ImageError, match="neither slot holds a published image"):
        store.open()
    with pytest.raises(ImageError, match="neither slot"):
        store.mark_consumed()


def test_saves_alternate_between_the_two_slots(disk: Disk) -> None:
    store = disk.store()
    expected: list[list[tuple[int, int] | None]] = [
        [(0, 1), None],
        [(0, 1), (1, 2)],
        [(0, 3), (1, 2)],
        [(0, 3), (1, 4)],
    ]
    for tag, recs in enumerate(expected, 1):
        save(store, tag)
        assert records(store) == recs
        assert newest(store) == (f"image-{tag}", "committed")
    assert store.exists() and store.capacity == SLOT - slots.RECORD_SIZE


def test_each_slot_holds_a_plain_image_from_its_start(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)
    with disk.backing.open("rb") as f:  # slot A starts the device: tools read it as a file
        assert ImageReader(f).meta.hibernate_id == "image-1"
    reader = ImageReader(io.BytesIO(disk.read(SLOT, SLOT)))
    assert reader.meta.hibernate_id == "image-2" and reader.summary.state == "committed"


def test_publishing_an_image_invalidates_the_older_one(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    assert state_word(disk, 0) == fmt.STATE_WORDS["committed"]
    save(store, 2)
    assert state_word(disk, 0) == fmt.STATE_WORDS["invalid"]
    assert state_word(disk, 1) == fmt.STATE_WORDS["committed"]


# -- failures while saving --------------------------------------------------------------


def test_a_failure_while_writing_leaves_the_previous_image_resumable(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)  # slot B; the next save goes to slot A
    before = disk.read(SLOT, SLOT)
    with pytest.raises(RuntimeError), store.writer(make_meta(), chunk_size=PS) as w:
        # More than the write buffer: part of the new image is on the device.
        w.add(0, b"".join(page(i, "random") for i in range(2 * directio.WRITE_BUFFER // PS)))
        raise RuntimeError("B lost power")
    slot_a = disk.read(0, 2 * directio.WRITE_BUFFER)
    assert slot_a[: fmt.PREFIX_SIZE] == bytes(fmt.PREFIX_SIZE)  # no header: not an image
    assert slot_a.count(0) < len(slot_a) // 2  # the new data did land there
    assert disk.read(SLOT, SLOT) == before
    assert records(store) == [(0, 1), (1, 2)]
    assert newest(store) == ("image-2", "committed")


def test_leaving_the_writer_without_commit_publishes_nothing(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    with store.writer(make_meta()) as w:
        w.add(0, page(9))
    assert records(store) == [(0, 1), None]
    assert newest(store) == ("image-1", "committed")


def test_the_previous_image_stays_whole_until_the_new_one_is_published(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    with store.writer(make_meta(hibernate_id="image-2"), chunk_size=2 * PS) as w:
        w.add(0, page(32))
        assert newest(store) == ("image-1", "committed")
        w.commit()
    assert newest(store) == ("image-2", "committed")


def test_an_image_too_large_for_a_slot_names_the_sizes_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    with make_disk(tmp_path, "file", 4 * MIB) as small:
        store = small.store()
        save(store, 1)
        capacity = 2 * MIB - slots.RECORD_SIZE
        with (
            pytest.raises(ImageError, match=rf"does not fit in slot B .* holds {capacity} "),
            store.writer(make_meta(), compression="none") as w,
        ):
            w.add(0, b"".join(page(i, "random") for i in range(3 * MIB // PS)))
            w.commit()
        assert records(store) == [(0, 1), None]
        assert newest(store) == ("image-1", "committed")


def test_a_device_too_small_for_two_slots_is_refused(tmp_path: Path) -> None:
    with (
        make_disk(tmp_path, "file", MIB) as tiny,
        pytest.raises(ImageError, match=f"device of {MIB} bytes is too small"),
    ):
        save(tiny.store(), 1)


# -- which image is the newest ----------------------------------------------------------


def rewrite_record(disk: Disk, slot: int, **changes: object) -> None:
    rec = disk.store().records()[slot]
    assert rec is not None
    new = dataclasses.replace(rec, **changes)  # type: ignore[arg-type]
    disk.write(slot * SLOT + SLOT - slots.RECORD_SIZE, new.encode())


def test_the_highest_sequence_number_wins(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)
    rewrite_record(disk, 0, sequence=3)
    assert newest(store) == ("image-1", "invalid")  # retired when image 2 was published
    save(store, 3)  # goes to the slot that is not the newest
    assert records(store) == [(0, 3), (1, 4)]
    assert newest(store) == ("image-3", "committed")


def test_a_torn_record_publishes_nothing_and_the_older_image_stays_retired(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)
    disk.write(2 * SLOT - slots.RECORD_SIZE + slots.RECORD.size, b"\xff")  # its checksum
    assert records(store) == [(0, 1), None]
    assert newest(store) == ("image-1", "invalid")  # never resumed: newer ones existed


def test_a_damaged_newest_image_is_an_error_not_a_fallback(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)
    lay = layout(disk.read(SLOT, SLOT))
    disk.write(SLOT + lay.index_offset + 20, b"\xff")
    with pytest.raises(ImageError, match=r"slot B of .*, image 2: index checksum mismatch"):
        store.open()


def test_a_slot_overwritten_by_another_image_is_refused(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    other = io.BytesIO()
    with ImageWriter(other, make_meta(hibernate_id="image-7")) as w:
        w.add(0, page(7 * 16))
        w.commit()
    disk.write(0, other.getvalue())
    with pytest.raises(ImageError, match="record does not describe the image in the slot"):
        store.open()


# -- resume state ------------------------------------------------------------------------


def changed_bytes(before: bytes, after: bytes) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]


def test_mark_consumed_rewrites_only_the_newest_images_state_word(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)
    before = disk.read()
    store.mark_consumed()
    changed = changed_bytes(before, disk.read())
    word = SLOT + fmt.STATE_OFFSET
    assert changed and all(word <= i < word + 8 for i in changed)
    assert newest(store) == ("image-2", "consumed")


def test_mark_committed_undoes_mark_consumed(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    before = disk.read()
    store.mark_consumed()
    store.mark_committed()
    assert disk.read() == before


def test_a_consumed_image_still_verifies(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    store.mark_consumed()
    with store.open() as reader:
        reader.verify()
        assert reader.summary.state == "consumed"


def test_invalidate_makes_the_newest_image_invalid_for_good(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    store.mark_consumed()
    store.invalidate()
    assert newest(store) == ("image-1", "invalid")
    with pytest.raises(ImageError, match="invalidated"):
        store.mark_consumed()
    with pytest.raises(ImageError, match="invalidated"):
        store.mark_committed()


def test_invalidate_also_invalidates_an_older_image_left_resumable(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)
    disk.write(fmt.STATE_OFFSET, fmt.STATE_WORDS["committed"])  # as if retiring had failed
    store.invalidate()
    assert state_word(disk, 0) == state_word(disk, 1) == fmt.STATE_WORDS["invalid"]


def test_a_damaged_newest_image_can_still_be_invalidated(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    lay = layout(disk.read(0, SLOT))
    disk.write(lay.index_offset + 20, b"\xff")
    store.invalidate()
    assert state_word(disk, 0) == fmt.STATE_WORDS["invalid"]


# -- coherence between kernels -------------------------------------------------------------


def test_wipe_zeroes_both_published_images_and_leaves_no_image(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    save(store, 2)  # slot B newest, slot A retired but still on the device
    lengths = [r.image_length for r in store.records() if r]
    wiped = store.wipe()
    assert wiped >= sum(lengths)
    assert not store.exists()
    for slot, length in enumerate(lengths):
        assert disk.read(slot * SLOT, length) == bytes(length)


def test_a_wiped_device_takes_the_next_image(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    store.wipe()
    save(store, 3)
    assert records(store) == [(0, 1), None]
    assert newest(store)[0] == "image-3"


def test_a_damaged_image_can_be_wiped(disk: Disk) -> None:
    store = disk.store()
    save(store, 1)
    disk.write(4096, b"\xff" * 64)  # inside the first chunk
    store.wipe()
    assert not store.exists()


def test_wiping_an_empty_device_writes_nothing(disk: Disk) -> None:
    assert disk.store().wipe() == 0


def test_reads_and_state_changes_see_what_another_kernel_wrote(
    loop_disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's page cache holds the device as it was before the jump; B then writes
    the device (here: through the loop device's backing file, which this
    kernel's cache of the loop device does not see).  Direct I/O alone must
    be enough, so the store's courtesy of dropping the cache is disabled."""
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: None)
    store = loop_disk.store()
    save(store, 1)
    cached = os.open(loop_disk.path, os.O_RDONLY)  # a buffered reader in A
    try:
        assert os.pread(cached, DISK_SIZE, 0)  # the whole device is now in the cache
        save(DeviceImageStore(loop_disk.backing, allow_regular_file=True), 2)  # B
        assert os.pread(cached, PS, SLOT) == bytes(PS)  # A's cache: no image in slot B
        assert newest(store) == ("image-2", "committed")
        before = loop_disk.read()
        store.mark_consumed()  # a buffered write would put that cached zero page back
        word = SLOT + fmt.STATE_OFFSET
        changed = changed_bytes(before, loop_disk.read())
        assert changed and all(word <= i < word + 8 for i in changed)
        assert newest(store) == ("image-2", "consumed")
    finally:
        os.close(cached)


def test_opening_the_device_drops_stale_cached_blocks_for_other_readers(
    loop_disk: Disk,
) -> None:
    cached = os.open(loop_disk.path, os.O_RDONLY)
    try:
        os.pread(cached, DISK_SIZE, 0)
        save(DeviceImageStore(loop_disk.backing, allow_regular_file=True), 1)
        assert os.pread(cached, 4, 0) == bytes(4)  # stale: readelf would see no image
        loop_disk.store().exists()
        assert os.pread(cached, 4, 0) == b"\x7fELF"
    finally:
        os.close(cached)


def test_the_writer_reaches_the_device_before_commit_returns(loop_disk: Disk) -> None:
    store = loop_disk.store()
    with store.writer(make_meta(hibernate_id="image-1"), chunk_size=2 * PS) as w:
        w.add(0, page(16))
        summary = w.commit()
        # Still inside the writer: what the device holds is the whole image.
        reader = ImageReader(io.BytesIO(loop_disk.read(0, SLOT)))
        reader.verify()
        assert reader.summary.digest == summary.digest
        assert records(store) == [(0, 1), None]


# -- memory ----------------------------------------------------------------------------------

BUFFER = 4 * MIB
SLACK = 256 * KIB
SERIAL_BOUND = 2 * BUFFER + MIB  # as in test_image_memory: one chunk and its copy


@pytest.fixture(scope="module")
def data_buffers() -> dict[str, bytes]:
    text = b"".join(page(i) for i in range(BUFFER // PS // 2))
    return {"zero": bytes(BUFFER), "data": text + bytes(range(256)) * (BUFFER // 2 // 256)}


def peak(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_on_a_device_does_not_grow_with_the_size_of_memory(
    disk: Disk, data_buffers: dict[str, bytes]
) -> None:
    """The device store's buffers are fixed (a 1 MiB read buffer, a 4 MiB
    write buffer, both mmap: not counted here), and the reader and writer keep
    the bounds that test_image_memory shows for files."""
    store = disk.store()

    def pick(addr: int) -> bytes:
        return data_buffers["data"] if addr % (8 * BUFFER) == 0 else data_buffers["zero"]

    def measure(size: int) -> tuple[int, int, int]:
        def write() -> None:
            meta = make_meta(window=())
            with store.writer(meta, chunk_size=BUFFER, level=1, threads=0) as w:
                for addr in range(0, size, BUFFER):
                    w.add(addr, pick(addr))
                w.commit()

        def read() -> None:
            with store.open() as reader:
                for _chunk in reader.chunks(prefetch=0, threads=0):
                    pass

        def covered() -> None:
            with store.open() as reader:
                for _run in reader.covered():
                    pass

        return peak(write), peak(read), peak(covered)

    small, large = measure(256 * MIB), measure(1024 * MIB)
    for lo, hi in zip(small, large, strict=True):
        assert hi < SERIAL_BOUND and hi < lo + SLACK, (small, large)
