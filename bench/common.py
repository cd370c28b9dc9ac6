"""What every benchmark shares: scratch space, running and timing commands
(wall time and peak RSS of the child), medians, and a description of the
machine the figures come from."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1e6
MIB = 1 << 20
GIB = 1 << 30


def python() -> str:
    """The interpreter the benchmarks run ours with (the venv's)."""
    return sys.executable


@contextlib.contextmanager
def scratch(prefix: str = "kexechib-bench-") -> Iterator[Path]:
    """A scratch directory on tmpfs (/dev/shm when there is one), removed after."""
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None, prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kib: int  # the child's peak RSS (ru_maxrss)
    stdout: str
    cpu_seconds: float = 0.0  # user + system time of the child


TIME = "/usr/bin/time"  # GNU time (Debian's package "time")


def run_measured(
    argv: Sequence[str],
    *,
    stdout_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """Run ``argv`` to completion: its wall time and its own peak RSS.

    The RSS comes from GNU time, which forks the command from its own small
    process: a child spawned straight from this Python process would report
    this process's RSS as its ru_maxrss (Linux keeps the larger of the
    pre-exec and post-exec high-water marks)."""
    fd, rss_file = tempfile.mkstemp(prefix="kexechib-bench-rss-")
    os.close(fd)
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE  # noqa: SIM115
    try:
        start = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-f", "%M %U %S", "-o", rss_file, *argv],
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            check=False,
        )
        seconds = time.perf_counter() - start
        rss_text = Path(rss_file).read_text().split()
    finally:
        if stdout_path:
            out.close()  # type: ignore[union-attr]
        os.unlink(rss_file)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} failed with status {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')[-3000:]}"
        )
    stdout = proc.stdout.decode(errors="replace") if proc.stdout else ""
    rss, user, system = rss_text[-3:]
    return Run(seconds, int(rss), stdout, float(user) + float(system))


def worker(*args: str) -> list[str]:
    """The command line of one of our measurements (``bench/worker.py``)."""
    return [python(), "-m", "bench.worker", *args]


def run_worker(*args: str) -> tuple[dict[str, object], Run]:
    """Run a worker measurement; its JSON result and the process figures."""
    r = run_measured(worker(*args))
    return json.loads(r.stdout.strip().splitlines()[-1]), r


def allocated_bytes(path: Path) -> int:
    """The bytes of a sparse disk file that are allocated: what a guest
    wrote to it (QEMU writes a raw file's blocks as the guest writes them)."""
    return path.stat().st_blocks * 512


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def show(argv: Sequence[str], stdout: Path | None = None, stdin: Path | None = None) -> str:
    """``argv`` as a shell command (what the report prints)."""
    text = shlex.join(str(a) for a in argv)
    if stdin:
        text += f" < {shlex.quote(str(stdin))}"
    if stdout:
        text += f" > {shlex.quote(str(stdout))}"
    return text


def short(cmd: str) -> str:
    """A command with the scratch directory and interpreter path shortened."""
    cmd = cmd.replace(python(), ".venv/bin/python").replace(str(REPO) + "/", "")
    cmd = re.sub(r"unix:path=/tmp/kexechib-bus-[^/ ]+/system_bus_socket", "$BUS_ADDRESS", cmd)
    for prefix in ("/dev/shm/", "/tmp/"):
        while prefix + "kexechib-bench-" in cmd:
            i = cmd.index(prefix + "kexechib-bench-")
            j = cmd.find("/", i + len(prefix))
            cmd = cmd[:i] + "$SCRATCH" + cmd[j:]
    return cmd


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def load_text() -> str:
    """The load average as a report prints it: "0.44 0.84 1.02"."""
    return " ".join(f"{x:.2f}" for x in load_average())


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table: each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / (1 << 20):.0f} GiB"
    debian = "?"
    with contextlib.suppress(OSError):
        debian = "Debian " + Path("/etc/debian_version").read_text().strip()
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "os": f"{debian}, Linux {platform.release()}",
        "python": platform.python_version(),
    }


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (out.stdout or out.stderr).strip()
    found = re.search(r"\d+(?::\d+)?(?:\.[\w~+-]+)+", text)
    return found.group(0) if found else (text.splitlines()[0] if text else "?")
