"""Debian's real mkinitramfs, run so that nothing of the host's /boot is read
or written (tests/test_initramfs_hook.py says how).  Not a test module:
pytest does not collect it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = "6.1.0-kexechibtest"


def mkinitramfs(tmp_path: Path, config: Path, with_hook: bool = True) -> Path:
    conf = tmp_path / "initramfs-tools"
    shutil.copytree("/etc/initramfs-tools", conf)
    if with_hook:
        shutil.copy2(ROOT / "initramfs-tools/hooks/kexechibd", conf / "hooks/kexechibd")
        (conf / "scripts/local-premount").mkdir(parents=True, exist_ok=True)
        shutil.copy2(
            ROOT / "initramfs-tools/scripts/local-premount/kexechib",
            conf / "scripts/local-premount/kexechib",
        )
    out = tmp_path / "initrd.img"
    script = (
        "mount -t tmpfs tmpfs /boot && "
        f"echo CONFIG_RD_ZSTD=y > /boot/config-{RELEASE} && "
        f'exec mkinitramfs -d "{conf}" -o "{out}" {RELEASE}'
    )
    env = {
        **os.environ,
        "KEXECHIB_HOOK_PYTHONPATH": str(ROOT),
        "KEXECHIB_HOOK_CONFIG": str(config),
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out
