"""bench/lab_kexec.py runs: one run of its default comparison (one guest:
kexec-tools, then kexechibd, each loading B and jumping A -> B -> A twice) on
the lab kernel, and prints a well-formed table. Times are the benchmark's to
report (docs/lab.md §8), never asserted here: only that each is a positive
number, and that the run says which load path kexechibd took.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import lab_kexec
from tests.lab.bench_support import bench_output

pytestmark = pytest.mark.lab

ROWS = [
    "load B (process, from exec)",
    "load B (after Python start)",
    "round trip 1: A -> B -> A",
    "  A -> B's jump-back script",
    "  in B: start tool, load helper",
    "  B -> A",
    "round trip 2: re-entry",
]


@pytest.fixture(scope="module")
def output(lab: Path) -> list[str]:
    """The benchmark's stdout lines (the run is the benchmark's main, as
    `python -m bench.lab_kexec` runs it, on the lab fixture's kernel)."""
    return bench_output(lab, lab_kexec.main, [])


def test_the_lab_benchmark_says_kexechibd_loads_b_with_staged_loads_on_the_lab_kernel(
    output: list[str],
) -> None:
    assert output[:2] == [
        "kexec jump on the lab kernel (QEMU TCG, 512 MiB, 1 CPU), host seconds",
        "kexechibd loads B as its daemon does on this kernel: "
        "staged loads (KS_start, /proc/kexec_pgmap, KS_final)",
    ]


def test_the_lab_benchmark_prints_every_phase_with_two_positive_times_and_their_ratio(
    output: list[str],
) -> None:
    assert output[2].split() == ["kexec-tools", "kexechibd", "ratio"]
    rows = output[3:]
    assert [row[:34].rstrip() for row in rows] == ROWS
    for row in rows:
        theirs, ours, ratio = (float(field) for field in row[34:].split())
        assert theirs > 0 and ours > 0, row
        assert math.isfinite(ratio) and ratio > 0, row
