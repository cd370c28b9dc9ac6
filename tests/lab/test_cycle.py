"""The full cycle between real kernels: hibernate -> power off -> resume.

QEMU 1 boots kernel A (the lab kernel with the staged-load patches, 512 MiB,
one CPU) running a system bus, kexechibd, a workload that keeps a counter in
its memory and writes it to tmpfs, a tmpfs file, and a bus monitor
(kexechibd/lab/guest/cycle.sh). A user calls

    busctl call org.kexechib1 /org/kexechib1 org.kexechib1.Manager Hibernate 'a{sv}' 0

A's kexechibd loads B with a staged preserve-context load and jumps; B
(saver.sh) saves A to the virtio disk and powers off: QEMU exits. QEMU 2 boots
C, the same kernel and initrd, on the same disk (resume.sh); its `kexechibd
--oneshot` streams the image into staged loads and jumps into A's re-entry
point. A continues on QEMU 2's console: the pending busctl call returns
success, the workload is the same process with the same memory and counts on
from where it stopped, the tmpfs file is intact, PrepareForHibernate went
true, then false, and the image is invalidated.

Also: the checkpoint mode (B jumps back, A goes on and powers off, a later C
resumes the checkpoint and A is back at the checkpoint), and the faults: QEMU
killed in the middle of B's save (the next boot finds no valid image and
boots on), a chunk corrupted on the disk (C names it, loads nothing, boots
on), Cancel while A prepares (A unchanged).

Every verdict comes from the serial consoles (markers of the guest scripts,
kexechibd's log, busctl's JSON) and, for the faults, from the disk file read
on the host by the documented layout (kexechibd/lab/disk.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kexechibd.lab import GuestResult, new_workdir, run_guest
from kexechibd.lab.cycle import CycleRun, hibernate_cycle
from kexechibd.lab.disk import (
    Slot,
    chunk_spans,
    flip_bytes,
    published_slots,
    slot_header_is_zero,
)
from kexechibd.lab.qemu import Guest
from kexechibd.lab.userspace import cycle_guest, restorer_guest

pytestmark = pytest.mark.lab

BUS = "org.kexechib1"
IFACE = "org.kexechib1.Manager"
# The workload counts every 0.1 s while A runs (and only then).
TICKS_PER_SECOND = 10


@contextlib.contextmanager
def _workdir(name: str, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A work directory, removed unless a test failed while it was in use."""
    path = new_workdir(name)
    failed = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed:
        shutil.rmtree(path, ignore_errors=True)


def fields(result: GuestResult | None, kind: str, nth: int = 0) -> dict[str, str]:
    assert result is not None
    found = [m for m in result.markers if m.kind == kind]
    assert len(found) > nth, f"no marker {kind} #{nth}\n" + result.describe(80)
    return found[nth].fields


def bus_messages(result: GuestResult | None) -> list[dict[str, Any]]:
    """What A's bus monitor saw (busctl monitor --json=short)."""
    assert result is not None
    records = result.records("a-bus")
    assert all(isinstance(r, dict) for r in records)
    return records  # type: ignore[return-value]


def signals(result: GuestResult | None) -> list[bool]:
    return [
        m["payload"]["data"][0]
        for m in bus_messages(result)
        if m["type"] == "signal" and m["member"] == "PrepareForHibernate"
    ]


def image_info(result: GuestResult | None) -> dict[str, object]:
    """The last `Inspect` A made of the image, as plain values, or its
    ``error`` when there was no image."""
    assert result is not None
    records = result.records("a-image")
    assert records, result.describe(80)
    reply = records[-1]
    assert isinstance(reply, dict)
    if "error" in reply:  # there is none (lab.sh's inspect_image)
        return {"error": reply["error"]}
    (values,) = reply["data"]
    return {key: value["data"] for key, value in values.items()}


def line_time(result: GuestResult, text: str) -> float:
    return next(line.seconds for line in result.lines if text in line.text)


