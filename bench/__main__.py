"""``make bench`` = ``python -m bench``: the four benchmarks of issue 8 —
save, resume, scaling, D-Bus latency — ours next to the field's tools on the
same input in the same run, and docs/performance.md rewritten with the
tables (the placement section, ``python -m bench.placement``, is kept).

  python -m bench [--only save,resume,scaling,dbus] [--repeats N] [--no-doc]
                  [--markdown FILE]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from bench import common, inputs
from bench.report import Section, write_doc

ALL = ("save", "resume", "scaling", "dbus")


def run_command(only: list[str]) -> str:
    """How the run was made: ``make bench`` runs them all."""
    if tuple(only) == ALL:
        return "`make bench`"
    return f"`.venv/bin/python -m bench --only {','.join(only)}`"


def header(started: float, load_before: tuple[float, ...], only: list[str]) -> str:
    m = common.machine()
    load_after = common.load_average()
    tools = {
        "zstd": common.tool_version(["zstd", "--version"]),
        "lz4": common.tool_version(["lz4", "--version"]),
        "makedumpfile": common.tool_version(["dpkg-query", "-W", "-f=${Version}", "makedumpfile"]),
        "dbus-daemon": common.tool_version(["dbus-daemon", "--version"]),
    }
    return "\n".join(
        [
            "## Benchmarks against the field's tools (issue 8)",
            "",
            f"Run: {run_command(only)} ({', '.join(only)}) on "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
            f"{time.time() - started:.0f} s in all. Machine: {m['cpus']} vCPUs ({m['cpu']}), "
            f"{m['memory']}, {m['os']}, Python {m['python']}; model memory and every scratch "
            "file on tmpfs (/dev/shm). The machine is shared: load average "
            f"{load_before[0]:.2f} before, {load_after[0]:.2f} after "
            "(others' work counts in every figure, ours and the references' alike; runs "
            "are interleaved and medians reported for that reason).",
            "",
            "Tools: " + "; ".join(f"{k} {v}" for k, v in tools.items()) + ".",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated subset")
    parser.add_argument(
        "--repeats",
        type=int,
        help="runs per figure (default: 5 for save and resume, 3 for scaling)",
    )
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the run's header and tables, as markdown, to FILE "
        "(a run of some benchmarks, kept apart from docs/performance.md)",
    )
    args = parser.parse_args(argv)
    only = [w for w in args.only.split(",") if w]
    for w in only:
        if w not in ALL:
            parser.error(f"unknown benchmark {w!r}; choose from {', '.join(ALL)}")
    started = time.time()
    load_before = common.load_average()
    sections: list[Section] = []
    with common.scratch() as scratch:
        vm = inputs.memory_input(scratch) if {"save", "resume"} & set(only) else None
        for name in only:
            t = time.time()
            print(f"--- {name}", flush=True)
            if name == "save":
                from bench import save

                assert vm is not None
                sections.append(save.run(scratch, vm, args.repeats or 5))
            elif name == "resume":
                from bench import resume

                assert vm is not None
                sections.append(resume.run(scratch, vm, args.repeats or 5))
            elif name == "scaling":
                from bench import scaling

                sections.append(scaling.run(scratch, repeats=args.repeats or 3))
            elif name == "dbus":
                from bench import dbuslat

                sections.append(dbuslat.run(scratch))
            sections[-1].extra.append(f"({name}: {time.time() - t:.0f} s)")
            print(sections[-1].text(), flush=True)
    if args.markdown:
        text = header(started, load_before, only)
        Path(args.markdown).write_text("\n\n".join([text, *(s.markdown() for s in sections)]))
    if not args.no_doc:
        write_doc(header(started, load_before, only), sections)
        print("wrote docs/performance.md")
    print(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
