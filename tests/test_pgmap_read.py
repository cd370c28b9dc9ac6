"""Reading /proc/kexec_pgmap (kernel patch 0014, docs/kernel.md): who may open
it, and what a reader does with the errors of a file produced as it is read
(Documentation/ABI/testing/procfs-kexec_pgmap in the patch)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kexechibd.kernel import abi, linux
from kexechibd.model.kernel import ModelKernel
from tests.model_support import BASE, START, P


def _pgmap_errno(kernel: ModelKernel) -> int:
    try:
        kernel.kexec_pgmap()
    except abi.KernelError as exc:
        return exc.errno
    return 0


@pytest.mark.parametrize(
    "caps",
    [{"cap_sys_boot": False}, {"lockdown": "integrity"}, {"lockdown": "confidentiality"}],
    ids=["no-cap-sys-boot", "lockdown-integrity", "lockdown-confidentiality"],
)
def test_the_model_refuses_the_page_map_as_it_refuses_kexec_load(
    kernel: ModelKernel, caps: dict[str, object]
) -> None:
    kernel.machine.set_capabilities(**caps)
    assert _pgmap_errno(kernel) == errno.EPERM


def test_the_model_reads_no_page_map_while_the_kexec_lock_is_held(kernel: ModelKernel) -> None:
    kernel.kexec_load(0, [abi.Segment(b"x" * P, BASE, P)], START)
    assert kernel._kexec_lock.acquire(blocking=False)
    try:
        assert _pgmap_errno(kernel) == errno.EBUSY
    finally:
        kernel._kexec_lock.release()
    assert len(abi.decode_page_map(kernel.kexec_pgmap())) == 1


def _linux_with_pgmap_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcomes: list[bytes | int]
) -> linux.LinuxKernel:
    """A Linux backend whose pgmap reads give ``outcomes`` in turn (an int is an
    errno).  Mocked: a host file cannot fail with ESTALE or EBUSY."""
    proc = tmp_path / "proc"
    proc.mkdir()
    pgmap = proc / "kexec_pgmap"
    pgmap.write_bytes(b"")
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self != pgmap:
            return real_read_bytes(self)
        outcome = outcomes.pop(0)
        if isinstance(outcome, int):
            raise OSError(outcome, "mocked")
        return outcome

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return linux.LinuxKernel(proc=proc, sys=tmp_path / "sys")


def test_the_linux_reader_reads_again_after_estale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = abi.encode_page_map([abi.PageMapRun(16, 32, 1)])
    kernel = _linux_with_pgmap_reads(tmp_path, monkeypatch, [errno.ESTALE, data])
    assert kernel.kexec_pgmap() == data


def test_the_linux_reader_gives_up_after_estale_on_every_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[bytes | int] = [errno.ESTALE] * abi.PGMAP_READ_ATTEMPTS
    kernel = _linux_with_pgmap_reads(tmp_path, monkeypatch, outcomes)
    with pytest.raises(abi.PageMapUnavailable) as raised:
        kernel.kexec_pgmap()
    assert raised.value.errno == errno.ESTALE


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EPERM, errno.ENOENT])
def test_the_linux_reader_reports_other_errors_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    kernel = _linux_with_pgmap_reads(tmp_path, monkeypatch, [err])
    with pytest.raises(abi.PageMapUnavailable) as raised:
        kernel.kexec_pgmap()
    assert raised.value.errno == err
