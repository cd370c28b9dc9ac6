"""``make demo``: a full hibernate → power off → resume cycle, driven over
D-Bus with ``kexechibctl`` and ``busctl``, on a private system bus, with the
machine model as the kernels' backend.

Each kernel's daemon is its own process, as on a real machine: kexechibd in A
serves the bus; when A jumps, the demo plays B's boot (``kexechibd --oneshot``
saves A and powers off), then the power button and C's boot (``kexechibd
--oneshot`` finds the image and resumes).  A's pending ``kexechibctl
hibernate`` then returns, and the demo checks A's memory byte for byte.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from kexechibd.model.bzimage import make_bzimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import count_runs, in_use_digest, populate
from kexechibd.privatebus import PrivateBus

MIB = 1 << 20
BIN = Path(sys.executable).parent


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def show(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    print("$ " + " ".join(argv), flush=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    out = (done.stdout + done.stderr).rstrip()
    if out:
        print(textwrap.indent(out, "  "), flush=True)
    if done.returncode:
        raise SystemExit(f"demo failed: {argv[0]} exited with {done.returncode}")
    return done.stdout


def scratch() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kexechib-demo-", dir=base))


def write_config(work: Path, machine: Path) -> Path:
    (work / "vmlinuz-b").write_bytes(make_bzimage(kernel_size=256 << 10, init_size=2 * MIB))
    (work / "initrd-b").write_bytes(b"")
    conf = work / "kexechibd.conf"
    conf.write_text(
        "# The demo's configuration: the machine model as the backend.\n"
        f"[daemon]\nbackend = model\nmodel_dir = {machine}\n\n"
        f"[image]\nlocation = {work / 'image'}\ncompression = zstd\nlevel = 1\n\n"
        f"[saver]\nkernel = {work / 'vmlinuz-b'}\ninitrd = {work / 'initrd-b'}\n"
        "window = 128M@512M\nmode = poweroff\n"
    )
    return conf


def run(args: argparse.Namespace) -> int:
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
        conf = write_config(work, machine.dir)

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
        print(f"$ {' '.join(ctl)} hibernate --mode poweroff   (in the background)", flush=True)
        hibernate = subprocess.Popen(
            [*ctl, "hibernate", "--mode", "poweroff"],
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
        show([*ctl, "image", "info", str(work / "image")])

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
    parser.add_argument("--ram", type=int, default=1024, help="model RAM in MiB (default 1024)")
    parser.add_argument(
        "--pages", type=int, default=60_000, help="pages the workload fills (default 60000)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
