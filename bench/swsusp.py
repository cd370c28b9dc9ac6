"""Issue 15, item 1: kexechibd against the kernel's own hibernation (swsusp),
head to head on the same Debian guest (kexechibd/lab/debian.py: Debian 12,
systemd, logind, OVMF, two CPUs, 1 GiB, the lab kernel).

Both sides run the same guest script (guest/debian/bench-cycle.sh): the same
fill (every file under /usr read into the page cache, a process holding
anonymous memory that compresses like a heap and random data), then logind's
Hibernate(false), as desktops ask; QEMU 2 boots the same disk and the guest
resumes. What differs is the disk:

- kexechibd: the checkout's package installed (`dpkg -i`), the image file
  prepared, its drop-in making logind's hibernate.target call kexechibd;
- swsusp: the same Debian without kexechibd, a swap disk (/dev/vdb, mkswap
  on the host, swapped on by the script) and `resume=/dev/vdb`: systemd-sleep
  writes `disk` to /sys/power/state; the kernel's image is LZO-compressed
  (this kernel's CONFIG_HIBERNATION_DEF_COMP) or, with `hibernate=nocompress`,
  not; Debian's initramfs resumes it.

Per cycle, from the consoles (host clock; the guests' clocks stop while
off): hibernate = the Hibernate call → QEMU 1 gone; resume = QEMU 2 start →
the fill's process has checked its memory; bytes written (ours: what B
committed; swsusp: the swap disk file's allocated bytes, grown since mkswap);
MemFree, Cached and AnonPages before the call and after the resume; and the
seconds to read the files again after the resume, next to their first read
from the disk (cold) and a second before the call (warm). Sides run
interleaved, medians are reported; times are QEMU TCG times on this machine,
comparisons are ratios of the same run.

Run: ``.venv/bin/python -m bench.swsusp [--repeats N] [--sides ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import aligned, allocated_bytes, load_text, median
from kexechibd.lab import GuestResult, lab_kernel, new_workdir
from kexechibd.lab.cycle import committed_bytes
from kexechibd.lab.debian import DebianMachine, TwoBoots, boot_twice, debian_disk

SCRIPT = "bench-cycle.sh"
# The fill of a 1 GiB guest: 256 MiB that compresses like a heap, 64 MiB of
# random bytes, and the page cache of /usr (about 250 MB of real files).
FILL = "kexechib.lab.anon_mib=256 kexechib.lab.random_mib=64"
SWAP_SIZE = 1536 << 20  # above the guest's RAM: logind checks the swap can hold the image
# The physical limit: after the resume the script times `dd` of LIMIT_MIB to
# and from a scratch disk of the same kind (a raw file beside the others).
LIMIT_MIB = 256


def scratch(disk: Path) -> Path:
    """A blank raw disk file beside ``disk``, for the limit's `dd`."""
    path = disk.parent / "scratch.img"
    if not path.exists():
        with path.open("wb") as f:
            f.truncate((LIMIT_MIB + 16) << 20)
    return path


class OursMachine(DebianMachine):
    """The Debian guest with kexechibd, as the hibernate cycle's."""

    name = "kexechibd"
    append = f"{FILL} kexechib.lab.scratch=/dev/vdb kexechib.lab.limit_mib={LIMIT_MIB}"

    def more_disks(self, disk: Path) -> tuple[Path, ...]:
        return (scratch(disk),)

    def written(self, disk: Path, hibernated: GuestResult) -> int:
        """What kernel B committed."""
        return committed(hibernated)


