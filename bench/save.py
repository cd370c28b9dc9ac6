"""1. Save throughput: memory image → hibernation image.

Ours: B's saver (``save_image``) on the ELF core, all cores (``bench.worker
save``).  References on the same memory: the ``zstd`` and ``lz4`` CLIs on
the raw bytes of the core's PT_LOADs (so they do not pay for parsing ELF),
and ``makedumpfile`` on the core itself (``-d 1`` drops zero pages, as we
do; Debian's build has no zstd, so ``-l`` (LZO) and ``-c`` (zlib)).
Every figure is the median of the runs, which are interleaved (ours,
theirs, ours, ...) so that load from elsewhere hits both alike.  Times are
whole processes, interpreter start included for ours.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import common, inputs
from bench.common import median, run_measured, short, show, worker
from bench.report import Row, Section, mbps, mib, ratio


@dataclass
class Case:
    name: str
    argv: list[str]
    output: Path
    stdout: Path | None = None
    runs: int = 0  # 0: the default number of repeats
    seconds: list[float] = field(default_factory=list)
    inproc: list[float] = field(default_factory=list)  # ours: the save itself
    rss: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    size: int = 0
    error: str = ""

    @property
    def command(self) -> str:
        return short(show(self.argv, stdout=self.stdout))

    def median(self) -> float:
        return median(self.seconds)


def measure(cases: Sequence[Case], repeats: int) -> None:
    """Run every case ``repeats`` times (or its own ``runs``), interleaved."""
    for rep in range(repeats):
        for case in cases:
            if case.error or rep >= (case.runs or repeats):
                continue
            case.output.unlink(missing_ok=True)
            try:
                r = run_measured(case.argv, stdout_path=case.stdout)
            except RuntimeError as exc:
                case.error = str(exc).splitlines()[0][:300]
                continue
            case.seconds.append(r.seconds)
            case.rss.append(r.max_rss_kib)
            case.cpu.append(r.cpu_seconds)
            if r.stdout.startswith("{"):
                case.inproc.append(float(json.loads(r.stdout)["seconds"]))
            case.size = case.output.stat().st_size
            case.output.unlink(missing_ok=True)


def run(scratch: Path, vm: inputs.Vmcore, repeats: int = 3) -> Section:
    core = scratch / "memory.vmcore"
    shutil.copyfile(vm.path, core)  # inputs on tmpfs, like the CLIs'
    raw = scratch / "memory.raw"
    memory = inputs.raw_memory(core, raw)
    out = scratch / "out"
    ours = {
        level: Case(
            f"ours zstd {level}", worker("save", str(core), str(out), "--level", level), out
        )
        for level in ("1", "3")
    }
    ours_lz4 = Case("ours lz4", worker("save", str(core), str(out), "--compression", "lz4"), out)
    zstd = {
        level: Case(
            f"zstd -{level} -T0",
            ["zstd", f"-{level}", "-T0", "-q", "-f", str(raw), "-o", str(out)],
            out,
        )
        for level in ("1", "3")
    }
    lz4 = Case("lz4 -1", ["lz4", "-1", "-q", "-f", str(raw), str(out)], out)
    cases = [ours["1"], zstd["1"], ours_lz4, lz4, ours["3"], zstd["3"]]
    mdf: list[Case] = []
    mdf_note = ""
    if not shutil.which("makedumpfile"):
        mdf_note = "makedumpfile is not installed (`make setup` installs it)."
    elif not vm.has_vmcoreinfo:
        mdf_note = "makedumpfile was not run: the input has no VMCOREINFO (see the input note)."
    else:
        mdf = [
            Case(
                "makedumpfile -l, 2 threads",
                ["makedumpfile", "-l", "-d", "1", "--num-threads", "2", str(core), str(out)],
                out,
                runs=2,  # 7 s on a quiet machine, 38 s when others compile
            ),
            Case(
                "makedumpfile -l",
                ["makedumpfile", "-l", "-d", "1", str(core), str(out)],
                out,
                runs=2,
            ),
            Case(
                "makedumpfile -c",
                ["makedumpfile", "-c", "-d", "1", str(core), str(out)],
                out,
                runs=1,
            ),
        ]
    measure([*cases, *mdf], repeats)
    raw.unlink()
    core.unlink()

    rows: list[Row] = []

    def pair(figure: str, mine: Case, theirs: Case) -> None:
        if mine.error or theirs.error:
            return
        a, b = mine.median(), theirs.median()
        rows.append(
            Row(
                f"{figure}: throughput",
                mbps(memory, a),
                theirs.name,
                mbps(memory, b),
                ratio(b, a),
                mine.command,
                theirs.command,
            )
        )
        rows.append(
            Row(
                f"{figure}: output",
                f"{mine.size / 1e6:,.1f} MB",
                theirs.name,
                f"{theirs.size / 1e6:,.1f} MB",
                ratio(mine.size, theirs.size),
                "",
                "",
            )
        )
        rows.append(
            Row(
                f"{figure}: peak RSS",
                mib(median(mine.rss)),
                theirs.name,
                mib(median(theirs.rss)),
                ratio(median(mine.rss), median(theirs.rss)),
                "",
                "",
            )
        )
        rows.append(
            Row(
                f"{figure}: CPU time (user + system)",
                f"{median(mine.cpu):.2f} s",
                theirs.name,
                f"{median(theirs.cpu):.2f} s",
                ratio(median(mine.cpu), median(theirs.cpu)),
                "",
                "",
            )
        )

    pair("zstd level 1", ours["1"], zstd["1"])
    pair("lz4", ours_lz4, lz4)
    pair("zstd level 3 (our default)", ours["3"], zstd["3"])
    for m in mdf:
        if m.error:
            continue
        runs = f" ({len(m.seconds)} run{'s' if len(m.seconds) > 1 else ''})"
        rows.append(
            Row(
                "vs makedumpfile -d 1: throughput",
                mbps(memory, ours["1"].median()),
                m.name + runs,
                mbps(memory, m.median()),
                ratio(m.median(), ours["1"].median()),
                ours["1"].command,
                m.command,
            )
        )
        rows.append(
            Row(
                "vs makedumpfile -d 1: output",
                f"{ours['1'].size / 1e6:,.1f} MB",
                m.name,
                f"{m.size / 1e6:,.1f} MB",
                ratio(ours["1"].size, m.size),
                "",
                "",
            )
        )

    section = Section(
        "1. Save: memory image → hibernation image",
        f"Input: {memory / 1e6:,.0f} MB of memory — {vm.note}. "
        "Ratios are ours ÷ reference for output and RSS (below 1: ours is smaller) and "
        "reference time ÷ our time for throughput (above 1: ours is faster). "
        f"Medians of {repeats} interleaved runs; ours runs on all cores "
        f"({common.machine()['cpus']}).",
        rows,
    )
    inproc = {
        name: median(c.inproc)
        for name, c in (("zstd -1", ours["1"]), ("lz4", ours_lz4), ("zstd -3", ours["3"]))
        if c.inproc
    }
    if inproc:
        section.extra.append(
            "Ours without interpreter start and imports (the save itself, as the running "
            "daemon in B does it): "
            + ", ".join(f"{k} {mbps(memory, v)} ({v:.2f} s)" for k, v in inproc.items())
            + "."
        )
    errors = [f"{c.name}: {c.error}" for c in [*cases, *mdf] if c.error]
    if mdf_note:
        errors.append(mdf_note)
    if errors:
        section.extra.append("Not measured: " + "; ".join(errors))
    z_ours, z_ref = ours["1"], zstd["1"]
    if not (z_ours.error or z_ref.error):
        fast = z_ours.median() <= z_ref.median()
        small = z_ours.size <= z_ref.size
        section.verdicts.append(
            f"Target (at least as fast as `zstd -1 -T0`, output no larger): "
            f"{'met' if fast and small else 'missed'} — {z_ref.median() / z_ours.median():.2f}× "
            f"its throughput, {z_ours.size / z_ref.size:.3f}× its size."
        )
    return section
