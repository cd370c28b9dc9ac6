"""B's memory window: where kernel B lives while it saves A (DESIGN §1.1), pure.

B is confined to the window (``memmap=exactmap``); every page of the window
becomes a destination of B's image, so A's contents there are swapped out to
source pages outside the window at the jump.  The window has a main range
(configured) and, optionally, the RAM below 640 KiB, which an x86 kernel needs
for its real-mode trampoline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kexechibd import cmdline, ranges
from kexechibd.errors import ConfigError
from kexechibd.kernel.abi import PAGE_SIZE, page_align_down
from kexechibd.kernel.api import MemoryKind, MemoryRange

MIN_WINDOW = 32 << 20
KERNEL_ALIGN = 2 << 20
LOW_MEMORY_END = 0xA0000


@dataclass(frozen=True)
class Window:
    main: MemoryRange
    low: MemoryRange | None

    @property
    def ranges(self) -> tuple[MemoryRange, ...]:
        return (self.low, self.main) if self.low else (self.main,)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        return tuple((r.start, r.end) for r in self.ranges)

    def contains(self, start: int, end: int) -> bool:
        return any(r.start <= start and end <= r.end for r in self.ranges)

    def overlaps(self, start: int, end: int) -> bool:
        return any(start < r.end and r.start < end for r in self.ranges)

    def outside(self, ram: Sequence[MemoryRange]) -> list[MemoryRange]:
        """RAM not in the window: what B saves."""
        return ranges.subtract(list(ram), list(self.spans))


def choose_window(
    start: int,
    size: int,
    memory_map: Sequence[MemoryRange],
    *,
    low_memory: bool,
    min_size: int = MIN_WINDOW,
) -> Window:
    """Validate the configured window ``[start, start + size)`` against the
    machine's memory map."""
    main = MemoryRange(start, start + size)
    spec = f"{cmdline.format_size(size)}@{cmdline.format_size(start)}"
    if main.start % KERNEL_ALIGN or main.size % KERNEL_ALIGN:
        raise ConfigError(
            f"window {spec!r} must start and end on a 2 MiB boundary (kernel alignment)"
        )
    if main.size < min_size:
        raise ConfigError(
            f"window {spec!r} is {main.size >> 20} MiB; B needs at least {min_size >> 20} MiB"
        )
    ram = [r for r in memory_map if r.kind is MemoryKind.RAM]
    if not any(r.contains(main.start, main.end) for r in ram):
        ranges = ", ".join(str(r) for r in ram)
        raise ConfigError(
            f"window {spec!r} is not inside one range of usable RAM; usable RAM is: {ranges}"
        )
    low = None
    if low_memory:
        first = next((r for r in ram if r.start < LOW_MEMORY_END), None)
        if first is not None:
            end = page_align_down(min(first.end, LOW_MEMORY_END))
            start = max(first.start, 0)
            if end - start >= PAGE_SIZE:
                low = MemoryRange(start, end)
    return Window(main, low)
