"""The guest userspace: Debian's python3, kexechibd and a system bus in RAM.

A kernel that is jumped back into has lost its 9p root (docs/lab.md), so the
daemon cannot run from the host's root across a kexec jump. Everything it
needs lives in the initramfs instead, which is RAM: it survives every jump,
and kernel B boots the very same archive. Commands run in it with
`kexechib.lab.root=none` (the RAM root, `/lab` in the archive, is their `/`).

What is in it, besides the lab's /init, busybox and kexec-tools (initramfs.py):

    /usr/bin/python3.11, python3    Debian's interpreter; its stdlib without
                                    what no guest imports (STDLIB_PRUNED)
    /usr/lib/python3/dist-packages  the daemon's dependencies from their Debian
                                    packages (PYTHON_PACKAGES), and the
                                    checkout's kexechibd (compiled here)
    /usr/lib/kexechibd/purgatory.ro the checkout's built purgatory
    /usr/sbin/kexechibd, /usr/bin/kexechibctl   as `make install` writes them
    /usr/bin/dbus-daemon, dbus-send the system bus and a client
    /usr/share/dbus-1/system.conf   the lab's system bus (Debian's default policy),
    /usr/share/dbus-1/system.d/org.kexechib1.conf   ... which includes ours
    /etc/kexechibd.conf             the lab's daemon configuration (lab_config)
    /usr/lib/kexechib-lab/          the lab's guest scripts (kexechibd/lab/guest/)
    /opt/kexechib/tests/conformance the conformance vectors (DESIGN §2)

Kernel A also gets the *origin layer*, a second archive appended to the
first (the kernel unpacks concatenated archives): kernel B's bzImage and
initrd under /boot, which A's kexechibd loads, and busctl.

Each archive is cached in the lab cache by a key over its inputs (host files
by path, size and mtime; the checkout's files by content), so a second run
costs a few stat calls; archives unused for a day go when a new one is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kexechibd.initramfs.archive import Cpio, add_libraries, add_programs, shared_libraries
from kexechibd.initramfs.python import PYC_TAG, guest_module, stdlib_files
from kexechibd.lab.cache import build_once
from kexechibd.lab.initramfs import initramfs_archive, kexec_path
from kexechibd.lab.kernel import cache_root
from kexechibd.lab.qemu import GuestSpec
from kexechibd.privatebus import SYSTEM_DEFAULT_POLICY

# Bump when the layout or the build changes: it is part of every cache key.
RECIPE = 1

REPO = Path(__file__).resolve().parents[2]
GUEST_SCRIPTS = Path(__file__).resolve().parent / "guest"

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")

# Debian packages of the daemon's Python dependencies (setup.cfg's
# install_requires, and what they import in turn). The Makefile installs them.
PYTHON_PACKAGES = (
    "python3-dbus-next",
    "python3-systemd",
    "python3-pyelftools",
    "python3-cffi",
    "python3-cffi-backend",
    "python3-pycparser",
    "python3-ply",
    "python3-zstandard",
    "python3-lz4",
)

GUEST_LIB = "usr/lib/kexechib-lab"
SITE = "usr/lib/python3/dist-packages"
MACHINE_ID = "6b657865636869626c61620000000001"  # any fixed id: the guests are one machine

# Where a lab guest's daemon finds kernel B (the origin layer puts them there).
SAVER_KERNEL = "/boot/bzImage"
SAVER_INITRD = "/boot/saver.cpio"
SAVER_SCRIPT = f"/{GUEST_LIB}/saver.sh"
# The image device of the daemon guests: the first virtio disk, raw (image_disk).
IMAGE_DEVICE = "/dev/vda"
# B's window in a 512 MiB guest: usable RAM in QEMU's e820 (which ends at
# 512 MiB - 128 KiB). B unpacks its initramfs (32 MB) into it and runs the
# daemon, whose save peaks at about 75 MB: 128 MiB is too small (docs/lab.md).
WINDOW = "192M@256M"


def lab_config(
    *,
    window: str = WINDOW,
    saver_cmdline: str = "",
    image: str = IMAGE_DEVICE,
    log_level: str = "info",
) -> str:
    """/etc/kexechibd.conf for a lab guest.

    Real kexec is enabled by `kexechib.enable_kexec=1` on the guest's command
    line (the Linux backend's guard reads it), never here. Images go to the
    raw image device that A, B and C all see (`image_disk`).
    """
    cmdline = (
        f"console=ttyS0 panic=-1 kexechib.lab.root=none kexechib.lab.run={SAVER_SCRIPT} "
        + saver_cmdline
    ).strip()
    return (
        "# kexechibd in a lab guest (kexechibd/lab/userspace.py)\n"
        "[daemon]\nbackend = linux\n"
        f"log_level = {log_level}\n"
        f"[image]\nlocation = {image}\n"
        f"[saver]\nkernel = {SAVER_KERNEL}\ninitrd = {SAVER_INITRD}\n"
        f"cmdline = {cmdline}\nwindow = {window}\nmode = poweroff\n"
    )


def bus_config() -> str:
    """The guest's /usr/share/dbus-1/system.conf (what `dbus-daemon --system`
    reads): Debian's default policy, and like Debian's root may monitor the
    bus (`busctl monitor`, which the cycle's A uses to see signals and error
    replies); EXTERNAL auth, the usual socket, and the policy files in
    system.d — kexechibd's own among them."""
    return (
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        "<busconfig>\n"
        "  <type>system</type>\n"
        "  <listen>unix:path=/run/dbus/system_bus_socket</listen>\n"
        "  <auth>EXTERNAL</auth>\n"
        f"{SYSTEM_DEFAULT_POLICY}"
        '  <policy user="root">\n'
        '    <allow send_destination="org.freedesktop.DBus"\n'
        '           send_interface="org.freedesktop.DBus.Monitoring"/>\n'
        "  </policy>\n"
        "  <includedir>system.d</includedir>\n"
        "</busconfig>\n"
    )