# ============================================================== power off, resume


@pytest.fixture(scope="module")
def poweroff(lab: Path, request: pytest.FixtureRequest) -> Iterator[CycleRun]:
    with _workdir("cycle-poweroff", request) as workdir:

        def keep_disk(first: GuestResult) -> None:
            # The committed image, for the corruption test (C consumes this one).
            disk, copy = workdir / "image-disk.raw", workdir / "saved.raw"
            subprocess.run(["cp", "--sparse=always", str(disk), str(copy)], check=True)

        yield asyncio.run(hibernate_cycle(lab, workdir, between=keep_disk))


def test_b_saves_a_and_powers_off_so_qemu_exits(poweroff: CycleRun) -> None:
    one = poweroff.hibernate
    assert one.shutdown_reason == "guest-shutdown" and not one.timed_out, one.describe(80)
    assert "kexechibd: INFO: role saver" in one.log
    assert "image committed" in one.log and "reboot: Power down" in one.tail(5)
    # A never got past its call in QEMU 1: it was frozen, then powered off.
    assert one.marker("a-back") is None and one.exit_status is None
    percents = [int(m.fields["percent"]) for m in one.markers if m.kind == "save-progress"]
    assert percents == sorted(percents) and percents[-1] >= 50, percents


def test_c_streams_the_image_in_with_staged_loads_and_jumps_into_a(poweroff: CycleRun) -> None:
    two = poweroff.resume
    assert two is not None
    assert "kexechibd: INFO: role restorer: a valid image of an earlier boot" in two.log
    loaded = next(line.text for line in two.lines if "image loaded:" in line.text)
    calls = int(loaded.split("image loaded: ")[1].split()[0])
    assert calls > 2, loaded  # KS_start, KS_mid..., KS_final
    assert "resume: loading 100%" in two.log
    assert line_time(two, "kexec_core: Starting new kernel") > line_time(two, "image loaded")
    # C's script never went on: A took over the machine.
    assert two.marker("c-boots-on") is None, two.describe(80)


def test_the_pending_busctl_call_returns_success_after_the_resume(poweroff: CycleRun) -> None:
    two = poweroff.resume
    assert two is not None and two.exit_status == 0, two.describe(80)
    assert fields(two, "a-back")["status"] == "0"
    assert "kexechibd: INFO: back in A: resumed from the image" in two.log
    assert line_time(two, "KEXECHIB-LAB a-back") > line_time(two, "Starting new kernel")


def test_a_continues_where_it_stopped(poweroff: CycleRun) -> None:
    one, two = poweroff.hibernate, poweroff.resume
    ready, before = fields(one, "a-ready"), fields(one, "a-hibernate")
    back, after = fields(two, "a-back"), fields(two, "a-state")
    # The same process, with the same memory, counting on.
    assert after["pid"] == ready["pid"] == ready["workload"], (ready, after)
    assert after["memory"] == "intact" and after["canary"] == "intact", after
    assert int(after["later"]) > int(after["counter"]) >= int(back["counter"])
    # It counted on from where it stopped, and only while A ran: A ran from
    # its call to the jump, and from the jump in QEMU 2 to the call's return.
    assert two is not None
    ran = line_time(one, "jumping to kernel B") - line_time(one, "KEXECHIB-LAB a-hibernate")
    ran += line_time(two, "KEXECHIB-LAB a-back") - line_time(two, "Starting new kernel")
    gap = int(back["counter"]) - int(before["counter"])
    assert 0 <= gap <= TICKS_PER_SECOND * ran + 2, (gap, ran)


def test_prepare_for_hibernate_went_true_then_false(poweroff: CycleRun) -> None:
    assert signals(poweroff.resume) == [True, False]
    assert [m for m in bus_messages(poweroff.resume) if m["type"] == "error"] == []


