"""Our side of each benchmark, one measurement per process:

  python -m bench.worker save VMCORE IMAGE [--compression zstd] [--level 1]
                                          [--model-header ADDR]
      B's saver (kexechibd.cycle.saver.save_image) on an ELF core file, as
      it reads /proc/vmcore in B, or (--model-header) on a model machine's
      /proc/vmcore; the image goes where params say.
  python -m bench.worker resume IMAGE MACHINE [--kernel-process | --copy-kernel PAGES]
                                            [--leave-loaded]
      C's loader (kexechibd.cycle.loader: check_destinations, stream_load)
      into the running kernel of a model machine: every kexec_load call, the
      data copied into model memory, KS_final.  The machine is left with the
      image loaded (never jumped to), then unloads it untimed — unless
      --leave-loaded: the caller power-cycles the machine before the next
      run (unloading walks the model's entry list in Python, which a
      resume never does: it jumps).  With
      --copy-kernel the loader alone: the same loader into a kernel stand-in
      whose kexec_load is one copy of each segment into the resident pages
      of the file PAGES (bench/standin.py; made first if missing, untimed);
      the machine only gives its memory map.

Each prints one JSON line: the work's own wall time (interpreter start and
imports excluded: the daemon is running when it saves or resumes), and
its peak RSS (``VmHWM``; see ``bench/memory.py`` for what it covers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from bench.memory import KernelProxy, reset_peak, rss_kib
from bench.standin import CopyKernel
from kexechibd.cycle.params import SaveParams
from kexechibd.kernel import abi
from kexechibd.kernel.api import KernelIdentity

CHUNK_SIZE = 4 << 20


class CoreFileKernel:
    """The one part of the Kernel protocol the saver's data path uses:
    ``vmcore()`` — here an ELF core file instead of /proc/vmcore."""

    backend = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def vmcore(self) -> BinaryIO:
        return open(self.path, "rb", buffering=0)


class ModelCoreKernel:
    """``vmcore()`` of a model machine's memory: ``/proc/vmcore`` as the
    model serves it to B, from an ELF core header at ``header`` in memory."""

    backend = "model"

    def __init__(self, machine: Path, header: int) -> None:
        from kexechibd.model.machine import Machine

        self.machine = Machine(machine)
        self.header = header

    def vmcore(self) -> BinaryIO:
        from kexechibd.model.vmcore import VmcoreFile

        return VmcoreFile(self.machine.memory, self.header)  # type: ignore[return-value]


def save(args: argparse.Namespace) -> dict[str, object]:
    from kexechibd.cycle.saver import save_image

    image = Path(args.image)
    params = SaveParams(
        hibernate_id=uuid.uuid4().hex,
        mode="poweroff",
        image_location=str(image),
        compression=args.compression,
        level=args.level,
        chunk_size=args.chunk_size,
        origin=KernelIdentity("bench", "00" * 20, "boot", "machine"),
        created=time.time(),
        window=(),
    )
    kernel: CoreFileKernel | ModelCoreKernel = (
        ModelCoreKernel(Path(args.vmcore), args.model_header)
        if args.model_header is not None
        else CoreFileKernel(Path(args.vmcore))
    )
    start = time.perf_counter()
    summary = save_image(kernel, params, b"", 0x1000)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "image_bytes": image.stat().st_size,
        "data_pages": summary.data_pages,
        "zero_pages": summary.zero_pages,
        "runs": summary.runs,
        "chunks": summary.chunks,
        "rss_hwm_kib": rss_kib("VmHWM"),
    }


def resume(args: argparse.Namespace) -> dict[str, object]:
    from kexechibd.cycle.loader import check_destinations, stream_load
    from kexechibd.image import open_store
    from kexechibd.model.kernel import ModelKernel

    kernel: ModelKernel | KernelProxy | CopyKernel
    if args.copy_kernel:
        with ModelKernel(Path(args.machine)) as model:
            kernel = CopyKernel(model.memory_map(), Path(args.copy_kernel))
    elif args.kernel_process:
        kernel = KernelProxy(Path(args.machine))
    else:
        kernel = ModelKernel(Path(args.machine))
    kernel.memory_map()  # the proxy's child is up before the clock starts
    baseline = rss_kib("VmRSS")
    reset_peak()
    start = time.perf_counter()
    reader = open_store(Path(args.image)).open()
    pages = check_destinations(reader, kernel.memory_map())
    report = stream_load(kernel, reader, total_pages=pages)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    reader.close()
    hwm = rss_kib("VmHWM")
    # Leave the kernel as it was (untimed): a later run loads into it again.
    if not (args.copy_kernel or args.leave_loaded):
        kernel.kexec_load(0, [], abi.load_flags(abi.Stage.FULL))
    kernel.close()
    return {
        "seconds": seconds,
        "calls": report.calls,
        "segments": report.segments,
        "pages": report.pages,
        "runs": reader.summary.runs,
        "chunks": reader.summary.chunks,
        "kernel_process": bool(args.kernel_process),
        "kernel": kernel.backend,
        "rss_baseline_kib": baseline,
        "rss_hwm_kib": hwm,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("save")
    s.add_argument("vmcore")
    s.add_argument("image")
    s.add_argument("--compression", default="zstd")
    s.add_argument("--level", type=int, default=1)
    s.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    s.add_argument(
        "--model-header",
        type=lambda text: int(text, 0),
        help="VMCORE is a model machine's directory; its ELF core header is at this address",
    )
    r = sub.add_parser("resume")
    r.add_argument("image")
    r.add_argument("machine")
    which = r.add_mutually_exclusive_group()
    which.add_argument(
        "--kernel-process",
        action="store_true",
        help="run the model kernel in a child process (the loader's own memory)",
    )
    which.add_argument(
        "--copy-kernel",
        metavar="PAGES",
        help="load into a stand-in whose kexec_load is one copy per segment into the file "
        "PAGES (the loader alone)",
    )
    r.add_argument(
        "--leave-loaded",
        action="store_true",
        help="leave the image loaded (the caller power-cycles the machine before the next run)",
    )
    args = parser.parse_args(argv)
    result = save(args) if args.what == "save" else resume(args)
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
