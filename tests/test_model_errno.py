"""The model's kexec_load errno order where the conformance vectors cannot
look: the kexec lock (EBUSY), permissions, and crash loads on a machine
without ``crashkernel=`` (kernel/kexec.c, kernel/kexec_core.c; DESIGN §2.1,
§2.2).  A real kernel checks permission, flags, segment count and
architecture before it takes the kexec lock, so those errors win over EBUSY."""

from __future__ import annotations

import errno

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import Segment
from kexechibd.model.kernel import ModelKernel
from tests.model_support import BASE, FINAL, FULL, MID, START, P

CRASH = FULL | abi.KEXEC_ON_CRASH


def _errno(kernel: ModelKernel, segments: list[Segment], flags: int, entry: int = 0) -> int:
    try:
        kernel.kexec_load(entry, segments, flags)
    except abi.KernelError as exc:
        return exc.errno
    return 0


def _page(offset: int = 0) -> list[Segment]:
    return [Segment(b"x" * P, BASE + offset * P, P)]


@pytest.fixture
def busy(kernel: ModelKernel):
    """Another kexec operation holds the kexec lock."""
    assert kernel._kexec_lock.acquire(blocking=False)
    yield kernel
    kernel._kexec_lock.release()


def test_a_valid_load_while_the_lock_is_held_is_ebusy(busy: ModelKernel) -> None:
    assert _errno(busy, _page(), FULL) == errno.EBUSY


def test_bad_flags_beat_ebusy(busy: ModelKernel) -> None:
    assert _errno(busy, _page(), FULL | 0x80) == errno.EINVAL


def test_too_many_segments_beat_ebusy(busy: ModelKernel) -> None:
    segs = [s for i in range(17) for s in _page(2 * i)]
    assert _errno(busy, segs, FULL) == errno.EINVAL


def test_a_foreign_architecture_beats_ebusy(busy: ModelKernel) -> None:
    assert _errno(busy, _page(), abi.load_flags(arch=3 << 16)) == errno.EINVAL


def test_a_bad_staged_call_beats_ebusy(busy: ModelKernel) -> None:
    assert _errno(busy, _page(), MID | abi.KEXEC_ON_CRASH) == errno.EINVAL


def test_eperm_beats_ebusy(busy: ModelKernel) -> None:
    busy.machine.set_capabilities(cap_sys_boot=False)
    assert _errno(busy, _page(), FULL) == errno.EPERM


def test_a_kexec_reboot_without_cap_sys_boot_is_eperm_even_while_the_lock_is_held(
    busy: ModelKernel,
) -> None:
    """reboot(2) checks the capability before kernel_kexec() tries the lock."""
    busy.machine.set_capabilities(cap_sys_boot=False)
    with pytest.raises(abi.KernelError) as raised:
        busy.reboot_kexec()
    assert raised.value.errno == errno.EPERM


def test_a_kexec_reboot_while_the_lock_is_held_is_ebusy(busy: ModelKernel) -> None:
    with pytest.raises(abi.KernelError) as raised:
        busy.reboot_kexec()
    assert raised.value.errno == errno.EBUSY


def test_segment_errors_come_after_the_lock(busy: ModelKernel) -> None:
    """Alignment and overlap are checked by sanity_check_segment_list(), under the lock."""
    assert _errno(busy, [Segment(b"", BASE + 8, P)], FULL) == errno.EBUSY


@pytest.mark.parametrize(
    "caps",
    [{"cap_sys_boot": False}, {"kexec_load_disabled": True}, {"lockdown": "integrity"}],
    ids=["no-cap-sys-boot", "kexec-load-disabled", "lockdown"],
)
def test_eperm_beats_every_einval(kernel: ModelKernel, caps: dict[str, object]) -> None:
    kernel.machine.set_capabilities(**caps)
    segs = [s for i in range(17) for s in _page(2 * i)]
    assert _errno(kernel, segs, FULL | 0x80 | (3 << 16)) == errno.EPERM


def test_enosys_beats_eperm(kernel: ModelKernel) -> None:
    kernel.machine.set_capabilities(kexec=False, cap_sys_boot=False)
    assert _errno(kernel, _page(), FULL) == errno.ENOSYS


def test_eperm_in_a_staged_call_leaves_the_staged_image(kernel: ModelKernel) -> None:
    """An unprivileged caller cannot destroy root's staged image."""
    kernel.kexec_load(0, _page(), START)
    kernel.machine.set_capabilities(cap_sys_boot=False)
    assert _errno(kernel, _page(2), MID) == errno.EPERM
    kernel.machine.set_capabilities(cap_sys_boot=True)
    kernel.kexec_load(0, _page(4), FINAL)
    runs = abi.decode_page_map(kernel.kexec_pgmap())
    assert sum(r.npages for r in runs) == 2


def test_ebusy_in_a_staged_call_leaves_the_staged_image(kernel: ModelKernel) -> None:
    kernel.kexec_load(0, _page(), START)
    assert kernel._kexec_lock.acquire(blocking=False)
    try:
        assert _errno(kernel, _page(2), MID) == errno.EBUSY
    finally:
        kernel._kexec_lock.release()
    kernel.kexec_load(0, [], FINAL)
    assert kernel.kexec_loaded()


def test_the_lock_is_released_after_every_error(kernel: ModelKernel) -> None:
    assert _errno(kernel, _page(), MID) == errno.EINVAL
    assert _errno(kernel, _page(), MID | 0x80) == errno.EINVAL
    assert _errno(kernel, [Segment(b"", BASE + 8, P)], FULL) == errno.EADDRNOTAVAIL
    assert _errno(kernel, _page(), FULL) == 0


# ------------------------------------------------------------ crash loads
# Model machines reserve no crashkernel= region: crashk_res is [0, 0].


def test_a_crash_load_with_an_entry_outside_the_region_is_eaddrnotavail(
    kernel: ModelKernel,
) -> None:
    overlapping = [*_page(), *_page()]
    assert _errno(kernel, overlapping, CRASH, entry=BASE) == errno.EADDRNOTAVAIL


def test_a_crash_load_runs_the_common_segment_checks_first(kernel: ModelKernel) -> None:
    assert _errno(kernel, [*_page(), *_page()], CRASH) == errno.EINVAL
    assert _errno(kernel, [Segment(b"x" * (P + 1), BASE, P)], CRASH) == errno.EINVAL


def test_a_crash_load_outside_the_region_is_eaddrnotavail(kernel: ModelKernel) -> None:
    assert _errno(kernel, _page(), CRASH) == errno.EADDRNOTAVAIL
    assert not kernel.kexec_loaded()


def test_a_crash_unload_succeeds_and_leaves_the_image(kernel: ModelKernel) -> None:
    kernel.kexec_load(0, _page(), FULL)
    assert _errno(kernel, [], CRASH) == 0
    assert kernel.kexec_loaded()


# ------------------------------------------------------------ entry


def test_only_the_final_stage_sets_the_entry(kernel: ModelKernel) -> None:
    kernel.kexec_load(0x1111000, _page(), START)
    kernel.kexec_load(0x2222000, _page(2), MID)
    kernel.kexec_load(BASE + 0x10, [], FINAL)
    loaded = kernel.record.loaded
    assert loaded is not None
    assert loaded.start == BASE + 0x10
    assert loaded.entry_segment == (BASE, BASE + P)
