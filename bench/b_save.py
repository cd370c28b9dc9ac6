"""Issue 15, item 2: kernel B's save of A next to the plain tool, in the same B.

The lab's hibernate cycle (kexechibd/lab/cycle.py: the lab kernel as A and B,
512 MiB, one CPU, QEMU TCG), with A's workload holding a fill (heap-like
anonymous memory and random bytes, workload.py). In B, before its daemon
starts, saver.sh runs `zstd -1 -T0 -c < /proc/vmcore` into a second virtio
disk of the same kind (`dd conv=fsync`: written out, as the image is; the
host counts its bytes, the disk file's blocks), then the daemon saves A
into the image disk as always and B powers off.
Both are timed on B's console (host clock): zstd between its two markers,
the save from the daemon's `save started` to `image committed`. Input: the
size of /proc/vmcore (A's RAM outside B's window, what both read); output:
the bytes each wrote. Runs repeat (each a fresh A), medians are reported.

Run: ``.venv/bin/python -m bench.b_save [--repeats N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import aligned, allocated_bytes, load_text, median
from kexechibd.lab import GuestResult, lab_kernel, new_workdir
from kexechibd.lab.cycle import committed_bytes, hibernate_cycle

# A's fill in its 512 MiB (its root is in RAM too, and loading B needs room:
# 128 MiB of heap was ENOMEM): 64 MiB that compresses like a heap, 32 MiB random.
FILL = "kexechib.lab.anon_mib=64 kexechib.lab.random_mib=32"
ZSTD_DISK_MIB = 640


class RunFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Save:
    vmcore: int  # bytes of /proc/vmcore: the input of both
    zstd_seconds: float
    zstd_bytes: int
    ours_seconds: float
    ours_bytes: int


def _marker(result: GuestResult, kind: str) -> tuple[float, dict[str, str]]:
    marker = result.marker(kind)
    if marker is None:
        raise RunFailed(f"no {kind} marker: {result.describe()}")
    return marker.seconds, marker.fields


def _line(result: GuestResult, text: str) -> float:
    for line in result.lines:
        if text in line.text:
            return line.seconds
    raise RunFailed(f"never seen {text!r}: {result.describe()}")


def measure(result: GuestResult, zstd_bytes: int) -> Save:
    start, fields = _marker(result, "b-zstd-start")
    end, done = _marker(result, "b-zstd-end")
    ours = committed_bytes(result)
    if ours is None or done.get("status") != "0":
        raise RunFailed(f"a save did not finish: {result.describe()}")
    return Save(
        vmcore=int(fields["vmcore"]),
        zstd_seconds=end - start,
        zstd_bytes=zstd_bytes,
        ours_seconds=_line(result, "image committed") - _line(result, "save started"),
        ours_bytes=ours,
    )


def run_once(kernel: Path, *, keep: bool = False) -> Save:
    workdir = new_workdir("bench-b-save")
    target = workdir / "zstd-disk.raw"
    with target.open("wb") as f:
        f.truncate(ZSTD_DISK_MIB << 20)
    run = asyncio.run(
        hibernate_cycle(
            kernel,
            workdir,
            saver_cmdline="kexechib.lab.zstd_to=/dev/vdb",
            more_disks=(target,),
            append=FILL,
            resume=False,
        )
    )
    try:
        save = measure(run.hibernate, allocated_bytes(target))
    except RunFailed:
        print(f"(kept {workdir})", file=sys.stderr)
        raise
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return save


def table(saves: Sequence[Save]) -> list[str]:
    vmcore = median([s.vmcore for s in saves])
    zs, os_ = median([s.zstd_seconds for s in saves]), median([s.ours_seconds for s in saves])
    zb, ob = median([s.zstd_bytes for s in saves]), median([s.ours_bytes for s in saves])
    rows = [
        ("", "kexechibd", "zstd -1 -T0", "ratio"),
        ("input: /proc/vmcore (MB)", f"{vmcore / 1e6:,.0f}", f"{vmcore / 1e6:,.0f}", ""),
        ("time (s)", f"{os_:.2f}", f"{zs:.2f}", ""),
        (
            "throughput (MB/s of input)",
            f"{vmcore / os_ / 1e6:,.0f}",
            f"{vmcore / zs / 1e6:,.0f}",
            f"{zs / os_:.2f}×",
        ),
        ("output (MB)", f"{ob / 1e6:,.0f}", f"{zb / 1e6:,.0f}", f"{ob / zb:.2f}×"),
    ]
    return aligned(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.b_save",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)
    kernel = lab_kernel()
    load = load_text()
    saves = []
    for n in range(args.repeats):
        save = run_once(kernel, keep=args.keep)
        print(f"run {n + 1}: {save}", flush=True)
        saves.append(save)
    print()
    print(
        f"kernel B's save of A against zstd -1 -T0 < /proc/vmcore in the same B (lab kernel, "
        f"512 MiB, 1 CPU, QEMU TCG), medians of {args.repeats}; throughput ratio above 1 "
        "favours kexechibd, output ratio below 1"
    )
    print("\n".join(table(saves)))
    print(f"(load average {load} before, {load_text()} after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
