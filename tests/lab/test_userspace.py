"""The guest userspace's pieces that need no QEMU: the daemon configuration
it carries, where Debian's modules go, and the console records the tests
read (kexechibd/lab/userspace.py, qemu.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kexechibd import config
from kexechibd.initramfs.archive import Cpio
from kexechibd.initramfs.python import PYC_TAG, guest_module
from kexechibd.lab import GuestResult, LogLine
from kexechibd.lab.userspace import STDLIB, _cached, bus_config, lab_config


def test_lab_config_drives_the_linux_backend_without_enabling_real_kexec(tmp_path: Path) -> None:
    # Real kexec is enabled by kexechib.enable_kexec=1 on a guest's command
    # line only: a configuration file never enables it (DESIGN §9).
    path = tmp_path / "kexechibd.conf"
    path.write_text(lab_config())
    loaded = config.load(path)
    assert loaded.daemon.backend == "linux"
    assert loaded.kexec.enable_real_kexec is False
    assert "enable_real_kexec" not in lab_config()
    assert str(loaded.saver.window) == "192M@256M"
    assert "kexechib.lab.run=/usr/lib/kexechib-lab/saver.sh" in loaded.saver.cmdline


def test_the_bus_includes_kexechibd_s_policy_directory() -> None:
    text = bus_config()
    assert "<includedir>system.d</includedir>" in text
    assert "<listen>unix:path=/run/dbus/system_bus_socket</listen>" in text


def test_debian_modules_go_in_compiled_where_debian_compiled_them() -> None:
    name, host = guest_module(STDLIB / "os.py")
    assert name == "usr/lib/python3.11/os.pyc"
    assert host == STDLIB / "__pycache__" / f"os.{PYC_TAG}.pyc"


def test_a_module_without_a_compiled_form_goes_in_as_source(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    assert guest_module(source) == (str(source).lstrip("/"), source)


def test_archive_entries_keep_the_host_file_s_mtime(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    archive = Cpio()
    archive.host_file("lab/module.py", source)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive.to_bytes(), cwd=out, check=True)
    assert int((out / "lab/module.py").stat().st_mtime) == int(source.stat().st_mtime)


def test_records_are_the_json_after_a_marker_kind() -> None:
    lines = (
        LogLine(1.0, 'KEXECHIB-LAB probe {"missing": ["a b"], "kexec": true}'),
        LogLine(1.1, "KEXECHIB-LAB probe-done status=0"),
        LogLine(1.2, "noise KEXECHIB-LAB vector [1, 2]"),
    )
    result = GuestResult(0, lines, Path("/nonexistent"), False, None, 1.0)
    assert result.records("probe") == [{"missing": ["a b"], "kexec": True}]
    assert result.records("vector") == [[1, 2]]
    assert result.records("probe-done") == []


def test_archives_are_built_once_and_those_unused_for_a_day_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEXECHIB_KERNEL_CACHE", str(tmp_path))
    old = _cached("layer", "old", lambda: [b"old"])
    recent = _cached("layer", "recent", lambda: [b"recent"])
    assert _cached("layer", "recent", lambda: [b"built again"]).read_bytes() == b"recent"
    os.utime(old, (0, 0))
    new = _cached("layer", "new", lambda: [b"new"])
    assert not old.exists() and recent.exists() and new.read_bytes() == b"new"
