"""How kexechibd tells logind whether it may hibernate: the text of the
runtime sleep.conf drop-in (a pure function of kexechibd's verdict) and its
writer (atomic, 0644, only when the verdict changes)."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

import pytest

from kexechibd.sleepconf import NAME, RUNTIME_PATH, sleep_conf_text, write_sleep_conf


def settings(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return dict(parser["Sleep"])


def test_the_runtime_file_has_the_shipped_files_name_so_it_hides_it() -> None:
    # systemd reads one file per name: /etc before /run before /usr/lib.
    assert Path("/run/systemd/sleep.conf.d") / NAME == RUNTIME_PATH
    assert (Path(__file__).resolve().parents[1] / "systemd/sleep.conf.d" / NAME).is_file()


@pytest.mark.parametrize(
    "unavailable, allow",
    [
        ("", "yes"),
        ("kexec_load is disabled (kernel.kexec_load_disabled=1)", "no"),
        ("a valid image of an earlier boot is waiting at /var/lib/kexechib/image", "no"),
        ("/srv/image is not on the root filesystem", "no"),
    ],
)
def test_logind_may_hibernate_exactly_when_kexechibd_would(unavailable: str, allow: str) -> None:
    assert settings(sleep_conf_text(unavailable)) == {
        "AllowHibernation": allow,
        "AllowHybridSleep": "no",
        "AllowSuspendThenHibernate": "no",
    }


def test_the_reason_is_written_beside_the_refusal_on_one_line() -> None:
    text = sleep_conf_text("the kernel lacks\nCONFIG_KEXEC_JUMP")
    assert "# kexechibd cannot hibernate: the kernel lacks CONFIG_KEXEC_JUMP\n" in text
    settings(text)  # a newline in the reason cannot break the file


def test_the_writer_makes_the_directory_and_a_file_anyone_may_read(tmp_path: Path) -> None:
    path = tmp_path / "run/systemd/sleep.conf.d" / NAME
    old = os.umask(0o077)  # the daemon's
    try:
        assert write_sleep_conf("text\n", path)
    finally:
        os.umask(old)
    assert path.read_text() == "text\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.parent.stat().st_mode & 0o777 == 0o755


def test_the_writer_leaves_an_unchanged_verdict_alone(tmp_path: Path) -> None:
    path = tmp_path / NAME
    assert write_sleep_conf("a\n", path)
    inode = path.stat().st_ino
    assert not write_sleep_conf("a\n", path)
    assert path.stat().st_ino == inode
    assert write_sleep_conf("b\n", path)
    assert path.read_text() == "b\n"
    assert [p.name for p in tmp_path.iterdir()] == [NAME]  # no temporary file left