def test_a_unloads_b_and_wipes_the_consumed_image(poweroff: CycleRun) -> None:
    after = fields(poweroff.resume, "a-state")
    assert (after["daemon"], after["kexec_loaded"], after["pgmap_bytes"]) == ("idle", "0", "0")
    assert image_info(poweroff.resume)["absent"] is True  # wiped: no image left
    assert poweroff.resume is not None and "image wiped: " in poweroff.resume.log


def test_a_s_disk_works_after_the_resume_and_its_write_reached_it(poweroff: CycleRun) -> None:
    # C reset and used the same virtio disk; A's driver restored it, and
    # A's kexechibd wrote the image's new state through it.
    disk = poweroff.hibernate.workdir.parent / "image-disk.raw"
    assert published_slots(disk) == []
    assert slot_header_is_zero(disk, 0)  # B wrote the first image to slot A


# ============================================================== checkpoint, later resume


@pytest.fixture(scope="module")
def checkpoint(lab: Path, request: pytest.FixtureRequest) -> Iterator[CycleRun]:
    with _workdir("cycle-checkpoint", request) as workdir:
        yield asyncio.run(hibernate_cycle(lab, workdir, cycle="checkpoint"))


def test_checkpoint_b_jumps_back_and_a_continues(checkpoint: CycleRun) -> None:
    one = checkpoint.hibernate
    assert one.exit_status == 0, one.describe(80)
    assert fields(one, "a-back")["status"] == "0"
    state = fields(one, "a-state")
    assert (state["canary"], state["memory"], state["daemon"]) == ("intact", "intact", "idle")
    assert state["pid"] == fields(one, "a-ready")["pid"]
    # B waits, loaded, to be jumped to again; the checkpoint is committed.
    assert state["kexec_loaded"] == "1"
    info = image_info(one)
    assert (info["state"], info["valid"], info["mode"]) == ("committed", True, "checkpoint")
    assert signals(one) == [True, False]
    assert one.marker("a-checkpointed") is not None


def test_a_later_c_resumes_the_checkpoint_and_a_is_back_at_it(checkpoint: CycleRun) -> None:
    one, two = checkpoint.hibernate, checkpoint.resume
    assert two is not None and two.exit_status == 0, two.describe(80) if two else None
    assert "role restorer" in two.log and fields(two, "a-back")["status"] == "0"
    # The file A wrote after the checkpoint is not in it; the counter is back
    # where it was then, behind what QEMU 1 last saw.
    assert fields(two, "a-resumed")["after_checkpoint_file"] == "no"
    assert int(fields(two, "a-back")["counter"]) < int(fields(one, "a-state")["later"])
    state = fields(two, "a-state")
    assert state["pid"] == fields(one, "a-ready")["pid"]
    assert (state["canary"], state["memory"], state["daemon"]) == ("intact", "intact", "idle")
    assert (state["kexec_loaded"], state["pgmap_bytes"]) == ("0", "0")
    assert image_info(two)["absent"] is True  # wiped: no image left
    # The Hibernate call returned a second time, after a second "false".
    assert signals(two) == [True, False]


# ============================================================== faults


@pytest.fixture(scope="module")
def cancel(lab: Path, request: pytest.FixtureRequest) -> Iterator[GuestResult]:
    with _workdir("cycle-cancel", request) as workdir:
        yield run_guest(cycle_guest(lab, workdir, cycle="cancel"), workdir)


def test_cancel_while_a_prepares_returns_cancelled_and_leaves_a_unchanged(
    cancel: GuestResult,
) -> None:
    assert cancel.exit_status == 0, cancel.describe(80)
    cancelled = fields(cancel, "a-cancel")
    assert cancelled["state"] in ("preparing", "loading"), cancelled
    assert (cancelled["cancel_status"], cancelled["hibernate_status"]) == ("0", "1")
    errors = [m["error_name"] for m in bus_messages(cancel) if m["type"] == "error"]
    assert errors == ["org.kexechib1.Error.Cancelled"]
    ready, state = fields(cancel, "a-ready"), fields(cancel, "a-state")
    assert state["pid"] == ready["pid"] and int(state["later"]) > int(state["counter"])
    assert (state["canary"], state["memory"], state["daemon"]) == ("intact", "intact", "idle")
    # Nothing loaded, nothing staged, no jump, no PrepareForHibernate.
    assert (state["kexec_loaded"], state["pgmap_bytes"]) == ("0", "0")
    assert signals(cancel) == [] and "jumping" not in cancel.log


