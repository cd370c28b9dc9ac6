"""An unprivileged user against the daemon, bounded: random calls, then a
flood of large messages (issue 14's fuzzing, kept).

The daemon runs as a process (run_daemon.py: the real main() with the
scripted engine) on the test bus with the project's policy and the real
polkitd; the hostile caller is fuzz_client.py, run as nobody with Debian's
python3.  What must hold: the daemon stays up, nothing changes, every call
gets an answer, the log stays small, and another caller's Ping is not held
up by the flood."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dbus_next.message import Message

from kexechibd import busutil
from kexechibd.busapi import BUS_NAME, OBJECT_PATH
from tests.dbus.conftest import (
    REPO,
    SYSTEM_PYTHON,
    get_property,
    run,
    system_python_unavailable,
)

HERE = Path(__file__).resolve().parent
# How many random calls, and their seed (a failure names the seed to rerun).
FUZZ_CALLS = 1500
FUZZ_SEED = 14
FLOOD_SECONDS = 6.0
# The bound for how long one caller may hold up another.
PING_BOUND = 0.100
# What dbus-daemon takes to pass a large message on to kexechibd, which a
# call sent after it waits for: measured 20-30 ms per MB on the 2-core
# development VM under load (docs/DEVELOPING.md), allowed three to five
# times that: one such wait of 2.16 s against a 2.02 s allowance was seen
# while other tests ran beside it.  Decoding before checking, the fault
# this guards against, is caught by the CPU and median bounds regardless.
MAX_DELIVERY_PER_MB = 0.100
# What the daemon may write to its log for all of that.
LOG_BOUND = 16 * 1024
RSS_BOUND_MB = 20


@pytest.fixture(scope="module")
def client_copy() -> Iterator[Path]:
    """fuzz_client.py where nobody may read it."""
    if system_python_unavailable():
        pytest.skip(reason=system_python_unavailable())
    top = Path(tempfile.mkdtemp(prefix="kexechib-fuzz-"))
    top.chmod(0o755)
    shutil.copy(HERE / "fuzz_client.py", top / "fuzz_client.py")
    (top / "fuzz_client.py").chmod(0o644)
    yield top / "fuzz_client.py"
    shutil.rmtree(top, ignore_errors=True)


@dataclass
class DaemonProcess:
    proc: asyncio.subprocess.Process
    log: Path

    def cpu_seconds(self) -> float:
        """User and system time the daemon has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        (line,) = [x for x in status.splitlines() if x.startswith("VmRSS:")]
        return int(line.split()[1]) / 1024


