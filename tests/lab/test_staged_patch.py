"""The staged-load patch series (kernel/patches, DESIGN §2.2) in a real kernel.

1. Conformance: every vector of tests/conformance/vectors.py that applies to the
   lab kernel (profile "staged" + "jump") gives in a guest the same errno list,
   `kexec_loaded` and listed destination pages as on the machine model.
2. Relocation for real, without preserve-context: a staged image with data
   pages that wait in allocated sources, pages loaded in place, an overlap, a
   source page evicted by a later call, zero-fill segments over pages that
   held data and over pages that hold sources. Its entry is a checker
   (assembled here) that scans what relocation left and reports over the
   serial port; the guest then ends with a triple fault (nothing comes back).
3. A kexec jump with a staged preserve-context image, as DESIGN §1.1 loads B:
   backup segments, a placeholder, /proc/kexec_pgmap read before KS_final and
   a KS_final segment overlapping the placeholder with what the map said. The
   checker (standing in for B) finds its data in place and A's old contents in
   the very source pages the map named, then returns; A finds its memory intact.

Guests use `-cpu max,la57=off`: the vectors (and kexechibd.kernel.abi) take the
x86_64 destination limit of 4-level paging (2^46); with LA57 a kernel's limit is
2^52 and `beyond_limit` loads on stock 6.1 and on the patched 6.12 alike.

The guest side of 2 and 3 is this module run as a program:
`python -m tests.lab.test_staged_patch zero-fill|jump CHECKER`.
"""

from __future__ import annotations

import array
import ctypes
import json
import mmap
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT, PAGE_SIZE, Segment, Stage
from kexechibd.kernel.api import Kernel, MemoryKind
from kexechibd.lab import GuestResult, GuestSpec, run_guest
from tests.lab.staged_support import largest_ram_range, mem_free_kib, meminfo_kib
from tests.sizes import MIB

pytestmark = pytest.mark.lab

TOP = Path(__file__).resolve().parents[2]
MEMORY_MIB = 512
CPU = "max,la57=off"
APPEND = "kexechib.enable_kexec=1"

# Page patterns: a data page of the new image holds `address ^ K_DATA` in every
# qword, a page of the running kernel's (A's) memory `address ^ K_OLD`.
K_DATA = 0x6B65786563686962
K_OLD = 0x0123456789ABCDEF
WRONG = 0x5A5A5A5A5A5A5A5A  # what the overlap overwrites

# The checker, entered by relocate_kernel: 64-bit, identity-mapped, interrupts
# off, no usable GDT or IDT, a stack. It scans the pages its table names and
# reports on the 8250 at 0x3f8, then returns (a kexec jump back) or executes
# ud2, which triple-faults without an IDT. Table entries: addr, npages, tag,
# key; page i must hold 512 qwords of `(tag + i * 4096) ^ key`, or zeros when
# key is 0. The loader fills in the two qwords at its end: the table's
# physical address and the mode (1: return).
CHECKER_S = r"""
	.text
	.code64
	.globl	_start
_start:
	cld
	leaq	msg_entered(%rip), %rbx
	call	puts
	movq	table(%rip), %rsi
1:	movq	0(%rsi), %rdi
	testq	%rdi, %rdi
	jz	ok
	movq	8(%rsi), %r8
	movq	16(%rsi), %r11
	movq	24(%rsi), %r10
2:	movq	%r10, %rax
	testq	%rax, %rax
	jz	3f
	xorq	%r11, %rax
3:	movl	$512, %ecx
	repe scasq
	jne	bad
	addq	$4096, %r11
	decq	%r8
	jnz	2b
	addq	$32, %rsi
	jmp	1b
ok:	leaq	msg_ok(%rip), %rbx
	call	puts
	jmp	finish
bad:	leaq	msg_bad(%rip), %rbx
	call	puts
	leaq	-8(%rdi), %r11
	call	puthex
	leaq	msg_nl(%rip), %rbx
	call	puts
finish:
	cmpq	$0, mode(%rip)
	jz	die
	ret
die:	ud2

puthex:
	leaq	digits(%rip), %r9
	movl	$16, %r8d
1:	rolq	$4, %r11
	movl	%r11d, %ecx
	andl	$15, %ecx
	movb	(%r9,%rcx), %cl
	call	putc
	decl	%r8d
	jnz	1b
	ret

puts:
1:	movb	(%rbx), %cl
	testb	%cl, %cl
	jz	2f
	call	putc
	incq	%rbx
	jmp	1b
2:	ret

putc:
	movw	$0x3fd, %dx
1:	inb	%dx, %al
	testb	$0x20, %al
	jz	1b
	movw	$0x3f8, %dx
	movb	%cl, %al
	outb	%al, %dx
	ret

digits:		.ascii	"0123456789abcdef"
msg_entered:	.asciz	"\r\nKEXECHIB-LAB checker-entered\r\n"
msg_ok:		.asciz	"KEXECHIB-LAB checker result=ok\r\n"
msg_bad:	.asciz	"KEXECHIB-LAB checker result=bad at=0x"
msg_nl:		.asciz	"\r\n"
	.balign	8
table:		.quad	0
mode:		.quad	0
"""


