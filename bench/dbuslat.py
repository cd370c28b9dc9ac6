"""4. D-Bus latency: ``CanHibernate`` and a property read, idle and while a
hibernate streams, next to ``org.freedesktop.DBus.GetId`` on the same bus.

Everything real: ``dbus-daemon`` configured as Debian's system bus with our
policy (``kexechibd.privatebus``), the daemon started as systemd would
(``python -m kexechibd.daemon --config …``) on a model machine, and a
client (``bench/dbusclient.py``) on its own connection.

Idle: kernel A's daemon, nothing running.  Streaming: ``Hibernate`` (mode
checkpoint) is called on A's daemon; A jumps to B on the model, and B's
daemon — started on a bus of its own, as B's init would — saves A's memory
right away (its saver threads compress on every core); the client measures
B's daemon for as long as its State is ``saving``, then B jumps back to A,
and A hibernates again until the client has its rounds.  In A, ``CanHibernate`` goes through
the support probe and the caller check (a ``GetConnectionUnixUser`` round
trip to the bus); B answers ``na`` at once — so the property read is the
like-for-like figure of the two, and GetId shows what the bus and the
client cost under the same load.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import REPO, python, short, show
from bench.report import Row, Section, ratio
from kexechibd import cpio
from kexechibd.kernel.abi import PAGE_SIZE
from kexechibd.model.bzimage import make_bzimage
from kexechibd.model.machine import Machine
from kexechibd.privatebus import PrivateBus, _wait

MIB = 1 << 20
GIB = 1 << 30
RAM = 3 * GIB
DATA = (1 * GIB, 2 * GIB + 512 * MIB)  # A's memory that B saves: 1.5 GiB, all data
ROUNDS = 10_000
MAX_CYCLES = 8


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def fill(machine: Machine, data: tuple[int, int] = DATA) -> None:
    """A's memory: text-like and structured pages (compressible, as most is)."""
    from bench.scaling import page_pool

    pool = page_pool()
    fd = os.open(machine.memory.path, os.O_WRONLY)
    try:
        block = b"".join(pool) * (8 * MIB // (len(pool) * PAGE_SIZE) or 1)
        for addr in range(data[0], data[1], len(block)):
            os.pwrite(fd, block[: data[1] - addr], addr)
    finally:
        os.close(fd)


def config(scratch: Path, machine: Path) -> Path:
    kernel = scratch / "vmlinuz-b"
    kernel.write_bytes(make_bzimage(kernel_size=256 << 10, init_size=2 * MIB))
    initrd = scratch / "initrd-b"
    initrd.write_bytes(cpio.build_newc({"init": b"#!/bin/sh\n"}))
    conf = scratch / "kexechibd.conf"
    conf.write_text(
        f"[daemon]\nbackend = model\nmodel_dir = {machine}\nlog_level = warning\n"
        f"[image]\nlocation = {scratch / 'dbus-image'}\n"
        f"[saver]\nkernel = {kernel}\ninitrd = {initrd}\nwindow = 64M@256M\n"
    )
    return conf


def start_daemon(conf: Path, bus: PrivateBus, log: Path) -> subprocess.Popen[bytes]:
    argv = [python(), "-m", "kexechibd.daemon", "--config", str(conf), "--bus", bus.address]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    _wait(lambda: bus.has_owner("org.kexechib1") or proc.poll() is not None, 60, "kexechibd start")
    if proc.poll() is not None:
        raise RuntimeError(f"kexechibd exited: {log.read_text()[-2000:]}")
    return proc


def client(address: str, rounds: int, *, while_saving: bool = False) -> tuple[dict, list[str]]:
    argv = [python(), "-m", "bench.dbusclient", address, str(rounds)]
    if while_saving:
        argv.append("--while-saving")
    out = subprocess.run(argv, capture_output=True, check=True, cwd=REPO)
    return json.loads(out.stdout), argv


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 5) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()  # A frozen in its jump: nothing to wait for
        proc.wait(5)


