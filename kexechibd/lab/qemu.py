"""Boot a lab guest in QEMU and collect what it did.

One QEMU process per guest, driven over QMP (qemu.qmp) on a socketpair; the
serial console arrives on a second socketpair and is timestamped line by line
(host clock, seconds since QEMU started) and written to `serial.log`. Every
guest has a hard deadline; QEMU dies with the harness (PR_SET_PDEATHSIG) and
is always killed on the way out of `Guest`, whatever happened.

    result = run_guest(GuestSpec(command="echo hello"))
    assert result.exit_status == 0 and "hello" in result.output

For interaction while the guest runs (wait for a line, then act):

    async with Guest(spec) as guest:
        await guest.wait_for(r"ready")
        ...
        result = await guest.wait()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TextIO

from qemu.qmp import QMPClient

from kexechibd.lab.initramfs import MARKER, lab_initramfs
from kexechibd.lab.kernel import cache_root, lab_kernel

QEMU = "qemu-system-x86_64"
# The guests' files that the guest itself reads over 9p (B's kernel, initrd and
# scripts) must be outside the paths the guest covers with tmpfs (/tmp, /run).
WORK_ROOT = Path("/var/tmp/kexechib-lab")
BASE_CMDLINE = "console=ttyS0 panic=-1"
# Guests cover the host's /tmp with their own tmpfs; a checkout that lives
# under /tmp (a CI clone, say) is bound back in so commands can use it.
CHECKOUT = Path(__file__).resolve().parents[2]
if CHECKOUT.is_relative_to("/tmp"):
    BASE_CMDLINE += f" kexechib.lab.keep={CHECKOUT}"
_MARKER_RE = re.compile(MARKER + r" ([\w-]+)((?: [\w.-]+=\S*)*)")
_RECORD_RE = re.compile(MARKER + r" ([\w-]+) ([\[{].*)$")


class LabError(RuntimeError):
    """The guest could not be started or driven."""


def qemu_available() -> str | None:
    """None when QEMU can run here, else the reason it cannot."""
    binary = shutil.which(QEMU)
    if binary is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    return None


@dataclass(frozen=True)
class GuestSpec:
    """What to boot and run.

    `command` is a shell script, run with /bin/sh inside the chroot of the host
    root (or of the initramfs with `kexechib.lab.root=none` in `append`).
    """

    command: str
    kernel: Path | None = None  # default: the lab kernel (built if needed)
    initrd: Path | None = None  # default: the lab initramfs
    memory_mib: int = 512
    append: str = ""  # extra kernel arguments
    disks: tuple[Path, ...] = ()  # raw files as virtio-blk: /dev/vda, /dev/vdb, ...
    timeout: float = 120.0  # hard limit for the whole guest, seconds
    # A 64 MiB translation cache instead of QEMU's 1 GiB: TCG write-protects
    # every page it translated code from and handles each store to it on a
    # slow path, so the page swap when B jumps back to A (B's whole window)
    # took 10-60 s after B's daemon had run; flushed more often, about 1 s
    # (docs/lab.md). 16 MiB makes Python's start several times slower.
    accel: str = "tcg,tb-size=64"
    # No 5-level paging, like most machines and like the machine model: with
    # LA57 the kernel's kexec destination limit is 2^52 instead of 2^46, and
    # the conformance vector `beyond_limit` loads (docs/lab.md).
    cpu: str = "max,la57=off"
    extra_virtfs: tuple[tuple[str, Path], ...] = ()  # more (mount tag, host path), read-only
    qemu_args: tuple[str, ...] = ()
    name: str = "guest"
    # "bios" (SeaBIOS, QEMU's default) or "uefi": OVMF's code read-only and a
    # copy of its variable store in the work directory as pflash, the way
    # laptops boot (`-kernel` still works: OVMF starts it through its EFI stub).
    firmware: str = "bios"
    # UEFI only: the variable store (NVRAM) to use, kept across guests like a
    # machine's (made from OVMF_VARS.fd if missing); default: a fresh copy in
    # the work directory.
    firmware_vars: Path | None = None
    cpus: int = 1
    machine: str = "pc"
    # False: the kernel boots the init of the root it is given (`root=` in
    # `append`, e.g. the Debian guest's disk): no initrd unless `initrd`
    # names one, and no host root over 9p.
    lab_init: bool = True
    # After the `exit` marker, how long QEMU may take to power off before it
    # is stopped (a systemd guest shuts down cleanly first).
    exit_grace: float = 10.0


@dataclass(frozen=True)
class LogLine:
    seconds: float  # host time since QEMU started
    text: str


@dataclass(frozen=True)
class Marker:
    """A `KEXECHIB-LAB <kind> key=value ...` line from the lab's init or a test script."""

    kind: str
    fields: dict[str, str]
    seconds: float


