"""A real Debian 12 guest: systemd as PID 1 on an ext4 root, booted through OVMF.

    root = debian_rootfs()                      # cached tree, built with mmdebstrap
    disk = debian_disk(workdir)                 # per run: tree + product -> ext4 raw
    spec = debian_guest(disk, command="...")    # a GuestSpec (UEFI, 2 CPUs, 1 GiB)
    result = run_guest(spec)                    # markers, exit status as usual

The root filesystem is Debian bookworm from the archive apt already uses
(`mmdebstrap --variant=minbase` plus PACKAGES), cached under the lab cache
(`debian/<key>/root`) keyed by the package list, the recipe (RECIPE and the
customize hooks) and mmdebstrap's version. The archive moves: the key does
not follow it, but each cache entry records the versions it resolved
(`debian/<key>/packages`).

Per run an overlay of the cached tree (mounted on the host) takes the
product
(`install_product`: `make install DESTDIR=` today, `dpkg -i` of the package
later) and the lab's guest files (`guest_files`), and `mkfs.ext4 -d` makes
it a raw ext4 disk (/dev/vda in the guest).

In the guest, `kexechib-lab-probe.service` (Type=exec, after
multi-user.target) prints the lab's markers on the console
(`KEXECHIB-LAB init`, `system state=...`, `run`, `exit status=N`, as the
lab's /init does), runs the script QEMU hands in by fw_cfg
(`opt/kexechib/run`, GuestSpec.command) as root, and powers off with
`systemctl poweroff` when it ends. A user `lab` (uid 1000) has lingering
enabled; its user service `kexechib-workload.service` runs the workload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kexechibd.lab.cache import build_once
from kexechibd.lab.cycle import relay_lines
from kexechibd.lab.disksearch import found_needles, parse_needles
from kexechibd.lab.kernel import cache_root
from kexechibd.lab.qemu import Guest, GuestResult, GuestSpec, LogLine, new_workdir

# Bump when the recipe (hooks, layout) changes: it is part of the cache key.
RECIPE = 1
SUITE = "bookworm"
# The archive apt uses on the lab's machines (and bookworm's updates).
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)


# What the package depends on, from debian/control: the guest's root holds
# it before `dpkg -i` (which resolves nothing), and no second list can drift.
CONTROL = Path(__file__).resolve().parents[2] / "debian" / "control"


def package_depends(control: Path = CONTROL) -> tuple[str, ...]:
    """The binary package's Depends, without substitution variables,
    version constraints or comment lines, in their order."""
    field: list[str] = []
    lines = iter(control.read_text().splitlines())
    for line in lines:
        if line.startswith("Depends:"):
            field.append(line.removeprefix("Depends:"))
            for more in lines:
                if more.startswith("#"):
                    continue
                if not more[:1].isspace():
                    break
                field.append(more)
            break
    names = (item.split()[0] for item in " ".join(field).split(",") if item.strip())
    return tuple(name for name in names if not name.startswith("${"))


# systemd as init with logind, dbus and udev; e2fsprogs for fsck of the
# root; python3; the package's dependencies (initramfs-tools among them: A
# and C boot through Debian's initramfs, and C resumes from it, DESIGN §6.4);
# zstd, which initramfs-tools compresses with; cryptsetup-initramfs, which
# unlocks a LUKS root in the initramfs as Debian's installer sets it up
# (the guest of debian_luks.py; with no crypttab it adds nothing), and
# dmsetup, which kexechibd recommends for sealed image files on such a root.
# kexec-tools is not needed: kexechibd loads kernels itself.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "udev",
    "e2fsprogs",
    "python3",
)
PACKAGES = (
    *BASE_PACKAGES,
    *(name for name in package_depends() if name not in BASE_PACKAGES),
    "zstd",
    "cryptsetup-initramfs",
    "dmsetup",
)
MACHINE_ID = "6b657865636869626c61620000000002"  # fixed: no first-boot handling
HOSTNAME = "kexechib-deb"
USER = "lab"
USER_UID = 1000
GUEST_LIB = "usr/lib/kexechib-lab"
ROOT_DEVICE = "/dev/vda"
DISK_SIZE = "2G"

# The customize hooks (`$1` is the new root). They are part of the key.
HOOKS = (
    f'echo {HOSTNAME} > "$1/etc/hostname"',
    # root logs in on the serial console without a password (pam_unix nullok).
    'chroot "$1" passwd -d root',
    f'chroot "$1" useradd --create-home --uid {USER_UID} --shell /bin/bash {USER}',
    # Lingering: the user's manager (and its services) start at boot.
    f'mkdir -p "$1/var/lib/systemd/linger" && touch "$1/var/lib/systemd/linger/{USER}"',
    # Root on /dev/vda, mounted `ro` by the kernel like Debian's and made
    # read-write by systemd-remount-fs (after kexechib-resume.service).
    f'echo "{ROOT_DEVICE} / ext4 errors=remount-ro 0 1" > "$1/etc/fstab"',
    # A persistent journal: the cycle's test reads it after the guest is off.
    'mkdir -p "$1/var/log/journal"',
    'chroot "$1" apt-get clean',
)


class DebianError(RuntimeError):
    """The Debian root filesystem could not be built or made into a disk."""


def run_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` run to its end; DebianError with its stderr if it failed."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DebianError(
            f"{' '.join(argv[:3])} ... failed ({result.returncode}): {result.stderr[-3000:]}"
        )
    return result


def mmdebstrap_version() -> str:
    if shutil.which("mmdebstrap") is None:
        raise DebianError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    return run_tool(["mmdebstrap", "--version"]).stdout.strip()


def rootfs_key() -> str:
    """The cache key: recipe, suite, mirrors, package list, hooks, mmdebstrap."""
    h = hashlib.sha256()
    for part in (f"recipe {RECIPE}", SUITE, *MIRRORS, *PACKAGES, *HOOKS, mmdebstrap_version()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def rootfs_cache() -> Path:
    return cache_root() / "debian"


def debian_rootfs() -> Path:
    """The cached root tree (`<cache>/debian/<key>/root`), built if missing.

    A cold build takes about a minute (mmdebstrap downloads and installs
    about 150 packages); a cached one a few stat calls."""
    key = rootfs_key()
    entry = rootfs_cache() / key
    root = entry / "root"

    def build() -> None:
        work = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=entry.parent))
        try:
            started = time.monotonic()
            argv = [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--format=directory",
                "--include=" + ",".join(PACKAGES),
                *(f"--customize-hook={hook}" for hook in HOOKS),
                SUITE,
                str(work / "root"),
                *MIRRORS,
            ]
            run_tool(argv)
            versions = run_tool(
                [
                    "dpkg-query",
                    f"--admindir={work / 'root/var/lib/dpkg'}",
                    "-W",
                    "-f=${Package} ${Version}\n",
                ]
            ).stdout
            (work / "packages").write_text(versions)
            (work / "inputs").write_text(
                f"key {key}\nrecipe {RECIPE}\nsuite {SUITE}\n{mmdebstrap_version()}\n"
                f"built {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                f"in {time.monotonic() - started:.0f} s\n"
                + "".join(f"mirror {m}\n" for m in MIRRORS)
                + "".join(f"hook {h}\n" for h in HOOKS)
            )
            shutil.rmtree(entry, ignore_errors=True)
            work.rename(entry)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    build_once(entry.parent, key, (entry / "packages").exists, build)
    return root


# ---------------------------------------------------------------- per run

REPO = Path(__file__).resolve().parents[2]
GUEST_SCRIPTS = Path(__file__).resolve().parent / "guest"
# The prepared image file on A's root (kexechibctl image create): two slots,
# each holding A's RAM outside B's window (about 830 MiB) incompressible.
IMAGE_FILE = "/var/lib/kexechib/image"
IMAGE_SIZE = "1800M"
# B's window in a 1 GiB guest under OVMF: plain RAM in its memory map (OVMF's
# own allocations sit below 16 MiB and near the top of RAM).
WINDOW = "192M@512M"
# Kernel B boots one CPU: A's other CPUs are offline at the jump (docs/lab.md §11).
SAVER_CPUS = "nr_cpus=1"
# A's command line: root on the virtio disk, read-only until
# systemd-remount-fs (after kexechib-resume.service), as Debian boots.
APPEND = "ro rootfstype=ext4 kexechib.enable_kexec=1"


def kernel_release(kernel: Path) -> str:
    """The release (`uname -r`) a bzImage will report: the first word of its banner."""
    from kexechibd.bootproto import kernel_banner

    with open(kernel, "rb") as f:
        return kernel_banner(f.read(64 << 10)).split()[0]


@functools.cache
def product_package() -> Path:
    """The checkout's Debian package (`make deb`), built once per process
    into the lab's cache: what the guest installs with `dpkg -i`."""
    out = new_workdir("deb")
    run_tool(["make", "-s", "-C", str(REPO), "deb", f"DEB_DIR={out}"])
    (deb,) = out.glob("kexechibd_*.deb")
    return deb


