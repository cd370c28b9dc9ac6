"""Kernel B's initramfs (kexechibd/initramfs/): what goes in, the order of
its kernel modules, the manifest and when it is stale.  The pure parts
with made-up inputs (a modules.dep and a sysfs written here); the builder
itself on this host's python3 in test_saver_build.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from kexechibd import config
from kexechibd.bootproto import kernel_banner
from kexechibd.initramfs import kmod
from kexechibd.initramfs.archive import Cpio
from kexechibd.initramfs.check import check_saver
from kexechibd.initramfs.manifest import (
    NAME,
    Installed,
    Manifest,
    package_hash,
    problems,
    read_manifest,
)
from kexechibd.initramfs.python import layout_from_probe, package_files

V = "kernel/drivers/virtio"
MODULES_DEP = f"""\
kernel/drivers/block/virtio_blk.ko.xz: {V}/virtio_ring.ko.xz {V}/virtio.ko.xz
{V}/virtio_pci.ko.xz: {V}/virtio_pci_modern_dev.ko.xz {V}/virtio_ring.ko.xz {V}/virtio.ko.xz
{V}/virtio_pci_modern_dev.ko.xz:
{V}/virtio_ring.ko.xz: {V}/virtio.ko.xz
{V}/virtio.ko.xz:
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz
kernel/drivers/nvme/host/nvme-core.ko.xz:
kernel/drivers/ata/ahci.ko.xz: kernel/drivers/ata/libahci.ko.xz kernel/drivers/ata/libata.ko.xz
kernel/drivers/ata/libahci.ko.xz: kernel/drivers/ata/libata.ko.xz
kernel/drivers/ata/libata.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz
kernel/drivers/scsi/scsi_mod.ko.xz:
"""


def test_modules_come_after_what_they_depend_on_each_once() -> None:
    deps = kmod.parse_modules_dep(MODULES_DEP)
    order = kmod.resolve(["virtio_blk", "virtio_pci", "nvme"], deps, frozenset())
    names = [kmod.module_name(p) for p in order]
    assert names == [
        "virtio",
        "virtio_ring",
        "virtio_blk",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "nvme_core",
        "nvme",
    ]


def test_built_in_and_unknown_modules_are_left_out() -> None:
    deps = kmod.parse_modules_dep(MODULES_DEP)
    builtin = kmod.parse_builtin("kernel/drivers/scsi/scsi_mod.ko\n")
    order = kmod.resolve(["ahci", "sd_mod", "no_such_driver"], deps, builtin)
    assert [kmod.module_name(p) for p in order] == ["libata", "libahci", "ahci"]


def test_a_dependency_cycle_in_modules_dep_is_an_error() -> None:
    deps = kmod.parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(kmod.ModuleError, match="cycle"):
        kmod.resolve(["a"], deps, frozenset())


def test_a_malformed_modules_dep_line_is_named() -> None:
    with pytest.raises(kmod.ModuleError, match="line 2"):
        kmod.parse_modules_dep("a.ko:\nnonsense\n")


# vda1 on a virtio disk: the devices from the bus down, with their drivers.
VIRTIO_PARTITION: tuple[tuple[str, str | None], ...] = (
    ("pci0000:00", None),
    ("0000:00:04.0", "virtio_pci"),
    ("virtio1", "virtio_blk"),
    ("block", None),
    ("vda", None),
    ("vda1", None),
)


def _fake_sysfs(root: Path, dev: int, *chain: tuple[str, str | None]) -> None:
    """A sysfs under `root` in which block device `dev` sits below the
    devices of `chain` ((directory, module of its driver or None), top first)."""
    here = root / "devices"
    for directory, module in chain:
        here = here / directory
        here.mkdir(parents=True)
        if module is not None:
            driver = root / "bus" / "drivers" / module
            driver.mkdir(parents=True, exist_ok=True)
            (root / "module" / module).mkdir(parents=True, exist_ok=True)
            (driver / "module").symlink_to(root / "module" / module)
            (here / "driver").symlink_to(driver)
    (root / "dev" / "block").mkdir(parents=True)
    (root / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}").symlink_to(here)


def test_the_drivers_of_the_image_disk_come_from_sysfs_disk_first(tmp_path: Path) -> None:
    image = tmp_path / "var" / "image"  # not there yet: its directory's disk counts
    image.parent.mkdir()
    sysfs = tmp_path / "sys"
    _fake_sysfs(
        sysfs,
        os.stat(image.parent).st_dev,
        *VIRTIO_PARTITION,
    )
    assert kmod.drivers_of(image, sysfs) == ["virtio_blk", "virtio_pci"]


def test_the_drivers_under_a_luks_root_come_from_the_devices_it_is_built_on(
    tmp_path: Path,
) -> None:
    image = tmp_path / "var" / "image"
    image.parent.mkdir()
    sysfs = tmp_path / "sys"
    disk = os.makedev(259, 77)  # vda1, under the mapping: a number of its own
    _fake_sysfs(
        sysfs,
        disk,
        *VIRTIO_PARTITION,
    )
    mapping = sysfs / "devices" / "virtual" / "block" / "dm-0"
    (mapping / "slaves").mkdir(parents=True)
    (mapping / "slaves" / "vda1").symlink_to(sysfs / "dev" / "block" / "259:77")
    root = os.stat(image.parent).st_dev
    (sysfs / "dev" / "block" / f"{os.major(root)}:{os.minor(root)}").symlink_to(mapping)
    assert kmod.drivers_of(image, sysfs) == ["virtio_blk", "virtio_pci"]


def test_a_disk_unknown_to_sysfs_has_no_drivers(tmp_path: Path) -> None:
    (tmp_path / "sys" / "dev" / "block").mkdir(parents=True)
    assert kmod.drivers_of(tmp_path, tmp_path / "sys") == []


def test_compressed_modules_are_named_and_stored_without_their_suffix() -> None:
    from kexechibd.initramfs.build import kmod_stored_name

    assert kmod.module_name("kernel/drivers/nvme/host/nvme-core.ko.zst") == "nvme_core"
    assert kmod_stored_name("kernel/a/b.ko.xz") == "kernel/a/b.ko"


# ------------------------------------------------------------ python


def test_dependencies_are_whole_top_level_packages_outside_the_stdlib(tmp_path: Path) -> None:
    package = tmp_path / "src" / "kexechibd"
    site = "/usr/lib/python3/dist-packages"
    layout = layout_from_probe(
        {
            "executable": "/usr/bin/python3.11",
            "version": "3.11.2",
            "cache_tag": "cpython-311",
            "stdlib": "/usr/lib/python3.11",
            "path": ["/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload", site],
            "files": [
                "/usr/lib/python3.11/json/__init__.py",
                "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
                f"{package}/daemon/main.py",
                f"{site}/dbus_next/aio/message_bus.py",
                f"{site}/dbus_next/__init__.py",
                f"{site}/_cffi_backend.cpython-311-x86_64-linux-gnu.so",
                f"{site}/gi/__init__.py",  # dbus-next's optional GLib loop
                "<frozen zipimport>",
            ],
        },
        package,
    )
    assert layout.dependencies == (
        Path(site) / "_cffi_backend.cpython-311-x86_64-linux-gnu.so",
        Path(site) / "dbus_next",
    )
    # kexechibd goes where Debian's python3 finds it, wherever it came from.
    assert layout.site == Path(site)


def test_kexechibds_files_in_b_leave_out_the_lab_the_model_and_the_demo(tmp_path: Path) -> None:
    for name in ("__init__.py", "demo.py", "lab/qemu.py", "model/cpu.py", "cycle/saver.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "cycle" / "__pycache__").mkdir()
    (tmp_path / "cycle" / "__pycache__" / "saver.cpython-311.pyc").write_text("")
    rel = [str(p.relative_to(tmp_path)) for p in package_files(tmp_path)]
    assert rel == ["__init__.py", "cycle/saver.py"]


# ------------------------------------------------------------ the manifest


def manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = {
        "kexechibd_version": "0.1.0",
        "package_hash": package_hash([("a.py", b"x")]),
        "kernel_release": "6.1.0-13-amd64",
        "kernel_version": "6.1.0-13-amd64 (debian-kernel@lists.debian.org) #1 SMP Debian 6.1.55-1",
        "python": "3.11.2",
        "modules": ("kernel/drivers/block/virtio_blk.ko",),
        "built": 1.0,
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def installed(**changes: str) -> Installed:
    m = manifest()
    fields = {
        "kexechibd_version": m.kexechibd_version,
        "package_hash": m.package_hash,
        "kernel_release": m.kernel_release,
        "kernel_version": m.kernel_version,
    }
    fields.update(changes)
    return Installed(**fields)


def test_an_initramfs_built_from_what_is_installed_fits() -> None:
    assert problems(Path("/i"), manifest(), installed()) == []


def test_another_kexechibd_makes_it_stale_and_names_the_command() -> None:
    (problem,) = problems(
        Path("/i"), manifest(), installed(kexechibd_version="0.2.0", package_hash="other")
    )
    assert "holds kexechibd 0.1.0 but kexechibd 0.2.0 is installed" in problem
    assert "kexechibctl saver build" in problem
    (problem,) = problems(Path("/i"), manifest(), installed(package_hash="other"))
    assert "the installed kexechibd's files have changed since" in problem


def test_another_kernel_release_makes_it_stale() -> None:
    (problem,) = problems(Path("/i"), manifest(), installed(kernel_release="6.1.0-14-amd64"))
    assert "built for kernel 6.1.0-13-amd64 but kernel B is 6.1.0-14-amd64" in problem
    assert "--kernel-version 6.1.0-14-amd64" in problem


def test_another_build_of_the_same_release_makes_it_stale() -> None:
    newer = manifest().kernel_version.replace("6.1.55-1", "6.1.55-2")
    (problem,) = problems(Path("/i"), manifest(), installed(kernel_version=newer))
    assert "another build of kernel 6.1.0-13-amd64" in problem


def test_an_initramfs_without_a_manifest_is_not_checked() -> None:
    assert problems(Path("/i"), None, installed(package_hash="other")) == []


def test_the_manifest_is_read_from_the_archives_head() -> None:
    archive = Cpio()
    archive.file(NAME, manifest().to_json())
    archive.file("usr/big", bytes(1 << 20))
    assert read_manifest(archive.to_bytes()[:4096]) == manifest()
    other = Cpio()
    other.file("init", b"#!/bin/sh\n")
    assert read_manifest(other.to_bytes()) is None
    assert read_manifest(b"\x1f\x8b compressed") is None


def test_a_missing_initramfs_names_the_command_that_builds_it(tmp_path: Path) -> None:
    result = check_saver(tmp_path / "vmlinuz", tmp_path / "initrd.img")
    assert result.summary.endswith("missing")
    (problem,) = result.problems
    assert "`kexechibctl saver build`" in problem


def test_a_custom_initramfs_is_accepted_unchecked(tmp_path: Path) -> None:
    custom = Cpio()
    custom.file("init", b"#!/bin/sh\n")
    (tmp_path / "initrd.img").write_bytes(custom.to_bytes())
    result = check_saver(tmp_path / "vmlinuz", tmp_path / "initrd.img")
    assert result.problems == () and "custom" in result.summary


def test_an_initramfs_of_another_kexechibd_is_stale(tmp_path: Path) -> None:
    archive = Cpio()
    archive.file(NAME, manifest(package_hash="0" * 64).to_json())
    (tmp_path / "initrd.img").write_bytes(archive.to_bytes())
    result = check_saver(tmp_path / "vmlinuz", tmp_path / "initrd.img")
    assert "stale" in result.summary
    assert any("kexechibctl saver build" in p for p in result.problems)


# ------------------------------------------------------------ paths


def test_the_default_paths_are_per_kernel_release() -> None:
    kernel, initrd = config.Config().saver.files("6.1.0-13-amd64")
    assert kernel == Path("/boot/vmlinuz-6.1.0-13-amd64")
    assert initrd == Path("/var/lib/kexechib/saver/initrd.img-6.1.0-13-amd64")


def test_the_kernel_banner_is_read_from_the_setup_header() -> None:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x600)
    banner = b"6.1.0-kexechib (kexechib@lab) #414cec2ef88a86fc SMP\0"
    image[0x800 : 0x800 + len(banner)] = banner
    assert kernel_banner(bytes(image)) == banner[:-1].decode()
    assert kernel_banner(b"not a kernel") == ""


def test_b_links_a_partition_label_itself_without_udev(tmp_path: Path) -> None:
    from kexechibd.initramfs.init import link_partlabel

    sys_block, links = tmp_path / "sys", tmp_path / "dev" / "disk" / "by-partlabel"
    for name, label in (("nvme0n1", None), ("nvme0n1p3", "kexechib-image")):
        (sys_block / name).mkdir(parents=True)
        text = f"MAJOR=259\nDEVNAME={name}\nDEVTYPE=partition\n"
        (sys_block / name / "uevent").write_text(text + (f"PARTNAME={label}\n" if label else ""))
    assert not link_partlabel("swap", sys_block, links)
    assert link_partlabel("kexechib-image", sys_block, links)
    assert os.readlink(links / "kexechib-image") == "../../nvme0n1p3"


def test_status_says_where_b_s_initramfs_is_missing_and_what_builds_it(tmp_path: Path) -> None:
    from kexechibd.ctl.saver import summary

    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[saver]\ninitrd = {tmp_path}/initrd.img-{{release}}\n")
    line = summary(conf)
    assert f"{tmp_path}/initrd.img-{os.uname().release}: missing" in line
    assert "`kexechibctl saver build`" in line


def test_b_s_init_refuses_to_run_anywhere_but_as_pid_1() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "from kexechibd.initramfs.init import main; main()"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1 and "only kernel B's init" in result.stderr