def checkpoint(
    conf: Path, bus_a: PrivateBus, machine_dir: Path, a_id: int | None, log: Path, rounds: int
) -> tuple[dict, list[str], float]:
    """One Hibernate in checkpoint mode, measured on B's daemon while it saves."""
    hibernate = subprocess.Popen(
        ["busctl", f"--address={bus_a.address}", "--timeout=3600", "call",
         "org.kexechib1", "/org/kexechib1", "org.kexechib1.Manager", "Hibernate",
         "a{sv}", "1", "mode", "s", "checkpoint"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    bus_b = daemon_b = None
    try:
        _wait(lambda: Machine(machine_dir).running not in (None, a_id), 120, "A jumping to B")
        bus_b = PrivateBus()
        started = time.perf_counter()
        daemon_b = start_daemon(conf, bus_b, log)
        result, argv = client(bus_b.address, rounds, while_saving=True)
        seconds = time.perf_counter() - started
        _, err = hibernate.communicate(timeout=300)  # B jumps back: A's Hibernate returns
        if hibernate.returncode != 0:
            raise RuntimeError(f"Hibernate (checkpoint) failed: {err.decode(errors='replace')}")
    finally:
        stop(daemon_b, grace=1)
        stop(hibernate, grace=1)
        if bus_b is not None:
            bus_b.stop()
    return result, argv, seconds


def run(
    scratch: Path,
    *,
    rounds: int = ROUNDS,
    ram: int = RAM,
    data: tuple[int, int] = DATA,
    max_cycles: int = MAX_CYCLES,
) -> Section:
    """``ram``, ``data`` and ``max_cycles`` shrink it for the quick test."""
    machine_dir = scratch / "dbus-machine"
    with Machine.create(machine_dir, ram=ram) as m:
        m.power_on()
        fill(m, data)
        a_id = m.running
    conf = config(scratch, machine_dir)
    log = scratch / "daemons.log"
    bus_a = None
    daemon_a = None
    busy: dict = {"ms": {}, "answers": {}}
    cycles = 0
    elapsed = 0.0
    try:
        bus_a = PrivateBus()
        daemon_a = start_daemon(conf, bus_a, log)
        idle, idle_argv = client(bus_a.address, rounds)
        # Checkpoints, until the client has its rounds: B saves, jumps back
        # to A, and A hibernates again (a new B, on a new bus).
        while len(busy["ms"].get("Get State", ())) < rounds and cycles < max_cycles:
            cycles += 1
            left = rounds - len(busy["ms"].get("Get State", ()))
            one, busy_argv, seconds = checkpoint(conf, bus_a, machine_dir, a_id, log, left)
            elapsed += seconds
            for kind, ms in one["ms"].items():
                busy["ms"].setdefault(kind, []).extend(ms)
            busy["answers"] = one["answers"]
            busy["calls"] = one["calls"]
    finally:
        stop(daemon_a)
        if bus_a is not None:
            bus_a.stop()
    rows = []
    for kind in ("CanHibernate", "Get State"):
        for label, measured in (("idle", idle), ("while a hibernate streams", busy)):
            ms = measured["ms"][kind]
            floor = measured["ms"]["GetId"]
            calls = measured["calls"]  # each call as the busctl command that makes it
            for q in (50, 99):
                mine, theirs = percentile(ms, q), percentile(floor, q)
                rows.append(
                    Row(f"{kind}, {label}: p{q}", f"{mine:.2f} ms", "GetId (bus floor)",
                        f"{theirs:.2f} ms", ratio(mine, theirs),
                        short(calls[kind]), short(calls["GetId"]))
                )  # fmt: skip
    n_busy = len(busy["ms"]["Get State"])
    section = Section(
        "4. D-Bus latency",
        __doc__.split("\n\n", 1)[1].strip()  # type: ignore[union-attr]
        + f" Idle: {len(idle['ms']['Get State']):,} rounds (answers: "
        f"{idle['answers']}). Streaming: {n_busy:,} rounds while B saved "
        f"{(data[1] - data[0]) >> 20:,} MiB of A's memory (zstd level 3, the default), "
        f"over {cycles} checkpoints (B saves, jumps back, A hibernates again; "
        f"{elapsed:.1f} s of B's daemons in all; answers {busy['answers']}). "
        "Ratio: ours ÷ GetId.",
        rows,
        extra=[
            "The commands are the calls as `busctl` makes them; the client makes the same "
            "calls itself, on one connection, timing each from send to reply: "
            f"`{short(show(idle_argv))}` (idle) and `{short(show(busy_argv))}` (while B "
            "saves; `$BUS_ADDRESS` is the bus of the daemon measured)."
        ],
    )
    p99 = {
        (kind, label): percentile(measured["ms"][kind], 99)
        for kind in ("CanHibernate", "Get State")
        for label, measured in (("idle", idle), ("busy", busy))
    }
    idle_ok = max(p99[("CanHibernate", "idle")], p99[("Get State", "idle")]) < 5
    busy_ok = max(p99[("CanHibernate", "busy")], p99[("Get State", "busy")]) < 20
    section.verdicts.append(
        f"Target (p99 under 5 ms idle): {'met' if idle_ok else 'missed'}; "
        f"(under 20 ms while streaming): {'met' if busy_ok else 'missed'}"
        + ("" if n_busy >= rounds else f" — over {n_busy:,} rounds: the save ended first")
        + "."
    )
    return section