def debian_config(*, window: str = WINDOW, saver_cmdline: str = "") -> str:
    """/etc/kexechibd.conf in the Debian guest (real kexec is enabled by
    `kexechib.enable_kexec=1` on the command line only). Kernel B and its
    initramfs are the defaults: the installed kernel and what the package's
    postinst built for it with `kexechibctl saver build`."""
    cmdline = f"console=ttyS0 panic=-1 {SAVER_CPUS} {saver_cmdline}".strip()
    return (
        "# kexechibd in the lab's Debian guest (kexechibd/lab/debian.py)\n"
        "[daemon]\nbackend = linux\nlog_level = info\n"
        f"[image]\nlocation = {IMAGE_FILE}\n"
        f"[saver]\ncmdline = {cmdline}\nwindow = {window}\nmode = poweroff\n"
    )


def install_kernel(root: Path, kernel: Path) -> str:
    """The lab kernel installed as a Debian kernel package would leave it:
    /boot/vmlinuz-<release>, its config, and /lib/modules/<release> (empty:
    everything is built in; `depmod -b` writes the index files that
    mkinitramfs and kexechibctl saver build read)."""
    release = kernel_release(kernel)
    shutil.copyfile(kernel, root / f"boot/vmlinuz-{release}")
    shutil.copyfile(kernel.parent / "config", root / f"boot/config-{release}")
    (root / f"lib/modules/{release}").mkdir(parents=True, exist_ok=True)
    run_tool(["depmod", "-b", str(root), release])
    return release


