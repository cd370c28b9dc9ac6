"""The built initramfs on Debian's stock kernel, whose disk drivers are
modules: B's /init must load virtio_pci and virtio_blk (and what they need)
before the image disk appears.

The stock kernel has no CONFIG_KEXEC_JUMP (test_stock_kernel.py), so it
cannot be a real kernel B; this boots it directly, as B's kernel would boot,
with `kexechib.role=save` but without the purgatory's
`kexec_jump_back_entry=`: the saver starts, finds that it was not reached by
a jump and refuses, and B stays up.  The kernel package is downloaded and
unpacked into the lab cache (its modules too), and its modules.dep made by
Debian's depmod (kmod, unpacked likewise: the package ships none; the
kernel's postinst makes it).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from kexechibd.initramfs.build import build
from kexechibd.lab import qemu_available
from kexechibd.lab.debs import stock_kernel, unpacked
from kexechibd.lab.qemu import Guest, GuestResult, GuestSpec
from kexechibd.lab.userspace import image_disk

pytestmark = pytest.mark.lab


def stock_tree() -> tuple[str, Path]:
    """(release, unpacked package) of Debian's current stock kernel, with modules.dep."""
    package = (stock_kernel() / "package").read_text().split()[0]
    tree = unpacked(package)
    (modules,) = (tree / "lib" / "modules").iterdir()
    if not (modules / "modules.dep").exists():
        kmod = unpacked("kmod") / "bin" / "kmod"
        subprocess.run(["depmod", "-b", str(tree), modules.name], executable=str(kmod), check=True)
    return modules.name, tree


def uptime(result: GuestResult, text: str) -> float:
    line = next(line.text for line in result.lines if text in line.text)
    match = re.search(r"\(uptime ([0-9.]+) s\)", line)
    assert match, line
    return float(match.group(1))


@pytest.fixture(scope="module")
def stock_b(tmp_path_factory: pytest.TempPathFactory) -> tuple[GuestResult, Path]:
    problem = qemu_available()
    if problem:
        pytest.skip(reason=f"kernel lab unavailable: {problem}")
    release, tree = stock_tree()
    workdir = tmp_path_factory.mktemp("stock-b")
    initrd = build(
        workdir / f"initrd.img-{release}",
        release=release,
        kernel=tree / "boot" / f"vmlinuz-{release}",
        image_location=Path("/nonexistent/image"),
        modules_root=tree / "lib" / "modules",
    ).path
    spec = GuestSpec(
        command="",
        kernel=tree / "boot" / f"vmlinuz-{release}",
        initrd=initrd,
        append="kexechib.role=save",
        disks=(image_disk(workdir / "disk.raw", 64),),
        timeout=300,
        name="stock-b",
    )

    async def boot() -> GuestResult:
        async with Guest(spec, workdir / "qemu") as guest:
            await guest.wait_for("kexechibd --oneshot ended", timeout=280)
            await guest.kill()
            return await guest.wait()

    return asyncio.run(boot()), initrd


def test_b_loads_the_disk_drivers_of_a_modular_kernel(stock_b: tuple[GuestResult, Path]) -> None:
    result, _ = stock_b
    assert "kexechib-init: kernel B is up" in result.log, result.describe(80)
    assert "kexechib-init: cannot" not in result.log, result.describe(80)
    assert re.search(r"kexechib-init: loaded \d+ of \d+ kernel modules", result.log)
    assert re.search(r"virtio_blk virtio\d+: \[vda\]", result.log), result.describe(80)


def test_the_saver_runs_and_refuses_without_a_jump(stock_b: tuple[GuestResult, Path]) -> None:
    result, _ = stock_b
    assert "kexechibd: INFO: role saver" in result.log, result.describe(80)
    assert "kexec_jump_back_entry= is missing" in result.log
    assert "kernel B stays up" in result.log
    up, modules = uptime(result, "kernel B is up"), uptime(result, "kernel modules")
    saver = uptime(result, "starting kexechibd")
    print(f"\nstock kernel, uptime: init up {up} s, modules {modules} s, saver starts {saver} s")
