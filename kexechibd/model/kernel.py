"""``ModelKernel``: the ``Kernel`` protocol for the kernel running on a model
machine — the kexec interface of DESIGN §2.1–§2.2, errno for errno.

One process drives a model kernel at a time (a lock file says which), as one
kernel serves its userspace.  Unfinished staged images live in that process,
so they belong to it and end with it, as the patched kernel's staging belongs
to the process that started it (another process's staged calls are EBUSY
there; here it cannot open the kernel at all); finished images, the page
allocator and the kernel's record are written to the machine directory
whenever a load completes or control leaves the kernel.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from kexechibd import ranges
from kexechibd.kernel import abi
from kexechibd.kernel.api import KernelGone, KernelIdentity, MemoryRange, SupportReport
from kexechibd.model import kimage, machine
from kexechibd.model.allocator import OutOfPages, PageAllocator
from kexechibd.model.memory import PhysicalMemory
from kexechibd.model.vmcore import VmcoreFile


class KernelBusy(RuntimeError):
    """Another process drives this model kernel."""


class ModelKernel:
    """The running kernel of a model machine."""

    backend = "model"
    # Every model kernel runs on the host and sees its files.
    successors_share_files = True

    def __init__(self, target: machine.Machine | Path | str, kernel_id: int | None = None) -> None:
        self.machine = (
            target if isinstance(target, machine.Machine) else machine.Machine(Path(target))
        )
        kid = kernel_id if kernel_id is not None else self.machine.running
        if kid is None:
            raise KernelGone(f"the model machine in {self.machine.dir} is off")
        self.id = kid
        rec = self.machine.record(kid)
        if rec.status != machine.RUNNING:
            raise KernelGone(f"model kernel {kid} is {rec.status}, not running")
        self._lock_file = open(self.machine.kernel_dir(kid) / "lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise KernelBusy(f"model kernel {kid} is driven by another process") from None
        self._allocator = self.machine.load_allocator(kid)
        self._staged: kimage.ImageBuilder | None = None
        self._staged_preserve = False
        self._kexec_lock = threading.Lock()

    def close(self) -> None:
        if not self._lock_file.closed:
            self._lock_file.close()

    def __enter__(self) -> ModelKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def memory(self) -> PhysicalMemory:
        return self.machine.memory

    @property
    def record(self) -> machine.KernelRecord:
        return self.machine.record(self.id)

    def _caps(self) -> machine.Capabilities:
        return self.machine.capabilities

    def _check_alive(self) -> None:
        if self.machine.running != self.id:
            raise KernelGone(f"model kernel {self.id} is no longer running")

    def _save(self, loaded: kimage.LoadedImage | None) -> None:
        with self.machine.transaction() as state:
            rec = self.machine.record(self.id, state)
            rec.loaded = loaded
            state["kernels"][str(self.id)] = rec.to_json()
        self.machine.save_allocator(self.id, self._allocator)

    # ------------------------------------------------------------ userspace in the model

    def allocate(self, npages: int) -> list[int]:
        """Page frames for this kernel's own use (a workload's memory)."""
        return [self._allocator.alloc() for _ in range(npages)]

    def take(self, pfn: int) -> bool:
        return self._allocator.take(pfn)

    def is_free(self, pfn: int) -> bool:
        return self._allocator.is_free(pfn)

    def flush(self) -> None:
        """Write this kernel's page allocator to the machine directory."""
        self.machine.save_allocator(self.id, self._allocator)

    @property
    def allocator(self) -> PageAllocator:
        return self._allocator

    # ------------------------------------------------------------ kexec_load

    def kexec_load(self, entry: int, segments: Sequence[abi.Segment], flags: int) -> None:
        nseg = len(segments)
        self._check_alive()
        # kexec_load_check() and the arch check run before the kexec lock is
        # taken: their errors win over EBUSY and change nothing, staged or
        # not (DESIGN §2.2: a refusal before the lock, the flag probe's
        # included, leaves a staged image as it was).
        err = self._load_check(flags, nseg)
        if err:
            raise abi.kexec_load_error(err, flags, nseg)
        if not self._kexec_lock.acquire(blocking=False):
            raise abi.kexec_load_error(errno.EBUSY, flags, nseg)
        try:
            self._kexec_load(entry, segments, flags)
        finally:
            self._kexec_lock.release()

    def _load_check(self, flags: int, nseg: int) -> int:
        """``kexec_load_check()`` and the syscall's arch check: 0 or the errno."""
        caps = self._caps()
        if not caps.kexec:
            return errno.ENOSYS
        if not caps.cap_sys_boot or caps.kexec_load_disabled or caps.lockdown != "none":
            return errno.EPERM
        accepted = abi.KEXEC_ON_CRASH
        if caps.kexec_jump:
            accepted |= abi.KEXEC_PRESERVE_CONTEXT
        if caps.staged_load:
            accepted |= abi.KEXEC_STAGE_MASK
        if flags & accepted != flags & ~abi.KEXEC_ARCH_MASK:
            return errno.EINVAL
        stage = abi.Stage.of(flags)
        if stage is not abi.Stage.FULL and flags & abi.KEXEC_ON_CRASH:
            return errno.EINVAL
        if nseg > stage.segment_max:
            return errno.EINVAL
        if flags & abi.KEXEC_ARCH_MASK not in (abi.KEXEC_ARCH_DEFAULT, abi.KEXEC_ARCH_X86_64):
            return errno.EINVAL
        return 0

    def _kexec_load(self, entry: int, segments: Sequence[abi.Segment], flags: int) -> None:
        nseg = len(segments)

        def fail(err: int) -> NoReturn:
            raise abi.kexec_load_error(err, flags, nseg)

        stage = abi.Stage.of(flags)
        preserve = bool(flags & abi.KEXEC_PRESERVE_CONTEXT)

        if stage is abi.Stage.FULL:
            if flags & abi.KEXEC_ON_CRASH:
                if nseg == 0:
                    return  # unloads the crash image; model machines never have one
                # No crashkernel= on model machines: crashk_res is [0, 0], so
                # kimage_alloc_init() refuses any other entry, and after
                # sanity_check_segment_list()'s common checks its crash-region
                # check refuses every segment.
                if entry != 0:
                    fail(errno.EADDRNOTAVAIL)
                fail(self._sanity_check(segments, full=True) or errno.EADDRNOTAVAIL)
            if nseg == 0:
                # An unload discards a staged image too, whoever staged it.
                self._discard_staged()
                self._unload()
                return
            err = self._entry_check(entry) or self._sanity_check(segments, full=True)
            if err:
                fail(err)
            builder = kimage.ImageBuilder(
                self.memory, self._allocator, preserve_context=preserve, staged=False
            )
            self._build(builder, segments, entry, finish=True, flags=flags)
            return

        if stage is abi.Stage.START:
            self._discard_staged()
            if nseg == 0:
                return
            self._staged = kimage.ImageBuilder(
                self.memory, self._allocator, preserve_context=preserve, staged=True
            )
            self._staged_preserve = preserve
        elif self._staged is None or self._staged_preserve != preserve:
            self._discard_staged()
            fail(errno.EINVAL)
        err = (
            (self._entry_check(entry) if stage is abi.Stage.FINAL else 0)
            or self._sanity_check(segments, full=False)
            or self._staged_bounds(self._staged, segments)
        )
        if err:
            self._discard_staged()
            fail(err)
        assert self._staged is not None
        builder = self._staged
        if stage is abi.Stage.FINAL:
            self._staged = None
        self._build(builder, segments, entry, finish=stage is abi.Stage.FINAL, flags=flags)

    def _build(
        self,
        builder: kimage.ImageBuilder,
        segments: Sequence[abi.Segment],
        entry: int,
        *,
        finish: bool,
        flags: int,
    ) -> None:
        try:
            builder.add(segments)
            image = builder.finish(entry) if finish else None
        except OutOfPages:
            builder.discard()
            if builder is self._staged:
                self._staged = None
            raise abi.kexec_load_error(errno.ENOMEM, flags, len(segments)) from None
        if image is not None:
            old = self.record.loaded
            if old is not None:
                self._free_image(old)
            self._save(image)

    def _entry_check(self, entry: int) -> int:
        """The patched kernel's entry check (``kimage_alloc_init()`` for a
        one-shot load, ``KEXEC_STAGE_FINAL`` before its segments): an entry
        point at or above the destination limit (the kernel half, say) is no
        page of the machine, EADDRNOTAVAIL.  Mainline checks only a crash
        image's entry."""
        if self._caps().staged_load and entry >= abi.KEXEC_DESTINATION_MEMORY_LIMIT:
            return errno.EADDRNOTAVAIL
        return 0

    def _sanity_check(self, segments: Sequence[abi.Segment], *, full: bool) -> int:
        """``sanity_check_segment_list()``: 0 or the errno."""
        for seg in segments:
            if seg.mem < 0 or seg.memsz < 0 or seg.mem + seg.memsz >= 1 << 64:
                return errno.EADDRNOTAVAIL
            if seg.mem % abi.PAGE_SIZE or seg.end % abi.PAGE_SIZE:
                return errno.EADDRNOTAVAIL
            if seg.end >= abi.KEXEC_DESTINATION_MEMORY_LIMIT:
                return errno.EADDRNOTAVAIL
            if seg.end > self.memory.size:
                # Model limit: a destination beyond the machine's physical
                # address space cannot be represented (a real kernel accepts
                # it and crashes while relocating).
                return errno.EADDRNOTAVAIL
        if full:
            # The kernel's pairwise test, so that an empty segment strictly
            # inside another overlaps it too (at most 16 segments here).
            for i, seg in enumerate(segments):
                for other in segments[:i]:
                    if seg.end > other.mem and seg.mem < other.end:
                        return errno.EINVAL
        for seg in segments:
            if seg.bufsz > seg.memsz:
                return errno.EINVAL
        if full:
            half = self._total_ram_pages() // 2
            total = 0
            for seg in segments:
                pages = seg.memsz >> abi.PAGE_SHIFT
                total += pages
                if pages > half or total > half:
                    return errno.EINVAL
        return 0

    def _staged_bounds(
        self, builder: kimage.ImageBuilder | None, segments: Sequence[abi.Segment]
    ) -> int:
        """``kimage_check_staged()`` (patch 0018), after the common checks:
        every page a segment covers holds System RAM (EADDRNOTAVAIL), and the
        image's data pages plus those of the call's data segments (overlaps
        not subtracted) fit in the RAM the allocator manages (ENOMEM)."""
        assert builder is not None
        ram = self.record.usable
        data_pages = builder.data_pages
        for seg in segments:
            if seg.memsz == 0:
                continue
            if not _every_page_holds_ram(seg.mem, seg.end, ram):
                return errno.EADDRNOTAVAIL
            if not builder.zero_fill(seg):
                data_pages += seg.memsz >> abi.PAGE_SHIFT
        if data_pages > self._total_ram_pages():
            return errno.ENOMEM
        return 0

    def _total_ram_pages(self) -> int:
        rec = self.record
        usable = sum(r.size for r in rec.usable) >> abi.PAGE_SHIFT
        footprint = sum(b - a for a, b in rec.footprint) >> abi.PAGE_SHIFT
        return usable - footprint

    def _discard_staged(self) -> None:
        if self._staged is not None:
            self._staged.discard()
            self._staged = None

    def _free_image(self, image: kimage.LoadedImage) -> None:
        for pfn in kimage.image_pages(self.memory, image):
            self._allocator.free(pfn)

    def _unload(self) -> None:
        old = self.record.loaded
        if old is not None:
            self._free_image(old)
            self._save(None)

    def kexec_loaded(self) -> bool:
        return self.record.loaded is not None

    def kexec_pgmap(self) -> bytes:
        caps = self._caps()
        if not caps.staged_load:
            raise abi.pgmap_error(errno.ENOENT)
        # open() needs CAP_SYS_BOOT and is refused under lockdown, as kexec_load.
        # One call reads the whole file at once, so the model never sees the
        # ESTALE of a read that another caller's load interrupted.
        if not caps.cap_sys_boot or caps.lockdown != "none":
            raise abi.pgmap_error(errno.EPERM)
        # Each read() holds the kexec lock (a try-lock) while it produces records.
        if not self._kexec_lock.acquire(blocking=False):
            raise abi.pgmap_error(errno.EBUSY)
        try:
            return self._page_map()
        finally:
            self._kexec_lock.release()

    def _page_map(self) -> bytes:
        if self._staged is not None:
            return self._staged.page_map()
        loaded = self.record.loaded
        if loaded is None:
            return b""
        return kimage.page_map_of(kimage.walk_entries(self.memory, loaded.head))

    # ------------------------------------------------------------ reboot

    def reboot_kexec(self) -> int:
        # reboot(2) checks CAP_SYS_BOOT before kernel_kexec() tries the lock.
        if not self._caps().cap_sys_boot:
            raise abi.reboot_error(errno.EPERM, "KEXEC")
        if not self._kexec_lock.acquire(blocking=False):
            raise abi.reboot_error(errno.EBUSY, "KEXEC")
        try:
            generation, preserve = self._jump()
        finally:
            self._kexec_lock.release()
        if not preserve:
            self.close()
            raise KernelGone(f"model kernel {self.id} kexec'd into a new kernel")
        if not self.machine.wait_entered(self.id, generation):
            self.close()
            raise KernelGone(f"model kernel {self.id} will never be re-entered")
        # Back: relocate_kernel's return value becomes image->start.
        loaded = self.record.loaded
        assert loaded is not None
        loaded.start = self.memory.read_u64(loaded.control + machine.DATA_PEER)
        self._save(loaded)
        return 0

    def _jump(self) -> tuple[int, bool]:
        self.flush()
        with self.machine.transaction() as state:
            if state["running"] != self.id:
                raise KernelGone(f"model kernel {self.id} is no longer running")
            rec = self.machine.record(self.id, state)
            image = rec.loaded
            if image is None:
                raise abi.reboot_error(errno.EINVAL, "KEXEC")
            if image.preserve_context:
                rsp = image.swap + abi.PAGE_SIZE - 8
                rec.status = machine.FROZEN
            else:
                reentry = 0
                rsp = image.control + abi.PAGE_SIZE - 8
                rec.status = machine.GONE
            try:
                kimage.relocate(self.memory, image)
            except kimage.CorruptEntryList as exc:
                raise self.machine._crash_in(state, f"relocation failed: {exc}") from None
            state["kernels"][str(self.id)] = rec.to_json()
            if image.preserve_context:
                reentry = self.machine.freeze(state, self.id, self._allocator, image)
            self.memory.write_u64(rsp, reentry)
            state["running"] = None
            state["generation"] += 1
            generation = int(state["generation"])
            self.machine.transfer(state, image.start, rsp, image.entry_segment)
        return generation, image.preserve_context

    def power_off(self) -> NoReturn:
        if not self._caps().cap_sys_boot:
            raise abi.reboot_error(errno.EPERM, "POWER_OFF")
        self._check_alive()
        self.machine.power_off()
        self.close()
        raise KernelGone(f"model machine {self.machine.dir} powered off")

    # ------------------------------------------------------------ reading

    def vmcore(self) -> BinaryIO:
        rec = self.record
        if rec.elfcorehdr is None:
            raise abi.KernelError(
                "open /proc/vmcore", errno.ENOENT, "this kernel was not booted with elfcorehdr=", ""
            )
        return VmcoreFile(self.memory, rec.elfcorehdr)  # type: ignore[return-value]

    def cmdline(self) -> str:
        return self.record.cmdline

    def memory_map(self) -> list[MemoryRange]:
        return list(self.record.firmware_map)

    def vmcoreinfo(self) -> tuple[int, int] | None:
        return self.record.vmcoreinfo

    def acpi_rsdp(self) -> int | None:
        return None  # the model's machine has no ACPI tables

    def identity(self) -> KernelIdentity:
        rec = self.record
        return KernelIdentity(rec.release, rec.build_id, rec.boot_id, self.machine.machine_id)

    def rootfs(self) -> Path:
        return self.machine.kernel_dir(self.id) / "rootfs"

    def probe(self) -> SupportReport:
        caps = self._caps()
        return SupportReport(
            backend=self.backend,
            kexec=caps.kexec,
            cap_sys_boot=caps.cap_sys_boot,
            lockdown=caps.lockdown,
            kexec_load_disabled=caps.kexec_load_disabled,
            kexec_jump=caps.kexec_jump if caps.kexec else None,
            staged_load=caps.staged_load and caps.kexec,
            notes=(f"machine model in {os.fspath(self.machine.dir)}",),
        )


def _every_page_holds_ram(start: int, end: int, ram: Sequence[MemoryRange]) -> bool:
    """Whether each page of ``[start, end)`` holds at least one byte of RAM,
    as ``kimage_is_ram()`` walks System RAM: a page RAM only partly covers
    counts (firmware maps may end RAM inside a page)."""
    pages_with_ram = [(abi.page_align_down(r.start), abi.page_align_up(r.end)) for r in ram]
    return not ranges.subtract([MemoryRange(start, end)], pages_with_ram)
