"""newc archives as the kernel's initramfs unpacker reads them."""

import subprocess
from pathlib import Path

import pytest

from kexechibd import cpio


def test_archive_round_trips_with_directories() -> None:
    blob = cpio.build_newc({"kexechib/params.json": b"{}", "kexechib/pgmap": b"\1\2\3"})
    entries = list(cpio.read_newc(blob))
    assert [(e.name, e.is_dir) for e in entries] == [
        ("kexechib", True),
        ("kexechib/params.json", False),
        ("kexechib/pgmap", False),
    ]
    assert entries[2].data == b"\1\2\3"


def test_concatenated_archives_with_zero_padding_are_read_like_the_kernel() -> None:
    first = cpio.build_newc({"a": b"x" * 5})
    second = cpio.build_newc({"b": b"y"})
    blob = first + bytes(4096 - len(first) % 4096) + second + bytes(100)
    assert [e.name for e in cpio.read_newc(blob)] == ["a", "b"]


def test_unaligned_archive_after_padding_is_broken_padding() -> None:
    blob = cpio.build_newc({"a": b"x"}) + b"\0\0" + cpio.build_newc({"b": b"y"})[2:]
    with pytest.raises(cpio.CpioError, match="broken padding"):
        list(cpio.read_newc(blob))


def test_truncated_archive_names_the_offset() -> None:
    blob = cpio.build_newc({"a": b"x" * 100})[:150]
    with pytest.raises(cpio.CpioError, match="offset 0"):
        list(cpio.read_newc(blob))


def test_gnu_cpio_extracts_our_archive(tmp_path: Path) -> None:
    blob = cpio.build_newc({"kexechib/params.json": b'{"a": 1}'})
    subprocess.run(["cpio", "-idm", "--quiet"], input=blob, cwd=tmp_path, check=True)
    assert (tmp_path / "kexechib/params.json").read_bytes() == b'{"a": 1}'