def in_chroot(root: Path, *commands: str, before: str = "", after: str = "") -> None:
    """``commands`` run one after the other in a chroot of ``root``, with the
    host's /proc, /sys and /dev bound and a tmpfs on /run, in a private mount
    namespace (no mount outlives it); ``before`` and ``after``: shell lines
    run outside the chroot first (mounting ``root``, say) and last."""
    chrooted = "".join(f'chroot "$r" {command}\n' for command in commands)
    script = f"""set -e
r={root}
{before}
for d in proc sys dev; do mount --rbind /$d "$r/$d"; done
mount -t tmpfs tmpfs "$r/run"
{chrooted}{after}
"""
    run_tool(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])


def install_product(root: Path) -> None:
    """Install kexechibd into the tree as a user would: `dpkg -i` of the
    checkout's package in a chroot. Its postinst enables kexechib-resume.service
    and builds kernel B's initramfs (`kexechibctl saver build`) for every
    installed kernel, with the guest's own python3 and packages."""
    deb = product_package()
    shutil.copyfile(deb, root / "tmp" / deb.name)
    try:
        in_chroot(root, f"dpkg --force-confold -i /tmp/{deb.name}")
    finally:
        (root / "tmp" / deb.name).unlink()


def guest_files(root: Path, kernel: Path, *, config: str | None = None) -> None:
    """The lab's part of the guest: its scripts, the probe unit, the user's
    workload service, kernel B and its initramfs, and the configuration."""
    lib = root / GUEST_LIB
    lib.mkdir(parents=True, exist_ok=True)
    for path in [*GUEST_SCRIPTS.iterdir(), *(GUEST_SCRIPTS / "debian").iterdir()]:
        if path.is_file():
            shutil.copy2(path, lib / path.name)
    units = root / "etc/systemd/system"
    shutil.copy2(lib / "kexechib-lab-probe.service", units)
    (units / "kexechibd.service.d").mkdir(exist_ok=True)
    shutil.copy2(lib / "kexechibd-lab.conf", units / "kexechibd.service.d/lab.conf")
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / "kexechib-lab-probe.service").symlink_to("../kexechib-lab-probe.service")
    home = root / "home" / USER
    user_units = home / ".config/systemd/user"
    (user_units / "default.target.wants").mkdir(parents=True, exist_ok=True)
    shutil.copy2(lib / "kexechib-workload.service", user_units)
    (user_units / "default.target.wants/kexechib-workload.service").symlink_to(
        "../kexechib-workload.service"
    )
    for dirpath, _, filenames in os.walk(home / ".config"):
        os.lchown(dirpath, USER_UID, USER_UID)
        for name in filenames:
            os.lchown(os.path.join(dirpath, name), USER_UID, USER_UID)
    (root / "etc/kexechibd.conf").write_text(config or debian_config())
    # Fixed, so that no first-boot handling runs (and A, B and C agree on the
    # machine); per run, because mmdebstrap empties it after its hooks.
    (root / "etc/machine-id").write_text(f"{MACHINE_ID}\n")


