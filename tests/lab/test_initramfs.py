"""The initramfs writer produces newc archives that cpio(1) reads back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kexechibd.initramfs.archive import Cpio, shared_libraries
from kexechibd.lab.initramfs import init_script


def test_newc_archive_lists_entries_with_types_and_parents(tmp_path: Path) -> None:
    archive = Cpio()
    archive.file("lab/bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    archive.symlink("bin/sh", "/lab/bin/tool")
    archive.chardev("dev/console", 5, 1)
    listing = subprocess.run(
        ["cpio", "-itv"], input=archive.to_bytes(), capture_output=True, check=True
    ).stdout.decode()
    lines = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line
        for line in listing.splitlines()
    }
    assert set(lines) == {"lab", "lab/bin", "lab/bin/tool", "bin", "bin/sh", "dev", "dev/console"}
    assert lines["lab/bin/tool"].startswith("-rwxr-xr-x")
    assert lines["bin/sh"].startswith("l") and "-> /lab/bin/tool" in lines["bin/sh"]
    assert lines["dev/console"].startswith("c")


def test_newc_archive_extracts_file_contents(tmp_path: Path) -> None:
    archive = Cpio()
    archive.file("a/b.txt", b"x" * 1001)
    subprocess.run(["cpio", "-id", "--quiet"], input=archive.to_bytes(), cwd=tmp_path, check=True)
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"x" * 1001


def test_duplicate_names_are_refused() -> None:
    archive = Cpio()
    archive.file("x", b"")
    with pytest.raises(ValueError, match="already"):
        archive.file("/x/", b"")


def test_shared_libraries_include_the_loader() -> None:
    libs = shared_libraries(Path("/bin/ls"))
    assert any(lib.name.startswith("ld-linux") for lib in libs)
    assert any(lib.name.startswith("libc.so") for lib in libs)


def test_init_script_has_no_unfilled_placeholders() -> None:
    assert "@" not in init_script().replace("$@", "")
