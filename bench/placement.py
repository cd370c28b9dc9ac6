"""Issue 2's placement benchmark: time per page of a staged load of N
single-page segments scattered over a 4 GiB model, for N = 10k, 100k, 1M,
next to mainline's linear-scan placement (bench/mainline_placement.py) on the
same destinations.  Run: ``.venv/bin/python -m bench.placement [--quick]``."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.mainline_placement import MainlinePlacement
from kexechibd.kernel import abi
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine

RAM = 4 << 30
PAGE = b"\xa5" * abi.PAGE_SIZE
MAINLINE_BUDGET_S = 60.0


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


def ours(n: int) -> float:
    scratch = scratch_dir()
    try:
        return _ours(n, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ours(n: int, scratch: Path) -> float:
    with Machine.create(scratch / "m", ram=ram_for(n)) as machine:
        machine.power_on()
        with ModelKernel(machine) as kernel:
            segs = [
                abi.Segment(PAGE, pfn << abi.PAGE_SHIFT, abi.PAGE_SIZE) for pfn in destinations(n)
            ]
            step = abi.KEXEC_STAGE_SEGMENT_MAX
            start = time.perf_counter()
            for i in range(0, n, step):
                stage = abi.Stage.START if i == 0 else abi.Stage.MID
                kernel.kexec_load(0, segs[i : i + step], abi.load_flags(stage))
            kernel.kexec_load(0x100000, [], abi.load_flags(abi.Stage.FINAL))
            return time.perf_counter() - start


def mainline(n: int) -> float:
    dests = destinations(n)
    free = iter(range(((3 << 30) >> abi.PAGE_SHIFT) - 1, 0, -1))  # top-down, like ours
    placement = MainlinePlacement(free)
    start = time.perf_counter()
    placement.load([(d, d + 1) for d in dests])
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes only (for make check)")
    args = parser.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [10_000, 100_000, 1_000_000]
    header = ("pages", "ours s", "ours µs/page", "mainline s", "mainline µs/page")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (9, 9, 13, 11, 17), strict=True)))
    for n in sizes:
        t = ours(n)
        m_text = m_page = "not run"
        estimate = mainline_estimate(n)
        if estimate <= MAINLINE_BUDGET_S:
            m = mainline(n)
            m_text, m_page = f"{m:.2f}", f"{m / n * 1e6:.1f}"
        else:
            m_text = f"~{estimate:.0f} (est.)"
        print(f"{n:>9} {t:>9.2f} {t / n * 1e6:>13.1f} {m_text:>11} {m_page:>17}", flush=True)
    return 0


_calibration: list[tuple[int, float]] = []


def mainline_estimate(n: int) -> float:
    """Quadratic extrapolation from a 2,000-page run."""
    if not _calibration:
        _calibration.append((2000, mainline(2000)))
    base_n, base_t = _calibration[0]
    return base_t * (n / base_n) ** 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
