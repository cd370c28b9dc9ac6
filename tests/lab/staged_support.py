"""Guest-side helpers for the lab tests of staged loads on the real patched
kernel (tests/lab/test_staged_owner.py, test_staged_bounds.py): a loader child
process driven over a pipe, so it can be killed or moved into a cgroup between
its calls, and the markers a guest program prints for the host to check.

Everything here that calls ``kexec_load`` runs only inside a lab guest: the
Linux backend refuses unless the guest's command line enables it
(``kexechib.enable_kexec=1``).

The loader: ``python -m tests.lab.staged_support loader``, one command a line
on stdin, one errno a line on stdout:
  ``start N``  KS_start with N 1 MiB preserve-context segments from BASE
  ``mid``      KS_mid with the next 1 MiB segment
  ``final``    KS_final, entry BASE
  ``probe``    the backend's flag probe with stage bits (EFAULT when accepted)
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SIZE, Segment, Stage, page_align_down, page_align_up
from kexechibd.kernel.api import MemoryKind
from kexechibd.lab import GuestResult, GuestSpec, new_workdir, run_guest
from tests.sizes import MIB

TOP = Path(__file__).resolve().parents[2]
BASE = 64 * MIB  # destinations: RAM of a 512 MiB guest; nothing is jumped to
KEEP = True  # preserve-context: every destination page gets a (zeroed) source page


# ================================================================ host side


def run_guest_program(
    lab: Path,
    module: str,
    name: str,
    *,
    memory_mib: int = 512,
    timeout: float = 300,
    disks: tuple[Path, ...] = (),
) -> GuestResult:
    """Boot ``lab`` with real kexec enabled and run ``python -m <module> guest``
    from the checkout (``disks``: raw files as /dev/vda, ...); the guest must
    exit 0."""
    spec = GuestSpec(
        disks=disks,
        command=f"cd {TOP}\nexec {sys.executable} -m {module} guest\n",
        kernel=lab,
        memory_mib=memory_mib,
        append="kexechib.enable_kexec=1",
        timeout=timeout,
        name=name,
    )
    result = run_guest(spec, new_workdir(name))
    assert result.exit_status == 0, result.describe()
    return result


def guest_main(guest: Callable[[], int]) -> NoReturn:  # pragma: no cover - in lab guests
    """The entry of a lab test module run as ``python -m <module> guest``
    (what ``run_guest_program`` starts): exit with ``guest()``'s status."""
    if sys.argv[1:] != ["guest"]:
        raise SystemExit(f"usage: python -m <module> guest, not {sys.argv[1:]}")
    sys.exit(guest())


def markers(result: GuestResult, kind: str) -> dict[str, str]:
    """The fields of the guest's ``KEXECHIB-LAB <kind> k=v ...`` line."""
    for line in result.lines:
        words = line.text.split()
        if len(words) >= 2 and words[0] == "KEXECHIB-LAB" and words[1] == kind:
            return dict(w.split("=", 1) for w in words[2:] if "=" in w)
    raise AssertionError(f"no {kind} marker\n{result.describe()}")


def memory_back(got: dict[str, str]) -> bool:
    """Free memory (``mem_free_kib``) after is at most 1% below before (it may
    be above: the page cache and the loader's own memory come and go)."""
    before, after = int(got["free_before_kib"]), int(got["free_after_kib"])
    return after >= before - before // 100


# =============================================================== guest side


def say(kind: str, **fields: object) -> None:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"KEXECHIB-LAB {kind} {text}".rstrip(), flush=True)


def errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err)) if err else "0"


def call(entry: int, segments: Sequence[Segment], flags: int) -> int:
    """One ``kexec_load``: 0 or its errno."""
    from kexechibd.kernel.linux import LinuxKernel

    try:
        LinuxKernel().kexec_load(entry, segments, flags)
    except abi.KernelError as exc:
        return exc.errno
    return 0


def mib_segments(first_mib: int, count: int) -> list[Segment]:
    return [Segment.zero(BASE + (first_mib + i) * MIB, MIB) for i in range(count)]


def meminfo_kib(field: str) -> int:
    """A ``/proc/meminfo`` field in KiB (MemTotal is ``totalram_pages()``)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/meminfo")


def mem_free_kib() -> int:
    """Free memory in KiB: MemFree plus the pages waiting on the per-cpu free
    lists, which MemFree leaves out. Since Linux 6.7 those lists tune their
    own size and can hold megabytes that a process has just freed, enough to
    look like a leak when a test compares before with after."""
    return meminfo_kib("MemFree") + per_cpu_free_pages() * PAGE_SIZE // 1024


def per_cpu_free_pages() -> int:
    """The pages on every zone's per-cpu free lists (``count:`` of each cpu
    under ``pagesets`` in /proc/zoneinfo)."""
    return sum(
        int(line.split()[1])
        for line in Path("/proc/zoneinfo").read_text().splitlines()
        if line.strip().startswith("count:")
    )


def pgmap() -> bytes:
    from kexechibd.kernel.linux import LinuxKernel

    return LinuxKernel().kexec_pgmap()


def largest_ram_range() -> tuple[int, int]:
    """The whole pages of the largest System RAM range, ``[start, end)``."""
    from kexechibd.kernel.linux import LinuxKernel

    ram = [r for r in LinuxKernel().memory_map() if r.kind is MemoryKind.RAM]
    largest = max(ram, key=lambda r: r.end - r.start)
    return page_align_up(largest.start), page_align_down(largest.end)


def kernel_log() -> list[str]:
    """The kernel log so far (``/dev/kmsg`` records, without their prefix)."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    lines = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten records: skip on
                continue
            lines.append(record.decode(errors="replace").split(";", 1)[-1].rstrip())
    finally:
        os.close(fd)
    return lines


def oom_kills() -> int:
    """How many OOM kills the kernel has logged."""
    return sum("Out of memory" in line or "oom-kill" in line for line in kernel_log())


def _loader() -> int:
    from kexechibd.kernel.linux import LinuxKernel

    next_mib = 0
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "start":
            n = int(args[0])
            err = call(0, mib_segments(0, n), abi.load_flags(Stage.START, preserve_context=KEEP))
            next_mib = n
        elif cmd == "mid":
            err = call(
                0, mib_segments(next_mib, 1), abi.load_flags(Stage.MID, preserve_context=KEEP)
            )
            next_mib += 1
        elif cmd == "final":
            err = call(BASE, [], abi.load_flags(Stage.FINAL, preserve_context=KEEP))
        elif cmd == "probe":
            # The backend's own flag probe (DESIGN §2.2): True when EFAULT.
            flags = abi.load_flags(Stage.MID, preserve_context=KEEP)
            accepted = LinuxKernel()._flags_accepted(flags)
            err = errno.EFAULT if accepted else errno.EINVAL if accepted is False else -1
        else:
            raise SystemExit(f"loader: unknown command {cmd}")
        print(err, flush=True)
    return 0


class Loader:
    """A loader child process (see the module's docstring)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.staged_support", "loader"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: str) -> None:
        """Ask for ``command`` without waiting for its errno."""
        assert self.proc.stdin
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answered(self) -> bool:
        """Whether the loader has written an errno that was not read yet."""
        assert self.proc.stdout
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def do(self, command: str) -> int:
        assert self.proc.stdout
        self.send(command)
        return int(self.proc.stdout.readline())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def end(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait()


if __name__ == "__main__":  # pragma: no cover - runs inside lab guests
    if sys.argv[1:] != ["loader"]:
        raise SystemExit(f"usage: python -m tests.lab.staged_support loader, not {sys.argv[1:]}")
    sys.exit(_loader())
