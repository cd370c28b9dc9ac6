"""What wiping a used image costs (issue 16 point 3), next to `dd` writing the
same number of zeros to the same file with ``oflag=direct``, the disk's own
limit for the job.

  python -m bench.wipe [--sizes 256,1024] [--repeats 3] [--dir /var/tmp]

For each size (MiB): a file laid out as an image device (two slots, the
store's own ``allow_regular_file`` form) on a real disk (``--dir``, not
tmpfs), an image of incompressible data committed to it, then our
``wipe()`` timed; and ``dd if=/dev/zero of=FILE bs=4M count=N oflag=direct
conv=notrunc,fsync`` over the same bytes, timed. Runs interleave; medians;
prints a markdown table with the ratio (dd's time / ours: 1.0 is the disk's
speed). Each wipe is checked: no image left, the image's bytes zero.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kexechibd.image import DeviceImageStore, ImageMeta
from kexechibd.image.slots import size_for
from kexechibd.kernel.abi import PAGE_SIZE

MIB = 1 << 20
DD_BLOCK = 4 * MIB


def _device(directory: Path, image_bytes: int) -> Path:
    path = directory / "device.img"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size_for(image_bytes))
    finally:
        os.close(fd)
    return path


def _save(store: DeviceImageStore, image_bytes: int) -> int:
    """An image of ``image_bytes`` of random (incompressible) memory; its
    stored length."""
    meta = ImageMeta(
        kernel_release=os.uname().release,
        build_id="",
        boot_id="bench",
        machine_id="bench",
        created=time.time(),
        jump_back_entry=0x1000,
        hibernate_id="bench-wipe",
        mode="poweroff",
        window=((1 << 40, (1 << 40) + PAGE_SIZE),),
    )
    with store.writer(meta, compression="none") as w:
        for offset in range(0, image_bytes, 4 * MIB):
            w.add(offset, os.urandom(min(4 * MIB, image_bytes - offset)))
        w.commit()
    (record,) = [r for r in store.records() if r]
    return record.image_length


def _ours(path: Path, image_bytes: int) -> tuple[float, int]:
    store = DeviceImageStore(path, allow_regular_file=True)
    length = _save(store, image_bytes)
    started = time.monotonic()
    wiped = store.wipe()
    seconds = time.monotonic() - started
    assert not store.exists() and wiped >= length
    with open(path, "rb") as f:
        assert f.read(length) == bytes(length), "the wipe left image bytes behind"
    return seconds, wiped


def _dd(path: Path, nbytes: int) -> float:
    count = -(-nbytes // DD_BLOCK)
    started = time.monotonic()
    subprocess.run(
        [
            "dd",
            "if=/dev/zero",
            f"of={path}",
            f"bs={DD_BLOCK}",
            f"count={count}",
            "oflag=direct",
            "conv=notrunc,fsync",
            "status=none",
        ],
        check=True,
    )
    return time.monotonic() - started


def measure(directory: Path, size_mib: int, repeats: int) -> dict[str, float]:
    ours, dd, wiped = [], [], 0
    for _ in range(repeats):
        work = Path(tempfile.mkdtemp(dir=directory, prefix="kexechib-bench-wipe-"))
        try:
            path = _device(work, size_mib * MIB)
            seconds, wiped = _ours(path, size_mib * MIB)
            ours.append(seconds)
            dd.append(_dd(path, wiped))
        finally:
            shutil.rmtree(work)
    return {
        "mib": wiped / MIB,
        "ours": statistics.median(ours),
        "dd": statistics.median(dd),
    }


def table(rows: Sequence[dict[str, float]]) -> str:
    lines = [
        "| image | wiped | ours (wipe) | dd oflag=direct | dd / ours |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:.0f} MiB | {r['mib']:.0f} MiB | {r['ours']:.2f} s "
            f"({r['mib'] / r['ours']:.0f} MiB/s) | {r['dd']:.2f} s "
            f"({r['mib'] / r['dd']:.0f} MiB/s) | {r['dd'] / r['ours']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wipe", description=__doc__)
    parser.add_argument("--sizes", default="256,1024", help="image sizes in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="on a real disk")
    args = parser.parse_args(argv)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure(args.dir, size, args.repeats)
        rows.append({"size": float(size), **row})
    command = f"python -m bench.wipe --sizes {args.sizes} --repeats {args.repeats}"
    print(f"Run: `{command}` in {args.dir}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
