"""The builder of kernel B's initramfs on this host: the real python3
(/usr/bin/python3, Debian's, with the daemon's dependencies from Debian's
packages, as `make setup` installs them) and this checkout's kexechibd.
Kernel modules come from a /lib/modules tree written here (this host has
none).  That B really boots the archive: tests/lab/test_saver_initramfs.py."""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kexechibd import cpio
from kexechibd.ctl.main import main as ctl_main
from kexechibd.initramfs.build import PYTHON, build
from kexechibd.initramfs.check import check_saver
from kexechibd.initramfs.manifest import NAME, read_manifest

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(), reason=f"{PYTHON} is missing (Debian's python3 builds B's initramfs)"
)

RELEASE = "6.1.0-99-test"
MODULE = b"\x7fELF a pretend module"


def modules_tree(root: Path) -> Path:
    """/lib/modules/RELEASE with virtio_blk (xz) and what it depends on."""
    top = root / RELEASE
    virtio = top / "kernel/drivers/virtio"
    virtio.mkdir(parents=True)
    (top / "kernel/drivers/block").mkdir(parents=True)
    for path in ("kernel/drivers/block/virtio_blk", "kernel/drivers/virtio/virtio"):
        (top / f"{path}.ko.xz").write_bytes(lzma.compress(MODULE + path.encode()))
    (top / "modules.dep").write_text(
        "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz\n"
        "kernel/drivers/virtio/virtio.ko.xz:\n"
    )
    (top / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("saver")
    output = tmp / "out" / f"initrd.img-{RELEASE}"
    build(
        output,
        release=RELEASE,
        kernel=None,
        image_location=tmp / "image",
        modules_root=modules_tree(tmp / "modules"),
    )
    return output


def entries(path: Path) -> dict[str, cpio.CpioEntry]:
    return {e.name: e for e in cpio.read_newc(path.read_bytes())}


def test_the_archive_starts_with_its_manifest(built: Path) -> None:
    first = next(cpio.read_newc(built.read_bytes()))
    assert first.name == NAME
    manifest = read_manifest(built.read_bytes()[:65536])
    assert manifest is not None and manifest.kernel_release == RELEASE


def test_it_holds_init_the_interpreter_kexechibd_and_its_dependencies(built: Path) -> None:
    names = entries(built)
    assert stat.S_IMODE(names["init"].mode) == 0o755
    assert b"kexechibd.initramfs.init" in names["init"].data
    assert stat.S_ISCHR(names["dev/console"].mode)
    assert stat.S_ISCHR(names["dev/urandom"].mode)  # Python's hash seed, before devtmpfs
    site = "usr/lib/python3/dist-packages"
    for needed in (
        "usr/bin/python3",
        f"{site}/kexechibd/cycle/saver.pyc",
        f"{site}/kexechibd/daemon/main.pyc",
        f"{site}/elftools/__init__.pyc",
        f"{site}/zstandard/__init__.pyc",
        f"{site}/dbus_next/__init__.pyc",  # kexechibd.daemon.main imports it
        "usr/lib/python3.11/json/__init__.pyc",
    ):
        assert needed in names, needed
    assert not [n for n in names if "/kexechibd/" in n and n.endswith(".py")]  # sourceless
    assert not [n for n in names if "/kexechibd/lab/" in n or "/kexechibd/model/" in n]
    assert f"{site}/kexechibd/demo.pyc" not in names
    assert not [n for n in names if "/test/" in n or n.startswith(f"{site}/gi/")]
    assert any(n.startswith(("lib/", "lib64/", "usr/lib/x86_64")) and ".so" in n for n in names)


def test_kernel_modules_go_in_decompressed_after_their_dependencies(built: Path) -> None:
    manifest = read_manifest(built.read_bytes()[:65536])
    assert manifest is not None
    assert manifest.modules == (
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/block/virtio_blk.ko",
    )
    names = entries(built)
    blk = names[f"lib/modules/{RELEASE}/kernel/drivers/block/virtio_blk.ko"]
    assert blk.data == MODULE + b"kernel/drivers/block/virtio_blk"


def test_it_is_a_fresh_initramfs_for_the_installed_kexechibd(built: Path) -> None:
    result = check_saver(built.parent / "no-kernel", built)
    assert result.problems == () and ": ok" in result.summary


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_its_python3_imports_the_saver_in_a_chroot(built: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for entry in cpio.read_newc(built.read_bytes()):
        target = root / entry.name
        if entry.is_dir:
            target.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(entry.mode):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(entry.data.decode())
        elif entry.is_file:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(entry.data)
            target.chmod(stat.S_IMODE(entry.mode))
    code = (
        "import kexechibd.cycle.saver, kexechibd.daemon.main, kexechibd.kernel.linux, "
        "kexechibd.cycle.engine, kexechibd.initramfs.init, lz4.frame; print('imported')"
    )
    result = subprocess.run(
        [
            shutil.which("chroot") or "/usr/sbin/chroot",
            str(root),
            "/usr/bin/python3",
            "-I",
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin", "LANG": "C.UTF-8"},
    )
    assert result.stdout.strip() == "imported", result.stderr


def test_kexechibctl_saver_build_prints_size_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "initrd.img"
    config = tmp_path / "kexechibd.conf"
    config.write_text(f"[image]\nlocation = {tmp_path / 'image'}\n")
    argv = ["saver", "build", "--config", str(config), "--kernel-version", RELEASE]
    assert ctl_main([*argv, "--output", str(output)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{output}: ") and " MB, " in line and "built in " in line, line
    assert output.stat().st_mode & 0o777 == 0o644


def test_saver_remove_removes_what_saver_build_wrote_and_nothing_else(tmp_path: Path) -> None:
    from kexechibd.initramfs.archive import Cpio

    config = tmp_path / "kexechibd.conf"
    config.write_text(f"[saver]\ninitrd = {tmp_path}/initrd.img-{{release}}\n")
    argv = ["saver", "remove", "--config", str(config), "--kernel-version"]
    custom = tmp_path / "initrd.img-custom"
    custom.write_bytes(b"\x1f\x8b a distribution's initramfs")
    assert ctl_main([*argv, "custom"]) == 0 and custom.exists()
    ours = Cpio()
    ours.file(NAME, b'{"format": 1}')  # a manifest, even one of another format
    (tmp_path / f"initrd.img-{RELEASE}").write_bytes(ours.to_bytes())
    assert ctl_main([*argv, RELEASE]) == 1  # unreadable manifest: said, kept
    archive = build(
        tmp_path / f"initrd.img-{RELEASE}", release=RELEASE, kernel=None, image_location=tmp_path
    )
    assert ctl_main([*argv, RELEASE]) == 0 and not archive.path.exists()
    assert ctl_main([*argv, "gone"]) == 0