def _wrapper(module: str) -> bytes:
    # As `make install` writes them.
    return (
        f"#!/usr/bin/python3\nimport sys\n\nfrom {module} import main\n\nsys.exit(main())\n"
    ).encode()


class UserspaceError(RuntimeError):
    """Something the guest userspace needs is not installed on the host."""


def _package_files(package: str) -> list[Path]:
    result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UserspaceError(
            f"{package} is not installed (the lab guests need it; run `make setup`)"
        )
    return [Path(line) for line in result.stdout.splitlines() if line]


def _python_files() -> list[tuple[str, Path]]:
    """(guest path, host file) for the interpreter's stdlib and for the
    modules of the dependencies' Debian packages."""
    if not PYTHON.exists():
        raise UserspaceError(f"{PYTHON} is missing (apt-get install python3)")
    files = [guest_module(p) for p in stdlib_files(STDLIB)]
    for package in PYTHON_PACKAGES:
        for path in _package_files(package):
            if not path.is_relative_to(DIST_PACKAGES) or path.is_symlink() or not path.is_file():
                continue
            if any(part.endswith((".egg-info", ".dist-info")) for part in path.parts):
                continue
            files.append(guest_module(path))
    return files


def _checkout_files() -> list[tuple[str, Path]]:
    """(guest path, checkout file) for what the guests run of this checkout."""
    purgatory = REPO / "purgatory" / "purgatory.ro"
    if not purgatory.exists():
        raise UserspaceError(f"{purgatory} is not built (run `make purgatory`)")
    out = [("usr/lib/kexechibd/purgatory.ro", purgatory)]
    package = REPO / "kexechibd"
    for path in [*sorted(package.rglob("*.py")), package / "py.typed"]:
        rel = path.relative_to(package)
        # The harness itself (kexechibd.lab) runs on the host only.
        if rel.parts[0] == "lab" or not path.is_file():
            continue
        out.append((f"{SITE}/kexechibd/{rel}", path))
    for test in ("__init__.py", "conformance/__init__.py", "conformance/vectors.py"):
        out.append((f"opt/kexechib/tests/{test}", REPO / "tests" / test))
    out.append(
        ("usr/share/dbus-1/system.d/org.kexechib1.conf", REPO / "dbus" / "org.kexechib1.conf")
    )
    for path in sorted(GUEST_SCRIPTS.iterdir()):
        if path.is_file():
            out.append((f"{GUEST_LIB}/{path.name}", path))
    return out


