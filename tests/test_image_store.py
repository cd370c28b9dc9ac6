"""Images on disk: created private, replaced atomically, refused when others
could have written them, and moved through their resume states in place."""

from __future__ import annotations

import concurrent.futures
import os
import stat
from pathlib import Path

import pytest

from kexechibd.image import (
    ImageError,
    ImageReader,
    ImageStore,
    create_image_file,
    invalidate_image,
    mark_image_consumed,
    open_store,
)
from kexechibd.image import format as fmt
from tests.image_support import PS, layout, make_meta, page, read_pages

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")

OTHER_UID = 4242


def save(store: ImageStore, tag: int = 1) -> None:
    with store.writer(make_meta(), chunk_size=2 * PS) as w:
        w.add(0, b"".join(page(tag + i) for i in range(5)) + bytes(3 * PS))
        w.commit()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = open_store(tmp_path / "hibernate.img")
    save(s)
    return s


def pages_of(store: ImageStore) -> dict[int, bytes]:
    with store.open() as reader:
        return read_pages(reader)[0]


# -- creation and atomic replacement ---------------------------------------------


def test_a_new_image_file_is_0600_and_owned_by_root(tmp_path: Path) -> None:
    umask = os.umask(0o000)  # even with a permissive umask
    try:
        with create_image_file(tmp_path / "img") as f:
            st = os.fstat(f.fileno())
    finally:
        os.umask(umask)
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (0, 0)


def test_create_image_file_never_reuses_or_follows_an_existing_path(tmp_path: Path) -> None:
    (tmp_path / "exists").write_bytes(b"keep me")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name in ("exists", "link"):
        with pytest.raises(FileExistsError):
            create_image_file(tmp_path / name)
    assert (tmp_path / "exists").read_bytes() == b"keep me"
    assert not (tmp_path / "target").exists()


def test_commit_publishes_the_image_and_leaves_no_temp_file(store: ImageStore) -> None:
    assert store.exists() and not store.temp_path.exists()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert pages_of(store)[0] == page(1)


def test_a_failed_write_leaves_the_previous_image_untouched(store: ImageStore) -> None:
    before = store.path.read_bytes()
    with pytest.raises(RuntimeError), store.writer(make_meta()) as w:
        w.add(0, page(9))
        raise RuntimeError("B lost its disk")
    assert store.path.read_bytes() == before and not store.temp_path.exists()


def test_leaving_the_writer_without_commit_publishes_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "img")
    with store.writer(make_meta()) as w:
        w.add(0, page(1))
    assert not store.exists() and not store.temp_path.exists()


def test_the_new_image_replaces_the_old_one_only_when_committed(store: ImageStore) -> None:
    with store.writer(make_meta(), chunk_size=2 * PS) as w:
        w.add(0, page(7))
        assert pages_of(store)[0] == page(1)  # the old image, still whole
        w.commit()
    assert pages_of(store) == {0: page(7)}


def test_a_temp_file_left_by_a_crashed_writer_is_replaced(store: ImageStore) -> None:
    store.temp_path.write_bytes(b"half an image")
    save(store, tag=20)
    assert pages_of(store)[0] == page(20) and not store.temp_path.exists()


# -- who may have written it ----------------------------------------------------------


@pytest.mark.parametrize("mode", [0o602, 0o620, 0o666, 0o640, 0o604])
def test_open_refuses_an_image_others_may_write_or_read(store: ImageStore, mode: int) -> None:
    store.path.chmod(mode)
    with pytest.raises(ImageError, match=f"mode {mode:04o}: others may read or change it"):
        store.open()
    with pytest.raises(ImageError, match="must be 0600"):
        store.mark_consumed()


def test_a_0644_image_is_refused_by_the_reader_with_the_fix(store: ImageStore) -> None:
    # Images contain all of memory: a world-readable one leaks it, so the
    # reader holds the same rule as the check before an operation.
    store.path.chmod(0o644)
    with pytest.raises(ImageError) as refused:
        store.open()
    assert str(refused.value) == (
        f"{store.path} cannot be used as an image: it has mode 0644: others may read "
        f"or change it (it must be 0600: chmod 600 {store.path} if it is trusted)"
    )


def test_open_refuses_an_image_not_owned_by_root(store: ImageStore) -> None:
    os.chown(store.path, OTHER_UID, 0)
    with pytest.raises(ImageError, match=f"owned by uid {OTHER_UID}, not root"):
        store.open()
    with pytest.raises(ImageError, match="not root"):
        store.invalidate()


def test_open_refuses_a_symlink_and_a_directory(tmp_path: Path, store: ImageStore) -> None:
    link = open_store(tmp_path / "link")
    link.path.symlink_to(store.path)
    with pytest.raises(ImageError, match="cannot open"):
        link.open()
    (tmp_path / "dir").mkdir()
    with pytest.raises(ImageError, match="is not a regular file"):
        open_store(tmp_path / "dir").open()