@contextlib.contextmanager
def _overlay(lower: Path, workdir: Path) -> Iterator[Path]:
    """The cached tree with a writable layer in `workdir`, mounted on the host
    (overlayfs): copying the 280 MB tree took 40 s and removing it 20 s on
    the loaded shared disk, the overlay takes milliseconds."""
    upper, work, merged = workdir / "upper", workdir / "ovl-work", workdir / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    run_tool(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)])
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=False)
        for path in (upper, work, merged):
            shutil.rmtree(path, ignore_errors=True)


def prepare_image(disk: Path, size: str = IMAGE_SIZE) -> None:
    """`kexechibctl image create` of the image file on the disk, run on the
    host with the disk loop-mounted: the guest wrote the 1.8 GB of zeros at
    about 9 MB/s under TCG (211 s), the host in seconds. The file is the
    same (FIEMAP offsets on a loop device are offsets in the disk file); A
    maps it again right before it loads B."""
    mount = disk.parent / "image-mount"
    mount.mkdir(exist_ok=True)
    run_tool(["mount", "-o", "loop", str(disk), str(mount)])
    try:
        target = mount / IMAGE_FILE.lstrip("/")
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run_tool(
            [
                sys.executable,
                "-c",
                "import sys; from kexechibd.ctl.main import main; sys.exit(main())",
                "image",
                "create",
                str(target),
                "--size",
                size,
            ]
        )
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


@contextlib.contextmanager
def product_tree(
    workdir: Path, kernel: Path, *, config: str | None = None, product: bool = True
) -> Iterator[Path]:
    """The cached tree with the lab kernel, the lab's files and the product
    installed (without ``product``: not), writable (an overlay in
    ``workdir``) while the block runs."""
    with _overlay(debian_rootfs(), workdir) as tree:
        install_kernel(tree, kernel)
        guest_files(tree, kernel, config=config)
        if product:
            install_product(tree)
        yield tree


