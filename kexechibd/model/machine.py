"""One model x86_64 machine, persisted in a directory (DESIGN §7).

``memory`` is the physical memory (sparse file), ``state.json`` the machine:
its firmware memory map, power, which kernel runs, and what each kernel that
ever booted remembers of itself (its page allocator lives next to it).  Every
process that plays a kernel of this machine opens the same directory, so A, B
and C can run as separate processes, as on hardware.

A kexec jump is carried out here: relocation (``kimage``), then control flows
from the image's entry: code in the entry's segment runs under unicorn until
it leaves that segment, and the model looks at where it arrived — a kernel's
64-bit entry (the boot protocol says so: ``rsi`` points to boot_params whose
``code32_start + 0x200`` is the target), the re-entry point inside the control
page of a kernel that jumped away (its return path swaps its backup map back
and its ``reboot_kexec`` returns 0), or anything else (the machine crashes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexechibd import bootproto, cmdline, cpio
from kexechibd.kernel.abi import PAGE_SHIFT, PAGE_SIZE, page_align_down, page_align_up
from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.model import bzimage, kimage
from kexechibd.model.allocator import PageAllocator
from kexechibd.model.memory import PhysicalMemory
from kexechibd.ranges import subtract

STATE_FILE = "state.json"
MEMORY_FILE = "memory"
LOCK_FILE = "lock"
KERNELS_DIR = "kernels"

MIB = 1 << 20
GIB = 1 << 30
FRESH_KERNEL_AT = 16 * MIB  # where firmware-booted kernels sit (A and C)

# The model's relocate_kernel control page (one page): the code the CPU
# returns into after a preserve-context jump, and its data area.
CONTROL_MAGIC = b"KXHIB MODEL RELOCATE_KERNEL\0\0\0\0\0"
CONTROL_KERNEL_ID = 32
CONTROL_SNAPSHOT = 40
MAX_SNAPSHOTS = 8
REENTRY_OFFSET = 0x100
DATA_HEAD = 0x800
DATA_SWAP = 0x808
DATA_PRESERVE = 0x810
DATA_PEER = 0x818

RUNNING = "running"
FROZEN = "frozen"  # jumped away with preserve-context; may be re-entered
GONE = "gone"


class MachineCrashed(RuntimeError):
    """Control went somewhere no kernel could survive."""


@dataclass
class Capabilities:
    """What the model's kernels support; tests switch features off to model
    kernels that refuse."""

    kexec: bool = True
    cap_sys_boot: bool = True
    lockdown: str = "none"
    kexec_load_disabled: bool = False
    kexec_jump: bool = True
    staged_load: bool = True


@dataclass
class KernelRecord:
    id: int
    boot_id: str
    release: str
    build_id: str
    cmdline: str
    firmware_map: list[MemoryRange]
    usable: list[MemoryRange]
    status: str = RUNNING
    entered: int = 0
    loaded: kimage.LoadedImage | None = None
    vmcoreinfo: tuple[int, int] | None = None
    elfcorehdr: int | None = None
    footprint: list[tuple[int, int]] = field(default_factory=list)
    # Frozen states by snapshot number (see ``Machine.freeze``).
    snapshots: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "boot_id": self.boot_id,
            "release": self.release,
            "build_id": self.build_id,
            "cmdline": self.cmdline,
            "firmware_map": [[r.start, r.end, r.kind.value] for r in self.firmware_map],
            "usable": [[r.start, r.end] for r in self.usable],
            "status": self.status,
            "entered": self.entered,
            "loaded": self.loaded.to_json() if self.loaded else None,
            "vmcoreinfo": list(self.vmcoreinfo) if self.vmcoreinfo else None,
            "elfcorehdr": self.elfcorehdr,
            "footprint": [list(f) for f in self.footprint],
            "snapshots": self.snapshots,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KernelRecord:
        return cls(
            id=data["id"],
            boot_id=data["boot_id"],
            release=data["release"],
            build_id=data["build_id"],
            cmdline=data["cmdline"],
            firmware_map=[MemoryRange(a, b, MemoryKind(k)) for a, b, k in data["firmware_map"]],
            usable=[MemoryRange(a, b) for a, b in data["usable"]],
            status=data["status"],
            entered=data["entered"],
            loaded=kimage.LoadedImage.from_json(data["loaded"]) if data["loaded"] else None,
            vmcoreinfo=(data["vmcoreinfo"][0], data["vmcoreinfo"][1])
            if data["vmcoreinfo"]
            else None,
            elfcorehdr=data["elfcorehdr"],
            footprint=[(a, b) for a, b in data["footprint"]],
            snapshots=data.get("snapshots", {}),
        )


def firmware_map(ram: int, *, reserved: tuple[tuple[int, int], ...] = ()) -> list[MemoryRange]:
    """An e820 map like a PC's: low RAM below 636 KiB, the BIOS area, RAM from
    1 MiB with ACPI tables at its top, the PCI hole below 4 GiB and the rest
    of RAM above it; ``reserved`` punches extra firmware-reserved ranges."""
    if ram < 64 * MIB or ram % MIB:
        raise ValueError("model RAM must be a whole number of MiB, at least 64 MiB")
    acpi = 128 << 10
    low_top = 0x9F000
    below_4g = min(ram, 3 * GIB)
    ranges = [
        MemoryRange(0, low_top),
        MemoryRange(low_top, 0x100000, MemoryKind.RESERVED),
        MemoryRange(0x100000, below_4g - acpi),
        MemoryRange(below_4g - acpi, below_4g, MemoryKind.ACPI),
    ]
    if ram > 3 * GIB:
        ranges.append(MemoryRange(3 * GIB, 4 * GIB, MemoryKind.RESERVED))
        ranges.append(MemoryRange(4 * GIB, 4 * GIB + ram - 3 * GIB))
    for start, end in reserved:
        ram_ranges = subtract([r for r in ranges if r.kind is MemoryKind.RAM], [(start, end)])
        ranges = sorted(
            [
                *ram_ranges,
                *(r for r in ranges if r.kind is not MemoryKind.RAM),
                MemoryRange(start, end, MemoryKind.RESERVED),
            ]
        )
    return ranges


def _pfn_ranges(ranges: list[MemoryRange]) -> list[tuple[int, int]]:
    return [
        (page_align_up(r.start) >> PAGE_SHIFT, page_align_down(r.end) >> PAGE_SHIFT)
        for r in ranges
        if r.kind is MemoryKind.RAM
    ]


def _version(st: os.stat_result) -> tuple[int, int, int]:
    """What names a version of the state file (``Machine._current``)."""
    return st.st_ino, st.st_mtime_ns, st.st_size


class Machine:
    """A model machine in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        # (stat key, parsed state): one object, so threads never pair a key
        # with another version's state.
        self._snapshot: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        state = self._read_state()
        self.memory = PhysicalMemory(self.dir / MEMORY_FILE, state["memory_size"])

    # ------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        ram: int = 512 * MIB,
        reserved: tuple[tuple[int, int], ...] = (),
        kernel_size: int = 16 * MIB,
        boot_usage: float = 0.01,
        capabilities: Capabilities | None = None,
        cpu_budget: int = 2_000_000_000,
        seed: int = 1,
    ) -> Machine:
        """A powered-off machine with ``ram`` bytes of RAM.  Firmware boots
        put a kernel of ``kernel_size`` at 16 MiB and let it use a further
        ``boot_usage`` of RAM scattered over memory (page cache, processes).
        The CPU gives up after ``cpu_budget`` instructions in one image (a
        hang: what purgatory does on a bad digest); the default covers
        hashing about 18 MiB."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / KERNELS_DIR).mkdir(exist_ok=True)
        e820 = firmware_map(ram, reserved=reserved)
        memory_size = max(r.end for r in e820)
        PhysicalMemory(directory / MEMORY_FILE, memory_size, create=True).close()
        state = {
            "version": 1,
            "memory_size": memory_size,
            "firmware_map": [[r.start, r.end, r.kind.value] for r in e820],
            "machine_id": uuid.UUID(int=random.Random(seed).getrandbits(128)).hex,
            "kernel_size": kernel_size,
            "boot_usage": boot_usage,
            "capabilities": vars(capabilities or Capabilities()),
            "cpu_budget": cpu_budget,
            "power": "off",
            "running": None,
            "generation": 0,
            "next_id": 1,
            "boots": 0,
            "seed": seed,
            "crash": None,
            "kernels": {},
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=1))
        return cls(directory)

    def close(self) -> None:
        self.memory.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ state

    def _read_state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / STATE_FILE).read_text())
        return data

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        # Each version is a new file with its own nanosecond mtime, so that
        # its stat names it (``_current``).
        now = time.time_ns()
        os.utime(tmp, ns=(now, now))
        os.replace(tmp, self.dir / STATE_FILE)

    def _current(self) -> dict[str, Any]:
        """The state as last written, parsed once per version: for reading
        only.  A kernel keeps what it checks on every kexec_load (its
        capabilities, whether it runs) in memory; the model's kernels share
        them through the state file, and reading and parsing it on every
        call was most of the model's cost per call — not a kernel's.  A
        write replaces the file (new inode, new mtime), so a changed stat
        means a new version, and the stat and the read are of one open file."""
        path = os.path.join(self.dir, STATE_FILE)
        snapshot = self._snapshot
        if snapshot is not None and snapshot[0] == _version(os.stat(path)):
            return snapshot[1]
        with open(path, "rb") as f:
            snapshot = self._snapshot = (_version(os.fstat(f.fileno())), json.loads(f.read()))
        return snapshot[1]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write of the machine state under the machine lock."""
        with open(self.dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read_state()
            try:
                yield state
            except MachineCrashed:
                self._write_state(state)  # the crash is part of the machine's history
                raise
            self._write_state(state)

    @property
    def state(self) -> dict[str, Any]:
        return self._read_state()

    @property
    def firmware(self) -> list[MemoryRange]:
        return [MemoryRange(a, b, MemoryKind(k)) for a, b, k in self._current()["firmware_map"]]

    @property
    def ram_ranges(self) -> list[MemoryRange]:
        return [r for r in self.firmware if r.kind is MemoryKind.RAM]

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(**self._current()["capabilities"])

    def set_capabilities(self, **changes: object) -> None:
        with self.transaction() as state:
            state["capabilities"].update(changes)

    @property
    def machine_id(self) -> str:
        return str(self._current()["machine_id"])

    @property
    def running(self) -> int | None:
        value = self._current()["running"]
        return None if value is None else int(value)

    @property
    def power(self) -> str:
        return str(self._current()["power"])

    def record(self, kernel_id: int, state: dict[str, Any] | None = None) -> KernelRecord:
        state = state or self.state
        return KernelRecord.from_json(state["kernels"][str(kernel_id)])

    def kernel_dir(self, kernel_id: int) -> Path:
        return self.dir / KERNELS_DIR / str(kernel_id)

    def load_allocator(self, kernel_id: int) -> PageAllocator:
        npages = self.memory.size >> PAGE_SHIFT
        return PageAllocator(npages, (self.kernel_dir(kernel_id) / "pages").read_bytes())

    def save_allocator(self, kernel_id: int, allocator: PageAllocator) -> None:
        path = self.kernel_dir(kernel_id) / "pages"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(allocator.to_bytes())
        os.replace(tmp, path)

    # ------------------------------------------------------------ power

    def power_on(self, cmdline_text: str = "") -> int:
        """Firmware boot of a fresh kernel (A, or C after a power-off)."""
        with self.transaction() as state:
            if state["power"] == "on":
                raise MachineCrashed("power_on: the machine is already on")
            state["boots"] += 1
            rng = random.Random(state["seed"] * 1000 + state["boots"])
            firmware = self.firmware
            usable = cmdline.apply_memmap(firmware, cmdline_text)
            npages = self.memory.size >> PAGE_SHIFT
            allocator = PageAllocator.with_free(npages, _pfn_ranges(usable))
            kernel_end = FRESH_KERNEL_AT + state["kernel_size"]
            footprint = [(0, PAGE_SIZE), (FRESH_KERNEL_AT, kernel_end)]
            allocator.reserve(0, 1)
            allocator.reserve(FRESH_KERNEL_AT >> PAGE_SHIFT, kernel_end >> PAGE_SHIFT)
            for _ in range(int(allocator.free_pages * state["boot_usage"])):
                pfn = rng.randrange(npages)
                allocator.take(pfn)
            release = bzimage.DEFAULT_RELEASE
            build_id = hashlib.sha1(release.encode()).hexdigest()
            kid = self._new_kernel(
                state,
                allocator,
                release=release,
                build_id=build_id,
                cmdline_text=cmdline_text,
                firmware=firmware,
                usable=usable,
                footprint=footprint,
                elfcorehdr=None,
            )
            state["power"] = "on"
            state["crash"] = None
            return kid

    def _new_kernel(
        self,
        state: dict[str, Any],
        allocator: PageAllocator,
        *,
        release: str,
        build_id: str,
        cmdline_text: str,
        firmware: list[MemoryRange],
        usable: list[MemoryRange],
        footprint: list[tuple[int, int]],
        elfcorehdr: int | None,
        initrd: bytes = b"",
    ) -> int:
        kid = int(state["next_id"])
        state["next_id"] = kid + 1
        kdir = self.kernel_dir(kid)
        (kdir / "rootfs").mkdir(parents=True, exist_ok=True)
        _unpack_initramfs(initrd, kdir / "rootfs")
        # Every kernel keeps its VMCOREINFO note in a page of its own.
        note_page = allocator.alloc() << PAGE_SHIFT
        note = _vmcoreinfo_note(release, build_id)
        self.memory.write(note_page, note.ljust(PAGE_SIZE, b"\0"))
        state["generation"] += 1
        record = KernelRecord(
            id=kid,
            boot_id=str(uuid.uuid4()),
            release=release,
            build_id=build_id,
            cmdline=cmdline_text,
            firmware_map=firmware,
            usable=usable,
            status=RUNNING,
            entered=state["generation"],
            vmcoreinfo=(note_page, len(note)),
            elfcorehdr=elfcorehdr,
            footprint=footprint,
        )
        state["kernels"][str(kid)] = record.to_json()
        state["running"] = kid
        self.save_allocator(kid, allocator)
        return kid

    def power_off(self) -> None:
        """Memory is lost (scrambled, not zeroed); running kernels are gone;
        frozen kernels live on only as far as an image restores them."""
        with self.transaction() as state:
            self.memory.scramble(
                [(r.start, r.end) for r in self.ram_ranges], seed=state["generation"] + 7
            )
            for rec in state["kernels"].values():
                if rec["status"] == RUNNING:
                    rec["status"] = GONE
            state["power"] = "off"
            state["running"] = None
            state["generation"] += 1

    # ------------------------------------------------------------ jumping

    def transfer(
        self, state: dict[str, Any], entry: int, rsp: int, executable: tuple[int, int]
    ) -> None:
        """Control arrives at ``entry`` with ``rsp`` (and ``[rsp]`` the return
        address) after relocation.  Runs code, boots a kernel or returns into
        a frozen one; raises ``MachineCrashed`` (after recording it) otherwise."""
        reentered = self._reentry_target(entry)
        if reentered is not None:
            self._return_into(state, reentered, entry, rsp)
            return
        start, end = executable
        if not start <= entry < end:
            raise self._crash_in(state, f"jumped to {entry:#x}, outside every loaded segment")
        from kexechibd.model.cpu import run_x86_64

        exit_ = run_x86_64(
            self.memory.mm,
            entry=entry,
            executable=[(start, end)],
            regs={"rsp": rsp},
            budget=int(state.get("cpu_budget", 2_000_000_000)),
        )
        if exit_.reason != "left":
            raise self._crash_in(
                state,
                f"the CPU stopped in the image ({exit_.reason} at {exit_.rip:#x}: "
                f"{exit_.detail}); a purgatory halts like this when a digest does not match",
            )
        target = exit_.rip
        reentered = self._reentry_target(target)
        if reentered is not None:
            self._return_into(state, reentered, target, exit_.regs["rsp"])
            return
        params_addr = exit_.regs.get("rsi", 0)
        try:
            params = bootproto.BootParams.parse(
                self.memory.read(params_addr, bootproto.BOOT_PARAMS_SIZE)
            )
        except (bootproto.BootProtocolError, ValueError):
            params = None
        if (
            params is not None
            and (target - bootproto.ENTRY64_OFFSET) & 0xFFFFFFFF == params.code32_start
        ):
            self._boot(state, params, target - bootproto.ENTRY64_OFFSET)
            return
        raise self._crash_in(
            state,
            f"the image jumped to {target:#x}, which is neither a "
            "kernel entry (rsi → boot_params) nor a re-entry point",
        )

    def _crash_in(self, state: dict[str, Any], why: str) -> MachineCrashed:
        for rec in state["kernels"].values():
            if rec["status"] == RUNNING:
                rec["status"] = GONE
        state["power"] = "off"
        state["running"] = None
        state["crash"] = why
        state["generation"] += 1
        return MachineCrashed(why)

    def _reentry_target(self, addr: int) -> int | None:
        page = addr & ~(PAGE_SIZE - 1)
        if addr - page != REENTRY_OFFSET or page + PAGE_SIZE > self.memory.size:
            return None
        if self.memory.read(page, len(CONTROL_MAGIC)) != CONTROL_MAGIC:
            return None
        return self.memory.read_u64(page + CONTROL_KERNEL_ID)

    def freeze(
        self,
        state: dict[str, Any],
        kernel_id: int,
        allocator: PageAllocator,
        image: kimage.LoadedImage,
    ) -> int:
        """A kernel jumps away with preserve-context: what it knows of itself
        (record, page allocator) is frozen with its memory, under a snapshot
        number its control page carries — an image of its memory brings back
        exactly that state, however much later it is resumed.  Returns the
        re-entry point."""
        snapshot = int(state["generation"])
        rec = state["kernels"][str(kernel_id)]
        rec["status"] = FROZEN
        snapshots = rec.setdefault("snapshots", {})
        snapshots[str(snapshot)] = {k: v for k, v in rec.items() if k != "snapshots"}
        for old in sorted(snapshots, key=int)[:-MAX_SNAPSHOTS]:
            del snapshots[old]
            (self.kernel_dir(kernel_id) / f"pages.{old}").unlink(missing_ok=True)
        path = self.kernel_dir(kernel_id) / f"pages.{snapshot}"
        path.write_bytes(allocator.to_bytes())
        return self._write_control_page(kernel_id, snapshot, image)

    def _write_control_page(self, kernel_id: int, snapshot: int, image: kimage.LoadedImage) -> int:
        """Fill a kernel's control page before it jumps; returns its re-entry point."""
        page = bytearray(PAGE_SIZE)
        page[: len(CONTROL_MAGIC)] = CONTROL_MAGIC
        struct.pack_into("<QQ", page, CONTROL_KERNEL_ID, kernel_id, snapshot)
        page[REENTRY_OFFSET : REENTRY_OFFSET + 2] = b"\x0f\x0b"  # never executed: ud2
        struct.pack_into(
            "<QQQQ", page, DATA_HEAD, image.head, image.swap, int(image.preserve_context), 0
        )
        self.memory.write(image.control, page)
        return image.control + REENTRY_OFFSET

    def _return_into(self, state: dict[str, Any], kernel_id: int, entry: int, rsp: int) -> None:
        """The return path of ``relocate_kernel`` in a kernel that jumped away."""
        control = entry - REENTRY_OFFSET
        snapshot = str(self.memory.read_u64(control + CONTROL_SNAPSHOT))
        rec = state["kernels"].get(str(kernel_id))
        frozen = rec.get("snapshots", {}).get(snapshot) if rec else None
        if rec is None or frozen is None:
            raise self._crash_in(
                state,
                f"re-entry point {entry:#x} names kernel {kernel_id} in a state the "
                "machine never saw",
            )
        head = self.memory.read_u64(control + DATA_HEAD)
        peer = self.memory.read_u64(rsp) if rsp + 8 <= self.memory.size else 0
        try:
            kimage.swap_back(self.memory, head)
        except kimage.CorruptEntryList as exc:
            raise self._crash_in(
                state, f"kernel {kernel_id}'s backup map is corrupt: {exc}"
            ) from None
        self.memory.write_u64(control + DATA_PEER, peer)
        for other in state["kernels"].values():
            if other["status"] == RUNNING:
                other["status"] = GONE
        state["generation"] += 1
        rec.update(frozen)
        rec["status"] = RUNNING
        rec["entered"] = state["generation"]
        state["running"] = kernel_id
        state["power"] = "on"
        kdir = self.kernel_dir(kernel_id)
        os.replace(_copy(kdir / f"pages.{snapshot}", kdir / "pages.restore"), kdir / "pages")

    def _boot(self, state: dict[str, Any], params: bootproto.BootParams, kernel_addr: int) -> None:
        """Boot a kernel entered through its 64-bit entry point."""
        text = _c_string(self.memory.read(params.cmdline_addr, max(params.cmdline_size, 256) + 1))
        firmware = list(params.e820)
        usable = cmdline.apply_memmap(firmware, text)
        npages = self.memory.size >> PAGE_SHIFT
        allocator = PageAllocator.with_free(npages, _pfn_ranges(usable))
        kernel_bytes = self.memory.read(kernel_addr, min(1 * MIB, self.memory.size - kernel_addr))
        marker = bzimage.read_marker(kernel_bytes)
        release, build_id = marker or ("unknown", "")
        initrd = (
            self.memory.read(params.initrd_addr, params.initrd_size) if params.initrd_size else b""
        )
        footprint = [
            (
                kernel_addr,
                kernel_addr + max(params.init_size, bootproto.ENTRY64_OFFSET + PAGE_SIZE),
            ),
            (
                page_align_down(params.cmdline_addr),
                page_align_up(params.cmdline_addr + len(text) + 1),
            ),
        ]
        if params.initrd_size:
            footprint.append(
                (
                    page_align_down(params.initrd_addr),
                    page_align_up(params.initrd_addr + params.initrd_size),
                )
            )
        for start, end in footprint:
            allocator.reserve(start >> PAGE_SHIFT, page_align_up(end) >> PAGE_SHIFT)
        hdr = cmdline.elfcorehdr(text)
        self._retire_running(state)
        self._new_kernel(
            state,
            allocator,
            release=release,
            build_id=build_id,
            cmdline_text=text,
            firmware=firmware,
            usable=usable,
            footprint=footprint,
            elfcorehdr=hdr.addr if hdr else None,
            initrd=initrd,
        )
        state["power"] = "on"

    @staticmethod
    def _retire_running(state: dict[str, Any]) -> None:
        for rec in state["kernels"].values():
            if rec["status"] == RUNNING:
                rec["status"] = GONE

    # ------------------------------------------------------------ waiting

    def wait_entered(self, kernel_id: int, after: int, poll: float = 0.02) -> bool:
        """Block until ``kernel_id`` runs again (entered after generation
        ``after``); False when it is gone for good — or when this process is
        exiting: unlike a frozen kernel's userspace, a model process may end
        while its kernel waits (its waiting thread must not hold up exit)."""
        while threading.main_thread().is_alive():
            try:
                state = self._read_state()
            except FileNotFoundError:
                return False  # the machine itself was removed
            rec = state["kernels"][str(kernel_id)]
            if rec["status"] == RUNNING and rec["entered"] > after:
                return True
            if rec["status"] == GONE:
                return False
            time.sleep(poll)
        return False


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _vmcoreinfo_note(release: str, build_id: str) -> bytes:
    desc = f"OSRELEASE={release}\nBUILD-ID={build_id}\nPAGESIZE={PAGE_SIZE}\n".encode()
    name = b"VMCOREINFO\0"
    return (
        struct.pack("<III", len(name), len(desc), 0)
        + name.ljust(12, b"\0")
        + desc.ljust((len(desc) + 3) & ~3, b"\0")
    )


def _unpack_initramfs(initrd: bytes, root: Path) -> None:
    """What the kernel's initramfs unpacker does, into a host directory."""
    if not initrd:
        return
    for entry in cpio.read_newc(initrd):
        name = os.path.normpath(entry.name).lstrip("/")
        if name.startswith("..") or name in ("", "."):
            continue
        target = root / name
        if entry.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, entry.mode & 0o7777)
        elif entry.is_file:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(entry.data)
            os.chmod(target, entry.mode & 0o7777)
