"""A staged image belongs to the process that started it (DESIGN §2.2, issue 13
finding 1), on the real patched kernel.

One guest runs the scenarios below in order; a loader is a child process the
guest program drives over a pipe, so it can be killed between its calls:

- the loader killed after `KS_start` (64 MiB of preserve-context pages): the
  staged memory is back (MemFree within 1% of before), nothing is staged;
- the loader killed after `KS_start` and 100 `KS_mid` calls: the same;
- another process's `KS_mid`, `KS_final` and `KS_start` are EBUSY and change
  nothing; its unload (`KS_full`, no segments, as `kexec -u`) discards the
  staging, and the loader's next `KS_mid` is EINVAL;
- the flag probe (one segment at NULL) with stage bits is EFAULT and changes
  nothing: the loader finishes its image afterwards;
- `kexec_load_disabled` raised during a staging (every later kexec_load is
  EPERM): the loader's exit still gives the memory back.

The guest side is this module run as a program:
`python -m tests.lab.test_staged_owner guest` (and `loader`, its child).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import Segment, Stage
from kexechibd.lab import GuestResult, GuestSpec, new_workdir, run_guest
from tests.sizes import MIB

pytestmark = pytest.mark.lab

TOP = Path(__file__).resolve().parents[2]
BASE = 64 * MIB  # destinations: RAM of the 512 MiB guest; nothing is jumped to
KEEP = True  # preserve-context: every destination page gets a (zeroed) source page


def _markers(result: GuestResult, kind: str) -> dict[str, str]:
    for line in result.lines:
        words = line.text.split()
        if len(words) >= 2 and words[0] == "KEXECHIB-LAB" and words[1] == kind:
            return dict(w.split("=", 1) for w in words[2:] if "=" in w)
    raise AssertionError(f"no {kind} marker\n{result.describe()}")


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    workdir = new_workdir("owner")
    spec = GuestSpec(
        command=f"cd {TOP}\nexec {sys.executable} -m tests.lab.test_staged_owner guest\n",
        kernel=lab,
        memory_mib=512,
        append="kexechib.enable_kexec=1",
        timeout=300,
        name="owner",
    )
    result = run_guest(spec, workdir)
    assert result.exit_status == 0, result.describe()
    return result


def _memory_back(got: dict[str, str]) -> bool:
    """MemFree after is at most 1% below before (it may be above: the page
    cache and the loader's own memory come and go)."""
    before, after = int(got["free_before_kib"]), int(got["free_after_kib"])
    return after >= before - before // 100


def test_killing_the_loader_after_start_gives_the_staged_memory_back(
    guest: GuestResult,
) -> None:
    got = _markers(guest, "killed-after-start")
    assert int(got["staged_kib"]) >= 60 * 1024, got  # it did pin its 64 MiB
    assert _memory_back(got), got
    assert got["map_bytes"] == "0", got


def test_killing_the_loader_after_100_mid_calls_gives_the_staged_memory_back(
    guest: GuestResult,
) -> None:
    got = _markers(guest, "killed-after-mid")
    assert int(got["staged_kib"]) >= 90 * 1024, got
    assert _memory_back(got), got
    assert got["map_bytes"] == "0", got


def test_another_process_gets_ebusy_and_changes_nothing(guest: GuestResult) -> None:
    got = _markers(guest, "other-process")
    assert (got["mid"], got["final"], got["start"]) == ("EBUSY", "EBUSY", "EBUSY"), got
    assert got["map_unchanged"] == "1", got


def test_an_unload_by_another_process_discards_the_staging(guest: GuestResult) -> None:
    got = _markers(guest, "unload")
    assert got["unload"] == "0" and got["map_bytes"] == "0", got
    assert got["loader_mid_after"] == "EINVAL", got
    assert _memory_back(got), got


def test_the_flag_probe_with_stage_bits_changes_nothing(guest: GuestResult) -> None:
    got = _markers(guest, "probe")
    assert got["probe"] == "EFAULT", got
    assert got["final"] == "0" and got["loaded"] == "1", got


def test_the_loader_exit_frees_its_staging_after_kexec_load_disabled(
    guest: GuestResult,
) -> None:
    got = _markers(guest, "disabled")
    assert got["refused"] == "EPERM", got  # kexec_load is refused from now on
    assert _memory_back(got), got


# ============================================================== guest side


def _say(kind: str, **fields: object) -> None:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"KEXECHIB-LAB {kind} {text}".rstrip(), flush=True)


def _name(err: int) -> str:
    return errno.errorcode.get(err, str(err)) if err else "0"


def _call(entry: int, segments: Sequence[Segment], flags: int) -> int:
    from kexechibd.kernel.linux import LinuxKernel

    try:
        LinuxKernel().kexec_load(entry, segments, flags)
    except abi.KernelError as exc:
        return exc.errno
    return 0