# ============================================================== host side


def _build_checker(workdir: Path) -> Path:
    """Assemble the checker with the host's gcc; the flat binary for the guest."""
    source = workdir / "checker.S"
    source.write_text(CHECKER_S)
    obj, binary = workdir / "checker.o", workdir / "checker.bin"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(source)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binary)], check=True)
    return binary


def _run(lab: Path, workdir: Path, command: str, name: str) -> GuestResult:
    spec = GuestSpec(
        command=command,
        kernel=lab,
        memory_mib=MEMORY_MIB,
        append=APPEND,
        cpu=CPU,
        timeout=240,
        name=name,
    )
    return run_guest(spec, workdir)


def _vector_outcomes(lines: Iterable[str]) -> tuple[int, list[dict[str, object]]]:
    base = -1
    outcomes = []
    for line in lines:
        if line.startswith("BASE "):
            base = int(line.split()[1])
        elif line.startswith("{"):
            outcomes.append(json.loads(line))
    return base, outcomes


def _relative(outcome: dict[str, object], base: int) -> dict[str, object]:
    """An outcome with its listed pages relative to the vectors' base page."""
    pages = outcome["map_pages"]
    assert pages is None or isinstance(pages, list)
    return {
        "name": outcome["name"],
        "errnos": outcome["errnos"],
        "loaded": outcome["loaded"],
        "map_pages": None if pages is None else [p - (base >> PAGE_SHIFT) for p in pages],
    }


def _model_outcomes(tmp: Path) -> tuple[set[str], list[dict[str, object]]]:
    """The vectors on the machine model, as tests/test_conformance_model.py runs them."""
    from kexechibd.model.kernel import ModelKernel
    from kexechibd.model.machine import Machine
    from tests.conformance.vectors import (
        VECTORS,
        applicable,
        choose_base,
        features_of,
        run_vector,
    )

    machine = Machine.create(tmp / "model", ram=256 * MIB)
    machine.power_on()
    try:
        with ModelKernel(machine) as kernel:
            features = features_of(kernel)
            base = choose_base(kernel)
            outcomes = []
            for vector in VECTORS:
                if applicable(vector, features):
                    outcome = run_vector(kernel, vector, base, staged=True)
                    assert outcome.passed, (vector.name, outcome.problems)
                    outcomes.append(_relative(json.loads(outcome.to_json()), base))
    finally:
        machine.close()
    return features, outcomes


GUEST_VECTORS = """
cd {top}
{python} -c 'from kexechibd.kernel.linux import LinuxKernel
from tests.conformance.vectors import choose_base, features_of
k = LinuxKernel()
print("BASE", choose_base(k))
print("FEATURES", " ".join(sorted(features_of(k))))'
{python} -m tests.conformance.vectors
"""


