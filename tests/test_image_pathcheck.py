"""Which paths may name an image (kexechibd.image.pathcheck): the rule that
Hibernate, Resume and Inspect all apply before anything starts.  The first
tests give the pure decision made-up facts; the rest ask the real file
system about the paths issue 14's fuzzing got past Hibernate."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kexechibd.image.pathcheck import (
    Facts,
    ImagePathRefused,
    check_image_path,
    refusal,
    text_refusal,
)

DIR = os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))


def st(kind: int, mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def facts(path: str, target: os.stat_result | None, *, real: str = "", parent=DIR) -> Facts:
    return Facts(path=path, real=real or path, target=target, parent=parent)


def test_a_private_root_file_in_a_root_directory_may_hold_an_image():
    assert refusal(facts("/var/lib/kexechib/image", st(stat.S_IFREG, 0o600))) == ""


def test_a_path_that_does_not_exist_yet_may_hold_a_new_image():
    assert refusal(facts("/var/lib/kexechib/image", None)) == ""


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666, 0o644])
def test_a_file_others_may_read_or_write_is_refused(mode):
    assert f"mode {mode:04o}" in refusal(facts("/i", st(stat.S_IFREG, mode)))


def test_a_file_of_another_owner_is_refused():
    assert "uid 1000" in refusal(facts("/i", st(stat.S_IFREG, 0o600, uid=1000)))


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFIFO, stat.S_IFDIR, stat.S_IFSOCK], ids=str)
def test_only_regular_files_and_block_devices_may_hold_images(kind):
    assert "neither a regular file nor a block device" in refusal(facts("/i", st(kind, 0o600)))


def test_a_block_device_of_the_disk_group_passes():
    assert refusal(facts("/dev/vdb", st(stat.S_IFBLK, 0o660, gid=0), parent=None)) == ""
    assert (
        refusal(
            Facts("/dev/vdb", "/dev/vdb", st(stat.S_IFBLK, 0o660, gid=6), None, frozenset({0, 6}))
        )
        == ""
    )


def test_a_block_device_others_may_open_is_refused():
    assert "only root and the disk group" in refusal(facts("/dev/vdb", st(stat.S_IFBLK, 0o666)))


def test_a_symlink_is_refused_except_udev_links_to_block_devices():
    target = st(stat.S_IFREG, 0o600)
    assert "real path /etc/shadow" in refusal(facts("/tmp/x", target, real="/etc/shadow"))
    by_uuid = "/dev/disk/by-uuid/1234"
    assert refusal(facts(by_uuid, st(stat.S_IFBLK, 0o600), real="/dev/vdb")) == ""
    assert "real path" in refusal(facts(by_uuid, target, real="/var/x"))


def test_kernel_interfaces_are_refused_even_when_they_look_like_private_files():
    assert "kernel interface" in refusal(facts("/proc/1/mem", st(stat.S_IFREG, 0o600)))
    assert "kernel interface" in refusal(facts("/sys/power/image_size", st(stat.S_IFREG, 0o600)))


def test_a_directory_others_may_change_is_refused():
    sticky_tmp = st(stat.S_IFDIR, 0o1777)
    assert "not root's alone" in refusal(facts("/tmp/image", None, parent=sticky_tmp))
    theirs = st(stat.S_IFDIR, 0o700, uid=1000)
    assert "not root's alone" in refusal(facts("/home/u/image", None, parent=theirs))


def test_a_missing_directory_is_refused():
    assert "does not exist" in refusal(facts("/nowhere/image", None, parent=None))


@pytest.mark.parametrize(
    "path, words",
    [
        ("relative/image", "absolute"),
        ("/", "root directory"),
        ("//", "root directory"),
        ("/var/lib/image\n", "control character"),
        ("/var/lib/im\tage", "control character"),
        ("/var/lib/../../etc/shadow", "'..'"),
    ],
)
def test_the_text_of_a_path_is_checked_first(path, words):
    assert words in text_refusal(path)


# ------------------------------------------------------------------ real paths


@pytest.mark.parametrize(
    "path", ["/dev/zero", "/proc/self/mem", "/proc/1/mem", "/sys/kernel/kexec_loaded", "/", "/etc"]
)
def test_what_the_fuzzer_got_past_hibernate_is_refused(path):
    with pytest.raises(ImagePathRefused):
        check_image_path(path)


def test_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(ImagePathRefused, match="neither a regular file"):
        check_image_path(str(tmp_path / "fifo"))


def test_a_world_readable_file_is_refused(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"")
    image.chmod(0o666)
    with pytest.raises(ImagePathRefused, match="mode 0666"):
        check_image_path(str(image))


def test_a_symlink_to_etc_shadow_is_refused(tmp_path):
    (tmp_path / "link").symlink_to("/etc/shadow")
    with pytest.raises(ImagePathRefused, match="real path /etc/shadow"):
        check_image_path(str(tmp_path / "link"))


def test_a_private_file_passes_and_says_what_it_is(tmp_path):
    tmp_path.chmod(0o700)
    image = tmp_path / "image"
    image.write_bytes(b"")
    image.chmod(0o600)
    checked = check_image_path(str(image))
    assert checked.exists and not checked.block_device
    assert not check_image_path(str(tmp_path / "new")).exists


def test_a_long_path_is_quoted_short_in_the_refusal():
    with pytest.raises(ImagePathRefused) as refused:
        check_image_path("x" * 100_000)
    assert len(str(refused.value)) < 400


def test_the_refusal_never_needs_the_file_to_be_opened(tmp_path: Path):
    # A FIFO opened for reading would block: the check only looks at it.
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(ImagePathRefused):
        check_image_path(str(tmp_path / "fifo"))