def test_open_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    # Waiting would hold a Resume (or an Inspect) in open(2), where Cancel
    # cannot reach it, for as long as nobody writes.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        opening = pool.submit(open_store(fifo).open)
        try:
            with pytest.raises(ImageError, match="is not a regular file"):
                opening.result(timeout=30)
        finally:
            if not opening.done():  # let it go: the test fails instead of hanging
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_open_of_a_missing_image_says_so(tmp_path: Path) -> None:
    store = open_store(tmp_path / "none")
    assert not store.exists()
    with pytest.raises(ImageError, match="no image at"):
        store.open()


# -- resume state ---------------------------------------------------------------------


def state(store: ImageStore) -> str:
    with store.open() as reader:
        return reader.summary.state


def test_mark_consumed_rewrites_only_the_state_word(store: ImageStore) -> None:
    before = store.path.read_bytes()
    store.mark_consumed()
    after = store.path.read_bytes()
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed and all(fmt.STATE_OFFSET <= i < fmt.STATE_OFFSET + 8 for i in changed)
    assert state(store) == "consumed"


def test_a_consumed_image_still_verifies_with_the_same_digest(store: ImageStore) -> None:
    with store.open() as reader:
        digest = reader.summary.digest
    store.mark_consumed()
    with store.open() as reader:
        reader.verify()
        assert reader.summary.digest == digest


def test_mark_consumed_twice_is_harmless(store: ImageStore) -> None:
    store.mark_consumed()
    store.mark_consumed()
    assert state(store) == "consumed"


def test_invalidate_makes_any_image_invalid(store: ImageStore) -> None:
    store.invalidate()
    assert state(store) == "invalid"
    store.invalidate()
    assert state(store) == "invalid"


def test_a_consumed_image_can_be_invalidated(store: ImageStore) -> None:
    store.mark_consumed()
    store.invalidate()
    assert state(store) == "invalid"


def test_an_invalidated_image_cannot_be_marked_consumed(store: ImageStore) -> None:
    store.invalidate()
    with pytest.raises(ImageError, match="invalidated"):
        store.mark_consumed()
    assert state(store) == "invalid"


def test_mark_committed_undoes_a_consumption_whose_jump_failed(store: ImageStore) -> None:
    before = store.path.read_bytes()
    store.mark_consumed()
    store.mark_committed()
    assert store.path.read_bytes() == before
    store.mark_committed()
    assert state(store) == "committed"


def test_an_invalidated_image_cannot_be_marked_committed_again(store: ImageStore) -> None:
    store.invalidate()
    with pytest.raises(ImageError, match="invalidated"):
        store.mark_committed()
    assert state(store) == "invalid"


def test_auto_resume_skips_consumed_images_unless_forced(store: ImageStore) -> None:
    with store.open() as reader:
        reader.require_resumable()
    store.mark_consumed()
    with store.open() as reader:
        with pytest.raises(ImageError, match="consumed"):
            reader.require_resumable()
        reader.require_resumable(force=True)


def test_an_invalidated_image_is_never_resumed_even_forced(store: ImageStore) -> None:
    store.invalidate()
    with store.open() as reader, pytest.raises(ImageError, match="never resumed again"):
        reader.require_resumable(force=True)


def test_a_damaged_image_can_still_be_invalidated(store: ImageStore) -> None:
    data = bytearray(store.path.read_bytes())
    lay = layout(data)
    data[lay.index_offset + 20] ^= 0xFF
    store.path.write_bytes(data)
    with pytest.raises(ImageError, match="index checksum"):
        store.open()
    store.invalidate()
    with store.path.open("rb") as f:
        f.seek(fmt.STATE_OFFSET)
        assert f.read(8) == fmt.STATE_WORDS["invalid"]


def test_invalidate_leaves_a_file_that_is_not_an_image_untouched(tmp_path: Path) -> None:
    path = tmp_path / "fs.img"
    path.write_bytes(b"\x7fELF" + bytes(300))  # some other ELF file
    path.chmod(0o600)
    with pytest.raises(ImageError, match="left untouched"):
        open_store(path).invalidate()
    assert path.read_bytes() == b"\x7fELF" + bytes(300)


def test_wipe_zeroes_an_image_file_and_removes_it(store: ImageStore, tmp_path: Path) -> None:
    size = store.path.stat().st_size
    with open(store.path, "rb") as reader:  # sees the file's blocks after the wipe
        assert store.wipe() == size
        assert reader.read() == bytes(size)
    assert not store.exists() and not store.path.exists()


def test_wipe_also_zeroes_a_temp_file_left_by_a_crashed_writer(store: ImageStore) -> None:
    temp = store.path.with_name(store.path.name + ".new")
    temp.write_bytes(b"memory")
    temp.chmod(0o600)
    store.wipe()
    assert not temp.exists()


def test_state_changes_work_on_an_open_file_too(store: ImageStore) -> None:
    # The restorer may hold a raw device rather than a path.
    with store.path.open("r+b") as f:
        mark_image_consumed(f)
        assert ImageReader(f).summary.state == "consumed"
        invalidate_image(f)
        assert ImageReader(f).summary.state == "invalid"