def test_conformance_vectors_give_the_model_outcomes(
    lab: Path, workdir: Path, tmp_path: Path
) -> None:
    features, model = _model_outcomes(tmp_path)
    assert features == {"staged", "jump"}
    result = _run(lab, workdir, GUEST_VECTORS.format(top=TOP, python=sys.executable), "vectors")
    assert result.exit_status == 0, result.describe()
    lines = result.output.splitlines()
    assert "FEATURES jump staged" in lines, result.describe()
    base, outcomes = _vector_outcomes(lines)
    problems = {o["name"]: o["problems"] for o in outcomes if o["problems"]}
    assert not problems, problems
    guest = [_relative(o, base) for o in outcomes]
    assert [o["name"] for o in guest] == [o["name"] for o in model]
    differ = {g["name"]: (g, m) for g, m in zip(guest, model, strict=True) if g != m}
    assert not differ, differ


def _guest_markers(result: GuestResult, kind: str) -> dict[str, str]:
    marker = result.marker(kind)
    assert marker is not None, result.describe()
    return dict(marker.fields)


def test_staged_image_with_zero_fill_relocates(lab: Path, workdir: Path) -> None:
    checker = _build_checker(workdir)
    command = (
        f"cd {TOP}\nexec {sys.executable} -m tests.lab.test_staged_patch zero-fill {checker}\n"
    )
    result = _run(lab, workdir, command, "zero-fill")
    # Before the jump: what the map said about the loaded image.
    placed = _guest_markers(result, "zero-fill-loaded")
    for field in ("own", "moved", "in_zero_fill", "evicted"):
        assert int(placed[field]) > 0, (field, result.describe())
    # After it: the checker ran in place of a kernel, and found every page right.
    assert result.marker("checker-entered") is not None, result.describe()
    assert _guest_markers(result, "checker") == {"result": "ok"}, result.describe()
    # Nothing comes back from a non-preserve-context image: ud2 without an IDT.
    assert result.shutdown_reason == "guest-reset", result.describe()
    assert result.exit_status is None


def test_staged_kexec_jump_finds_old_pages_where_the_map_says(lab: Path, workdir: Path) -> None:
    checker = _build_checker(workdir)
    command = f"cd {TOP}\nexec {sys.executable} -m tests.lab.test_staged_patch jump {checker}\n"
    result = _run(lab, workdir, command, "staged-jump")
    loaded = _guest_markers(result, "jump-loaded")
    assert loaded["map_unchanged_by_final"] == "yes", result.describe()
    assert int(loaded["backup_pages"]) > 0
    assert _guest_markers(result, "checker") == {"result": "ok"}, result.describe()
    back = _guest_markers(result, "jump-back")
    assert back == {"reboot": "0", "memory": "intact"}, result.describe()
    # The guest powers off from the test program (see _guest_jump).
    assert result.shutdown_reason == "guest-shutdown", result.describe()


def test_staged_image_larger_than_free_memory_is_enomem_and_frees_everything(
    lab: Path, workdir: Path
) -> None:
    command = f"cd {TOP}\nexec {sys.executable} -m tests.lab.test_staged_patch enomem -\n"
    result = _run(lab, workdir, command, "enomem")
    assert result.exit_status == 0, result.describe()
    got = _guest_markers(result, "enomem")
    # No half-of-RAM rule: the call got as far as free memory went, then failed
    # with ENOMEM (not EINVAL), and no process was killed to make room.
    assert got["errno"] == "ENOMEM", result.describe()
    assert got["map_bytes"] == "0" and got["loaded"] == "0", result.describe()
    log = "\n".join(line.text for line in result.lines)
    assert "Out of memory" not in log and "page allocation failure" not in log
    # All or nothing: the staged image's memory came back, and staging works.
    assert int(got["free_after_kib"]) >= int(got["free_before_kib"]) - 8192, got
    assert got["next_load"] == "ok", result.describe()


# ============================================================== guest side
#
# Runs as root in a lab guest with real kexec enabled (kexechib.enable_kexec=1),
# through the project's Linux backend.

_libc = ctypes.CDLL(None, use_errno=True)
MCL_CURRENT, MCL_FUTURE = 1, 2


def _say(kind: str, **fields: object) -> None:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"KEXECHIB-LAB {kind} {text}".rstrip(), flush=True)


