"""Memory figures of our processes.

On the machine model the "kernel" runs inside the loader's process: its
tables (standing for kernel memory) and the model's physical memory would
count in the loader's RSS, which a real system never sees.  So the loader's
memory is measured with the model kernel in a process of its own:
``KernelProxy`` is the Kernel protocol's ``kexec_load`` and ``memory_map``
forwarded over a pipe to ``serve`` in a child process, which runs the model
kernel.  Each call's segment buffers are sent one by one from the loader's
own buffers (nothing is joined), as a real kernel copies them from the
caller's memory.  The loader process's peak RSS (``VmHWM``) is then its own:
interpreter, code, the reader's chunks in flight and the segment lists.

In the timed runs the model kernel shares the loader's process, so their
``VmHWM`` includes the model kernel's tables (not the model's physical
memory, which it copies with ``pwrite``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kexechibd.kernel import abi
from kexechibd.kernel.api import MemoryRange

if TYPE_CHECKING:  # multiprocessing is imported only where a proxy is made
    from multiprocessing.connection import Connection


def rss_kib(field: str = "VmHWM") -> int:
    """A ``/proc/self/status`` memory field, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def serve(conn: Connection, machine: str) -> None:
    """The model kernel's side (child process): run each forwarded call."""
    from kexechibd.model.kernel import ModelKernel

    kernel = ModelKernel(Path(machine))
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            if msg == "memory_map":
                conn.send(kernel.memory_map())
                continue
            entry, flags, shapes = msg
            segments = []
            for mem, memsz, bufsz in shapes:
                buf = conn.recv_bytes() if bufsz else b""
                segments.append(abi.Segment(buf, mem, memsz))
            try:
                kernel.kexec_load(entry, segments, flags)
            except abi.KernelError as exc:
                conn.send(("error", exc.errno, str(exc)))
            else:
                conn.send(("ok",))
            del segments
    finally:
        kernel.close()
        conn.close()


class KernelProxy:
    """The loader's view of a model kernel running in another process."""

    backend = "model (separate process)"

    def __init__(self, machine: Path) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve, args=(child, str(machine)), daemon=True)
        self._proc.start()
        child.close()

    def memory_map(self) -> list[MemoryRange]:
        self._conn.send("memory_map")
        ranges: list[MemoryRange] = self._conn.recv()
        return ranges

    def kexec_load(self, entry: int, segments: Sequence[abi.Segment], flags: int) -> None:
        self._conn.send((entry, flags, [(s.mem, s.memsz, s.bufsz) for s in segments]))
        for s in segments:
            if s.bufsz:
                self._conn.send_bytes(s.buf)
        reply = self._conn.recv()
        if reply[0] != "ok":
            raise abi.KernelError("kexec_load (proxied)", reply[1], reply[2], "")

    def close(self) -> None:
        try:
            self._conn.send(None)
        finally:
            self._conn.close()
            self._proc.join(30)
