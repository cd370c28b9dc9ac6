"""Debian packages unpacked, not installed.

Some tools the lab needs are unpacked from their .deb into the cache instead of
being installed on the host: kexec-tools' package would make the host's own
reboots go through kexec (its debconf default), busybox-static conflicts with
busybox, and a stock kernel image is only wanted as a file. `apt-get download`
fetches the package, `dpkg-deb -x` unpacks it; both are cached by version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kexechibd.lab.cache import build_once
from kexechibd.lab.kernel import cache_root


class DebError(RuntimeError):
    """A package could not be found, downloaded or unpacked."""


def _candidate_version(package: str) -> str | None:
    out = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            return None if version == "(none)" else version
    return None


def package_version(package: str) -> str:
    """The version apt would download, after `apt-get update` if apt knows none."""
    version = _candidate_version(package)
    if version is None:
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"],
            check=True,
            capture_output=True,
        )
        version = _candidate_version(package)
    if version is None:
        raise DebError(f"apt knows no package {package!r}")
    return version


def _download(package: str, version: str, directory: Path) -> Path:
    """`apt-get download` of one version into ``directory``: its .deb."""
    # apt's sandbox user cannot write into a root-only temp dir.
    os.chmod(directory, 0o755)
    result = subprocess.run(
        ["apt-get", "download", f"{package}={version}"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    debs = list(directory.glob("*.deb"))
    if result.returncode != 0 or len(debs) != 1:
        raise DebError(f"apt-get download {package}={version} failed: {result.stderr}")
    return debs[0]


def unpacked(package: str) -> Path:
    """Directory holding the unpacked contents of `package` (candidate version)."""
    version = package_version(package)
    safe = f"{package}_{version}".replace(":", "%3a")
    root = cache_root() / "debs"
    target = root / safe

    def unpack() -> None:
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            deb = _download(package, version, Path(tmp))
            tree = Path(tmp) / "tree"
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            (tree / ".complete").write_text(f"{package} {version}\n")
            shutil.rmtree(target, ignore_errors=True)
            tree.rename(target)

    build_once(root, safe, (target / ".complete").exists, unpack)
    return target


def stock_kernel() -> Path:
    """Directory with Debian's current stock kernel: `vmlinuz` and its `config`.

    The package that linux-image-amd64 depends on is downloaded into the cache
    and only /boot is unpacked (the modules are not needed: see docs/lab.md).
    """
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    names = [
        line.split()[-1]
        for line in out.splitlines()
        if line.strip().startswith("Depends:") and "linux-image-" in line
    ]
    if not names:
        raise DebError("apt-cache depends linux-image-amd64 names no kernel package")
    package = names[0]
    version = package_version(package)
    target = cache_root() / "stock" / f"{package}_{version}".replace(":", "%3a")

    def unpack_boot() -> None:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            deb = _download(package, version, Path(tmp))
            tree = Path(tmp) / "tree"
            tree.mkdir()
            subprocess.run(
                f"dpkg-deb --fsys-tarfile {deb} | tar -x -C {tree} --wildcards './boot/*'",
                shell=True,
                check=True,
            )
            boot = tree / "boot"
            out_dir = Path(tmp) / "out"
            out_dir.mkdir()
            next(boot.glob("vmlinuz-*")).rename(out_dir / "vmlinuz")
            next(boot.glob("config-*")).rename(out_dir / "config")
            (out_dir / "package").write_text(f"{package} {version}\n")
            shutil.rmtree(target, ignore_errors=True)
            out_dir.rename(target)

    build_once(target.parent, target.name, (target / "vmlinuz").exists, unpack_boot)
    return target