@dataclass(frozen=True)
class GuestResult:
    exit_status: int | None  # the command's exit status; None if init never reported one
    lines: tuple[LogLine, ...]  # the serial console
    workdir: Path  # serial.log and the guest's other files
    timed_out: bool
    shutdown_reason: str | None  # QMP SHUTDOWN reason: guest-shutdown, guest-reset, ...
    wall_seconds: float  # QEMU start to QEMU gone

    @property
    def log(self) -> str:
        return "\n".join(line.text for line in self.lines)

    @property
    def markers(self) -> list[Marker]:
        found = []
        for line in self.lines:
            m = _MARKER_RE.search(line.text)
            if m:
                fields = dict(f.split("=", 1) for f in m.group(2).split())
                found.append(Marker(m.group(1), fields, line.seconds))
        return found

    def marker(self, kind: str) -> Marker | None:
        """The first marker of this kind."""
        return next((m for m in self.markers if m.kind == kind), None)

    def records(self, kind: str) -> list[object]:
        """The JSON values the guest printed as `KEXECHIB-LAB <kind> <json>` lines."""
        found = []
        for line in self.lines:
            m = _RECORD_RE.search(line.text)
            if m and m.group(1) == kind:
                try:
                    found.append(json.loads(m.group(2)))
                except ValueError as exc:
                    raise LabError(f"unreadable {kind} record: {line.text!r}") from exc
        return found

    @property
    def boot_seconds(self) -> float | None:
        """Host time from QEMU start until the lab's /init ran."""
        m = self.marker("init")
        return m.seconds if m else None

    @property
    def command_seconds(self) -> float | None:
        """Host time the command took (from init's `run` to its `exit`)."""
        start, end = self.marker("run"), self.marker("exit")
        return end.seconds - start.seconds if start and end else None

    @property
    def output(self) -> str:
        """Console text between init's `run` and `exit` lines (kernel messages included)."""
        texts = [line.text for line in self.lines]
        start = next((i for i, t in enumerate(texts) if f"{MARKER} run " in t), -1)
        end = next((i for i, t in enumerate(texts) if f"{MARKER} exit " in t), len(texts))
        return "\n".join(texts[start + 1 : end])

    def tail(self, n: int = 40) -> str:
        return "\n".join(line.text for line in self.lines[-n:])

    def describe(self, lines: int = 60) -> str:
        """Status and the console's tail, for assertion messages."""
        return (
            f"status={self.exit_status} shutdown={self.shutdown_reason} "
            f"timed_out={self.timed_out} log={self.workdir / 'serial.log'}\n" + self.tail(lines)
        )

    def check(self) -> GuestResult:
        """Self if the command exited 0, else LabError with the console's tail."""
        if self.exit_status != 0:
            raise LabError(
                f"guest command failed: status={self.exit_status} timed_out={self.timed_out} "
                f"shutdown={self.shutdown_reason}; log {self.workdir / 'serial.log'}:\n"
                + self.tail()
            )
        return self


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")


