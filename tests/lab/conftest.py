"""Lab tests boot real kernels under QEMU (TCG). They are skipped, with the reason,
only when QEMU cannot run here; the lab kernel is built on first use (cached)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult, lab_kernel, new_workdir, qemu_available, run_guest
from kexechibd.lab.qemu import QEMU


def _qemu_problem() -> str | None:
    reason = qemu_available()
    if reason:
        return reason
    probe = subprocess.run(
        [
            QEMU,
            "-machine",
            "none",
            "-accel",
            "tcg",
            "-display",
            "none",
            "-S",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-qmp",
            "stdio",
        ],
        input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"{QEMU} cannot start: {probe.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def lab() -> Path:
    """The lab bzImage; skips the test when QEMU cannot run here."""
    reason = _qemu_problem()
    if reason:
        pytest.skip(reason=f"kernel lab unavailable: {reason}")
    return lab_kernel()


@pytest.fixture(scope="session")
def debian_booted(lab: Path) -> GuestResult:
    """One boot of the Debian guest for the tests that only look at it:
    guest/debian/boot-check.sh (tests/lab/test_debian.py), then
    logind-answers.sh (tests/lab/test_logind_guest.py). A boot costs minutes
    under TCG; the answers script changes nothing the boot check reads."""
    from kexechibd.lab import debian

    workdir = new_workdir("debian-boot")
    disk = debian.debian_disk(workdir, lab)
    lib = f"/{debian.GUEST_LIB}"
    command = f"sh {lib}/boot-check.sh\nsh {lib}/logind-answers.sh\n"
    return run_guest(debian.debian_guest(disk, command, kernel=lab, timeout=900), workdir / "qemu")


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory the guest sees at the same path; removed when the test passed."""
    path = new_workdir(request.node.name[:40])
    yield path
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
