"""``kexechibctl saver build``: kernel B's initramfs from the installed system.

What goes in (DESIGN §6.x "Kernel B's initramfs"):

    /kexechib-saver.json            the manifest (first entry; manifest.py)
    /init                           kexechibd/initramfs/init.py's main
    /dev/console, urandom, null     init's output, Python's hash seed, before
                                    devtmpfs is mounted
    /usr/bin/python3.X, python3     the system's interpreter, and the shared
                                    libraries ldd names for it and for every
                                    C extension that goes in
    /usr/lib/python3.X              its stdlib, pruned (python.py), sourceless
    <site>/…                        what kexechibd imports from outside the
                                    stdlib, whole packages (python.probe)
    <site>/kexechibd                kexechibd itself, compiled, sourceless;
                                    not the lab, the model or the demo
    /lib/modules/<release>/…        disk drivers that are modules (kmod.py),
                                    decompressed, when the kernel has them

It is written uncompressed: the kernel unpacks newc fastest without a
decompressor, and under TCG decompression is what costs (docs/lab.md).
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import kexechibd
from kexechibd.bootproto import kernel_banner
from kexechibd.errors import Failed
from kexechibd.image import devmapper
from kexechibd.initramfs import kmod
from kexechibd.initramfs.archive import Cpio, Sink, add_libraries, add_programs
from kexechibd.initramfs.manifest import NAME as MANIFEST_NAME
from kexechibd.initramfs.manifest import Manifest, package_hash
from kexechibd.initramfs.python import (
    PythonLayout,
    guest_module,
    package_files,
    probe,
    stdlib_files,
    tree_files,
)

PYTHON = Path("/usr/bin/python3")
MODULES_ROOT = Path("/lib/modules")
INIT = b"#!/usr/bin/python3 -I\nfrom kexechibd.initramfs.init import main\n\nmain()\n"


@dataclass(frozen=True)
class Built:
    path: Path
    size: int
    seconds: float
    files: int
    manifest: Manifest


def installed_package() -> Path:
    """The kexechibd package that runs this (the one to put in B)."""
    return Path(kexechibd.__file__).resolve().parent


def package_sources(package: Path) -> list[tuple[str, bytes]]:
    """(path relative to the package, contents) of what goes in: what the
    manifest's hash covers, here and when the daemon checks it."""
    return [(str(p.relative_to(package)), p.read_bytes()) for p in package_files(package)]


def banner_of(kernel: Path | None) -> str:
    if kernel is None:
        return ""
    try:
        with open(kernel, "rb") as f:
            return kernel_banner(f.read(64 << 10))
    except OSError:
        return ""


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def kernel_modules(release: str, image_location: Path, root: Path = MODULES_ROOT) -> list[str]:
    """The modules B loads, in order (paths under root/release as found)."""
    directory = root / release
    try:
        deps = kmod.parse_modules_dep((directory / "modules.dep").read_text())
    except FileNotFoundError:
        return []  # no modules for this release: its drivers are built in
    except OSError as e:
        raise Failed(f"cannot read {directory / 'modules.dep'}: {e.strerror}") from None
    try:
        builtin = kmod.parse_builtin((directory / "modules.builtin").read_text())
    except OSError:
        builtin = frozenset()
    # The seal's modules whatever the location is now: it may become a
    # sealed file after this initramfs is built (image create).
    wanted = [*kmod.drivers_of(image_location), *kmod.DISK_DRIVERS, *kmod.SEAL_DRIVERS]
    return kmod.resolve(wanted, deps, builtin)


def _compile(python: Path, package: Path, site: Path, staging: Path) -> list[tuple[str, Path]]:
    """kexechibd's modules compiled by the target interpreter into
    ``staging``: (archive path of the .pyc, compiled file)."""
    sources = package_files(package)
    jobs = []
    out = []
    for path in sources:
        if path.suffix != ".py":
            continue
        rel = path.relative_to(package.parent).with_suffix(".pyc")
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        jobs.append(f"{path}\0{target}\0{site / rel.with_suffix('.py')}")
        out.append((str(site / rel).lstrip("/"), target))
    script = (
        "import py_compile, sys\n"
        "for job in sys.stdin.read().split('\\n'):\n"
        "    src, dst, shown = job.split('\\0')\n"
        "    py_compile.compile(src, dst, shown, doraise=True)\n"
    )
    subprocess.run([str(python), "-I", "-c", script], input="\n".join(jobs), text=True, check=True)
    return out


