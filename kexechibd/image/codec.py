"""Per-chunk compression.  zstandard and lz4 release the GIL while they work,
so chunks compress and decompress in parallel on a thread pool; each thread
keeps its own (non thread-safe) zstd contexts."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import lz4.frame
import zstandard

from kexechibd import compression as policy
from kexechibd.image.format import Codec

Buffer = bytes | bytearray | memoryview


def pool_size() -> int:
    """Threads for a pool that compresses or decompresses chunks: the CPUs
    this process may run on.  Its affinity mask (taskset, a cgroup's cpuset,
    systemd's CPUAffinity=) can be narrower than the machine, which
    ``os.cpu_count()`` counts, and more threads than usable CPUs only contend."""
    return len(os.sched_getaffinity(0))


class CodecError(ValueError):
    """A payload that does not decompress to exactly the expected bytes."""


@dataclass(frozen=True)
class Compression:
    """A codec with its level resolved and checked."""

    ident: int
    level: int

    @property
    def name(self) -> str:
        return Codec.NAMES[self.ident]


def compression(name: str, level: int | None) -> Compression:
    """``level`` None picks the codec's default; the levels allowed are the
    policy's (``kexechibd.compression``), the same A checked."""
    resolved = policy.resolve(name, level)  # refuses an unknown codec first
    return Compression(Codec.IDS[name], resolved)


_local = threading.local()


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("zc", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = zstandard.ZstdDecompressor()
    return d


def compress(c: Compression, raw: Buffer) -> bytes:
    if c.ident == Codec.ZSTD:
        return bytes(_zstd_compressor(c.level).compress(raw))
    if c.ident == Codec.LZ4:
        # One block per chunk: faster than the default 64 KiB linked blocks.
        return bytes(
            lz4.frame.compress(
                raw,
                compression_level=c.level,
                store_size=True,
                block_size=lz4.frame.BLOCKSIZE_MAX4MB,
            )
        )
    raise ValueError(f"codec {c.ident} does not compress")


def decompress(ident: int, payload: Buffer, raw_len: int) -> bytes:
    """Exactly ``raw_len`` bytes from ``payload``: the frame must declare that
    size before anything is allocated for it."""
    try:
        if ident == Codec.ZSTD:
            declared = zstandard.frame_content_size(payload)
            if declared != raw_len:
                raise CodecError(f"zstd frame declares {declared} bytes, expected {raw_len}")
            data = _zstd_decompressor().decompress(payload, max_output_size=raw_len)
        elif ident == Codec.LZ4:
            declared = lz4.frame.get_frame_info(payload).get("content_size")
            if declared != raw_len:
                raise CodecError(f"lz4 frame declares {declared} bytes, expected {raw_len}")
            data = lz4.frame.decompress(payload)
        else:
            raise CodecError(f"codec {ident} is unknown")
    except CodecError:
        raise
    except Exception as e:  # zstandard.ZstdError, lz4's RuntimeError
        raise CodecError(f"{Codec.NAMES.get(ident, ident)} payload does not decompress: {e}") from e
    if len(data) != raw_len:
        raise CodecError(f"payload decompresses to {len(data)} bytes, expected {raw_len}")
    return bytes(data)