@pytest.fixture
async def daemon_process(system_bus, real_polkit, tmp_path) -> AsyncIterator[DaemonProcess]:
    conf = tmp_path / "kexechibd.conf"
    conf.write_text(f"[image]\nlocation = {tmp_path / 'image'}\n")
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(name, None)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "run_daemon.py"),
            "--",
            f"--bus={system_bus.address}",
            f"--config={conf}",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=out,
        )
    deadline = time.monotonic() + 20
    while not system_bus.has_owner(BUS_NAME):
        assert proc.returncode is None, log.read_text()
        assert time.monotonic() < deadline, "kexechibd did not start"
        await asyncio.sleep(0.05)
    yield DaemonProcess(proc, log)
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def hostile(system_bus, client_copy: Path, *args: str, timeout: float) -> dict:  # type: ignore[type-arg]
    result = await run(
        [SYSTEM_PYTHON, str(client_copy), system_bus.address, *args],
        user="nobody",
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    report: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    print(f"\n{args[0]}: {report}")
    return report


PING = {"path": OBJECT_PATH, "interface": "org.freedesktop.DBus.Peer", "member": "Ping"}
# The bus daemon's own cheapest call: how long the bus itself took.
BUS_PING = {
    "path": "/org/freedesktop/DBus",
    "interface": "org.freedesktop.DBus",
    "member": "GetId",
}


async def ping(bus, destination: str = BUS_NAME, fields=PING) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    await bus.call(Message(destination=destination, **fields))
    return time.perf_counter() - start


async def pings_while(bus, task: asyncio.Future[object]) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Latencies of Pings to kexechibd and of calls to the bus daemon while ``task`` runs."""
    ours, bus_own = [], []
    while not task.done():
        ours.append(await ping(bus))
        bus_own.append(await ping(bus, "org.freedesktop.DBus", BUS_PING))
        await asyncio.sleep(0.01)
    return ours, bus_own


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{len(ms)} pings: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {ms[-1]:.1f} ms"
    )


async def test_random_calls_from_an_unprivileged_user_change_nothing_and_all_get_answers(
    system_bus, daemon_process, client_copy
):
    bus = await busutil.connect(system_bus.address)
    try:
        before = [await get_property(bus, name) for name in ("State", "LastError")]
        log_before = daemon_process.log.stat().st_size
        report = await hostile(
            system_bus, client_copy, "fuzz", str(FUZZ_CALLS), str(FUZZ_SEED), timeout=240
        )
        assert report["timeouts"] == 0
        assert report["answered"] == FUZZ_CALLS
        assert daemon_process.proc.returncode is None
        assert [await get_property(bus, name) for name in ("State", "LastError")] == before
    finally:
        await busutil.close(bus)
    log = daemon_process.log.read_text(errors="replace")
    grown = len(log.encode()) - log_before
    print(f"log grew by {grown} bytes; answers {report['answers']}")
    assert grown < LOG_BOUND, log[-4000:]
    assert "Traceback" not in log


@pytest.mark.parametrize("strings", [125_000, 4_000_000], ids=["1MB", "32MB"])
async def test_a_flood_of_large_messages_holds_up_no_other_caller(
    system_bus, daemon_process, client_copy, strings
):
    bus = await busutil.connect(system_bus.address)
    try:
        for _ in range(20):
            await ping(bus)  # warm up
        quiet = [await ping(bus) for _ in range(100)]
        rss_before = daemon_process.rss_mb()
        log_before = daemon_process.log.stat().st_size
        cpu_before = daemon_process.cpu_seconds()
        started = time.monotonic()
        flood = asyncio.ensure_future(
            hostile(system_bus, client_copy, "flood", str(FLOOD_SECONDS), str(strings), timeout=120)
        )
        loaded, bus_loaded = await pings_while(bus, flood)
        report = flood.result()
        took = time.monotonic() - started
        cpu = daemon_process.cpu_seconds() - cpu_before
        rss_after = daemon_process.rss_mb()
        assert await get_property(bus, "State") == "idle"
    finally:
        await busutil.close(bus)
    print(f"quiet: {summary(quiet)}")
    print(f"flood of {report['sent']} messages ({report['bytes'] >> 20} MB): {summary(loaded)}")
    print(f"the bus daemon's own GetId meanwhile: {summary(bus_loaded)}")
    print(f"RSS {rss_before:.1f} -> {rss_after:.1f} MB; daemon CPU {cpu:.2f} s in {took:.1f} s")
    grown = daemon_process.log.stat().st_size - log_before
    print(f"log grew by {grown} bytes")
    assert daemon_process.proc.returncode is None
    assert report["sent"] == report["answered"] >= 2
    # kexechibd itself works little for it: 10 % of one core for 1 MB
    # messages, 4 % for 32 MB ones, measured (decoding them, dbus-next kept
    # it busy all the time: issue 14)...
    assert cpu < 0.5 * took, f"the daemon used {cpu:.2f} s of CPU in {took:.1f} s"
    # ...so most callers do not notice,
    assert statistics.median(loaded) < PING_BOUND, summary(loaded)
    # and the worst wait is the bus daemon's delivery of the one large
    # message queued before the Ping (it cannot be shortened from here:
    # docs/DEVELOPING.md), where it was 3.6-5.7 s.
    # (A machine busy with other work slows even a quiet Ping: what it
    # showed before the flood is allowed on top.)
    delivery = strings * 8 / 1e6 * MAX_DELIVERY_PER_MB
    assert max(loaded) < max(quiet) + PING_BOUND + delivery, summary(loaded)
    assert rss_after - rss_before < RSS_BOUND_MB
    assert grown < LOG_BOUND