def add_python(out: Sink, python: Path, package: Path, layout: PythonLayout) -> None:
    """The interpreter (as /usr/bin/python3), its pruned stdlib, what
    kexechibd imports from outside it, kexechibd itself (sourceless, the
    product only) and the shared libraries all of these load: what runs
    ``kexechibd --oneshot`` in kernel B's initramfs and in Debian's."""
    binary = f"usr/bin/{layout.executable.name}"
    out.host_file(binary, layout.executable, 0o755)
    if binary != "usr/bin/python3":
        out.symlink("usr/bin/python3", layout.executable.name)
    extensions = [layout.executable]
    python_files = [guest_module(p, layout.cache_tag) for p in stdlib_files(layout.stdlib)]
    for top in layout.dependencies:
        python_files += [guest_module(p, layout.cache_tag) for p in tree_files(top)]
    for name, path in python_files:
        out.host_file(name, path)
        if path.suffix == ".so":
            extensions.append(path)
    with tempfile.TemporaryDirectory() as staging:
        for name, path in _compile(python, package, layout.site, Path(staging)):
            out.host_file(name, path, 0o644)
    add_libraries(out, extensions)


def add_seal_tools(out: Sink) -> None:
    """``dmsetup``, with which B and C set up a sealed image file's mapping
    (DESIGN §1.6; the device-mapper tools are cryptsetup's dependency):
    when it is installed, whatever the location is now, since the location
    may become a sealed file before the next boot."""
    found = devmapper.program()
    if found is not None:
        add_programs(out, {"usr/sbin/dmsetup": found})


def saver_archive(
    *,
    release: str,
    kernel: Path | None,
    image_location: Path,
    python: Path = PYTHON,
    modules_root: Path = MODULES_ROOT,
) -> tuple[Cpio, Manifest]:
    package = installed_package()
    layout: PythonLayout = probe(python, package)
    modules = kernel_modules(release, image_location, modules_root)
    stored_modules = tuple(kmod_stored_name(m) for m in modules)
    manifest = Manifest(
        kexechibd_version=kexechibd.__version__,
        package_hash=package_hash(package_sources(package)),
        kernel_release=release,
        kernel_version=banner_of(kernel),
        python=layout.version,
        modules=stored_modules,
        built=time.time(),
    )
    archive = Cpio()
    archive.file(MANIFEST_NAME, manifest.to_json(), 0o644)
    for d in ("dev", "proc", "sys", "run", "tmp"):
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    # Python reads /dev/urandom for its hash seed when getrandom() would
    # block, as it does this early in a small kernel (the lab's): it runs
    # before init has mounted devtmpfs, and dies without it (-I ignores
    # PYTHONHASHSEED).
    archive.chardev("dev/urandom", 1, 9, 0o644)
    archive.chardev("dev/null", 1, 3, 0o666)
    archive.file("init", INIT, 0o755)
    add_python(archive, python, package, layout)
    add_seal_tools(archive)
    for rel, stored in zip(modules, stored_modules, strict=True):
        archive.file(
            f"lib/modules/{release}/{stored}", _decompressed(modules_root / release / rel), 0o644
        )
    return archive, manifest


def kmod_stored_name(rel: str) -> str:
    """A module's path in the archive: stored decompressed, so ``.ko``."""
    for suffix in kmod.COMPRESSED_SUFFIXES:
        rel = rel.removesuffix(suffix)
    return rel


def build(
    output: Path,
    *,
    release: str,
    kernel: Path | None,
    image_location: Path,
    python: Path = PYTHON,
    modules_root: Path = MODULES_ROOT,
) -> Built:
    """Write kernel B's initramfs to ``output`` (atomically: a reader sees
    the old archive or the new one)."""
    started = time.monotonic()
    archive, manifest = saver_archive(
        release=release,
        kernel=kernel,
        image_location=image_location,
        python=python,
        modules_root=modules_root,
    )
    data = archive.to_bytes()
    # Directories made here are private: the default place is below
    # /var/lib/kexechib, kexechibd's state directory (0700), where the image
    # with all of memory lives; a build before the daemon's first start must
    # not leave it open to everyone.
    for directory in [*reversed(output.parent.parents), output.parent]:
        if not directory.exists():
            directory.mkdir(mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Built(output, len(data), time.monotonic() - started, len(archive.entries), manifest)
