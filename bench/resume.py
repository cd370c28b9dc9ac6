"""2. Resume throughput: hibernation image → staged ``kexec_load`` calls.

Ours: C's loader (``check_destinations`` + ``stream_load``, what Resume
runs) loads the image into the running kernel of a model machine whose RAM
holds garbage, as after a power cycle: every chunk read, verified and
decompressed, every run turned into segments, every ``kexec_load`` call
made, and every data page copied into model memory — the copy a kernel
makes.  The loader alone: the same loader on the zstd image into a kernel
stand-in whose ``kexec_load`` is one copy of each segment into resident
pages (``bench/standin.py``: a ``pwrite`` into a tmpfs file written
beforehand), what a real kernel's copy costs, without the model kernel's
Python bookkeeping.  References: ``zstd -d`` and ``lz4 -d`` of
the same memory to /dev/null (single-threaded: the CLIs decompress on one
core).  All of them interleaved in one run, so every ratio is of the same run.

The memory is the same as the save benchmark's, less what is not RAM on a
PC-like model (the VGA/BIOS hole and the BIOS ROM at the top of 4 GiB: the
loader refuses an image with pages outside RAM).  The model has 256 MiB more
RAM than the image covers: the part B's window leaves free for C.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from bench import inputs, standin
from bench.common import median, run_measured, short, show, worker
from bench.report import Row, Section, mbps, mib, ratio
from kexechibd.image import ImageMeta, open_store
from kexechibd.kernel.api import MemoryKind
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine, firmware_map

MIB = 1 << 20
GIB = 1 << 30
SPARE = 256 * MIB


def model_ram_for(vm: inputs.Vmcore) -> tuple[int, list[tuple[int, int, int]]]:
    """The model's RAM size, and ``(paddr, file offset, size)`` pieces of the
    core that are RAM on it."""
    loads = inputs.loads(vm.path)
    top = max(p + s for p, _, s in loads if p + s <= 3 * GIB)
    ram = -(-top // (64 * MIB)) * 64 * MIB + SPARE
    rams = [(r.start, r.end) for r in firmware_map(ram) if r.kind is MemoryKind.RAM]
    pieces = []
    for paddr, offset, size in loads:
        for a, b in rams:
            lo, hi = max(a, paddr), min(b, paddr + size)
            if lo < hi:
                pieces.append((lo, offset + lo - paddr, hi - lo))
    return ram, sorted(pieces)


def fresh_machine(path: Path, ram: int) -> None:
    """A model machine that was on before: RAM full of garbage, C running."""
    if not (path / "state.json").exists():
        with Machine.create(path, ram=ram) as m:
            ranges = [
                (a, min(a + GIB, r.end)) for r in m.ram_ranges for a in range(r.start, r.end, GIB)
            ]
            m.memory.scramble(ranges, seed=5)  # pieces ≤ 1 GiB are scrambled whole
            m.power_on()
        return
    with Machine(path) as m:
        if m.power == "on":
            m.power_off()
        m.power_on()


def write_inputs(
    vm: inputs.Vmcore, pieces: list[tuple[int, int, int]], machine: Path, scratch: Path
) -> tuple[Path, dict[str, Path], int]:
    """The raw memory for the CLIs and our images (zstd -1, lz4) of it."""
    with ModelKernel(machine) as kernel:
        ident = kernel.identity()
    meta = ImageMeta(
        ident.release, ident.build_id, "an-earlier-boot", ident.machine_id, time.time(),
        0x1000, "bench", "poweroff", (),
    )  # fmt: skip
    raw = scratch / "resume.raw"
    images = {"zstd": scratch / "image.zstd", "lz4": scratch / "image.lz4"}
    total = 0
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(open_store(images["zstd"]).writer(meta, level=1)),
            stack.enter_context(open_store(images["lz4"]).writer(meta, compression="lz4")),
        ]
        core = stack.enter_context(open(vm.path, "rb"))
        out = stack.enter_context(open(raw, "wb"))
        for paddr, offset, size in pieces:
            pos = 0
            while pos < size:
                n = min(4 * MIB, size - pos)
                core.seek(offset + pos)
                data = core.read(n)
                for w in writers:
                    w.add(paddr + pos, data)
                out.write(data)
                pos += n
                total += n
        for w in writers:
            w.commit()
    return raw, images, total


def run(scratch: Path, vm: inputs.Vmcore, repeats: int = 3) -> Section:
    ram, pieces = model_ram_for(vm)
    machine = scratch / "machine"
    fresh_machine(machine, ram)
    raw, images, memory = write_inputs(vm, pieces, machine, scratch)
    zst, lz = scratch / "resume.raw.zst", scratch / "resume.raw.lz4"
    run_measured(["zstd", "-1", "-T0", "-q", "-f", str(raw), "-o", str(zst)])
    run_measured(["lz4", "-1", "-q", "-f", str(raw), str(lz)])
    raw.unlink()
    pages = scratch / "standin.pages"
    # Made once, untimed: no run pays for writing the stand-in's pages.
    standin.prepare(pages, max(r.end for r in firmware_map(ram) if r.kind is MemoryKind.RAM))
    cases = {
        "ours zstd": worker("resume", str(images["zstd"]), str(machine), "--leave-loaded"),
        "zstd -d": ["zstd", "-d", "-q", "-c", str(zst)],
        "ours zstd alone": worker(
            "resume", str(images["zstd"]), str(machine), "--copy-kernel", str(pages)
        ),
        "ours lz4": worker("resume", str(images["lz4"]), str(machine), "--leave-loaded"),
        "lz4 -d": ["lz4", "-d", "-q", "-c", str(lz)],
    }
    seconds: dict[str, list[float]] = {k: [] for k in cases}
    rss: dict[str, list[int]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    inproc: dict[str, list[float]] = {k: [] for k in cases}
    info: dict[str, dict[str, object]] = {}
    for _ in range(repeats):
        for name, argv in cases.items():
            ours = name.startswith("ours")
            if ours and not name.endswith("alone"):
                fresh_machine(machine, ram)
            r = run_measured(argv, stdout_path=None if ours else Path("/dev/null"))
            seconds[name].append(r.seconds)
            rss[name].append(r.max_rss_kib)
            cpu[name].append(r.cpu_seconds)
            if ours:
                info[name] = json.loads(r.stdout.strip().splitlines()[-1])
                inproc[name].append(float(str(info[name]["seconds"])))
    # The loader's own memory: the model kernel in a process of its own.
    own_argv = worker("resume", str(images["zstd"]), str(machine), "--kernel-process")
    fresh_machine(machine, ram)
    own = json.loads(run_measured(own_argv).stdout.strip().splitlines()[-1])

    def cmd(name: str) -> str:
        argv = cases[name]
        return short(show(argv, stdout=None if name.startswith("ours") else Path("/dev/null")))

    rows = []
    for mine, theirs in (("ours zstd", "zstd -d"), ("ours lz4", "lz4 -d")):
        a, b = median(seconds[mine]), median(seconds[theirs])
        rows.append(
            Row(f"{mine[5:]}: throughput", mbps(memory, a), theirs, mbps(memory, b),
                ratio(b, a), cmd(mine), cmd(theirs))
        )  # fmt: skip
        rows.append(
            Row(f"{mine[5:]}: throughput of the load itself (no interpreter start)",
                mbps(memory, median(inproc[mine])), theirs, mbps(memory, b),
                ratio(b, median(inproc[mine])), "", "")
        )  # fmt: skip
        rows.append(
            Row(f"{mine[5:]}: CPU time (user + system)", f"{median(cpu[mine]):.2f} s", theirs,
                f"{median(cpu[theirs]):.2f} s", ratio(median(cpu[mine]), median(cpu[theirs])),
                "", "")
        )  # fmt: skip
        rows.append(
            Row(f"{mine[5:]}: peak RSS (model kernel in the loader's process)",
                mib(median(rss[mine])), theirs, mib(median(rss[theirs])),
                ratio(median(rss[mine]), median(rss[theirs])), "", "")
        )  # fmt: skip
    alone, alone_inner = median(seconds["ours zstd alone"]), median(inproc["ours zstd alone"])
    zstd_d = median(seconds["zstd -d"])
    rows.append(
        Row("zstd, loader alone (kernel stand-in: one copy per segment): throughput, whole "
            "process", mbps(memory, alone), "zstd -d", mbps(memory, zstd_d), ratio(zstd_d, alone),
            cmd("ours zstd alone"), cmd("zstd -d"))
    )  # fmt: skip
    rows.append(
        Row("zstd, loader alone: throughput of the load itself (no interpreter start)",
            mbps(memory, alone_inner), "zstd -d", mbps(memory, zstd_d),
            ratio(zstd_d, alone_inner), "", "")
    )  # fmt: skip
    rows.append(
        Row("zstd, loader alone: CPU time (user + system)",
            f"{median(cpu['ours zstd alone']):.2f} s", "zstd -d", f"{median(cpu['zstd -d']):.2f} s",
            ratio(median(cpu["ours zstd alone"]), median(cpu["zstd -d"])), "", "")
    )  # fmt: skip
    rows.append(
        Row("zstd: peak RSS of the loader alone (model kernel in its own process)",
            mib(int(str(own["rss_hwm_kib"]))), "zstd -d", mib(median(rss["zstd -d"])),
            ratio(int(str(own["rss_hwm_kib"])), median(rss["zstd -d"])),
            short(show(own_argv)), cmd("zstd -d"))
    )  # fmt: skip
    z = info["ours zstd"]
    section = Section(
        "2. Resume: image → staged kexec_load on the model",
        f"Input: {memory / 1e6:,.0f} MB of memory ({vm.note}), restored into a "
        f"{ram // MIB} MiB model; our image {images['zstd'].stat().st_size / 1e6:,.1f} MB "
        f"(zstd -1) and {images['lz4'].stat().st_size / 1e6:,.1f} MB (lz4), "
        f"{z['chunks']} chunks, {z['runs']} runs → {z['calls']} kexec_load calls "
        f"with {z['segments']} segments. Ratios as in 1. Medians of {repeats} interleaved "
        "runs; times are whole processes (ours: interpreter start and imports included), "
        "and separately the load itself as the worker timed it.",
        rows,
    )
    a, b = median(seconds["ours zstd"]), median(seconds["zstd -d"])
    inner = median(inproc["ours zstd"])
    section.verdicts.append(
        f"Target (≥ 80% of `zstd -d`'s throughput on the same data as a whole process on "
        f"the model): {'met' if b / a >= 0.8 else 'missed'} — {b / a:.0%} (whole process), "
        f"{b / inner:.0%} (the load itself); CPU time "
        f"{median(cpu['ours zstd']):.2f} s against {median(cpu['zstd -d']):.2f} s."
    )
    section.verdicts.append(
        f"Target (≥ 90% of `zstd -d`'s throughput for the loader alone): "
        f"{'met' if b / alone_inner >= 0.9 else 'missed'} — {b / alone_inner:.0%} (the load "
        f"itself), {b / alone:.0%} (as a whole process)."
    )
    for p in (*images.values(), zst, lz, pages):
        p.unlink(missing_ok=True)
    return section
