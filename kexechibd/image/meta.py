"""The image library's vocabulary: what a saver knows, what an image holds,
its resume state, and the one error every check raises.  Pure data, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kexechibd.kernel.abi import PAGE_SIZE


class ImageState(enum.StrEnum):
    """An image's resume state (its state word, docs/image-format.md).  The
    values are what ``Inspect`` and ``kexechibctl`` show: they are part of
    the D-Bus interface and never change."""

    COMMITTED = "committed"  # whole, resumable
    CONSUMED = "consumed"  # a restorer is jumping (or jumped) into it
    INVALID = "invalid"  # never resumed again


def state_refusal(state: ImageState, *, force: bool = False) -> str:
    """Why an image in ``state`` is not resumed ('' when it may be): an
    invalidated one never, a consumed one only with ``force``.  The one rule,
    for the reader and for the daemon's check before Resume starts."""
    if state is ImageState.INVALID:
        return "image was invalidated and is never resumed again"
    if state is ImageState.CONSUMED and not force:
        return "image was already resumed once (consumed); resuming it again needs force"
    return ""


class ImageMode(enum.StrEnum):
    """What B does after the save; the values are the D-Bus ``mode`` option's."""

    POWEROFF = "poweroff"  # power off; the next boot resumes
    CHECKPOINT = "checkpoint"  # jump back into A at once; the image stays


@dataclass(frozen=True)
class ImageMeta:
    """What the saver (B) knows before it writes the first page."""

    kernel_release: str
    build_id: str
    boot_id: str
    machine_id: str
    created: float  # unix time of the jump
    jump_back_entry: int  # A's re-entry point (physical)
    hibernate_id: str  # nonce chosen by A for this hibernation
    mode: ImageMode
    window: tuple[tuple[int, int], ...]  # B's window [start, end) ranges; not saved
    page_map: bytes = b""  # raw /proc/kexec_pgmap bytes of A's B image (opaque here)
    vmcoreinfo: bytes = b""  # A's VMCOREINFO note text, if any
    page_size: int = PAGE_SIZE

    def __post_init__(self) -> None:
        # Callers may name the mode by its value; a wrong one fails here, not
        # when the header is encoded after every page was saved.
        try:
            object.__setattr__(self, "mode", ImageMode(self.mode))
        except ValueError:
            modes = ", ".join(m.value for m in ImageMode)
            raise ValueError(f"mode {self.mode!r} is not one of {modes}") from None


@dataclass(frozen=True)
class ImageSummary:
    """What ``ImageWriter.commit`` and ``ImageReader`` know about a whole image."""

    format_version: int
    compression: str
    level: int
    chunk_size: int
    data_pages: int
    zero_pages: int
    runs: int  # maximal runs, as ``ImageReader.covered`` yields them
    chunks: int
    stored_bytes: int  # length of the image: header, chunks and index
    digest: str  # hex SHA-256 of the index, which holds every chunk's checksum
    state: ImageState


@dataclass(frozen=True, slots=True)
class Run:
    """``npages`` pages from page frame ``pfn``; a zero run carries no data."""

    pfn: int
    npages: int
    zero: bool

    @property
    def end(self) -> int:
        return self.pfn + self.npages


@dataclass(frozen=True)
class Chunk:
    """One verified chunk: its runs in address order; the data runs' bytes are
    concatenated in ``data`` (decompressed, checksum verified)."""

    index: int
    runs: tuple[Run, ...]
    data: bytes | memoryview


class ImageError(ValueError):
    """An image (or where one is kept) that is missing, corrupt, truncated,
    foreign or unsafe to use: the base of every error the image library raises.

    ``offset`` is the byte offset in the image the problem was found at and
    ``chunk`` the chunk it belongs to, each ``None`` when it does not apply.
    The library knows nothing of D-Bus: the daemon reports it as
    ``org.kexechib1.Error.BadImage`` (``daemon/manager.py``,
    ``as_daemon_error``).
    """

    def __init__(self, message: str, *, offset: int | None = None, chunk: int | None = None):
        where = []
        if chunk is not None:
            where.append(f"chunk {chunk}")
        if offset is not None:
            where.append(f"offset {offset:#x}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.message = message
        self.offset = offset
        self.chunk = chunk
