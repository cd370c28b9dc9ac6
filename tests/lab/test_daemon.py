"""kexechibd drives kexec jumps between two real kernels, over D-Bus.

One guest (the lab kernel, 512 MiB, one CPU; `daemon_guest`) boots the guest
userspace of kexechibd/lab/userspace.py: a system bus and kexechibd with the
Linux backend, real kexec enabled by kexechib.enable_kexec=1 on the command
line. In A, kexechibd/lab/guest/checkpoint.sh keeps a tmpfs file and a
counting process, then with busctl:

1. `Hibernate {mode: checkpoint}`: A's kexechibd loads B
   (the lab bzImage and the same userspace as its initrd) with its own loader
   and purgatory — on the lab kernel, which carries the staged-load patches,
   in two staged calls with /proc/kexec_pgmap read between them (DESIGN
   §1.1) — and jumps. B's /init (kexechibd/lab/guest/saver.sh) starts a bus and
   kexechibd, which sees its role and A's jump-back entry on its command
   line, saves A to the image device and jumps back: the call returns in A.
2. `JumpBack` in A: B's daemon, waiting inside its jump, resumes and ends its
   save; B's script calls JumpBack on B's bus: A's call returns.
3. `JumpBack` again: B's JumpBack call returns, B's script calls it again.

Every marker comes from the serial console. The image device is a raw
virtio disk (`image_disk`), `[image] location = /dev/vda` in A and B.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult, new_workdir, run_guest
from kexechibd.lab.userspace import daemon_guest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def round_trip(lab: Path, request: pytest.FixtureRequest) -> Iterator[GuestResult]:
    workdir = new_workdir("daemon")
    failed = request.session.testsfailed
    result = run_guest(daemon_guest(lab, workdir), workdir)
    yield result
    if request.session.testsfailed == failed:
        shutil.rmtree(workdir, ignore_errors=True)


def _sequence(result: GuestResult) -> list[tuple[str, str | None]]:
    return [
        (m.kind, m.fields.get("round"))
        for m in result.markers
        if m.kind.startswith(("a-", "b-")) and m.kind not in ("a-state", "a-image")
    ]


def test_hibernate_checkpoint_and_jump_back_go_a_b_a_three_times(round_trip: GuestResult) -> None:
    assert round_trip.exit_status == 0, round_trip.describe(120)
    assert _sequence(round_trip) == [
        ("a-hibernate", None),
        ("b-up", None),
        ("a-back", "1"),
        ("a-jump", "2"),
        ("b-saved", None),
        ("b-jump", "1"),
        ("a-back", "2"),
        ("a-jump", "3"),
        ("b-back", "2"),
        ("b-jump", "2"),
        ("a-back", "3"),
    ], round_trip.describe(120)


def test_a_keeps_its_processes_and_tmpfs_data_across_every_round(round_trip: GuestResult) -> None:
    states = [m for m in round_trip.markers if m.kind == "a-state"]
    assert [m.fields["round"] for m in states] == ["0", "1", "2", "3"], round_trip.describe(120)
    for marker in states:
        state = {k: v for k, v in marker.fields.items() if k != "round"}
        assert state == {"canary": "intact", "counter": "running", "daemon": "idle"}, marker


def test_b_knows_its_role_and_a_s_jump_back_entry(round_trip: GuestResult) -> None:
    b_up = round_trip.marker("b-up")
    assert b_up is not None and b_up.fields["jbe"].startswith("0x"), round_trip.describe(120)
    entry = int(b_up.fields["jbe"], 16)
    assert (
        f"role saver: kexechib.role=save on the command line with kexec_jump_back_entry={entry:#x}"
        in round_trip.log
    )


def test_a_finds_the_checkpoint_b_committed(round_trip: GuestResult) -> None:
    records = round_trip.records("a-image")
    assert len(records) == 1, round_trip.describe(120)
    info = records[0]
    assert isinstance(info, dict)
    (values,) = info["data"]
    assert values["valid"]["data"] is True and values["state"]["data"] == "committed", info
    assert values["mode"]["data"] == "checkpoint", info
