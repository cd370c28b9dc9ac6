"""``make demo``: hibernate → power off → resume between real kernels in QEMU.

QEMU 1 boots kernel A: the lab kernel (Linux 6.12 with this project's
staged-load patches, kernel/) and the guest userspace (kexechibd/lab/): a
system bus, kexechibd, a workload that counts in its memory and writes tmpfs,
a tmpfs file. ``kexechibctl hibernate`` asks A's kexechibd to hibernate: it
loads kernel B with a staged load and jumps; B saves A to a virtio disk and
powers off, and QEMU 1 exits. QEMU 2 boots kernel C on the same disk; its
``kexechibd --oneshot`` (what kexechib-resume.service runs) streams the image
into staged loads and jumps into A, which carries on where it stopped: the
pending ``kexechibctl hibernate`` returns. The demo shows each kernel's
console as it comes (kexechibctl's progress in A, B's save, C's load), then
its verdict and the phases' times. (kexechibd/lab/cycle.py, docs/lab.md.)

``--model`` runs the cycle on the machine model instead: no QEMU, no kernel,
a private bus on this machine, A's memory compared byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kexechibd.ctl import exits
from kexechibd.errors import ConfigError

if TYPE_CHECKING:
    from kexechibd.cycle.window import Window
    from kexechibd.lab.cycle import CycleRun
    from kexechibd.lab.qemu import GuestResult, LogLine

MIB = 1 << 20
BIN = Path(sys.executable).parent


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


# ---------------------------------------------------------------- real kernels


class Console:
    """Which kernel a console line comes from, and what of it the demo shows."""

    def __init__(self) -> None:
        self.kernel = {"1": "A", "2": "C"}
        self.boots = {"1": 0, "2": 0}

    def line(self, which: str, line: LogLine) -> None:
        text = line.text
        # QEMU 1's second kernel banner is B's; on QEMU 2, A follows C's jump.
        if text.startswith("Linux version "):
            self.boots[which] += 1
            if which == "1" and self.boots[which] == 2:
                self.kernel[which] = "B"
        shown = self.show(text)
        if shown is not None:
            print(f"  [{line.seconds:6.1f} s] {self.kernel[which]} | {shown}", flush=True)
        if "kexec_core: Starting new kernel" in text:
            self.kernel[which] = "A"

    def show(self, text: str) -> str | None:
        from kexechibd.lab.initramfs import MARKER

        if text.startswith("Command line: "):
            return text
        if text.startswith("kexechibd: "):
            return text.removeprefix("kexechibd: ").removeprefix("INFO: ")
        if text.startswith("hibernate: "):  # kexechibctl's progress lines
            return f"kexechibctl: {text}"
        if "kexec_core: Starting new kernel" in text or "reboot: Power down" in text:
            return text
        if not text.startswith(MARKER + " "):
            return None
        kind, _, rest = text.removeprefix(MARKER + " ").partition(" ")
        if kind in ("a-image", "a-bus"):
            return self._record(kind, rest)
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        return {
            "init": "the kernel is up: /init runs",
            "daemon-up": "system bus and kexechibd running",
            "a-ready": f"workload pid {fields.get('pid')} counting ({fields.get('counter')}), "
            "1 MiB file in tmpfs",
            "a-hibernate": f"$ kexechibctl hibernate --direct --mode poweroff   "
            f"(workload counter {fields.get('counter')})",
            "b-up": f"kernel B's /init; A's re-entry point {fields.get('jbe')}",
            "save-progress": f"B saves A: {fields.get('percent')}%",
            "c-up": "kernel C's /init: kexechibd --oneshot",
            "c-boots-on": f"C boots on (kexechibd status {fields.get('status')})",
            "a-back": f"kexechibctl hibernate returned, status {fields.get('status')} "
            f"(workload counter {fields.get('counter')})",
            "a-state": f"tmpfs file {fields.get('canary')}; workload pid {fields.get('pid')}, "
            f"memory {fields.get('memory')}, counting {fields.get('counter')} -> "
            f"{fields.get('later')}; kexechibd {fields.get('daemon')}; "
            f"kexec_loaded {fields.get('kexec_loaded')}",
            "exit": f"A's script ended (status {fields.get('status')}); A powers off",
        }.get(kind)

    @staticmethod
    def _record(kind: str, text: str) -> str | None:
        try:
            record = json.loads(text)
        except ValueError:
            return None
        if kind == "a-bus":
            if record.get("type") == "error":
                return f"bus: error reply {record.get('error_name')}"
            (value,) = record["payload"]["data"]
            return f"bus: {record.get('member')}({str(value).lower()})"
        if "error" in record:  # none left: A wiped the image it resumed from
            return f"Inspect: {record['error'].strip()}"
        (info,) = record["data"]
        v = {key: value["data"] for key, value in info.items()}
        if v.get("absent"):
            return f"Inspect: no image at {v.get('path')} (wiped)"
        return (
            f"Inspect: image {v.get('state')}, {v.get('data-pages')} data pages, "
            f"{v.get('chunks')} chunks, {v.get('stored-bytes')} bytes ({v.get('compression')})"
        )


def _fields(result: GuestResult | None, kind: str) -> dict[str, str]:
    if result is None:
        return {}
    marker = result.marker(kind)
    return marker.fields if marker else {}


def verdict(run: CycleRun) -> list[tuple[bool, str]]:
    """What the demo checks, from the two consoles."""
    one, two = run.hibernate, run.resume
    log2 = two.log if two else ""
    ready, before = _fields(one, "a-ready"), _fields(one, "a-hibernate")
    back, after = _fields(two, "a-back"), _fields(two, "a-state")
    loaded = next((ln.text for ln in (two.lines if two else ()) if "image loaded:" in ln.text), "")
    signals = [
        r["payload"]["data"][0]
        for r in (two.records("a-bus") if two else [])
        if isinstance(r, dict) and r.get("member") == "PrepareForHibernate"
    ]
    counted = after.get("counter", "0").isdigit() and int(after.get("later", "0")) > int(
        after["counter"]
    )
    return [
        (
            "image committed" in one.log and one.shutdown_reason == "guest-shutdown",
            "B saved A to the disk and powered off (QEMU 1 exited)",
        ),
        (
            "Starting new kernel" in log2 and bool(loaded),
            f"C loaded the image with staged loads ({loaded.partition('image loaded: ')[2]}) "
            "and jumped into A",
        ),
        (
            back.get("status") == "0" and "hibernate: resumed" in log2,
            "the pending kexechibctl hibernate returned success in A",
        ),
        (
            after.get("pid") == ready.get("pid") and after.get("memory") == "intact" and counted,
            f"the workload (pid {ready.get('pid')}) kept its memory and counts on: "
            f"{before.get('counter')} at the call, {back.get('counter')} when it returned",
        ),
        (after.get("canary") == "intact", "the 1 MiB tmpfs file is intact"),
        (signals == [True, False], "PrepareForHibernate went true, then false"),
        (
            "back in A: resumed from the image" in log2
            and "image wiped" in log2
            and after.get("kexec_loaded") == "0",
            "A's kexechibd wiped the consumed image (zeros on the disk) and unloaded B",
        ),
    ]


def run_lab(args: argparse.Namespace) -> int:
    from kexechibd.lab import lab_kernel, new_workdir, qemu_available
    from kexechibd.lab.cycle import hibernate_cycle, print_outcome
    from kexechibd.lab.disk import chunk_spans, published_slots
    from kexechibd.lab.userspace import origin_initrd

    reason = qemu_available()
    if reason:
        print(f"demo: {reason}; `python -m kexechibd.demo --model` needs no QEMU", file=sys.stderr)
        return 1
    step("The lab kernel (Linux 6.12 + kernel/patches) and the guests' userspace")
    print("  (kernel/build.sh builds the kernel once, about 6 minutes; then it is cached)")
    kernel = lab_kernel()
    initrd = origin_initrd(kernel)
    print(f"  kernel {kernel}\n  initrd {initrd} ({initrd.stat().st_size >> 20} MiB)")
    workdir = new_workdir("demo")
    console = Console()
    started = time.monotonic()

    def between(first: GuestResult) -> None:
        print(f"  QEMU 1 exited ({first.shutdown_reason}) after {first.wall_seconds:.1f} s")
        slots = published_slots(workdir / "image-disk.raw")
        if slots:
            spans = chunk_spans(workdir / "image-disk.raw", slots[0])
            print(
                f"  the disk, read on the host: slot {'AB'[slots[0].index]} holds image "
                f"#{slots[0].sequence}, {slots[0].image_length} bytes in {len(spans)} chunks"
            )
        step(
            "QEMU 2 boots kernel C on the same disk: kexechibd --oneshot resumes the "
            "image, A carries on"
        )

    step(
        "QEMU 1 boots kernel A (512 MiB, 1 CPU, TCG): bus, kexechibd, a workload; "
        "kexechibctl hibernate; B saves A and powers off"
    )
    try:
        run = asyncio.run(
            hibernate_cycle(
                kernel, workdir, client="kexechibctl", on_line=console.line, between=between
            )
        )
    except BaseException:
        print(f"\n(kept {workdir})")
        raise
    step("What happened")
    whole = "the whole demo (both QEMU runs)"
    ok = print_outcome(verdict(run), run.times(), whole, time.monotonic() - started)
    step(
        "Verdict: "
        + (
            "A hibernated, powered off and resumed on real kernels, as it was"
            if ok
            else f"FAILED; consoles in {workdir}"
        )
    )
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\n(kept {workdir}: qemu-1/serial.log, qemu-2/serial.log, image-disk.raw)")
    return 0 if ok else 1


# ---------------------------------------------------------------- the machine model


def show(argv: Sequence[str], env: dict[str, str] | None = None, *, expect: int = 0) -> str:
    print("$ " + " ".join(argv), flush=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    out = (done.stdout + done.stderr).rstrip()
    if out:
        print(textwrap.indent(out, "  "), flush=True)
    if done.returncode != expect:
        raise SystemExit(f"demo failed: {argv[0]} exited with {done.returncode}")
    return done.stdout


def scratch() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kexechib-demo-", dir=base))


def model_window(ram: int) -> Window:
    """B's window on a model machine with ``ram`` bytes of RAM: a quarter of
    RAM, at most 128 MiB, in the middle of the largest RAM range (A keeps the
    rest, and needs free pages outside the window for what the jump swaps
    out of it), checked as the daemon checks a configured window."""
    from kexechibd.cycle.window import KERNEL_ALIGN, MIN_WINDOW, choose_window
    from kexechibd.kernel.api import MemoryKind
    from kexechibd.model.machine import firmware_map

    e820 = firmware_map(ram)
    size = min(128 * MIB, ram // 4 // KERNEL_ALIGN * KERNEL_ALIGN)
    if size < MIN_WINDOW:
        raise ValueError(
            f"{ram >> 20} MiB of RAM is too small for the demo: it gives kernel B a quarter "
            f"of RAM and B needs at least {MIN_WINDOW >> 20} MiB; use --ram "
            f"{4 * MIN_WINDOW >> 20} or more"
        )
    largest = max((r for r in e820 if r.kind is MemoryKind.RAM), key=lambda r: r.size)
    start = (largest.start + largest.size // 2) // KERNEL_ALIGN * KERNEL_ALIGN
    return choose_window(start, size, e820, low_memory=True)


def write_config(work: Path, machine: Path, window: Window) -> Path:
    from kexechibd.cmdline import format_size
    from kexechibd.model.bzimage import make_bzimage

    (work / "vmlinuz-b").write_bytes(make_bzimage(kernel_size=256 << 10, init_size=2 * MIB))
    (work / "initrd-b").write_bytes(b"")
    conf = work / "kexechibd.conf"
    conf.write_text(
        "# The demo's configuration: the machine model as the backend.\n"
        f"[daemon]\nbackend = model\nmodel_dir = {machine}\n\n"
        f"[image]\nlocation = {work / 'image'}\ncompression = zstd\nlevel = 1\n\n"
        f"[saver]\nkernel = {work / 'vmlinuz-b'}\ninitrd = {work / 'initrd-b'}\n"
        f"window = {format_size(window.main.size)}@{format_size(window.main.start)}\n"
        "mode = poweroff\n"
    )
    return conf


def run_model(args: argparse.Namespace) -> int:
    from kexechibd.model.kernel import ModelKernel
    from kexechibd.model.machine import Machine
    from kexechibd.model.workload import count_runs, in_use_digest, populate
    from kexechibd.privatebus import PrivateBus

    window = model_window(args.ram * MIB)
    work = scratch()
    bus: PrivateBus | None = None
    daemon: subprocess.Popen[str] | None = None
    try:
        step(f"A {args.ram} MiB model machine boots kernel A and runs a workload")
        machine = Machine.create(work / "machine", ram=args.ram * MIB)
        machine.power_on()
        with ModelKernel(machine) as a:
            work_a = populate(a, pages=args.pages, seed=1)
        print(
            f"  {len(work_a.pages)} pages in use in {count_runs(work_a.pages)} runs: {work_a.kinds}"
        )
        before = in_use_digest(machine)
        print(f"  A's memory in use: sha256 {before}")
        print(f"  kernel B's window: {', '.join(str(r) for r in window.ranges)}")
        conf = write_config(work, machine.dir, window)

        step("A private system bus with our policy; kexechibd starts in A")
        bus = PrivateBus()
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        log_a = open(work / "kexechibd-a.log", "w")  # noqa: SIM115 - closed below
        daemon = subprocess.Popen(
            [str(BIN / "kexechibd"), f"--config={conf}"], env=env, stderr=log_a, text=True
        )
        deadline = time.monotonic() + 30
        while not bus.has_owner("org.kexechib1"):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("demo failed: kexechibd did not start; see " + log_a.name)
            time.sleep(0.1)
        ctl = [str(BIN / "kexechibctl")]
        busctl = ["busctl", f"--address={bus.address}"]
        show([*ctl, "status"], env)
        show([*ctl, "can-hibernate"], env)
        show([*busctl, "introspect", "org.kexechib1", "/org/kexechib1", "org.kexechib1.Manager"])

        step("kexechibctl hibernate: A loads B (staged load + purgatory) and jumps")
        print(
            f"$ {' '.join(ctl)} hibernate --direct --mode poweroff   (in the background)",
            flush=True,
        )
        hibernate = subprocess.Popen(
            [*ctl, "hibernate", "--direct", "--mode", "poweroff"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while machine.running in (None, 1):
            if hibernate.poll() is not None:
                output, _ = hibernate.communicate()
                raise SystemExit(f"demo failed: hibernate ended early:\n{output}")
            time.sleep(0.05)
        b_id = machine.running
        if b_id is not None:
            print(f"  kernel B booted in its window: {machine.record(b_id).cmdline}")

        step("B's init starts kexechibd: it saves A from /proc/vmcore and powers off")
        show([str(BIN / "kexechibd"), "--oneshot", f"--config={conf}"])
        print(f"  machine power: {machine.power}; memory scrambled")
        show([*ctl, "image", "info", str(work / "image")])

        step("Power on: kernel C boots; kexechibd finds the image and resumes it")
        machine.power_on()
        show([str(BIN / "kexechibd"), "--oneshot", f"--config={conf}"])

        step("A continues: the kexechibctl hibernate call returns")
        out, _ = hibernate.communicate(timeout=120)
        print(textwrap.indent(out.rstrip() or "(no output)", "  "))
        print(f"  kexechibctl hibernate exited with {hibernate.returncode}")
        show(
            [
                *busctl,
                "get-property",
                "org.kexechib1",
                "/org/kexechib1",
                "org.kexechib1.Manager",
                "State",
                "LastError",
            ]
        )
        after = in_use_digest(machine)
        print(f"  A's memory in use: sha256 {after}")
        # Resumed, so A wiped the image: info finds none.
        show([*ctl, "image", "info", str(work / "image")], expect=exits.FAILURE)

        ok = hibernate.returncode == 0 and after == before and machine.running == 1
        step(
            "Verdict: "
            + (
                "A resumed with its memory byte for byte as at the jump"
                if ok
                else "FAILED: A's memory differs or hibernate failed"
            )
        )
        return 0 if ok else 1
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        if bus is not None:
            bus.stop()
        if args.keep:
            print(f"\n(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kexechibd.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        action="store_true",
        help="run the cycle on the machine model instead of real kernels in QEMU",
    )
    parser.add_argument(
        "--debian",
        action="store_true",
        help="run the cycle on a real Debian 12 guest (systemd, ext4, OVMF, 2 CPUs) in QEMU",
    )
    parser.add_argument(
        "--luks",
        action="store_true",
        help="with --debian: the guest's root on LUKS2, the image file sealed on it",
    )
    parser.add_argument(
        "--ram",
        type=int,
        default=1024,
        help="with --model: model RAM in MiB, at least 128 (default 1024); kernel B's "
        "window is a quarter of it, at most 128 MiB",
    )
    parser.add_argument(
        "--pages",
        type=int,
        default=60_000,
        help="with --model: pages the workload fills (default 60000)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (consoles, disk, model)"
    )
    args = parser.parse_args(argv)
    if args.debian:
        from kexechibd.lab.debian_demo import main as debian_main

        return debian_main(keep=args.keep, luks=args.luks)
    if args.model:
        # Refuse a machine too small for B before anything is created.
        try:
            model_window(args.ram * MIB)
        except (ValueError, ConfigError) as exc:
            parser.error(f"--ram {args.ram}: {exc}")
    return run_model(args) if args.model else run_lab(args)


if __name__ == "__main__":
    sys.exit(main())
