"""Debian's stock kernel refuses preserve-context loads: the capability fact the
daemon's probe must report there (no CONFIG_KEXEC_JUMP -> EINVAL).

The stock kernel has virtio, 9p and fw_cfg as modules, so this guest stays in
the RAM root of the lab initramfs (kexechib.lab.root=none) and the script and
a kernel to load travel inside the initramfs. docs/lab.md says how the
daemon's own (Python) probe could run there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kexechibd.lab import GuestSpec, run_guest
from kexechibd.lab.debs import stock_kernel
from kexechibd.lab.initramfs import build_initramfs, kexec_path

pytestmark = pytest.mark.lab

PROBE = r"""
say() { echo "KEXECHIB-LAB $*"; }
jump=$(grep -c '^CONFIG_KEXEC_JUMP=y' /stock.config)
kexec --load-preserve-context --mem-min=0x100000 --mem-max=0x7ffffff /bzImage 2>/tmp/err
rc=$?
cat /tmp/err
einval=$(grep -c 'Invalid argument' /tmp/err)
say "probe load_rc=$rc einval=$einval config_jump=$jump loaded=$(cat /sys/kernel/kexec_loaded)"
kexec -l /bzImage --append=console=ttyS0 2>/tmp/err
say "plain load_rc=$? loaded=$(cat /sys/kernel/kexec_loaded)"
"""


def test_stock_debian_kernel_refuses_preserve_context_with_einval(lab: Path, workdir: Path) -> None:
    stock = stock_kernel()
    initrd = workdir / "probe.cpio"
    initrd.write_bytes(
        build_initramfs(
            {"sbin/kexec": kexec_path()},
            {
                "lab/probe.sh": PROBE.encode(),
                "lab/bzImage": lab.read_bytes(),
                "lab/stock.config": (stock / "config").read_bytes(),
            },
        )
    )
    result = run_guest(
        GuestSpec(
            command="",
            kernel=stock / "vmlinuz",
            initrd=initrd,
            memory_mib=512,
            append="kexechib.lab.root=none kexechib.lab.run=/probe.sh",
            name="stock",
        ),
        workdir,
    )
    assert result.exit_status == 0, result.describe()
    probe = result.marker("probe")
    assert probe is not None, result.describe()
    assert probe.fields == {"load_rc": "255", "einval": "1", "config_jump": "0", "loaded": "0"}
    plain = result.marker("plain")
    assert plain is not None and plain.fields == {"load_rc": "0", "loaded": "1"}
