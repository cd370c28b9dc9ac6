"""Benchmark inputs: a real memory image, or a generated one.

The real one is QEMU's ``dump-guest-memory`` (ELF) of the lab kernel
(docs/lab.md) booted with ``-device vmcoreinfo``, after the guest filled its
memory the way a running system's looks: page cache and tmpfs holding real
files (Python sources, shared libraries and programs, documentation) read
over 9p from this machine, some random bytes (compressed or encrypted data),
and the rest zero.  The guest kernel hands its VMCOREINFO to QEMU, so the
dump carries it and makedumpfile can filter it (``-d 1``).  It is made once
and cached under the lab cache (``/var/cache/kexechib-kernel/bench/``),
keyed by the lab kernel and the recipe below.

When QEMU or the lab kernel is missing, a generated core of the same size
stands in (``generated_vmcore``): deterministic text, binary and random
pages and zero runs, with no VMCOREINFO — so makedumpfile cannot run on it,
and the report says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from kexechibd.kernel.elfcore import EHDR

PAGE = 4096
GUEST_MIB = 1024
RECIPE = 1  # bump when FILL changes
# Run in the guest (host root over 9p, read-only; /dev/shm is tmpfs): about
# 600 MiB of real file contents in tmpfs and the page cache, 48 MiB random.
FILL = r"""
cd /dev/shm
tar -cf - /usr/lib/python3.11 /usr/share/perl /usr/share/doc 2>/dev/null | head -c 200M > text.tar
tar -cf - /usr/lib/x86_64-linux-gnu /usr/bin 2>/dev/null | head -c 260M > bin.tar
head -c 48M /dev/urandom > random.bin
free -m || true
echo "KEXECHIB-LAB filled"
sleep 3600
"""


@dataclass(frozen=True)
class Vmcore:
    path: Path
    real: bool  # a QEMU dump of the lab kernel (else generated)
    has_vmcoreinfo: bool
    memory: int  # bytes of memory in its PT_LOADs
    note: str  # where it came from, for the report


def cache_dir() -> Path:
    from kexechibd.lab.kernel import cache_root

    return cache_root() / "bench"


def _key(kernel: Path) -> str:
    h = hashlib.sha256()
    h.update(str(kernel.resolve()).encode())
    h.update(f"{RECIPE} {GUEST_MIB}".encode())
    h.update(FILL.encode())
    return h.hexdigest()[:16]


def loads(path: Path) -> list[tuple[int, int, int]]:
    """``(paddr, file offset, size)`` of each PT_LOAD with data, by address."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        out = [
            (s["p_paddr"], s["p_offset"], s["p_filesz"])
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD" and s["p_filesz"]
        ]
    return sorted(out)


def has_vmcoreinfo(path: Path) -> bool:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_NOTE":
                for note in seg.iter_notes():
                    if note["n_name"] == "VMCOREINFO":
                        return True
    return False


def real_vmcore(log: bool = True) -> Vmcore | str:
    """The cached QEMU dump, made now if needed; or why it cannot be made."""
    from kexechibd.lab import qemu_available
    from kexechibd.lab.kernel import KernelBuildError, lab_kernel

    reason = qemu_available()
    if reason:
        return reason
    try:
        kernel = lab_kernel(build=False)
    except KernelBuildError as exc:
        return str(exc)
    target = cache_dir() / f"lab-{_key(kernel)}.vmcore"
    if not target.exists():
        if log:
            print(
                f"making the real input: dump-guest-memory of a {GUEST_MIB} MiB lab guest "
                f"-> {target}",
                flush=True,
            )
        try:
            asyncio.run(_dump(kernel, target))
        except Exception as exc:  # the lab's own errors say what went wrong
            return f"the lab guest could not be dumped: {exc}"
    normalise_headers(target)
    return Vmcore(
        target,
        True,
        has_vmcoreinfo(target),
        sum(size for _, _, size in loads(target)),
        f"QEMU dump-guest-memory (ELF) of the lab kernel ({kernel.parent.name}) in a "
        f"{GUEST_MIB} MiB guest after filling its memory with real files (bench/inputs.py)",
    )