def firmware_args(firmware: str, workdir: Path, variables: Path | None = None) -> list[str]:
    """QEMU arguments for the guest's firmware (see GuestSpec.firmware)."""
    if firmware == "bios":
        return []
    if firmware != "uefi":
        raise LabError(f"unknown firmware {firmware!r} (bios or uefi)")
    if not OVMF_CODE.exists():
        raise LabError(f"{OVMF_CODE} is missing (apt-get install ovmf)")
    if variables is None:
        variables = workdir / "OVMF_VARS.fd"
    if not variables.exists():
        shutil.copyfile(OVMF_VARS, variables)
    return [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={variables}",
    ]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: QEMU gets SIGKILL when we die.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def default_initramfs() -> Path:
    """The standard lab initramfs, cached by content in the lab cache."""
    directory = cache_root() / "initramfs"
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        path = Path(tmp.name)
    try:
        lab_initramfs(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        final = directory / f"lab-{digest}.cpio"
        if final.exists():
            path.unlink()
        else:
            path.rename(final)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return final


# A failed test keeps its work directory for the logs, and a killed run
# leaves its own: a Debian guest's is 2.2 GB, and 56 of them once filled the
# disk (69 GB).  Older than this, nothing still uses one (a Debian cycle takes
# minutes), so each new one prunes them.
KEPT_FOR = 12 * 3600


def prune_workdirs(root: Path = WORK_ROOT, *, older_than: float = KEPT_FOR) -> list[Path]:
    """Remove the work directories under ``root`` untouched for ``older_than``
    seconds (an overlay still mounted there is left alone); returns them."""
    removed: list[Path] = []
    cutoff = time.time() - older_than
    mounted = {line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()}
    for entry in root.iterdir() if root.is_dir() else ():
        try:
            stale = entry.is_dir() and entry.stat().st_mtime < cutoff
        except FileNotFoundError:
            continue
        if stale and not any(m.startswith(f"{entry}/") for m in mounted):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def new_workdir(name: str = "guest") -> Path:
    """A fresh directory the guest can read at the same path (see WORK_ROOT)."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    prune_workdirs()
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=WORK_ROOT))


@dataclass
class _Waiter:
    pattern: re.Pattern[str]
    future: asyncio.Future[LogLine]


@dataclass
class Guest:
    """A running guest; use `async with Guest(spec) as guest:`."""

    spec: GuestSpec
    workdir: Path | None = None
    lines: list[LogLine] = field(default_factory=list)
    # Called with every console line as it arrives (make demo shows progress).
    on_line: Callable[[LogLine], None] | None = None

    def __post_init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._socks: list[socket.socket] = []
        self._waiters: list[_Waiter] = []
        self._started = 0.0
        self._deadline = 0.0
        self._shutdown_reason: str | None = None
        self._timed_out = False
        self._ended: float | None = None
        self._log: TextIO | None = None

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Guest:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _command_line(
        self, kernel: Path, initrd: Path | None, serial_fd: int, qmp_fd: int
    ) -> list[str]:
        spec = self.spec
        assert self.workdir is not None
        run = self.workdir / "run.sh"
        run.write_text(spec.command)
        append = f"{BASE_CMDLINE} {spec.append}".strip()
        args = [
            QEMU,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-machine",
            spec.machine,
            "-accel",
            spec.accel,
            "-cpu",
            spec.cpu,
            "-m",
            str(spec.memory_mib),
            "-smp",
            str(spec.cpus),
            "-no-reboot",
            *firmware_args(spec.firmware, self.workdir, spec.firmware_vars),
            "-kernel",
            str(kernel),
            *(["-initrd", str(initrd)] if initrd is not None else []),
            "-append",
            append,
            "-chardev",
            f"socket,id=serial0,fd={serial_fd}",
            "-serial",
            "chardev:serial0",
            "-chardev",
            f"socket,id=qmp0,fd={qmp_fd}",
            "-mon",
            "chardev=qmp0,mode=control",
            "-fw_cfg",
            f"name=opt/kexechib/run,file={run}",
        ]
        if spec.lab_init:
            args += [
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ]
        for tag, path in spec.extra_virtfs:
            args += [
                "-virtfs",
                f"local,path={path},mount_tag={tag},security_model=none,"
                "readonly=on,multidevs=remap",
            ]
        for disk in spec.disks:
            args += ["-drive", f"file={disk},if=virtio,format=raw"]
        return [*args, *spec.qemu_args]

    async def start(self) -> None:
        reason = qemu_available()
        if reason:
            raise LabError(reason)
        spec = self.spec
        kernel = spec.kernel if spec.kernel else await asyncio.to_thread(lab_kernel)
        initrd = spec.initrd
        if initrd is None and spec.lab_init:
            initrd = await asyncio.to_thread(default_initramfs)
        if self.workdir is None:
            self.workdir = new_workdir(spec.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        serial_ours, serial_theirs = socket.socketpair()
        qmp_ours, qmp_theirs = socket.socketpair()
        self._socks = [serial_ours, serial_theirs, qmp_ours, qmp_theirs]
        argv = self._command_line(kernel, initrd, serial_theirs.fileno(), qmp_theirs.fileno())
        (self.workdir / "qemu.cmdline").write_text(" ".join(argv) + "\n")
        self._log = open(self.workdir / "serial.log", "w")  # noqa: SIM115 (closed in stop)
        self._started = time.monotonic()
        self._deadline = self._started + spec.timeout
        with open(self.workdir / "qemu.out", "w") as qemu_out:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=qemu_out,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(serial_theirs.fileno(), qmp_theirs.fileno()),
                preexec_fn=_die_with_parent,
            )
        serial_theirs.close()
        qmp_theirs.close()
        self._tasks.append(asyncio.create_task(self._read_serial(serial_ours)))
        self._qmp = QMPClient(spec.name)
        try:
            await asyncio.wait_for(self._qmp.connect(qmp_ours), timeout=30)
        except Exception as exc:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), timeout=3)
            said = (self.workdir / "qemu.out").read_text(errors="replace").strip()
            raise LabError(f"QEMU did not come up ({exc!r}): {said[-2000:]}") from exc
        self._tasks.append(asyncio.create_task(self._watch_events()))

    async def stop(self) -> None:
        """Kill QEMU if it still runs, and release everything. Safe to call twice."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if self._qmp is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._qmp.execute("quit"), timeout=2)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=3)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._ended is None and self._started:
            self._ended = time.monotonic()
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._qmp.disconnect(), timeout=2)
            self._qmp = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        for sock in self._socks:
            sock.close()
        self._socks = []
        log = self._log
        if log is not None:
            log.close()
            self._log = None

    # ------------------------------------------------------------------ console, events
    def _add_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        line = LogLine(round(time.monotonic() - self._started, 3), text)
        self.lines.append(line)
        if self._log is not None:
            self._log.write(f"[{line.seconds:8.3f}] {text}\n")
            self._log.flush()
        for waiter in list(self._waiters):
            if not waiter.future.done() and waiter.pattern.search(text):
                waiter.future.set_result(line)
                self._waiters.remove(waiter)
        if self.on_line is not None:
            self.on_line(line)

    async def _read_serial(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            buffer = b""
            while chunk := await reader.read(65536):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    self._add_line(raw)
            if buffer:
                self._add_line(buffer)
        finally:
            writer.close()

    async def _watch_events(self) -> None:
        assert self._qmp is not None
        async for event in self._qmp.events:
            if event["event"] == "SHUTDOWN":
                data = event.get("data")
                if isinstance(data, dict):
                    self._shutdown_reason = str(data.get("reason"))

    # ------------------------------------------------------------------ use
    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    async def wait_for(self, pattern: str, timeout: float | None = None) -> LogLine:
        """The first console line (already seen or to come) that matches `pattern`.

        Raises LabError when QEMU exits or the time runs out first (the guest's
        own deadline bounds `timeout`).
        """
        regex = re.compile(pattern)
        for line in self.lines:
            if regex.search(line.text):
                return line
        future: asyncio.Future[LogLine] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(regex, future))
        assert self._proc is not None
        exited: asyncio.Future[int] = asyncio.ensure_future(self._proc.wait())
        limit = self.remaining() if timeout is None else min(timeout, self.remaining())
        try:
            waits: set[asyncio.Future[LogLine] | asyncio.Future[int]] = {future, exited}
            done, _ = await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if future in done:
            return future.result()
        future.cancel()
        why = "QEMU exited" if exited in done else f"no match within {limit:.0f} s"
        raise LabError(
            f"waiting for {pattern!r}: {why}; console tail:\n"
            + "\n".join(line.text for line in self.lines[-20:])
        )

    async def qmp(self, command: str, **arguments: object) -> object:
        if self._qmp is None:
            raise LabError("QMP is not connected")
        return await self._qmp.execute(command, arguments or None)

    async def kill(self) -> None:
        """SIGKILL QEMU now: the guest loses power mid-stride, with no flush
        and no shutdown. `wait()` then sums up as usual."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()

    async def wait(self, exit_grace: float | None = None) -> GuestResult:
        """Wait for the guest to end (or the deadline), stop QEMU, and sum up.

        When the lab's init has printed its exit line but QEMU has not gone
        within `exit_grace` seconds (default: the spec's; power-off not
        honoured), QEMU is stopped.
        """
        assert self._proc is not None and self.workdir is not None
        if exit_grace is None:
            exit_grace = self.spec.exit_grace
        proc_wait = asyncio.create_task(self._proc.wait())
        try:
            exit_seen = asyncio.create_task(self.wait_for(rf"{MARKER} exit "))
            done, _ = await asyncio.wait(
                {proc_wait, exit_seen},
                timeout=self.remaining(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            exit_printed = exit_seen in done and exit_seen.exception() is None
            if exit_printed and proc_wait not in done:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(proc_wait), timeout=min(exit_grace, self.remaining())
                    )
            elif proc_wait not in done:
                # wait_for gave up at the deadline, or nothing happened at all.
                self._timed_out = True
            exit_seen.cancel()
            with contextlib.suppress(BaseException):
                await exit_seen
        finally:
            proc_wait.cancel()
        if self._proc.returncode is not None:
            self._ended = time.monotonic()
        if self._proc.returncode is not None and self._tasks:
            # QEMU is gone: the console reader ends at EOF once it has read all.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), timeout=2)
        await self.stop()
        exit_marker = next((m for m in self._markers() if m.kind == "exit"), None)
        status = None
        if exit_marker is not None and exit_marker.fields.get("status", "").isdigit():
            status = int(exit_marker.fields["status"])
        assert self._ended is not None
        return GuestResult(
            exit_status=status,
            lines=tuple(self.lines),
            workdir=self.workdir,
            timed_out=self._timed_out,
            shutdown_reason=self._shutdown_reason,
            wall_seconds=round(self._ended - self._started, 3),
        )

    def _markers(self) -> Sequence[Marker]:
        return GuestResult(None, tuple(self.lines), Path(), False, None, 0.0).markers


async def run_guest_async(spec: GuestSpec, workdir: Path | None = None) -> GuestResult:
    async with Guest(spec, workdir) as guest:
        return await guest.wait()


def run_guest(spec: GuestSpec, workdir: Path | None = None) -> GuestResult:
    """Boot, run `spec.command`, power off; always returns (or raises LabError)."""
    return asyncio.run(run_guest_async(spec, workdir))


def remove_workdir(result: GuestResult) -> None:
    """Remove a result's work directory (keep it when a test fails, for the logs)."""
    if result.workdir.is_relative_to(WORK_ROOT):
        shutil.rmtree(result.workdir, ignore_errors=True)


__all__ = [
    "Guest",
    "GuestResult",
    "GuestSpec",
    "LabError",
    "LogLine",
    "Marker",
    "default_initramfs",
    "new_workdir",
    "qemu_available",
    "remove_workdir",
    "run_guest",
    "run_guest_async",
]