@dataclass(frozen=True)
class KilledSave:
    killed: GuestResult  # QEMU 1, killed while B was saving
    published: list[Slot]
    header_zero: bool
    next_boot: GuestResult


@pytest.fixture(scope="module")
def killed_save(lab: Path, request: pytest.FixtureRequest) -> Iterator[KilledSave]:
    with _workdir("cycle-killed", request) as workdir:

        async def run() -> GuestResult:
            spec = cycle_guest(lab, workdir)
            async with Guest(spec, workdir / "qemu-1") as guest:
                await guest.wait_for(r"KEXECHIB-LAB save-progress percent=[3-9]0", timeout=400)
                await guest.kill()
                return await guest.wait()

        killed = asyncio.run(run())
        disk = workdir / "image-disk.raw"
        published, header_zero = published_slots(disk), slot_header_is_zero(disk, 0)
        next_boot = run_guest(restorer_guest(lab, workdir), workdir / "qemu-2")
        yield KilledSave(killed, published, header_zero, next_boot)


def test_qemu_killed_mid_save_leaves_no_published_image(killed_save: KilledSave) -> None:
    killed = killed_save.killed
    assert "kexechibd: INFO: save started" in killed.log and "image committed" not in killed.log
    assert killed.exit_status is None and killed.shutdown_reason is None
    assert killed_save.published == [] and killed_save.header_zero


def test_the_next_boot_finds_no_valid_image_and_boots_normally(killed_save: KilledSave) -> None:
    boot = killed_save.next_boot
    assert boot.exit_status == 0, boot.describe(80)
    # A save killed before it published leaves the device without any image
    # (the restorer says so; a damaged image would be named as such).
    assert "kexechibd: INFO: role origin: no image" in boot.log
    assert "kexechibd: INFO: nothing to do: no image" in boot.log
    on = fields(boot, "c-boots-on")
    assert (on["status"], on["kexec_loaded"], on["pgmap_bytes"]) == ("0", "0", "0")


@dataclass(frozen=True)
class CorruptBoot:
    chunk: int
    boot: GuestResult


@pytest.fixture(scope="module")
def corrupt_chunk(
    lab: Path, poweroff: CycleRun, request: pytest.FixtureRequest
) -> Iterator[CorruptBoot]:
    with _workdir("cycle-corrupt", request) as workdir:
        disk = workdir / "image-disk.raw"
        shutil.move(poweroff.hibernate.workdir.parent / "saved.raw", disk)
        (slot,) = published_slots(disk)
        spans = chunk_spans(disk, slot)
        middle = spans[len(spans) // 2]
        flip_bytes(disk, middle.payload_offset + middle.payload_length // 2)
        boot = run_guest(restorer_guest(lab, workdir), workdir / "qemu")
        yield CorruptBoot(middle.index, boot)


def test_c_refuses_a_corrupt_chunk_by_name_and_boots_normally(corrupt_chunk: CorruptBoot) -> None:
    boot = corrupt_chunk.boot
    assert boot.exit_status == 0, boot.describe(80)
    assert "role restorer" in boot.log
    error = next(line.text for line in boot.lines if "resume failed" in line.text)
    assert "chunk data checksum mismatch" in error and f"(chunk {corrupt_chunk.chunk}," in error
    # Nothing loaded, nothing staged, no jump; the boot went on.
    on = fields(boot, "c-boots-on")
    assert (on["status"], on["kexec_loaded"], on["pgmap_bytes"]) == ("1", "0", "0")
    assert "Starting new kernel" not in boot.log
