"""Image throughput, measured, never asserted (DEVELOPING: performance is
measured against the field's tools, not in timed tests).

    .venv/bin/python tests/test_image_throughput.py [MiB] [directory]

writes MiB (default 256) of mixed memory (a third text-like, a third random,
a third zero pages, in runs of varying length) as an image at zstd levels 1
and 3 and lz4, reads each back, and times ``zstd -1 -T0`` / ``zstd -d`` on
the same raw bytes.  The test below only checks that the script runs.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kexechibd.image import ImageMeta, ImageReader, ImageWriter

PAGE = 4096
BUFFER = 8 << 20  # what a saver reads from /proc/vmcore at a time


def mixed_memory(size: int, seed: int = 1) -> bytes:
    """Text-like, random and zero pages in runs of 1..256 pages."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(2000)]
    text = b" ".join(rng.choice(words) for _ in range(200_000))
    parts: list[bytes] = []
    total = 0
    while total < size:
        n = min(rng.randint(1, 256) * PAGE, size - total)
        kind = rng.randrange(3)
        if kind == 0:
            start = rng.randrange(len(text) - n) if len(text) > n else 0
            parts.append(text[start:start + n].ljust(n, b"\n"))
        elif kind == 1:
            parts.append(os.urandom(n))
        else:
            parts.append(bytes(n))
        total += n
    return b"".join(parts)


def meta() -> ImageMeta:
    return ImageMeta("bench", "00" * 20, "boot", "machine", time.time(), 0x1000, "bench",
                     "poweroff", ())


def write_image(raw: bytes, path: Path, **kwargs: object) -> float:
    t = time.perf_counter()
    with open(path, "wb+") as f, ImageWriter(f, meta(), **kwargs) as w:  # type: ignore[arg-type]
        mv = memoryview(raw)
        for off in range(0, len(raw), BUFFER):
            w.add(off, mv[off:off + BUFFER].tobytes())
        w.commit()
    return time.perf_counter() - t


def read_image(path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb") as f:
        for _chunk in ImageReader(f).chunks():
            pass
    return time.perf_counter() - t


def run_cli(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def measure(mib: int, directory: Path) -> list[str]:
    raw = mixed_memory(mib << 20)
    mb = len(raw) / 1e6
    lines = [f"{mib} MiB mixed memory, {os.cpu_count()} CPUs, files in {directory}"]
    rawfile = directory / "raw.bin"
    rawfile.write_bytes(raw)
    for label, kwargs in (("zstd -1", {"level": 1}), ("zstd -3", {"level": 3}),
                          ("lz4", {"compression": "lz4"})):
        img = directory / "image.kxh"
        w = write_image(raw, img, **kwargs)
        r = read_image(img)
        size = img.stat().st_size
        lines.append(f"image {label:8} write {mb / w:7.0f} MB/s  read {mb / r:7.0f} MB/s  "
                     f"ratio {len(raw) / size:5.2f}")
        img.unlink()
    if shutil.which("zstd"):
        out = directory / "raw.bin.zst"
        for level in ("-1", "-3"):
            c = run_cli(["zstd", level, "-T0", "-q", "-f", str(rawfile), "-o", str(out)])
            d = run_cli(["zstd", "-d", "-q", "-f", str(out), "-o", os.devnull])
            lines.append(f"zstd CLI {level} -T0 compress {mb / c:7.0f} MB/s  decompress "
                         f"{mb / d:7.0f} MB/s  ratio {len(raw) / out.stat().st_size:5.2f}")
        out.unlink()
    rawfile.unlink()
    return lines


def test_throughput_script_runs_on_a_small_input(tmp_path: Path) -> None:
    lines = measure(4, tmp_path)
    assert lines[1].startswith("image zstd -1")


if __name__ == "__main__":
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    base = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=base) as d:
        print("\n".join(measure(mib, Path(d))))
