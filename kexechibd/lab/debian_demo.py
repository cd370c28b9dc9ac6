"""`python -m kexechibd.demo --debian`: the hibernate cycle on a real Debian
guest (kexechibd/lab/debian.py, docs/lab.md §11); with `--luks`, on the
Debian guest whose root is on LUKS2 (kexechibd/lab/debian_luks.py, §13).

QEMU 1 boots Debian 12 with systemd from an ext4 disk through OVMF (2 CPUs,
1 GiB); a lingering user's service counts in its memory, keeps a tmpfs file
and appends to a file on the root; root calls kexechibd's Hibernate; B saves
A into a prepared image file's blocks and powers off. QEMU 2 boots the same
disk through its own Debian initramfs, whose local-premount/kexechib
resumes A before the root is mounted. Then each check, and the phases.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time

from kexechibd.lab.cycle import print_outcome
from kexechibd.lab.debian import DebianCycle, DebianMachine, debian_cycle, read_file
from kexechibd.lab.debian_luks import LuksMachine
from kexechibd.lab.qemu import GuestResult, LogLine

# Console lines worth showing live (the rest is in the work directory).
SHOWN = (
    "KEXECHIB-LAB",
    "kexechibd",
    "Linux version",
    "reboot: Power down",
    "Starting new kernel",
    "recovery",
    "non-boot CPUs",
    "CPU1 is up",
    "ACPI: RSDP",
    "Restarting tasks",
)


def _show(which: str, line: LogLine) -> None:
    if any(text in line.text for text in SHOWN):
        print(f"  [QEMU {which} {line.seconds:7.1f}] {line.text[:160]}", flush=True)


def _fields(result: GuestResult | None, kind: str) -> dict[str, str]:
    marker = result.marker(kind) if result is not None else None
    return marker.fields if marker else {}


def checks(run: DebianCycle, *, encrypted: bool = False) -> list[tuple[bool, str]]:
    """(passed, what) for each thing the cycle must show; ``encrypted``: the
    root is on LUKS, so the host reads nothing of it and must find no piece
    of the workload's secret on the disk.  The daemon's journal is what A
    reports of it (its a-journal marker), for either root."""
    before, after = _fields(run.hibernate, "a-ready"), _fields(run.resume, "a-state")
    back = _fields(run.resume, "a-back")
    image = run.resume.records("a-image") if run.resume else []
    daemon_log = _fields(run.resume, "a-journal")
    if encrypted:
        lines_before, lines_after = before.get("log_lines", ""), after.get("log_lines", "")
        grew = bool(lines_before and lines_after) and int(lines_after) > int(lines_before)
        appended = (grew, "its file on the encrypted root went on (more lines after the cycle)")
        secret = [
            (
                _fields(run.hibernate, "a-protection").get("sealed") == "yes",
                "the image file on the LUKS root is sealed (kexechibctl status)",
            ),
            (
                bool(run.secret)
                and not run.secret_after_save
                and run.secret_after_resume == frozenset(),
                f"the host finds none of the workload's {len(run.secret)} secret pieces on "
                "the raw disk, after the save or after the resume",
            ),
        ]
    else:
        try:
            counts = [int(n) for n in read_file(run.disk, "/home/lab/workload.log").split()]
        except (OSError, ValueError, subprocess.CalledProcessError):  # a demo reports, it goes on
            counts = []
        appended = (
            bool(counts) and counts == list(range(counts[0], counts[0] + len(counts))),
            f"its file on the ext4 root went on: {len(counts)} consecutive lines",
        )
        secret = [
            (
                bool(run.secret_after_save) and run.secret_after_resume == frozenset(),
                f"the host finds {len(run.secret_after_save)} of the workload's "
                f"{len(run.secret)} secret pieces in the clear image, none after the wipe",
            )
        ]
    return [
        (any("image committed" in ln.text for ln in run.hibernate.lines), "B committed the image"),
        (run.hibernate.shutdown_reason == "guest-shutdown", "B powered off (ACPI, under UEFI)"),
        (
            _fields(run.hibernate, "a-can").get("logind") == "yes",
            "logind offered hibernation (CanHibernate yes, from kexechibd's verdict)",
        ),
        (
            back.get("status") == "0" and back.get("last_error") == "none",
            "the next boot resumed A: logind's hibernate job ended, kexechibd reports no error",
        ),
        (back.get("signals") == "true,false", "a listener saw PrepareForSleep true, then false"),
        (
            back.get("hooks") == "pre:hibernate:hibernate,post:hibernate:hibernate",
            "the system-sleep hooks ran with pre hibernate, then post hibernate",
        ),
        (
            bool(before) and after.get("pid") == before.get("pid"),
            "the user's workload is the same process",
        ),
        (
            after.get("memory") == "intact" and after.get("canary") == "intact",
            "its memory and its tmpfs file are intact",
        ),
        appended,
        (after.get("cpus") == "0-1", "both CPUs are back"),
        (
            bool(image) and _absent(image[-1]) and daemon_log.get("wiped") == "1",
            "the image is wiped: overwritten with zeros, none left to resume",
        ),
        *secret,
        (daemon_log.get("resumed") == "1", "the journal shows the cycle"),
        (
            run.fsck_status == 0,
            f"e2fsck -fn of {'/boot' if encrypted else 'the root'} after the clean shutdown: clean",
        ),
    ]


def _absent(reply: object) -> bool:
    """Whether an `Inspect` reply (busctl --json=short) says there is no image."""
    if not isinstance(reply, dict) or not isinstance(reply.get("data"), list):
        return False
    (fields,) = reply["data"]
    return isinstance(fields, dict) and "absent" in fields


def main(keep: bool = False, luks: bool = False) -> int:
    from kexechibd.lab import lab_kernel, new_workdir, qemu_available

    reason = qemu_available()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 1
    machine = LuksMachine() if luks else DebianMachine()
    print(f"==> the lab kernel, the cached Debian root, a fresh {machine.name} disk", flush=True)
    kernel = lab_kernel()
    workdir = new_workdir(f"demo-debian-{machine.name}")
    started = time.monotonic()
    run = asyncio.run(debian_cycle(kernel, workdir, on_line=_show, machine=machine))
    print("\n==> what happened")
    outcome = checks(run, encrypted=luks)
    ok = print_outcome(outcome, run.times(), "the whole demo", time.monotonic() - started)
    if ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\n(kept {workdir}: qemu-1/serial.log, qemu-2/serial.log, the disk)")
    return 0 if ok else 1
