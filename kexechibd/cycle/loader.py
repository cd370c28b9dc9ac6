"""Resume in C (DESIGN §1.4): verify an image and stream it into a staged load.

Chunks are decompressed and verified a few ahead on worker threads; each
chunk's runs become segments (``plan``), handed to ``kexec_load`` as
``KS_start``, ``KS_mid``…, and released; ``KS_final`` sets the entry to A's
jump-back entry.  Any error discards the staged image and names what was
wrong; nothing is jumped to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from kexechibd.cycle.kexec_ops import discard_staged
from kexechibd.cycle.plan import RunLike, plan_calls
from kexechibd.errors import BadImage, KernelRefused
from kexechibd.image import ImageError, ImageReader, ImageSummary
from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT
from kexechibd.kernel.api import Kernel, MemoryKind, MemoryRange

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class LoadReport:
    calls: int
    segments: int
    pages: int


def check_identity(reader: ImageReader, kernel: Kernel, *, force: bool) -> None:
    """The image must come from this machine (and, unless forced, this kernel build)."""
    meta = reader.meta
    here = kernel.identity()
    if meta.machine_id != here.machine_id:
        raise BadImage(
            f"the image was made on machine {meta.machine_id}, this is {here.machine_id}; "
            "refusing to resume another machine's memory"
        )
    if not force and (meta.kernel_release, meta.build_id) != (here.release, here.build_id):
        raise BadImage(
            f"the image was made by kernel {meta.kernel_release} (build {meta.build_id or '?'}), "
            f"this is {here.release} (build {here.build_id or '?'}); boot the same kernel or "
            "resume with the 'force' option"
        )


def check_destinations(reader: ImageReader, memory_map: Sequence[MemoryRange]) -> int:
    """Every page the image restores must be RAM here (the kernel does not
    check).  Returns the number of pages."""
    ram = sorted(
        (r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT) for r in memory_map if r.kind is MemoryKind.RAM
    )
    pages = 0
    i = 0
    for run in reader.covered():
        while i < len(ram) and ram[i][1] <= run.pfn:
            i += 1
        if i == len(ram) or not (ram[i][0] <= run.pfn and run.pfn + run.npages <= ram[i][1]):
            start, size = run.pfn << PAGE_SHIFT, run.npages << PAGE_SHIFT
            raise BadImage(
                f"the image restores {start:#x}+{size:#x}, which is not RAM on this machine"
            )
        pages += run.npages
    return pages


def _chunk_stream(
    reader: ImageReader,
) -> Iterator[tuple[Sequence[RunLike], bytes | memoryview]]:
    for chunk in reader.chunks():
        yield chunk.runs, chunk.data


def stream_load(
    kernel: Kernel,
    reader: ImageReader,
    *,
    total_pages: int,
    progress: Progress = lambda fraction, phase: None,
    checkpoint: Callable[[], None] = lambda: None,
) -> LoadReport:
    """Staged load of the whole image; the entry is A's jump-back entry."""
    entry = reader.meta.jump_back_entry
    calls = segments = pages = 0
    try:
        for batch in plan_calls(_chunk_stream(reader)):
            stage = abi.Stage.START if calls == 0 else abi.Stage.MID
            kernel.kexec_load(entry, batch, abi.load_flags(stage))
            calls += 1
            segments += len(batch)
            pages += sum(s.memsz for s in batch) >> PAGE_SHIFT
            progress(pages / max(total_pages, 1), "loading")
            checkpoint()
        if calls == 0:
            raise BadImage("the image holds no memory")
        kernel.kexec_load(entry, [], abi.load_flags(abi.Stage.FINAL))
        calls += 1
    except ImageError as exc:
        discard_staged(kernel)
        raise BadImage(str(exc)) from None
    except abi.KernelError as exc:
        discard_staged(kernel)
        raise KernelRefused(str(exc)) from None
    except BaseException:
        discard_staged(kernel)
        raise
    return LoadReport(calls, segments, pages)


def describe(summary: ImageSummary) -> str:
    return (
        f"{summary.data_pages} data pages, {summary.zero_pages} zero pages in {summary.runs} "
        f"runs, {summary.chunks} chunks, {summary.stored_bytes} bytes ({summary.compression})"
    )
