"""Issue 2's placement benchmark: a staged load of N single-page segments
scattered over a 4 GiB model (8 GiB for 1M pages), for N up to 1M, next to
mainline's linear-scan placement (bench/mainline_placement.py) on the same
destinations.

  python -m bench.placement [--quick] [--budget SECONDS]

Ours is timed as a whole (every ``kexec_load`` call on the model) and split
into the time the model spends writing page data into its physical memory
(``PhysicalMemory.write``/``copy``/``zero``: ``pwrite`` into a tmpfs file —
the copy a kernel makes, and for a page never touched before, tmpfs
allocating it) and the rest: placement (destination tables, own-destination
runs, source allocation) and the model's per-call bookkeeping.  Mainline's
algorithm is placement alone, no data copied (which flatters it); it runs
at growing sizes while the next fits in ``--budget`` seconds (its time is
quadratic), and larger sizes are extrapolated from the largest measured,
marked as such.  Each load is checked: every destination is in the page map,
each source is its own destination or no destination at all, and sampled
sources hold the page's data.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.mainline_placement import MainlinePlacement
from kexechibd.kernel import abi
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine

RAM = 4 << 30
PAGE = b"\xa5" * abi.PAGE_SIZE
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 3_000)
# Mainline is measured at these sizes while the next one fits in the budget.
MAINLINE_SIZES = (1_000, 2_000, 4_000, 7_000, 10_000, 14_000, 20_000)
QUICK_MAINLINE_SIZES = (500, 1_000, 3_000)
MAINLINE_BUDGET_S = 60.0
CHECK_SAMPLE = 1_000  # source pages whose data is read back


def scratch_dir() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None, prefix="kexechib-bench-"))


def ram_for(n: int) -> int:
    """4 GiB, or enough that the destinations cover at most half of RAM."""
    return max(RAM, (2 * n * abi.PAGE_SIZE + (1 << 30) - 1) >> 30 << 30)


def destinations(n: int, seed: int = 1) -> list[int]:
    """``n`` distinct page frames scattered over the model's RAM above 64 MiB."""
    ram = ram_for(n)
    low = range(0x4000, (3 << 30) >> abi.PAGE_SHIFT)
    high = range((4 << 30) >> abi.PAGE_SHIFT, (ram + (1 << 30)) >> abi.PAGE_SHIFT)
    population = [*low, *high] if ram > 3 << 30 else list(low)
    return random.Random(seed).sample(population, n)


@dataclass(frozen=True)
class Ours:
    pages: int
    ram: int
    seconds: float
    data_seconds: float  # in the model's writes of page data

    @property
    def rest_seconds(self) -> float:
        return self.seconds - self.data_seconds