class SwsuspMachine(DebianMachine):
    """The same Debian without kexechibd, hibernating to a swap disk."""

    def __init__(self, *, compress: bool) -> None:
        self.name = "swsusp-lzo" if compress else "swsusp-none"
        self.append = (
            f"{FILL} kexechib.lab.scratch=/dev/vdc kexechib.lab.limit_mib={LIMIT_MIB} "
            "kexechib.lab.swap=/dev/vdb resume=/dev/vdb"
            + ("" if compress else " hibernate=nocompress")
        )
        self.unwritten: dict[Path, int] = {}  # the swap file's allocated bytes after mkswap

    def disk(self, workdir: Path, kernel: Path) -> Path:
        disk = debian_disk(workdir, kernel, image=False, product=False)
        swap = self.swap(disk)
        with swap.open("wb") as f:
            f.truncate(SWAP_SIZE)
        subprocess.run(["mkswap", "-q", "-L", "swap", str(swap)], check=True)
        self.unwritten[disk] = allocated_bytes(swap)
        return disk

    def written(self, disk: Path, hibernated: GuestResult) -> int:
        """The bytes written to the swap disk since mkswap (QEMU writes a
        raw file's blocks as the guest writes them; they were holes)."""
        return allocated_bytes(self.swap(disk)) - self.unwritten[disk]

    def more_disks(self, disk: Path) -> tuple[Path, ...]:
        return (self.swap(disk), scratch(disk))

    @staticmethod
    def swap(disk: Path) -> Path:
        return disk.parent / "swap.img"


SIDES: dict[str, OursMachine | SwsuspMachine] = {
    m.name: m for m in (OursMachine(), SwsuspMachine(compress=True), SwsuspMachine(compress=False))
}


@dataclass(frozen=True)
class Cycle:
    side: str
    hibernate: float  # s: the Hibernate call -> QEMU 1 gone
    resume: float  # s: QEMU 2 start -> the fill's process checked itself
    written: int  # bytes
    before: dict[str, int]  # KiB: memfree, cached, anonpages
    after: dict[str, int]
    cold_read: float  # s: the files' first read, from the disk
    warm_read: float  # s: again, before the call
    reread: float  # s: again, after the resume
    memory: str  # the fill's check: "intact"
    disk_write: float  # MB/s: dd oflag=direct to a disk of the same kind, after the resume
    disk_read: float  # MB/s: dd iflag=direct from it


class CycleFailed(RuntimeError):
    pass


def _fields(result: GuestResult | None, kind: str) -> dict[str, str]:
    marker = result.marker(kind) if result is not None else None
    if marker is None:
        where = result.describe() if result is not None else "no second boot"
        raise CycleFailed(f"no {kind} marker: {where}")
    return marker.fields


def _seen(result: GuestResult, text: str) -> float:
    for line in result.lines:
        if text in line.text:
            return line.seconds
    raise CycleFailed(f"never seen: {text!r}: {result.describe()}")


def committed(result: GuestResult) -> int:
    written = committed_bytes(result)
    if written is None:
        raise CycleFailed(f"B committed no image: {result.describe()}")
    return written


def measure(side: str, runs: TwoBoots, written: int) -> Cycle:
    one, two = runs.hibernate, runs.resume
    if two is None or two.marker("c-boots-on") is not None:
        raise CycleFailed(f"{side}: the second boot did not resume: {(two or one).describe()}")
    back = _fields(two, "h-back")
    if back.get("status") != "0":
        raise CycleFailed(f"{side}: Hibernate failed: {back}")
    before, after = _fields(one, "h-before"), _fields(two, "h-after")
    kinds = ("memfree", "cached", "anonpages")
    return Cycle(
        side=side,
        hibernate=one.wall_seconds - _seen(one, "KEXECHIB-LAB h-request"),
        resume=_seen(two, "KEXECHIB-LAB h-running"),
        written=written,
        before={k: int(before[k]) for k in kinds},
        after={k: int(after[k]) for k in kinds},
        cold_read=float(_fields(one, "h-fill")["cold_read"]),
        warm_read=float(before["warm_read"]),
        reread=float(after["reread"]),
        memory=_fields(two, "h-running").get("memory", "?"),
        disk_write=float(_fields(two, "h-limit")["write_mb_s"]),
        disk_read=float(_fields(two, "h-limit")["read_mb_s"]),
    )


def run_cycle(kernel: Path, side: str, *, keep: bool = False) -> Cycle:
    machine = SIDES[side]
    workdir = new_workdir(f"bench-swsusp-{side}")
    written: list[int] = []

    def after_save(disk: Path, result: GuestResult) -> None:
        written.append(machine.written(disk, result))

    try:
        runs = asyncio.run(boot_twice(kernel, workdir, machine, SCRIPT, after_save=after_save))
        cycle = measure(side, runs, written[0])
    except CycleFailed:
        print(f"(kept {workdir})", file=sys.stderr)
        raise
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return cycle


