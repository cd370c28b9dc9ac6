"""The hibernate cycle between real kernels: two QEMU processes, one disk.

    run = await hibernate_cycle(kernel, workdir)          # poweroff, busctl
    run.hibernate     # QEMU 1: A hibernates; B saves A and powers off
    run.resume        # QEMU 2: C boots, resumes the image; A carries on
    run.times()       # the phases, from the consoles' host timestamps

QEMU 1 boots kernel A with kexechibd/lab/guest/cycle.sh (`cycle_guest`); A's
kexechibd jumps to B (the same kernel, saver.sh), which saves A to the image
disk, a raw file in `workdir`, and powers off, so QEMU exits. QEMU 2 boots C
(`restorer_guest`: the same kernel, initrd and memory size, resume.sh) on the
same file; its `kexechibd --oneshot` loads the image with staged loads and
jumps into A, whose console lines then follow C's on QEMU 2's console.
In checkpoint mode B jumps back instead and A powers off by itself; C then
resumes the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kexechibd.lab.qemu import Guest, GuestResult, LogLine, Marker
from kexechibd.lab.userspace import cycle_guest, restorer_guest


@dataclass(frozen=True)
class CycleRun:
    hibernate: GuestResult  # QEMU 1: A, then B
    resume: GuestResult | None  # QEMU 2: C, then A

    def times(self) -> list[tuple[str, float]]:
        """(phase, host seconds) for what both consoles show: A's prepare,
        the jump, B's start, save and power-off; C's boot, load, and the jump
        until A's Hibernate call returned. Phases whose lines are missing are
        left out."""
        out: list[tuple[str, float]] = []
        one = self.hibernate

        def add(name: str, start: float | None, end: float | None) -> None:
            if start is not None and end is not None:
                out.append((name, round(end - start, 2)))

        call = _marker(one, "a-hibernate")
        jump = _line(one, "jumping to kernel B")
        # B's /init: the lab's (its marker), or the product's (its first line).
        b_init = _nth_marker(one, "init", 1) or _line(one, "kexechib-init: kernel B is up")
        save = _line(one, "kexechibd: INFO: save started")
        committed = _line(one, "image committed")
        add("A: Hibernate call -> jump (prepare, load B)", call, jump)
        add("A -> B's /init (swap, purgatory, B boots)", jump, b_init)
        add("B: bus + kexechibd up", b_init, save)
        add("B: save A to the disk", save, committed)
        back_one = _marker(one, "a-back")
        if back_one is None:  # B powered off
            add("B: commit -> QEMU gone (power off)", committed, one.wall_seconds)
            add("hibernate: call -> QEMU gone", call, one.wall_seconds)
        else:  # a checkpoint: B jumped back
            add("B -> A: commit -> the call returns", committed, back_one)
            add("checkpoint: call -> the call returns", call, back_one)
        two = self.resume
        if two is not None:
            started = _line(two, "kexechibd: INFO: resume started")
            loaded = _line(two, "image loaded")
            back = _marker(two, "a-back")
            add("C: QEMU start -> /init", 0.0, _marker(two, "init"))
            add("C: /init -> resume started (kexechibd)", _marker(two, "init"), started)
            add("C: staged load of the image", started, loaded)
            add("C -> A: jump until the call returns", loaded, back)
            add("resume: QEMU start -> the call returns", 0.0, back)
        return out


def _marker(result: GuestResult, kind: str) -> float | None:
    marker = result.marker(kind)
    return marker.seconds if marker else None


def _nth_marker(result: GuestResult, kind: str, n: int) -> float | None:
    found = [m for m in result.markers if m.kind == kind]
    return found[n].seconds if len(found) > n else None


def _line(result: GuestResult, text: str) -> float | None:
    return next((line.seconds for line in result.lines if text in line.text), None)


COMMITTED = re.compile(r"image committed: .* (\d+) bytes \(")


def committed_bytes(result: GuestResult) -> int | None:
    """The bytes kernel B wrote, from its daemon's "image committed" line
    (None: B committed no image)."""
    for line in result.lines:
        found = COMMITTED.search(line.text)
        if found:
            return int(found.group(1))
    return None


def markers(result: GuestResult | None, kind: str) -> list[Marker]:
    return [] if result is None else [m for m in result.markers if m.kind == kind]


def relay_lines(
    on_line: Callable[[str, LogLine], None] | None, which: str
) -> Callable[[LogLine], None] | None:
    """A Guest's `on_line` that passes each line on as `on_line(which, line)`
    ("1" or "2": which QEMU of a cycle it came from)."""
    if on_line is None:
        return None
    callback = on_line
    return lambda line: callback(which, line)


async def hibernate_cycle(
    kernel: Path,
    workdir: Path,
    *,
    cycle: str = "poweroff",
    client: str = "busctl",
    on_line: Callable[[str, LogLine], None] | None = None,
    between: Callable[[GuestResult], None] | None = None,
    saver_initrd: Path | None = None,
    window: str | None = None,
    disk_mib: int = 768,
    saver_cmdline: str = "",
    more_disks: tuple[Path, ...] = (),
    resume: bool = True,
    append: str = "",
) -> CycleRun:
    """QEMU 1 (A hibernates), then QEMU 2 (C resumes) on the same disk.

    `on_line(which, line)` sees every console line as it comes, `which`
    being "1" or "2"; `between(result)` runs after QEMU 1 has exited (the
    demo reports there). QEMU 2 is not started when QEMU 1 timed out.
    `saver_initrd` replaces B's initrd (the lab userspace) with another, as
    `kexechibctl saver build` writes it; `window` B's memory window, which a smaller
    window needs a larger image disk for (`disk_mib`).
    """

    def relay(which: str) -> Callable[[LogLine], None] | None:
        return relay_lines(on_line, which)

    spec = cycle_guest(
        kernel,
        workdir,
        cycle=cycle,
        client=client,
        saver_initrd=saver_initrd,
        window=window,
        disk_mib=disk_mib,
        saver_cmdline=saver_cmdline,
        more_disks=more_disks,
        append=append,
    )
    async with Guest(spec, workdir / "qemu-1", on_line=relay("1")) as guest:
        first = await guest.wait()
    if between is not None:
        between(first)
    if first.timed_out or not resume:
        return CycleRun(first, None)
    async with Guest(restorer_guest(kernel, workdir), workdir / "qemu-2", on_line=relay("2")) as g:
        second = await g.wait()
    return CycleRun(first, second)


def print_outcome(
    checks: Sequence[tuple[bool, str]], times: Iterable[tuple[str, float]], whole: str, total: float
) -> bool:
    """A demo's checks, each marked ok or FAILED, and its times; whether all passed."""
    for passed, text in checks:
        print(f"  [{'ok' if passed else 'FAILED'}] {text}")
    print("\n  times (host seconds, TCG on this machine's cores):")
    for name, seconds in [*times, (whole, total)]:
        print(f"    {name:48} {seconds:7.2f}")
    return all(passed for passed, _ in checks)