def debian_disk(
    workdir: Path,
    kernel: Path,
    *,
    size: str = "4G",
    config: str | None = None,
    image: bool = True,
    product: bool = True,
) -> Path:
    """A fresh raw ext4 disk (`workdir/root.img`) with the cached tree, the
    product and the lab's files: the Debian guest's /dev/vda; with `image`,
    the prepared image file in it too (`prepare_image`); without `product`,
    a Debian system without kexechibd (and with no image file)."""
    disk = workdir / "root.img"
    with product_tree(workdir, kernel, config=config, product=product) as tree:
        run_tool(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(disk), size])
    if image and product:
        prepare_image(disk)
    debian_initramfs(disk, kernel)
    return disk


def initramfs_path(disk: Path) -> Path:
    """Where `debian_initramfs` put the copy QEMU boots with (`-initrd`)."""
    return disk.parent / "initrd.img"


def debian_initramfs(disk: Path, kernel: Path) -> Path:
    """The guest's own Debian initramfs for the lab kernel, made as a Debian
    machine makes it: `update-initramfs -c` in the guest's root (a chroot of
    the loop-mounted disk, in a private mount namespace), with the guest's
    initramfs-tools, udev, python3 and kexechibd's hook, which records the
    prepared image file's blocks on this very disk (blkid gives the by-uuid
    link udev makes for /dev/vda).  The lab kernel has no modules: the empty
    /lib/modules/<release> and /boot/config-<release> that `install_kernel`
    left (mkinitramfs checks the compression) are all it needs.  The archive stays
    in the guest's /boot (A's Hibernate compares its resume record with the
    image file) and is copied out for QEMU's -initrd."""
    release = kernel_release(kernel)
    out = initramfs_path(disk)
    mount = disk.parent / "initramfs-mount"
    mount.mkdir(exist_ok=True)
    try:
        in_chroot(
            mount,
            f"update-initramfs -c -k {release}",
            before=f'mount -o loop {disk} "$r"\nmount -t tmpfs tmpfs "$r/tmp"',
            after=f'cp "$r/boot/initrd.img-{release}" {out}',
        )
    finally:
        mount.rmdir()
    return out


def debian_guest(
    disk: Path,
    command: str,
    *,
    kernel: Path | None = None,
    append: str = "",
    memory_mib: int = 1024,
    cpus: int = 2,
    timeout: float = 300,
    name: str = "debian",
    firmware_vars: Path | None = None,
    root: str = ROOT_DEVICE,
    more_disks: tuple[Path, ...] = (),
) -> GuestSpec:
    """The Debian guest: OVMF, q35, `cpus` CPUs, `memory_mib` of RAM, the
    lab kernel booting `disk` as its ext4 root. The probe unit runs
    `command` as root once multi-user.target is reached, then powers off
    (`kexechib.lab.poweroff=no` in `append`: it does not); `root`: the
    root filesystem's device, for the kernel's and the initramfs's `root=`;
    `more_disks`: /dev/vdb and on."""
    initrd = initramfs_path(disk)
    return GuestSpec(
        command=command,
        kernel=kernel,
        initrd=initrd if initrd.exists() else None,
        memory_mib=memory_mib,
        append=f"root={root} {APPEND} {append}".strip(),
        disks=(disk, *more_disks),
        timeout=timeout,
        firmware="uefi",
        firmware_vars=firmware_vars,
        cpus=cpus,
        machine="q35",
        lab_init=False,
        name=name,
        exit_grace=60.0,
    )


# ---------------------------------------------------------------- the cycle


