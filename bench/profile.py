"""Top frames of a py-spy profile:
``python -m bench.profile FOLDED [--top N] [--main] [--under FUNC] [--by total]``.

FOLDED is what ``py-spy record --format raw --threads`` writes: one line per
distinct stack, ``thread (tid);frame;frame;... count``.  Printed: each
thread's share of the samples, then the frames (function and file, lines
folded together) with their self share — samples where the frame is the
innermost, i.e. Python code of its own or a C call that does not show as a
frame, such as zstd's compress — and their total share — samples where the
frame is anywhere on the stack, counted once per sample.  Shares are of all
samples of all threads: py-spy leaves out threads that are idle (waiting on
a lock or a future), so the figures are where the busy threads were.
``--main`` keeps the main thread's samples only (the serial part: the
loader's calls into the kernel, the saver's reads and writes); ``--under
FUNC`` keeps the samples with a frame of that function name on the stack
(e.g. ``stream_load``: the load without interpreter start and imports), and
shares are then of those samples.

py-spy is not a dependency of the project; install it where you profile
(docs/performance.md says how).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (file:line)`` without the line, paths shortened to the repo's."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def summarise(
    lines: list[str], *, main_only: bool = False, under: str = ""
) -> tuple[int, dict[str, int], dict[str, int], dict[str, int]]:
    """Samples in all, per kind of thread, per frame as innermost, per frame
    on the stack (of the samples kept)."""
    total = 0
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    first_frame: dict[str, str] = {}
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        thread, *frames = stack.split(";")
        names = [frame_name(f) for f in frames]
        # Name each thread for the outermost frame it was first seen in.
        first_frame.setdefault(thread, names[0] if names else thread)
        if main_only and _thread_kind(first_frame[thread]) != "main thread":
            continue
        if under and not any(n.split(" (", 1)[0] == under for n in names):
            continue
        total += count
        threads[thread] += count
        if names:
            own[names[-1]] += count
        for name in set(names):
            anywhere[name] += count
    by_kind: collections.Counter[str] = collections.Counter()
    for thread, count in threads.items():
        by_kind[_thread_kind(first_frame[thread])] += count
    return total, dict(by_kind), dict(own), dict(anywhere)


def _thread_kind(outermost: str) -> str:
    return "main thread" if "runpy" in outermost else f"threads from {outermost}"


def report(
    path: Path, top: int, *, main_only: bool = False, under: str = "", by: str = "self"
) -> str:
    lines = path.read_text().splitlines()
    total, threads, own, anywhere = summarise(lines, main_only=main_only, under=under)
    if not total:
        return f"{path}: no samples"
    kept = " of the main thread" if main_only else ""
    kept += f" with {under} on the stack" if under else ""
    out = [f"{path}: {total:,} samples{kept}"]
    for kind, count in sorted(threads.items(), key=lambda kv: -kv[1]):
        out.append(f"  {count / total:6.1%}  {kind}")
    out.append(f"  {'self':>6}  {'total':>6}  frame (by {by})")
    order = own if by == "self" else anywhere
    for name, _ in sorted(order.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {own.get(name, 0) / total:6.1%}  {anywhere[name] / total:6.1%}  {name}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("folded", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--main", action="store_true", help="the main thread only")
    parser.add_argument("--under", default="", help="samples with this function on the stack")
    parser.add_argument("--by", choices=("self", "total"), default="self", help="sort order")
    args = parser.parse_args(argv)
    print(report(args.folded, args.top, main_only=args.main, under=args.under, by=args.by))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
