"""``export_image``: an image exported as an ELF core file is private (0600),
appears under its name only when whole, never replaces a file, and leaves
nothing behind when it fails (kexechibd/image/export.py)."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import pytest

from kexechibd.image import ExportError, ImageError, export_elf_core, export_image
from kexechibd.image import export as export_module
from tests.image_support import layout, open_image, sample_image


@pytest.fixture
def image() -> bytes:
    return sample_image()[0]


def core_of(image: bytes) -> bytes:
    out = io.BytesIO()
    export_elf_core(open_image(image), out)
    return out.getvalue()


def test_the_export_is_the_elf_core_of_the_image(image: bytes, tmp_path: Path) -> None:
    export_image(open_image(image), tmp_path / "core")
    assert (tmp_path / "core").read_bytes() == core_of(image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core"]  # no temporary file left


def test_the_export_is_private_whatever_the_umask(image: bytes, tmp_path: Path) -> None:
    umask = os.umask(0)
    try:
        export_image(open_image(image), tmp_path / "core")
    finally:
        os.umask(umask)
    st = os.stat(tmp_path / "core")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()


def test_an_existing_target_is_refused_by_name_and_left_alone(image: bytes, tmp_path: Path) -> None:
    target = tmp_path / "core"
    target.write_bytes(b"another image")
    with pytest.raises(ExportError, match=f"{target} exists; an export never replaces a file"):
        export_image(open_image(image), target)
    assert target.read_bytes() == b"another image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core"]


def test_a_symlink_as_target_is_refused_and_not_followed(image: bytes, tmp_path: Path) -> None:
    (tmp_path / "core").symlink_to(tmp_path / "elsewhere")  # dangling
    with pytest.raises(ExportError, match="exists"):
        export_image(open_image(image), tmp_path / "core")
    assert not (tmp_path / "elsewhere").exists()


def test_a_checksum_failure_leaves_no_file(image: bytes, tmp_path: Path) -> None:
    bad = bytearray(image)
    bad[layout(image).payload_at(image, 2) + 3] ^= 1
    with pytest.raises(ImageError, match="chunk data checksum mismatch"):
        export_image(open_image(bad), tmp_path / "core")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_an_export_error_naming_it(image: bytes, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=f"cannot create a file in {tmp_path / 'no'}"):
        export_image(open_image(image), tmp_path / "no" / "core")


def test_a_target_made_by_someone_else_while_exporting_is_not_replaced(
    image: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between the first check and publishing: simulated by a link
    that finds the name taken (a mock: two writers cannot be timed here)."""
    target = tmp_path / "core"
    real_link = os.link

    def link_after_someone_else(src: Path, dst: Path, **kwargs: object) -> None:
        Path(dst).write_bytes(b"theirs")
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export_module.os, "link", link_after_someone_else)
    with pytest.raises(ExportError, match="exists"):
        export_image(open_image(image), target)
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core"]


def test_without_hard_links_the_export_is_renamed_into_place(
    image: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without hard links (vfat) answers link(2) with EPERM; a
    mock stands in for one (none can be mounted here without root tools)."""

    def no_links(src: Path, dst: Path, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(export_module.os, "link", no_links)
    export_image(open_image(image), tmp_path / "core")
    assert (tmp_path / "core").read_bytes() == core_of(image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core"]
