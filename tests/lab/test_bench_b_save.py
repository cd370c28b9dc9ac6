"""bench/b_save.py runs small: one hibernation in the lab in which kernel B
first runs `zstd -1 -T0 < /proc/vmcore` into a second disk, then saves A as
always, and the benchmark prints a well-formed table. Times are the
benchmark's to report (docs/performance.md), never asserted here: only
that both read the same input and wrote something of it, and the table's
shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import b_save
from tests.lab.bench_support import bench_output

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def output(lab: Path) -> list[str]:
    return bench_output(lab, b_save.main, ["--repeats", "1"])


def test_both_read_all_of_a_and_wrote_a_compressed_copy(output: list[str]) -> None:
    (run,) = [line for line in output if line.startswith("run 1: ")]
    got = {k: int(v) for k, v in re.findall(r"(vmcore|zstd_bytes|ours_bytes)=(\d+)", run)}
    assert got["vmcore"] > 256 << 20, run  # A's RAM outside B's window
    assert 0 < got["zstd_bytes"] < got["vmcore"] and 0 < got["ours_bytes"] < got["vmcore"], run


def test_the_table_names_both_and_gives_the_ratios(output: list[str]) -> None:
    start = next(i for i, line in enumerate(output) if line.split()[:1] == ["kexechibd"])
    assert output[start].split() == ["kexechibd", "zstd", "-1", "-T0", "ratio"]
    rows = {line[:28].strip(): line[28:].split() for line in output[start + 1 : start + 5]}
    assert list(rows) == [
        "input: /proc/vmcore (MB)",
        "time (s)",
        "throughput (MB/s of input)",
        "output (MB)",
    ]
    assert all(float(c.rstrip("×").replace(",", "")) > 0 for r in rows.values() for c in r)
    assert len(rows["throughput (MB/s of input)"]) == len(rows["output (MB)"]) == 3