async def _dump(kernel: Path, target: Path) -> None:
    from kexechibd.lab import Guest, GuestSpec

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    spec = GuestSpec(
        command=FILL,
        kernel=kernel,
        memory_mib=GUEST_MIB,
        timeout=900,
        qemu_args=("-device", "vmcoreinfo"),
        name="bench-dump",
    )
    async with Guest(spec) as guest:
        await guest.wait_for(r"KEXECHIB-LAB filled", timeout=800)
        await guest.qmp("stop")
        await guest.qmp("dump-guest-memory", paging=False, protocol=f"file:{partial}")
        # dump-guest-memory is synchronous unless detach=true: the file is whole.
        workdir = guest.workdir
    os.chmod(partial, 0o644)
    normalise_headers(partial)
    partial.rename(target)
    if workdir is not None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def normalise_headers(path: Path) -> None:
    """Put the program headers right after the ELF header, without section
    headers.  QEMU (7.2) writes section headers at 64 and the program headers
    after them (``e_phoff`` 192); makedumpfile 1.7.2 ignores ``e_phoff`` and
    reads program headers from offset 64, so it finds no PT_LOAD in QEMU's
    dump.  Only the header changes; notes and memory stay where they are."""
    ehdr = EHDR
    with open(path, "r+b") as f:
        fields = list(ehdr.unpack(f.read(ehdr.size)))
        phoff, phentsize, phnum = fields[5], fields[9], fields[10]
        if phoff == ehdr.size and fields[12] == 0:
            return
        f.seek(phoff)
        phdrs = f.read(phentsize * phnum)
        first = min(struct.unpack_from("<Q", phdrs, i * phentsize + 8)[0] for i in range(phnum))
        if ehdr.size + len(phdrs) > first:
            raise ValueError(f"{path}: no room for the program headers before offset {first}")
        fields[5] = ehdr.size  # e_phoff
        fields[6] = 0  # e_shoff
        fields[8] = ehdr.size  # e_ehsize
        fields[11] = fields[12] = fields[13] = 0  # e_shentsize, e_shnum, e_shstrndx
        f.seek(0)
        f.write(ehdr.pack(*fields) + phdrs)
        f.write(bytes(first - f.tell()))


# ---------------------------------------------------------------- generated


def _pages(rng: random.Random, words: list[bytes]) -> bytes:
    kind = rng.random()
    n = rng.randint(1, 64)
    if kind < 0.35:  # text-like
        out = bytearray()
        while len(out) < n * PAGE:
            out += b" ".join(rng.choice(words) for _ in range(16)) + b"\n"
        return bytes(out[: n * PAGE])
    if kind < 0.6:  # structured binary
        base = rng.randrange(1 << 40) << 12
        rec = b"".join(struct.pack("<QQ", base + 64 * i, i) for i in range(n * PAGE // 16))
        return rec
    if kind < 0.7:  # random (compressed, encrypted)
        return rng.randbytes(n * PAGE)
    return bytes(n * PAGE)


def generated_vmcore(path: Path, size: int, seed: int = 1) -> Vmcore:
    """An ELF core with one PT_LOAD of ``size`` bytes at physical 1 MiB of
    deterministic memory-like content; no VMCOREINFO."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 8)).hex().encode() for _ in range(3000)]
    data_offset = PAGE
    with open(path, "wb") as f:
        ehdr = struct.pack(
            "<16sHHIQQQIHHHHHH",
            b"\x7fELF\x02\x01\x01" + bytes(9),
            4,
            62,
            1,
            0,
            64,
            0,
            0,
            64,
            56,
            1,
            0,
            0,
            0,
        )
        phdr = struct.pack("<IIQQQQQQ", 1, 7, data_offset, 0, 1 << 20, size, size, PAGE)
        f.write((ehdr + phdr).ljust(data_offset, b"\0"))
        written = 0
        while written < size:
            chunk = _pages(rng, words)[: size - written]
            f.write(chunk)
            written += len(chunk)
    return Vmcore(
        path,
        False,
        False,
        size,
        f"generated (bench/inputs.py, seed {seed}): QEMU or the lab kernel was not available",
    )


def raw_memory(vmcore: Path, raw: Path) -> int:
    """The PT_LOADs' bytes back to back: the memory the CLIs compress."""
    total = 0
    with open(vmcore, "rb") as src, open(raw, "wb") as dst:
        for _, offset, size in loads(vmcore):
            src.seek(offset)
            left = size
            while left:
                chunk = src.read(min(left, 8 << 20))
                if not chunk:
                    raise ValueError(f"{vmcore} is truncated")
                dst.write(chunk)
                left -= len(chunk)
            total += size
    return total


def memory_input(scratch: Path, *, quick: bool = False) -> Vmcore:
    """The save/resume input: the real dump, or (quick runs, or no QEMU) a
    generated core."""
    if not quick:
        real = real_vmcore()
        if isinstance(real, Vmcore):
            return real
        print(f"note: no real memory image ({real}); using a generated one", flush=True)
        vm = generated_vmcore(scratch / "generated.vmcore", GUEST_MIB << 20)
        return Vmcore(vm.path, False, False, vm.memory, f"{vm.note}: {real}")
    return generated_vmcore(scratch / "generated.vmcore", 16 << 20)


if __name__ == "__main__":
    start = time.perf_counter()
    got = real_vmcore()
    print(got, f"{time.perf_counter() - start:.1f} s")
    with contextlib.suppress(Exception):
        assert isinstance(got, Vmcore)
        print("loads:", len(loads(got.path)), "vmcoreinfo:", got.has_vmcoreinfo)