@dataclass
class Table:
    sides: list[str]
    cycles: dict[str, list[Cycle]] = field(default_factory=dict)

    def add(self, cycle: Cycle) -> None:
        self.cycles.setdefault(cycle.side, []).append(cycle)

    def median(self, side: str, figure: str) -> float:
        return median([_value(c, figure) for c in self.cycles[side]])

    def lines(self) -> list[str]:
        ours = "kexechibd"
        others = [s for s in self.sides if s != ours]
        head = ["figure", *self.sides, *(f"{ours} vs {s}" for s in others if ours in self.sides)]
        rows = [head]
        for figure, unit, better in FIGURES:
            cells = [f"{figure} ({unit})"]
            cells += [_fmt(self.median(s, figure), unit) for s in self.sides]
            if ours in self.sides:
                for s in others:
                    o, t = self.median(ours, figure), self.median(s, figure)
                    cells.append(_ratio(o, t, better))
            rows.append(cells)
        return aligned(rows)


# (figure, unit, which is better: "lower" or "higher"; "" for no ratio)
FIGURES = (
    ("hibernate: call -> off", "s", "lower"),
    ("resume: QEMU start -> workload runs", "s", "lower"),
    ("hibernate + resume", "s", "lower"),
    ("bytes written", "MB", "lower"),
    ("MemFree before", "MiB", ""),
    ("MemFree after resume", "MiB", ""),
    ("Cached before", "MiB", ""),
    ("Cached after resume", "MiB", "higher"),
    ("AnonPages after resume", "MiB", ""),
    ("files: first read (cold)", "s", ""),
    ("files: read before (warm)", "s", ""),
    ("files: read after resume", "s", "lower"),
    ("limit: bytes written at dd's rate", "s", ""),
    ("limit: bytes read at dd's rate", "s", ""),
)


def _value(c: Cycle, figure: str) -> float:
    return {
        "hibernate: call -> off": c.hibernate,
        "resume: QEMU start -> workload runs": c.resume,
        "hibernate + resume": c.hibernate + c.resume,
        "bytes written": c.written / 1e6,
        "MemFree before": c.before["memfree"] / 1024,
        "MemFree after resume": c.after["memfree"] / 1024,
        "Cached before": c.before["cached"] / 1024,
        "Cached after resume": c.after["cached"] / 1024,
        "AnonPages after resume": c.after["anonpages"] / 1024,
        "files: first read (cold)": c.cold_read,
        "files: read before (warm)": c.warm_read,
        "files: read after resume": c.reread,
        "limit: bytes written at dd's rate": c.written / 1e6 / c.disk_write,
        "limit: bytes read at dd's rate": c.written / 1e6 / c.disk_read,
    }[figure]


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit in ("MB", "MiB") else f"{value:.2f}"


def _ratio(ours: float, theirs: float, better: str) -> str:
    """Oriented so that above 1 is better for kexechibd."""
    if not better or not ours or not theirs:
        return ""
    return f"{(theirs / ours if better == 'lower' else ours / theirs):.2f}×"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.swsusp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sides", default=",".join(SIDES), help="comma-separated: " + ", ".join(SIDES)
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)
    sides = [s for s in args.sides.split(",") if s]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        parser.error(f"unknown sides: {', '.join(unknown)}")
    kernel = lab_kernel()
    table = Table(sides)
    started = time.monotonic()
    load = load_text()
    for n in range(args.repeats):
        for side in sides:
            cycle = run_cycle(kernel, side, keep=args.keep)
            print(f"run {n + 1} {side}: {cycle}", flush=True)
            if cycle.memory != "intact":
                raise CycleFailed(f"{side}: the fill's memory is {cycle.memory} after the resume")
            table.add(cycle)
    print()
    print(
        f"kexechibd vs swsusp on the Debian guest (1 GiB, 2 CPUs, QEMU TCG), medians of "
        f"{args.repeats}, interleaved; ratios above 1 favour kexechibd"
    )
    print("\n".join(table.lines()))
    print(
        f"({time.monotonic() - started:.0f} s in all; "
        f"load average {load} before, {load_text()} after)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
