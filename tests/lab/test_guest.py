"""The harness boots the lab kernel, runs a command in the host's root, and reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from kexechibd.lab import GuestSpec, run_guest

pytestmark = pytest.mark.lab


def test_command_runs_in_a_chroot_of_the_host_root(lab: Path, workdir: Path) -> None:
    result = run_guest(GuestSpec(command="cat /etc/debian_version; echo ran-$((6 * 7))"), workdir)
    assert result.exit_status == 0, result.describe()
    assert "ran-42" in result.output
    assert Path("/etc/debian_version").read_text().strip() in result.output
    assert result.shutdown_reason == "guest-shutdown"


def test_exit_status_of_the_command_is_reported(lab: Path, workdir: Path) -> None:
    result = run_guest(GuestSpec(command="exit 3"), workdir)
    assert result.exit_status == 3, result.describe()


def test_host_root_is_read_only_and_run_tmp_are_writable_tmpfs(lab: Path, workdir: Path) -> None:
    script = """
set -e
if touch /etc/kexechib-lab-probe 2>/dev/null; then echo root-writable; exit 1; fi
for d in /run /var/run /tmp /dev/shm; do
    echo data > $d/probe && test "$(cat $d/probe)" = data
done
echo "tmpfs-mounts=$(grep -cE ' /(run|tmp|dev/shm) tmpfs ' /proc/mounts)"
"""
    result = run_guest(GuestSpec(command=script), workdir)
    assert result.exit_status == 0, result.describe()
    assert "tmpfs-mounts=3" in result.output


def test_guest_kernel_is_the_lab_kernel_with_kexec_jump(lab: Path, workdir: Path) -> None:
    result = run_guest(
        GuestSpec(command="zcat /proc/config.gz | grep -E '^CONFIG_KEXEC_JUMP='"), workdir
    )
    assert result.exit_status == 0, result.describe()
    assert "CONFIG_KEXEC_JUMP=y" in result.output
    init = result.marker("init")
    assert init is not None and init.fields["version"] == f"#{lab.parent.name}"


def test_host_python_runs_in_the_guest(lab: Path, workdir: Path) -> None:
    import os
    import sys

    # The interpreter itself, not the venv's link to it: the checkout (and so
    # .venv) may live under /tmp, which guests cover with their own tmpfs.
    python = os.path.realpath(sys.executable)
    result = run_guest(GuestSpec(command=f"{python} -c 'import sys; print(sys.version)'"), workdir)
    assert result.exit_status == 0, result.describe()
    assert sys.version.split()[0] in result.output


def test_a_guest_that_overruns_its_deadline_is_killed(lab: Path, workdir: Path) -> None:
    result = run_guest(GuestSpec(command="sleep 600", timeout=8), workdir)
    assert result.timed_out
    assert result.exit_status is None
    assert result.wall_seconds < 20