def _generated() -> dict[str, bytes]:
    return {
        "etc/kexechibd.conf": lab_config().encode(),
        "etc/machine-id": f"{MACHINE_ID}\n".encode(),
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
        "etc/group": b"root:x:0:\n",
        "usr/share/dbus-1/system.conf": bus_config().encode(),
        "usr/sbin/kexechibd": _wrapper("kexechibd.daemon.main"),
        "usr/bin/kexechibctl": _wrapper("kexechibd.ctl.main"),
    }


def _programs() -> dict[str, Path]:
    programs = {
        "usr/bin/python3.11": PYTHON,
        "usr/bin/dbus-daemon": Path("/usr/bin/dbus-daemon"),
        "usr/bin/dbus-send": Path("/usr/bin/dbus-send"),
        "sbin/kexec": kexec_path(),
        # B's plain-tool reference in bench.b_save: zstd on /proc/vmcore.
        "usr/bin/zstd": Path("/usr/bin/zstd"),
    }
    for name, path in programs.items():
        if not path.exists():
            raise UserspaceError(f"{path} is missing; the lab guests need it as /{name}")
    return programs


def _extensions(files: Iterable[tuple[str, Path]]) -> list[Path]:
    return [path for _, path in files if path.suffix == ".so"]


# ---------------------------------------------------------------- cache


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _stat_id(path: Path) -> bytes:
    st = path.stat()
    return f"{path} {st.st_size} {st.st_mtime_ns}".encode()


# Archives of other keys unused for this long are removed when one is built:
# every change to the checkout makes a new key (about 115 MB for both).
STALE_SECONDS = 24 * 3600


def _prune(directory: Path, name: str, keep: Path) -> None:
    now = time.time()
    for path in directory.glob(f"{name}-*.cpio"):
        with contextlib.suppress(OSError):
            if path != keep and now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
                (directory / f".lock-{path.stem}").unlink(missing_ok=True)


def _cached(name: str, key: str, build: Callable[[], Iterable[bytes]]) -> Path:
    """The archive `<name>-<key>.cpio` in the lab cache, built once per key
    (its mtime says when it was last used)."""
    directory = cache_root() / "initramfs"
    final = directory / f"{name}-{key}.cpio"
    if final.exists():
        final.touch()
        return final

    def write() -> None:
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
            path = Path(tmp.name)
        try:
            with open(path, "wb") as out:
                for chunk in build():
                    out.write(chunk)
            path.chmod(0o644)
            path.rename(final)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    build_once(directory, f"{name}-{key}", final.exists, write)
    _prune(directory, name, final)
    return final


# ---------------------------------------------------------------- the archives