@dataclass
class Busy:
    """Pages in use in the running kernel: a locked buffer of this process."""

    buf: mmap.mmap
    pfns: list[int]

    def fill(self, index: int, value: int) -> None:
        self.buf[index * PAGE_SIZE : (index + 1) * PAGE_SIZE] = _page(value)

    def holds(self, index: int, value: int) -> bool:
        return self.buf[index * PAGE_SIZE : (index + 1) * PAGE_SIZE] == _page(value)


def _busy(npages: int) -> Busy:
    """`npages` locked anonymous pages and their page frames (/proc/self/pagemap).
    The lab kernel has no compaction, THP or KSM: locked pages stay put."""
    buf = mmap.mmap(-1, npages * PAGE_SIZE)
    buf.write(b"\xee" * len(buf))
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    if _libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(len(buf))) != 0:
        raise OSError(ctypes.get_errno(), "mlock")
    entries = array.array("Q")
    with open("/proc/self/pagemap", "rb") as f:
        f.seek((addr >> PAGE_SHIFT) * 8)
        entries.frombytes(f.read(npages * 8))
    assert all(e >> 63 for e in entries), "buffer pages not present"
    return Busy(buf, [e & ((1 << 55) - 1) for e in entries])


def _page(value: int) -> bytes:
    return array.array("Q", [value]).tobytes() * (PAGE_SIZE // 8)


def _data(pfn: int, npages: int = 1, *, key: int = K_DATA) -> bytes:
    return b"".join(_page(((pfn + i) << PAGE_SHIFT) ^ key) for i in range(npages))


def _runs(pfns: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Maximal runs ``(first, count)`` of sorted page frames."""
    first = count = -1
    for pfn in sorted(set(pfns)):
        if count > 0 and pfn == first + count:
            count += 1
            continue
        if count > 0:
            yield first, count
        first, count = pfn, 1
    if count > 0:
        yield first, count


def _table(entries: Sequence[tuple[int, int, int, int]]) -> bytes:
    """Checker table: (addr, npages, tag, key)..., then a 0 address."""
    words = array.array("Q")
    for entry in entries:
        words.extend(entry)
    words.extend((0, 0, 0, 0))
    return words.tobytes()


def _checker_code(path: str, table_addr: int, mode: int) -> bytes:
    code = bytearray(Path(path).read_bytes())
    code[-16:] = array.array("Q", [table_addr, mode]).tobytes()
    return bytes(code)


def _map(kernel: Kernel) -> dict[int, int]:
    """/proc/kexec_pgmap as {dest pfn: source pfn}, with its invariant checked."""
    runs = abi.decode_page_map(kernel.kexec_pgmap())
    pages = {r.dest_pfn + i: r.src_pfn + i for r in runs for i in range(r.npages)}
    for dest, src in pages.items():
        assert src == dest or src not in pages, f"source {src:#x} of {dest:#x} is a destination"
    return pages


def _free_window(kernel: Kernel, size: int, avoid: Iterable[int]) -> int:
    """The first page frame (from 64 MiB up) of `size` pages of RAM that hold none
    of `avoid` (in use or not: the kernel places pages wherever they are)."""
    taken = set(avoid)
    for r in sorted(kernel.memory_map(), key=lambda r: r.end - r.start, reverse=True):
        if r.kind is not MemoryKind.RAM:
            continue
        pfn = max(r.start, 64 * MIB) >> PAGE_SHIFT
        while (pfn + size) << PAGE_SHIFT <= r.end:
            if not taken.intersection(range(pfn, pfn + size)):
                return pfn
            pfn += size
    raise RuntimeError("no free window")


def _guest_zero_fill(checker: str) -> int:
    from kexechibd.kernel.linux import LinuxKernel

    kernel = LinuxKernel()
    start, mid, final_flags = (abi.load_flags(s) for s in (Stage.START, Stage.MID, Stage.FINAL))
    busy = _busy(64)
    data_busy = busy.pfns[:32]  # data whose destination the kernel uses: sources elsewhere
    zero_busy = busy.pfns[32:]  # zero-fill over pages holding 0xee
    # 128 MiB of zero-fill, and in it 64 data pages (mostly free: loaded in
    # place), the first 8 of them loaded with the wrong data first.
    zero_lo = _free_window(kernel, 32768, busy.pfns)
    zero_hi = zero_lo + 32768
    window = zero_lo + 8192
    code = _free_window(kernel, 2, [*busy.pfns, *range(zero_lo, zero_hi)])
    final: dict[int, str] = {}  # what each page must hold in the end: "data" or "zero"

    segs = [Segment(_data(p), p << PAGE_SHIFT, PAGE_SIZE) for p in data_busy]
    segs += [Segment.zero(p << PAGE_SHIFT, PAGE_SIZE) for p in zero_busy]
    segs.append(Segment.zero(zero_lo << PAGE_SHIFT, (zero_hi - zero_lo) << PAGE_SHIFT))
    wrong_then_right = _page(WRONG) * 8 + _data(window + 8, 56)
    segs.append(Segment(wrong_then_right, window << PAGE_SHIFT, 64 << PAGE_SHIFT))
    kernel.kexec_load(0, segs, start)
    final.update((p, "zero") for p in [*range(zero_lo, zero_hi), *zero_busy])
    final.update((p, "data") for p in [*data_busy, *range(window, window + 64)])

    before = _map(kernel)
    served = {s: d for d, s in before.items() if s != d}
    moved = sorted(served)
    assert len(moved) >= 8, "fewer than 8 data pages wait in other pages"
    evict, zero_over = moved[:4], moved[4:8]
    # Data for pages that hold other pages' data: their data moves first.
    segs = [Segment(_data(s), s << PAGE_SHIFT, PAGE_SIZE) for s in evict]
    # Zero-fill over pages that hold other pages' data: copied before zeroed.
    segs += [Segment.zero(s << PAGE_SHIFT, PAGE_SIZE) for s in zero_over]
    # The right data over the window's first 8 pages: allocates nothing.
    segs.append(Segment(_data(window, 8), window << PAGE_SHIFT, 8 << PAGE_SHIFT))
    # Zero-fill over a data page: it stays a data page, now zero.
    segs.append(Segment.zero((window + 63) << PAGE_SHIFT, PAGE_SIZE))
    kernel.kexec_load(0, segs, mid)
    final.update((s, "data") for s in evict)
    final.update((s, "zero") for s in zero_over)
    final[window + 63] = "zero"

    after = _map(kernel)
    listed = {p for p, kind in final.items() if kind == "data"} | {window + 63}
    assert set(after) == listed, "the map lists other pages than the data pages"
    assert all(after[s] == s and after[served[s]] != s for s in evict), "no eviction"
    assert all(after[served[s]] == s for s in zero_over), "zero-fill moved a source"
    own = sum(1 for d, s in after.items() if d == s)
    in_zero = sum(1 for d, s in after.items() if s != d and final.get(s) == "zero")
    _say(
        "zero-fill-loaded",
        data=len(after),
        own=own,
        moved=len(after) - own,
        in_zero_fill=in_zero,
        evicted=len(evict),
    )

    entries = []
    for kind, key in (("data", K_DATA), ("zero", 0)):
        for first, count in _runs(p for p, k in final.items() if k == kind):
            entries.append((first << PAGE_SHIFT, count, first << PAGE_SHIFT, key))
    table_addr = (code << PAGE_SHIFT) + Path(checker).stat().st_size
    page = _checker_code(checker, table_addr, 0) + _table(entries)
    assert len(page) <= 2 * PAGE_SIZE
    kernel.kexec_load(
        code << PAGE_SHIFT, [Segment(page, code << PAGE_SHIFT, 2 * PAGE_SIZE)], final_flags
    )
    _say("zero-fill-jump", entry=hex(code << PAGE_SHIFT), checks=len(entries))
    kernel.reboot_kexec()
    return 1  # not reached: the image does not return


def _guest_jump(checker: str) -> NoReturn:
    from kexechibd.kernel.linux import LinuxKernel

    kernel = LinuxKernel()
    start, final = (abi.load_flags(s, preserve_context=True) for s in (Stage.START, Stage.FINAL))
    busy = _busy(72)
    for i, pfn in enumerate(busy.pfns):
        busy.fill(i, (pfn << PAGE_SHIFT) ^ K_OLD)
    backup = busy.pfns[:64]  # A's pages in B's "window": swapped out, not loaded
    data = busy.pfns[64:]  # B's data over A's pages
    code = _free_window(kernel, 4, busy.pfns)
    placeholder = code + 1  # 3 pages for the checker's table

    segs = [Segment(_checker_code(checker, placeholder << PAGE_SHIFT, 1), code << 12, PAGE_SIZE)]
    segs.append(Segment.zero(placeholder << PAGE_SHIFT, 3 * PAGE_SIZE))
    segs += [Segment.zero(p << PAGE_SHIFT, PAGE_SIZE) for p in backup]
    segs += [Segment(_data(p), p << PAGE_SHIFT, PAGE_SIZE) for p in data]
    kernel.kexec_load(0, segs, start)

    # After the swap, the source page of each of A's pages holds its old contents.
    before = _map(kernel)
    entries = [(before[p] << PAGE_SHIFT, 1, p << PAGE_SHIFT, K_OLD) for p in busy.pfns]
    entries += [(p << PAGE_SHIFT, 1, p << PAGE_SHIFT, K_DATA) for p in data]
    table = _table(entries)
    assert len(table) <= 3 * PAGE_SIZE
    kernel.kexec_load(
        code << PAGE_SHIFT,
        [Segment(table, placeholder << PAGE_SHIFT, 3 * PAGE_SIZE)],
        final,
    )
    unchanged = _map(kernel) == before
    _say(
        "jump-loaded",
        backup_pages=len(backup),
        map_unchanged_by_final="yes" if unchanged else "no",
    )
    # After the jump this kernel's 9p root is gone (docs/lab.md): keep every
    # page of this process in memory and touch no file until the end.
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        raise OSError(ctypes.get_errno(), "mlockall")
    status = kernel.reboot_kexec()
    intact = all(busy.holds(i, (p << PAGE_SHIFT) ^ K_OLD) for i, p in enumerate(busy.pfns))
    _say("jump-back", reboot=status, memory="intact" if intact else "changed")
    # Exiting would close this process's files on the 9p root, whose device
    # the jump reset: that never completes. Power off instead.
    kernel.power_off()


def _guest_enomem() -> int:
    import errno

    from kexechibd.kernel.linux import LinuxKernel

    kernel = LinuxKernel()
    keep = abi.load_flags(Stage.START, preserve_context=True)
    # Segments without a buffer, in the largest RAM range, for exactly as many
    # pages as the allocator manages (MemTotal): with preserve-context each
    # page needs a (zeroed) source page, which cannot all be had (the kernel
    # and this process use some), though the bound of patch 0018 lets the
    # call try (one page more is ENOMEM at once: tests/lab/test_staged_bounds.py).
    low, _ = largest_ram_range()
    total = meminfo_kib("MemTotal") * 1024
    segs = [Segment.zero(low + a, min(MIB, total - a)) for a in range(0, total, MIB)]
    before = mem_free_kib()
    try:
        kernel.kexec_load(0, segs, keep)
        err = 0
    except abi.KernelError as exc:
        err = exc.errno
    after = mem_free_kib()
    pgmap = kernel.kexec_pgmap()
    loaded = kernel.kexec_loaded()
    kernel.kexec_load(0, [Segment(_data(16384), 16384 << PAGE_SHIFT, PAGE_SIZE)], keep)
    final = abi.load_flags(Stage.FINAL, preserve_context=True)
    kernel.kexec_load(16384 << PAGE_SHIFT, [], final)
    next_ok = kernel.kexec_loaded() and set(_map(kernel)) == {16384}
    kernel.kexec_load(0, [], abi.load_flags(Stage.FULL))
    _say(
        "enomem",
        errno=errno.errorcode.get(err, err),
        map_bytes=len(pgmap),
        loaded=int(loaded),
        free_before_kib=before,
        free_after_kib=after,
        next_load="ok" if next_ok else "failed",
    )
    return 0


def main(argv: Sequence[str]) -> int:  # pragma: no cover - runs inside lab guests
    what, checker = argv
    if what == "zero-fill":
        return _guest_zero_fill(checker)
    if what == "jump":
        return _guest_jump(checker)
    if what == "enomem":
        return _guest_enomem()
    raise SystemExit(f"unknown guest step {what}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