class DebianMachine:
    """The plain Debian guest as the hibernate cycle boots it: ext4 on the
    whole disk, its initramfs made on the host with the prepared image file
    already recorded (debian_luks.py's machine is the encrypted one)."""

    name = "plain"
    root = ROOT_DEVICE
    memory_mib = 1024
    append = ""

    def disk(self, workdir: Path, kernel: Path) -> Path:
        return debian_disk(workdir, kernel)

    def more_disks(self, disk: Path) -> tuple[Path, ...]:
        """The guest's other disks (/dev/vdb and on), beside ``disk``."""
        return ()

    def after_hibernate(self, disk: Path, kernel: Path) -> None:
        """What the host does between the two boots: here nothing (A changed
        no initramfs: the image file was prepared before its boot)."""

    def fsck(self, disk: Path) -> tuple[int, str]:
        return fsck(disk)


@dataclass(frozen=True)
class DebianCycle:
    hibernate: GuestResult  # QEMU 1: A hibernates, B saves and powers off
    resume: GuestResult | None  # QEMU 2: C boots the disk, resumes A; A powers off
    fsck_status: int | None  # `e2fsck -fn` of the root after QEMU 2, on the host
    fsck_output: str
    disk: Path
    # Pieces of the workload's secret (its a-secret marker) and which of them
    # the host found in the raw disk file after QEMU 1 and after QEMU 2.
    secret: tuple[bytes, ...] = ()
    secret_after_save: frozenset[int] = frozenset()
    secret_after_resume: frozenset[int] | None = None

    def times(self) -> list[tuple[str, float]]:
        """(phase, host seconds) from the consoles' timestamps."""
        out: list[tuple[str, float]] = []

        def add(name: str, start: float | None, end: float | None) -> None:
            if start is not None and end is not None:
                out.append((name, round(end - start, 1)))

        one, two = self.hibernate, self.resume
        call = _seen(one, "KEXECHIB-LAB a-hibernate")
        b_init = _seen(one, "kexechib.lab.root=none", start=call)
        committed = _seen(one, "image committed")
        add("A: QEMU start -> multi-user (probe starts)", 0.0, _seen(one, "KEXECHIB-LAB init"))
        add("A: Hibernate call -> B's kernel starts", call, b_init)
        add("B: boot, bus, kexechibd, save -> committed", b_init, committed)
        add("hibernate: call -> QEMU gone (power off)", call, one.wall_seconds)
        if two is not None:
            premount = _seen(two, "Running /scripts/local-premount")
            add("C: QEMU start -> initramfs local-premount", 0.0, premount)
            add("C: initramfs resume -> jump into A", premount, _seen(two, "Starting new kernel"))
            add("resume: QEMU start -> the call returns in A", 0.0, _seen(two, "a-back"))
        return out


def _seen(result: GuestResult, text: str, start: float | None = None) -> float | None:
    return next(
        (
            line.seconds
            for line in result.lines
            if text in line.text and (start is None or line.seconds >= start)
        ),
        None,
    )


def fsck(disk: Path | str) -> tuple[int, str]:
    """`e2fsck -fn` of a disk file on the host (read-only: changes nothing);
    a str may carry e2fsprogs' `?offset=` of a partition in it."""
    result = subprocess.run(
        ["e2fsck", "-fn", str(disk)], capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout + result.stderr


def read_file(disk: Path, path: str) -> bytes:
    """A file of the powered-off guest's root, read on the host (debugfs)."""
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(disk)], capture_output=True, check=True
    ).stdout


