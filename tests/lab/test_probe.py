"""What kexechibd finds a real kernel supports, and how a real kernel answers
the conformance vectors, checked in lab guests that run the daemon's own code
(the guest userspace of kexechibd/lab/userspace.py: Debian's python3 and this
checkout's kexechibd in the initramfs).

One guest per kernel runs kexechibd/lab/guest/report.sh: the Linux backend's
capability probe, `kexechibctl status` through a real system bus and daemon,
and the conformance vectors of tests/conformance (DESIGN §2) with the real
`kexec_load`. The vectors' errnos must be those the machine model gives with
the same capabilities.

- The lab kernel (6.12 + the kexec-jump fix + the staged-load patch series)
  has everything: the probe and the daemon find nothing missing. (Its answers
  to the conformance vectors, maps included, are checked against the model in
  test_staged_patch.py.)
- Debian's stock kernel has no CONFIG_KEXEC_JUMP and no /proc/config.gz: the
  probe asks the kernel itself (a preserve-context load that fails before it
  loads anything) and must name exactly that.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult, GuestSpec, new_workdir, run_guest
from kexechibd.lab.debs import stock_kernel
from kexechibd.lab.userspace import GUEST_LIB, lab_userspace
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Capabilities, Machine
from tests.conformance.vectors import VECTORS, applicable, choose_base, features_of, run_vector
from tests.sizes import MIB

pytestmark = pytest.mark.lab

REPORT = f"kexechib.lab.root=none kexechib.lab.run=/{GUEST_LIB}/report.sh kexechib.enable_kexec=1"

NO_JUMP = "no CONFIG_KEXEC_JUMP (preserve-context loads are refused)"
NO_STAGED = "no staged-load support (/proc/kexec_pgmap missing; needs the kexechib patch)"


def _report(kernel: Path, name: str, request: pytest.FixtureRequest) -> Iterator[GuestResult]:
    workdir = new_workdir(name)
    failed = request.session.testsfailed
    result = run_guest(
        GuestSpec(
            command="",
            kernel=kernel,
            initrd=lab_userspace(),
            append=f"{REPORT} kexechib.lab.vectors=1",
            timeout=240,
            name=name,
        ),
        workdir,
    )
    yield result
    if request.session.testsfailed == failed:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def lab_report(lab: Path, request: pytest.FixtureRequest) -> Iterator[GuestResult]:
    yield from _report(lab, "report-lab", request)


@pytest.fixture(scope="module")
def stock_report(lab: Path, request: pytest.FixtureRequest) -> Iterator[GuestResult]:
    yield from _report(stock_kernel() / "vmlinuz", "report-stock", request)


def _probe(result: GuestResult) -> dict[str, object]:
    assert result.exit_status == 0, result.describe()
    records = result.records("probe")
    assert len(records) == 1 and isinstance(records[0], dict), result.describe()
    return records[0]


def _support_line(result: GuestResult) -> str:
    lines = [
        text.split(":", 1)[1].strip()
        for text in result.output.splitlines()
        if text.startswith("Support:")
    ]
    assert len(lines) == 1, result.describe()
    return lines[0]


def _vectors(result: GuestResult) -> dict[str, dict[str, object]]:
    assert result.exit_status == 0 and result.marker("vectors-done"), result.describe()
    records = result.records("vector")
    out = {}
    for record in records:
        assert isinstance(record, dict)
        out[str(record["name"])] = record
    return out


def _model_errnos(capabilities: Capabilities, tmp: Path) -> dict[str, list[int]]:
    machine = Machine.create(tmp / "m", ram=256 * MIB, capabilities=capabilities)
    machine.power_on()
    kernel = ModelKernel(machine)
    try:
        features = features_of(kernel)
        base = choose_base(kernel)
        return {
            v.name: run_vector(kernel, v, base, staged="staged" in features).errnos
            for v in VECTORS
            if applicable(v, features)
        }
    finally:
        kernel.close()
        machine.close()


# ------------------------------------------------------------------ the lab kernel


def test_probe_on_the_lab_kernel_finds_full_support(lab_report: GuestResult) -> None:
    probe = _probe(lab_report)
    assert probe["kexec_jump"] is True and probe["can_jump"] is True, probe
    assert probe["staged_load"] is True, probe
    assert probe["notes"] == ["CONFIG_KEXEC_JUMP read from the kernel configuration"]
    assert probe["missing"] == [], probe


def test_daemon_on_the_lab_kernel_reports_support(lab_report: GuestResult) -> None:
    assert _support_line(lab_report) == "supported"


def test_lab_kernel_meets_every_vector(lab_report: GuestResult) -> None:
    failed = {name: r["problems"] for name, r in _vectors(lab_report).items() if r["problems"]}
    assert failed == {}


# ------------------------------------------------------------------ Debian's stock kernel


def test_probe_on_the_stock_kernel_names_exactly_the_missing_kexec_jump(
    stock_report: GuestResult,
) -> None:
    probe = _probe(stock_report)
    assert probe["kexec"] is True and probe["kexec_jump"] is False, probe
    assert probe["notes"] == ["CONFIG_KEXEC_JUMP probed with a preserve-context kexec_load"]
    assert probe["missing"] == [NO_JUMP, NO_STAGED], probe


def test_daemon_on_the_stock_kernel_reports_no_kexec_jump(stock_report: GuestResult) -> None:
    assert _support_line(stock_report) == f"{NO_JUMP}; {NO_STAGED}"


def test_stock_kernel_gives_the_models_errnos_without_kexec_jump(
    stock_report: GuestResult, tmp_path: Path
) -> None:
    guest = _vectors(stock_report)
    model = _model_errnos(Capabilities(staged_load=False, kexec_jump=False), tmp_path)
    assert {name: r["errnos"] for name, r in guest.items()} == model
