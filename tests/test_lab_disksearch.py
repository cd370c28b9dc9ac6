"""The host's search of a guest's raw disk file for pieces of a secret
(kexechibd/lab/disksearch.py): what it finds, across its read chunks, in
a sparse file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kexechibd.lab import disksearch
from kexechibd.lab.disksearch import found_needles, parse_needles

NEEDLES = (b"A" * 31 + b"1", b"B" * 31 + b"2", b"C" * 31 + b"3")


def _disk(tmp_path: Path, *pieces: tuple[int, bytes], size: int = 1 << 30) -> Path:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return disk


def test_it_names_the_needles_that_occur(tmp_path: Path) -> None:
    disk = _disk(tmp_path, (4096, b"x" + NEEDLES[2] + b"y"), (900 << 20, NEEDLES[0]))
    assert found_needles(disk, NEEDLES) == {0, 2}


def test_a_needle_across_two_read_chunks_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disksearch, "CHUNK", 1 << 20)
    disk = _disk(tmp_path, ((1 << 20) - 10, NEEDLES[1]), size=4 << 20)
    assert found_needles(disk, NEEDLES) == {1}


def test_a_disk_of_holes_holds_none(tmp_path: Path) -> None:
    assert found_needles(_disk(tmp_path), NEEDLES) == set()


def test_it_refuses_to_search_for_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        found_needles(_disk(tmp_path), ())


def test_the_marker_field_is_hex_comma_separated() -> None:
    assert parse_needles(",".join(n.hex() for n in NEEDLES)) == NEEDLES
    assert parse_needles("") == ()


def test_only_the_files_data_is_read_not_its_holes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _disk(tmp_path, (0, b"z"), (40 << 30, NEEDLES[0]), size=64 << 30)
    read: list[int] = []
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        read.append(length)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(disksearch.os, "pread", pread)
    assert found_needles(disk, NEEDLES) == {0}
    assert sum(read) < 1 << 20  # two pages of data, maybe a filesystem block each