def journal(disk: Path, *args: str) -> str:
    """The guest's persistent journal read on the host (`journalctl -D` on a
    copy that debugfs takes out of the powered-off disk; `args` go to
    journalctl, e.g. "-u", "kexechibd.service")."""
    with tempfile.TemporaryDirectory(dir=disk.parent) as tmp:
        run_tool(["debugfs", "-R", f"rdump /var/log/journal {tmp}", str(disk)])
        result = subprocess.run(
            ["journalctl", "--no-pager", "-o", "short-monotonic", "-D", f"{tmp}/journal", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout


def secret_of(result: GuestResult) -> tuple[bytes, ...]:
    """The pieces of the workload's secret that A named (its a-secret marker)."""
    marker = result.marker("a-secret")
    return parse_needles(marker.fields.get("needles", "")) if marker else ()


def secret_on(disk: Path, secret: tuple[bytes, ...]) -> frozenset[int]:
    return frozenset(found_needles(disk, secret)) if secret else frozenset()


@dataclass(frozen=True)
class TwoBoots:
    hibernate: GuestResult  # QEMU 1: A's script ran; it hibernated, or it ended
    resume: GuestResult | None  # QEMU 2 (None: A's script ended in QEMU 1)
    disk: Path


async def boot_twice(
    kernel: Path,
    workdir: Path,
    machine: DebianMachine,
    script: str,
    *,
    on_line: Callable[[str, LogLine], None] | None = None,
    after_save: Callable[[Path, GuestResult], None] | None = None,
) -> TwoBoots:
    """A hibernate cycle's two boots of a new disk of ``machine``: QEMU 1
    runs ``script`` (a guest script under GUEST_LIB) as root: A hibernates
    in it, B saves and powers off; ``after_save(disk, QEMU 1's result)``;
    QEMU 2 boots the same disk with the same firmware variables, and A
    resumes (when C runs its own script instead, it only says c-boots-on)."""
    disk = await asyncio.to_thread(machine.disk, workdir, kernel)
    nvram = workdir / "OVMF_VARS.fd"

    async def boot(n: int, command: str, timeout: float, name: str) -> GuestResult:
        spec = debian_guest(
            disk,
            command,
            kernel=kernel,
            timeout=timeout,
            name=name,
            firmware_vars=nvram,
            root=machine.root,
            memory_mib=machine.memory_mib,
            append=machine.append,
            more_disks=machine.more_disks(disk),
        )
        async with Guest(
            spec, workdir / f"qemu-{n}", on_line=relay_lines(on_line, str(n))
        ) as guest:
            return await guest.wait()

    first = await boot(1, f"sh /{GUEST_LIB}/{script}", 900, "deb-a")
    if after_save is not None:
        await asyncio.to_thread(after_save, disk, first)
    if first.timed_out or first.exit_status is not None:
        # A's script ended in QEMU 1: A never hibernated, nothing to resume.
        return TwoBoots(first, None, disk)
    await asyncio.to_thread(machine.after_hibernate, disk, kernel)
    second = await boot(2, f". /{GUEST_LIB}/lab.sh; say c-boots-on", 600, "deb-c")
    return TwoBoots(first, second, disk)


async def debian_cycle(
    kernel: Path,
    workdir: Path,
    *,
    on_line: Callable[[str, LogLine], None] | None = None,
    machine: DebianMachine | None = None,
) -> DebianCycle:
    """The hibernate cycle on the Debian guest (``boot_twice``) with
    guest/debian/debian-cycle.sh: A hibernates through logind, B saves into
    the image file and powers off, QEMU 2's initramfs resumes A, whose
    script then ends and powers off; then e2fsck on the host.  After each
    boot the host searches the raw disk file for the workload's secret."""
    machine = machine or DebianMachine()
    found: list[frozenset[int]] = []

    def search(disk: Path, result: GuestResult) -> None:
        found.append(secret_on(disk, secret_of(result)))

    runs = await boot_twice(
        kernel,
        workdir,
        machine,
        "debian-cycle.sh",
        on_line=on_line,
        after_save=search,
    )
    first, second, disk = runs.hibernate, runs.resume, runs.disk
    secret = secret_of(first)
    if second is None:
        return DebianCycle(first, None, None, "", disk, secret, found[0])
    after_resume = await asyncio.to_thread(secret_on, disk, secret)
    status, output = await asyncio.to_thread(machine.fsck, disk)
    return DebianCycle(first, second, status, output, disk, secret, found[0], after_resume)
