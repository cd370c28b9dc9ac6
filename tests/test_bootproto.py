"""The x86 boot protocol: parsing bzImages and building boot_params."""

import pytest

from kexechibd import bootproto
from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.model.bzimage import make_bzimage


def test_bzimage_header_is_parsed() -> None:
    image = bootproto.BzImage.parse(make_bzimage(kernel_size=64 << 10, init_size=4 << 20))
    assert image.version == 0x020F
    assert image.xloadflags & bootproto.XLF_KERNEL_64
    assert len(image.kernel) == 64 << 10
    assert image.load_size == 4 << 20
    assert image.kernel_alignment == 2 << 20


def test_non_bzimage_is_refused() -> None:
    with pytest.raises(bootproto.BootProtocolError, match="HdrS"):
        bootproto.BzImage.parse(bytes(4096))


def test_boot_params_carry_what_the_kernel_needs() -> None:
    image = bootproto.BzImage.parse(make_bzimage())
    e820 = [
        MemoryRange(0, 0x9F000),
        MemoryRange(0x9F000, 0x100000, MemoryKind.RESERVED),
        MemoryRange(0x100000, 0x20000000),
    ]
    raw = bootproto.build_boot_params(
        image,
        kernel_addr=0x30000000,
        cmdline_addr=0x31000000,
        initrd_addr=0x1_2000_0000,
        initrd_size=0x5000,
        e820=e820,
    )
    params = bootproto.BootParams.parse(raw)
    assert params.code32_start == 0x30000000
    assert params.entry64 == 0x30000200
    assert params.cmdline_addr == 0x31000000
    assert (params.initrd_addr, params.initrd_size) == (0x1_2000_0000, 0x5000)
    assert list(params.e820) == e820