def _compile(checkout: list[tuple[str, Path]], staging: Path) -> list[tuple[str, Path]]:
    """Copy the checkout's files to `staging` (guest layout, mtimes kept) and
    compile its modules with the guest's own interpreter; returns (guest path,
    staged file) for every file, compiled ones included."""
    staged = []
    for name, path in checkout:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        staged.append((name, target))
    modules = [str(t) for n, t in staged if n.endswith(".py") and not n.startswith(GUEST_LIB)]
    subprocess.run(
        [str(PYTHON), "-m", "compileall", "-q", "-s", str(staging), "-p", "/", *modules],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for name, target in list(staged):
        if name.endswith(".py") and not name.startswith(GUEST_LIB):
            pyc = target.parent / "__pycache__" / f"{target.stem}.{PYC_TAG}.pyc"
            staged.append((str(Path(name).parent / "__pycache__" / pyc.name), pyc))
    return staged


def userspace_archive() -> Cpio:
    """The lab initramfs (init, busybox, kexec) with the guest userspace."""
    programs = _programs()
    archive = initramfs_archive(programs)
    python = _python_files()
    for name, path in python:
        archive.host_file(f"lab/{name}", path)
    add_libraries(archive, _extensions(python), "lab")
    archive.symlink("lab/usr/bin/python3", "python3.11")
    archive.symlink("lab/var/run", "/run")
    archive.directory("lab/var/lib/kexechib")
    for name, data in _generated().items():
        mode = 0o755 if name.startswith(("usr/sbin/", "usr/bin/")) else 0o644
        archive.file(f"lab/{name}", data, mode)
    with tempfile.TemporaryDirectory() as staging:
        for name, path in _compile(_checkout_files(), Path(staging)):
            archive.host_file(f"lab/{name}", path)
    return archive


def _userspace_key() -> str:
    from kexechibd.lab.initramfs import busybox_path, init_script

    python = _python_files()
    programs = _programs()
    libs = {
        lib
        for program in [*programs.values(), *_extensions(python)]
        for lib in shared_libraries(program)
    }
    parts = [f"recipe {RECIPE}".encode(), init_script().encode(), _stat_id(busybox_path())]
    parts += [_stat_id(p) for p in sorted(programs.values())]
    parts += [_stat_id(p.resolve()) for p in sorted(libs)]
    parts += [name.encode() + b" " + _stat_id(path) for name, path in python]
    parts += [name.encode() + b"\0" + path.read_bytes() for name, path in _checkout_files()]
    parts += [name.encode() + b"\0" + data for name, data in sorted(_generated().items())]
    return _digest(parts)


def lab_userspace() -> Path:
    """The guest userspace archive (an initramfs of its own; kernel B's initrd)."""
    return _cached("userspace", _userspace_key(), lambda: [userspace_archive().to_bytes()])


def origin_initrd(
    saver_kernel: Path,
    saver_initrd: Path | None = None,
    window: str | None = None,
    saver_cmdline: str = "",
) -> Path:
    """Kernel A's initrd: the userspace, then the origin layer (kernel B's
    bzImage and initrd under /boot, and busctl). B's initrd is the lab
    userspace itself (saver.sh), or `saver_initrd`: the product's, as
    `kexechibctl saver build` writes it (`saver_build`). `window` and
    `saver_cmdline` replace /etc/kexechibd.conf with one that gives B that
    window and more of a command line (a later archive's file replaces an
    earlier one's when the kernel unpacks them)."""
    userspace = lab_userspace()
    b_initrd = userspace if saver_initrd is None else saver_initrd
    busctl = Path("/usr/bin/busctl")
    if not busctl.exists():
        raise UserspaceError("busctl is missing (apt-get install systemd)")
    libs = sorted({lib.resolve() for lib in shared_libraries(busctl)})
    key = _digest(
        [
            f"recipe {RECIPE} origin".encode(),
            userspace.name.encode(),
            hashlib.sha256(b_initrd.read_bytes()).digest(),
            f"window {window}".encode(),
            f"saver cmdline {saver_cmdline}".encode(),
            hashlib.sha256(saver_kernel.read_bytes()).digest(),
            _stat_id(busctl),
            *(_stat_id(p) for p in libs),
        ]
    )

    def build() -> Iterator[bytes]:
        yield userspace.read_bytes()
        layer = Cpio()
        layer.host_file(f"lab{SAVER_KERNEL}", saver_kernel, 0o644)
        layer.host_file(f"lab{SAVER_INITRD}", b_initrd, 0o644)
        if window is not None or saver_cmdline:
            config = lab_config(window=window or WINDOW, saver_cmdline=saver_cmdline)
            layer.file("lab/etc/kexechibd.conf", config.encode())
        add_programs(layer, {"usr/bin/busctl": busctl}, "lab")
        yield layer.to_bytes()

    return _cached("origin", key, build)


def saver_build(kernel: Path, output: Path) -> Path:
    """Kernel B's initramfs as the product builds it (`kexechibctl saver
    build`), on the host, for the lab kernel `kernel`: from the host's
    python3 and Debian packages, which are the guest userspace's too. Its
    manifest names the checkout's kexechibd, which the guest's A runs."""
    from kexechibd.bootproto import kernel_banner
    from kexechibd.initramfs.build import build

    banner = kernel_banner(kernel.read_bytes()[: 64 << 10])
    build(output, release=banner.split()[0], kernel=kernel, image_location=Path(IMAGE_DEVICE))
    return output


def image_disk(path: Path, size_mib: int = 768) -> Path:
    """A sparse raw disk file for the daemon guests' images: `/dev/vda`, the
    image device, with the block-device image store's two slots. Each slot
    must hold A's memory outside B's window uncompressed (the engine checks
    before the jump): 320 MiB in a 512 MiB guest with the lab's window."""
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    return path


def _script_guest(
    kernel: Path,
    script: str,
    disk: Path,
    *,
    name: str,
    memory_mib: int,
    timeout: float,
    params: str = "",
    saver_initrd: Path | None = None,
    window: str | None = None,
    saver_cmdline: str = "",
    more_disks: tuple[Path, ...] = (),
) -> GuestSpec:
    """A guest that runs one of kexechibd/lab/guest/'s scripts from the
    initramfs, with the Linux backend enabled, `disk` as /dev/vda and
    `more_disks` as /dev/vdb and on."""
    return GuestSpec(
        command="",
        kernel=kernel,
        initrd=origin_initrd(kernel, saver_initrd, window, saver_cmdline),
        memory_mib=memory_mib,
        append=" ".join(
            p
            for p in (
                f"kexechib.lab.root=none kexechib.lab.run=/{GUEST_LIB}/{script}",
                params,
                "kexechib.enable_kexec=1",
            )
            if p
        ),
        disks=(disk, *more_disks),
        timeout=timeout,
        name=name,
    )


def daemon_guest(kernel: Path, workdir: Path, memory_mib: int = 512) -> GuestSpec:
    """The guest of the daemon test and bench: kernel A runs
    kexechibd/lab/guest/checkpoint.sh (Hibernate to a checkpoint, then two
    JumpBacks, over D-Bus) with an image disk in `workdir`."""
    return _script_guest(
        kernel,
        "checkpoint.sh",
        image_disk(workdir / "image-disk.raw"),
        name="daemon",
        memory_mib=memory_mib,
        timeout=600,
    )


def cycle_guest(
    kernel: Path,
    workdir: Path,
    *,
    cycle: str = "poweroff",
    client: str = "busctl",
    memory_mib: int = 512,
    timeout: float = 600,
    saver_initrd: Path | None = None,
    window: str | None = None,
    disk_mib: int = 768,
    saver_cmdline: str = "",
    more_disks: tuple[Path, ...] = (),
    append: str = "",
) -> GuestSpec:
    """Kernel A of the hibernate cycle (kexechibd/lab/guest/cycle.sh) with a
    fresh image disk in `workdir`: `cycle` is poweroff, checkpoint or cancel,
    `client` busctl or kexechibctl. A poweroff cycle ends with B powering
    off; `restorer_guest` then boots C on the same disk. B boots the lab
    userspace (saver.sh) or `saver_initrd` (the product's), with
    `saver_cmdline` added to its command line; `more_disks`: /dev/vdb on;
    `append`: more of A's command line."""
    return _script_guest(
        kernel,
        "cycle.sh",
        image_disk(workdir / "image-disk.raw", disk_mib),
        name=f"a-{cycle}",
        memory_mib=memory_mib,
        timeout=timeout,
        params=f"kexechib.lab.cycle={cycle} kexechib.lab.client={client} {append}".strip(),
        saver_initrd=saver_initrd,
        window=window,
        saver_cmdline=saver_cmdline,
        more_disks=more_disks,
    )


def restorer_guest(
    kernel: Path,
    workdir: Path,
    *,
    disk: Path | None = None,
    memory_mib: int = 512,
    timeout: float = 600,
) -> GuestSpec:
    """Kernel C: a normal boot of the same kernel and initrd, with the same
    memory size, on the image disk an earlier guest left in `workdir` (or on
    `disk`) (kexechibd/lab/guest/resume.sh: `kexechibd --oneshot`). When it
    resumes an image, its console shows A carrying on."""
    disk = disk or workdir / "image-disk.raw"
    if not disk.exists():
        raise FileNotFoundError(f"{disk}: no image disk to resume from")
    return _script_guest(
        kernel, "resume.sh", disk, name="c", memory_mib=memory_mib, timeout=timeout
    )