def _mib_segments(first_mib: int, count: int) -> list[Segment]:
    return [Segment.zero(BASE + (first_mib + i) * MIB, MIB) for i in range(count)]


def _loader() -> int:
    """The child: one command a line on stdin, one errno a line on stdout."""
    from kexechibd.kernel.linux import LinuxKernel

    next_mib = 0
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "start":
            n = int(args[0])
            err = _call(0, _mib_segments(0, n), abi.load_flags(Stage.START, preserve_context=KEEP))
            next_mib = n
        elif cmd == "mid":
            err = _call(
                0, _mib_segments(next_mib, 1), abi.load_flags(Stage.MID, preserve_context=KEEP)
            )
            next_mib += 1
        elif cmd == "final":
            err = _call(BASE, [], abi.load_flags(Stage.FINAL, preserve_context=KEEP))
        elif cmd == "probe":
            # The backend's own flag probe (DESIGN §2.2): True when EFAULT.
            flags = abi.load_flags(Stage.MID, preserve_context=KEEP)
            accepted = LinuxKernel()._flags_accepted(flags)
            err = errno.EFAULT if accepted else errno.EINVAL if accepted is False else -1
        else:
            raise SystemExit(f"loader: unknown command {cmd}")
        print(err, flush=True)
    return 0


class Loader:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.test_staged_owner", "loader"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, command: str) -> int:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def end(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait()


def _mem_free_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1])
    raise RuntimeError("no MemFree in /proc/meminfo")


def _pgmap() -> bytes:
    from kexechibd.kernel.linux import LinuxKernel

    return LinuxKernel().kexec_pgmap()


def _killed(kind: str, mids: int) -> None:
    before = _mem_free_kib()
    loader = Loader()
    assert loader.do("start 64") == 0
    for _ in range(mids):
        assert loader.do("mid") == 0
    staged = before - _mem_free_kib()
    loader.kill()
    _say(
        kind,
        staged_kib=staged,
        free_before_kib=before,
        free_after_kib=_mem_free_kib(),
        map_bytes=len(_pgmap()),
    )


def _other_process() -> None:
    loader = Loader()
    assert loader.do("start 4") == 0
    map_before = _pgmap()
    mid = _call(0, _mib_segments(32, 1), abi.load_flags(Stage.MID, preserve_context=KEEP))
    final = _call(BASE, [], abi.load_flags(Stage.FINAL, preserve_context=KEEP))
    start = _call(0, _mib_segments(32, 1), abi.load_flags(Stage.START, preserve_context=KEEP))
    _say(
        "other-process",
        mid=_name(mid),
        final=_name(final),
        start=_name(start),
        map_unchanged=int(_pgmap() == map_before),
    )
    loader.end()


def _unload() -> None:
    loader = Loader()
    # The loader runs on: count only what it stages, once it has started
    # (KS_start without segments stages nothing).
    assert loader.do("start 0") == 0
    before = _mem_free_kib()
    assert loader.do("start 64") == 0
    unload = _call(0, [], abi.load_flags(Stage.FULL))
    after = _mem_free_kib()
    map_bytes = len(_pgmap())
    _say(
        "unload",
        unload=_name(unload),
        map_bytes=map_bytes,
        loader_mid_after=_name(loader.do("mid")),
        free_before_kib=before,
        free_after_kib=after,
    )
    loader.end()


def _probe() -> None:
    from kexechibd.kernel.linux import LinuxKernel

    loader = Loader()
    assert loader.do("start 1") == 0
    probe = loader.do("probe")
    final = loader.do("final")
    _say("probe", probe=_name(probe), final=_name(final), loaded=int(LinuxKernel().kexec_loaded()))
    loader.end()
    _call(0, [], abi.load_flags(Stage.FULL))


def _disabled() -> None:
    before = _mem_free_kib()
    loader = Loader()
    assert loader.do("start 64") == 0
    Path("/proc/sys/kernel/kexec_load_disabled").write_text("1\n")
    refused = loader.do("mid")
    loader.end()
    _say(
        "disabled",
        refused=_name(refused),
        free_before_kib=before,
        free_after_kib=_mem_free_kib(),
    )


def _guest() -> int:
    # Warm the page cache with what a loader reads, so MemFree compares pages.
    Loader().end()
    _killed("killed-after-start", 0)
    _killed("killed-after-mid", 100)
    _other_process()
    _unload()
    _probe()
    _disabled()  # last: kexec_load_disabled cannot be lowered again
    os.sync()
    return 0


def main(argv: Sequence[str]) -> int:  # pragma: no cover - runs inside lab guests
    if argv == ["guest"]:
        return _guest()
    if argv == ["loader"]:
        return _loader()
    raise SystemExit(f"unknown guest step {argv}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
