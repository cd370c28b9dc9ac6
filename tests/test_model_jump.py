"""Kexec jumps on the model, through the Kernel protocol only: A loads B with
our staged, preserve-context load and our purgatory; B boots confined to its
window with kexec_jump_back_entry= on its command line; the jump-back helper
returns to A; A re-enters B; each kernel's memory is intact after every switch."""

from __future__ import annotations

import random

from kexechibd import cmdline
from kexechibd.cycle import kexec_ops
from kexechibd.cycle.params import read_params
from kexechibd.kernel import abi
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import populate
from kexechibd.operation import Role
from kexechibd.role import ImageFinding, ImageVerdict, detect_role
from tests.model_cycle import (
    WINDOW_SIZE,
    WINDOW_START,
    Jump,
    load_b,
    owned_by_image,
    ram_digest,
    wait_for_kernel,
)

NO_IMAGE = ImageFinding(ImageVerdict.ABSENT)


def test_round_trips_keep_both_kernels_memory(machine: Machine, kernel: ModelKernel) -> None:
    a = kernel
    populate(a, pages=3000, seed=1)
    params = load_b(a)
    a_pages = owned_by_image(a)
    a_digest = ram_digest(a, a_pages)

    jump = Jump(a)
    b = wait_for_kernel(machine, a.id)
    jbe = cmdline.jump_back_entry(b.cmdline())
    assert jbe is not None
    role = detect_role(b.cmdline(), NO_IMAGE, "")
    assert (role.role, role.jump_back_entry) == (Role.SAVER, jbe)
    assert read_params(b.rootfs())[0] == params
    assert all(
        (r.start >= WINDOW_START and r.end <= WINDOW_START + WINDOW_SIZE) or r.end <= 0xA0000
        for r in b.record.usable
    )

    rng = random.Random(7)
    b_pages = b.allocate(64)
    for pfn in b_pages:
        b.memory.write(pfn << abi.PAGE_SHIFT, rng.randbytes(abi.PAGE_SIZE))
    b_content = {pfn: b.memory.read(pfn << abi.PAGE_SHIFT, abi.PAGE_SIZE) for pfn in b_pages}
    kexec_ops.load_jump_back_helper(b, jbe)

    for round_trip in range(2):
        b_jump = Jump(b)
        assert jump.wait() == 0, f"A's reboot_kexec after round trip {round_trip}"
        assert ram_digest(a, a_pages) == a_digest
        jump = Jump(a)  # A → B: the image's entry is now B's re-entry point
        assert b_jump.wait() == 0
        assert all(
            b.memory.read(p << abi.PAGE_SHIFT, abi.PAGE_SIZE) == c for p, c in b_content.items()
        )
    b_jump = Jump(b)
    assert jump.wait() == 0
    assert ram_digest(a, a_pages) == a_digest
    assert machine.running == a.id
    b.close()