def ours(n: int) -> Ours:
    scratch = scratch_dir()
    try:
        return _ours(n, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _timed(method: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        t = time.perf_counter()
        try:
            return method(*args)
        finally:
            spent[0] += time.perf_counter() - t

    return wrapper


def _ours(n: int, scratch: Path) -> Ours:
    dests = destinations(n)
    with Machine.create(scratch / "m", ram=ram_for(n)) as machine:
        machine.power_on()
        with ModelKernel(machine) as kernel:
            memory = kernel.memory
            spent = [0.0]
            for name in ("write", "copy", "zero"):  # instance attributes shadow the methods
                setattr(memory, name, _timed(getattr(memory, name), spent))
            segs = [abi.Segment(PAGE, pfn << abi.PAGE_SHIFT, abi.PAGE_SIZE) for pfn in dests]
            step = abi.KEXEC_STAGE_SEGMENT_MAX
            start = time.perf_counter()
            for i in range(0, n, step):
                stage = abi.Stage.START if i == 0 else abi.Stage.MID
                kernel.kexec_load(0, segs[i : i + step], abi.load_flags(stage))
            kernel.kexec_load(0x100000, [], abi.load_flags(abi.Stage.FINAL))
            seconds = time.perf_counter() - start
            for name in ("write", "copy", "zero"):
                delattr(memory, name)
            check_ours(kernel, dests)
            kernel.kexec_load(0, [], abi.load_flags(abi.Stage.FULL))  # unload
    return Ours(n, ram_for(n), seconds, spent[0])


def check_ours(kernel: ModelKernel, dests: Sequence[int]) -> None:
    """The load placed every page: each destination has one source, which is
    the destination itself or no destination at all, and holds the data."""
    wanted = set(dests)
    sources: dict[int, int] = {}
    for run in abi.decode_page_map(kernel.kexec_pgmap()):
        for i in range(run.npages):
            sources[run.dest_pfn + i] = run.src_pfn + i
    if set(sources) != wanted:
        raise AssertionError(
            f"page map holds {len(sources)} destinations, {len(wanted)} were loaded "
            f"({len(wanted - set(sources))} missing)"
        )
    for dest, src in sources.items():
        if src != dest and src in wanted:
            raise AssertionError(f"page {dest:#x}'s source {src:#x} is another destination")
    for dest in random.Random(2).sample(list(dests), min(CHECK_SAMPLE, len(dests))):
        if kernel.memory.read(sources[dest] << abi.PAGE_SHIFT, abi.PAGE_SIZE) != PAGE:
            raise AssertionError(f"page {dest:#x}'s source does not hold its data")


def mainline(n: int) -> float:
    dests = destinations(n)
    free = iter(range(((3 << 30) >> abi.PAGE_SHIFT) - 1, 0, -1))  # top-down, like ours
    placement = MainlinePlacement(free)
    start = time.perf_counter()
    placement.load([(d, d + 1) for d in dests])
    seconds = time.perf_counter() - start
    check_mainline(placement, dests)
    return seconds


def check_mainline(placement: MainlinePlacement, dests: Sequence[int]) -> None:
    """One entry per destination, sources distinct, none of them another
    destination (what mainline's placement guarantees too)."""
    wanted = set(dests)
    got = [d for d, _ in placement.entries]
    if sorted(got) != sorted(dests):
        raise AssertionError("mainline placement did not place every destination once")
    sources = [s for _, s in placement.entries]
    if len(set(sources)) != len(sources):
        raise AssertionError("mainline placement gave two destinations one source")
    for dest, src in placement.entries:
        if src != dest and src in wanted:
            raise AssertionError(f"mainline: page {dest:#x}'s source {src:#x} is a destination")


@dataclass(frozen=True)
class Mainline:
    pages: int
    seconds: float
    measured: bool


def mainline_series(sizes: Sequence[int], budget: float) -> list[Mainline]:
    """Measured at ``sizes`` in order while the next one's predicted time
    (quadratic from the last) keeps the total within ``budget``."""
    out: list[Mainline] = []
    spent = 0.0
    for n in sorted(sizes):
        if out:
            last = out[-1]
            predicted = last.seconds * (n / last.pages) ** 2
            if spent + predicted > budget:
                break
        t = mainline(n)
        spent += t
        out.append(Mainline(n, t, True))
        print(f"mainline {n:,} pages: {t:.2f} s", flush=True)
    return out


def extrapolate(measured: Sequence[Mainline], n: int) -> Mainline:
    """Quadratic from the largest measured size."""
    last = max(measured, key=lambda m: m.pages)
    return Mainline(n, last.seconds * (n / last.pages) ** 2, False)


def exponent(measured: Sequence[Mainline]) -> float:
    """The power of N that mainline's time grew with, smallest to largest."""
    a, b = measured[0], measured[-1]
    return math.log(b.seconds / a.seconds) / math.log(b.pages / a.pages)


def table(rows: Sequence[tuple[Ours, Mainline]]) -> list[str]:
    base = rows[0][0]
    lines = [
        "| pages | model RAM | ours (s) | ours µs/page | of which data writes µs/page "
        "| placement and the rest µs/page | the rest, × first row | mainline (s) "
        "| mainline µs/page | mainline ÷ ours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o, m in rows:
        est = "" if m.measured else " (extrapolated)"
        approx = "" if m.measured else "~"
        lines.append(
            f"| {o.pages:,} | {o.ram >> 30} GiB | {o.seconds:.2f} | "
            f"{o.seconds / o.pages * 1e6:.1f} | {o.data_seconds / o.pages * 1e6:.1f} | "
            f"{o.rest_seconds / o.pages * 1e6:.1f} | "
            f"{(o.rest_seconds / o.pages) / (base.rest_seconds / base.pages):.2f}× | "
            f"{approx}{m.seconds:,.2f}{est} | {approx}{m.seconds / m.pages * 1e6:,.0f} | "
            f"{approx}{_times(m.seconds / o.seconds)}{est} |"
        )
    return lines


def _times(ratio: float) -> str:
    return f"{ratio:,.1f}×" if ratio < 10 else f"{ratio:,.0f}×"


def run(
    sizes: Sequence[int] = SIZES,
    mainline_sizes: Sequence[int] = MAINLINE_SIZES,
    budget: float = MAINLINE_BUDGET_S,
) -> tuple[list[str], list[Mainline]]:
    """The table's lines (markdown) and mainline's measured points."""
    measured = mainline_series(mainline_sizes, budget)
    by_size = {m.pages: m for m in measured}
    rows = []
    for n in sorted({*sizes, *by_size}):
        o = ours(n)
        print(
            f"ours {n:,} pages: {o.seconds:.2f} s ({o.data_seconds:.2f} s writing data)",
            flush=True,
        )
        rows.append((o, by_size.get(n) or extrapolate(measured, n)))
    return table(rows), measured


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes only (for make check)")
    parser.add_argument(
        "--budget",
        type=float,
        default=MAINLINE_BUDGET_S,
        help="seconds for mainline's measured runs (default %(default)s)",
    )
    args = parser.parse_args(argv)
    started = time.time()
    load = os.getloadavg()[0]
    lines, measured = run(
        QUICK_SIZES if args.quick else SIZES,
        QUICK_MAINLINE_SIZES if args.quick else MAINLINE_SIZES,
        args.budget,
    )
    print()
    print("\n".join(lines))
    print()
    print(
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {time.time() - started:.0f} s in all; "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after. Mainline measured "
        f"at {', '.join(f'{m.pages:,}' for m in measured)} pages "
        f"({sum(m.seconds for m in measured):.0f} s, budget {args.budget:.0f} s); its time "
        f"grew as N^{exponent(measured):.2f} over that range."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
