"""The lab kernel: built by kernel/build.sh, cached outside the checkout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/kexechib-kernel")

# kexechibd/lab/kernel.py -> the checkout's top directory.
_TOP = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = _TOP / "kernel" / "build.sh"


class KernelBuildError(RuntimeError):
    """kernel/build.sh failed or is missing."""


def cache_root() -> Path:
    """Where the lab keeps kernels, unpacked packages and other build products."""
    return Path(os.environ.get("KEXECHIB_KERNEL_CACHE", str(DEFAULT_CACHE)))


def lab_kernel(build: bool = True) -> Path:
    """Path of the lab bzImage.

    `KEXECHIB_LAB_KERNEL` overrides it. Otherwise kernel/build.sh finds it in the
    cache or, when `build` is true, builds it (minutes, the first time only).
    """
    override = os.environ.get("KEXECHIB_LAB_KERNEL")
    if override:
        return Path(override)
    if not BUILD_SCRIPT.exists():
        raise KernelBuildError(f"{BUILD_SCRIPT} is missing (not a source checkout?)")
    cached = subprocess.run(
        [str(BUILD_SCRIPT), "--path"], capture_output=True, text=True, check=False
    )
    if cached.returncode == 0:
        return Path(cached.stdout.strip())
    if not build:
        raise KernelBuildError("the lab kernel is not built; run `make lab-kernel`")
    built = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if built.returncode != 0:
        raise KernelBuildError(f"{BUILD_SCRIPT} failed with status {built.returncode}")
    return Path(built.stdout.strip().splitlines()[-1])
