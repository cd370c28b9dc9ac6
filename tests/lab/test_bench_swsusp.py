"""bench/swsusp.py runs small: one cycle of swsusp (LZO) on the Debian guest,
and a well-formed table. Times are the benchmark's to report
(docs/performance.md), never asserted here: only what makes its side of the
comparison real (it hibernated through logind, powered off, and resumed from
the swap disk with the fill's memory intact, having written its image there)
and that each figure is there. kexechibd's side of the same script is not
run here, to keep make check's time: it costs three minutes more, and
tests/lab/test_debian.py runs kexechibd's cycle on the same guest.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import swsusp
from tests.lab.bench_support import bench_output

pytestmark = pytest.mark.lab

SIDES = ("swsusp-lzo",)


@pytest.fixture(scope="module")
def output(lab: Path) -> list[str]:
    return bench_output(lab, swsusp.main, ["--repeats", "1", "--sides", ",".join(SIDES)])


def _runs(output: list[str]) -> dict[str, str]:
    return {line.split()[2].rstrip(":"): line for line in output if line.startswith("run 1 ")}


def test_swsusp_hibernates_and_resumes_with_the_fills_memory_intact(
    output: list[str],
) -> None:
    runs = _runs(output)
    assert sorted(runs) == sorted(SIDES)
    assert all("memory='intact'" in line for line in runs.values()), runs


def test_swsusp_wrote_its_image_to_the_swap_disk(output: list[str]) -> None:
    for side, line in _runs(output).items():
        found = re.search(r"written=(\d+)", line)
        assert found and int(found.group(1)) > 50_000_000, (side, line)


def test_the_table_has_every_figure(output: list[str]) -> None:
    start = next(i for i, line in enumerate(output) if line.startswith("figure"))
    assert output[start].split() == ["figure", *SIDES]
    rows = output[start + 1 : start + 1 + len(swsusp.FIGURES)]
    for (figure, unit, _), row in zip(swsusp.FIGURES, rows, strict=True):
        assert row.startswith(f"{figure} ({unit})"), row
        cells = row[len(f"{figure} ({unit})") :].split()
        assert len(cells) == len(SIDES), row
        assert all(float(c.rstrip("×").replace(",", "")) >= 0 for c in cells), row
