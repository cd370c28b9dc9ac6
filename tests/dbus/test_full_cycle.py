"""The full cycle driven only over D-Bus, every kernel's daemon a real
process on the machine model: ``busctl call … Hibernate`` in A; the save in
B; power off; a fresh daemon in C resumes; the original ``busctl`` call
returns success after resume, A's memory is what it was, and
``PrepareForHibernate`` went true, then false."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from kexechibd.model.bzimage import make_bzimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import in_use_digest, populate
from tests.dbus.buses import TestBus
from tests.dbus.conftest import Signals, eventually
from tests.sizes import KIB, MIB

DAEMON = [sys.executable, "-m", "kexechibd.daemon"]
REPO = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, machine: Machine) -> Path:
    (tmp / "vmlinuz-b").write_bytes(make_bzimage(kernel_size=128 * KIB, init_size=1 * MIB))
    (tmp / "initrd-b").write_bytes(b"")
    conf = tmp / "kexechibd.conf"
    conf.write_text(
        f"[daemon]\nbackend = model\nmodel_dir = {machine.dir}\n\n"
        f"[image]\nlocation = {tmp / 'image'}\ncompression = zstd\nlevel = 1\n\n"
        f"[saver]\nkernel = {tmp / 'vmlinuz-b'}\ninitrd = {tmp / 'initrd-b'}\n"
        "window = 64M@256M\n"
    )
    return conf


async def run_oneshot(conf: Path) -> subprocess.CompletedProcess[str]:
    """What B's and C's boot does: kexechibd --oneshot (no bus needed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return await asyncio.to_thread(
        subprocess.run,
        [*DAEMON, "--oneshot", f"--config={conf}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


async def test_busctl_hibernate_returns_after_power_off_and_resume(
    system_bus: TestBus, signals: Signals, tmp_path: Path
) -> None:
    machine = Machine.create(tmp_path / "machine", ram=512 * MIB)
    machine.power_on()
    with ModelKernel(machine) as a:
        populate(a, pages=8_000, seed=11)
    before = in_use_digest(machine)
    conf = write_config(tmp_path, machine)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon_a = await asyncio.create_subprocess_exec(
        *DAEMON,
        f"--bus={system_bus.address}",
        f"--config={conf}",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: system_bus.has_owner("org.kexechib1"), timeout=30)
        busctl = await asyncio.create_subprocess_exec(
            "busctl",
            f"--address={system_bus.address}",
            "--timeout=600",
            "call",
            "org.kexechib1",
            "/org/kexechib1",
            "org.kexechib1.Manager",
            "Hibernate",
            "a{sv}",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await eventually(lambda: machine.running not in (None, 1), timeout=60)
        b = await run_oneshot(conf)
        assert b.returncode == 0, b.stderr
        assert "image committed" in b.stderr
        assert machine.power == "off"
        assert busctl.returncode is None, "Hibernate replied while A was frozen"

        machine.power_on()
        c = await run_oneshot(conf)
        assert c.returncode == 0, c.stderr
        assert "role restorer" in c.stderr

        _, err = await asyncio.wait_for(busctl.communicate(), 120)
        assert busctl.returncode == 0, err.decode()
        assert machine.running == 1
        assert in_use_digest(machine) == before
        await eventually(lambda: signals.prepare_for_hibernate == [True, False])
    finally:
        daemon_a.terminate()
        await daemon_a.wait()
        machine.close()
