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


def _params(image: bootproto.BzImage, acpi_rsdp: int | None) -> bytearray:
    return bootproto.build_boot_params(
        image,
        kernel_addr=0x30000000,
        cmdline_addr=0x31000000,
        initrd_addr=0x32000000,
        initrd_size=0x1000,
        e820=[MemoryRange(0x100000, 0x20000000)],
        acpi_rsdp=acpi_rsdp,
    )


def test_boot_params_carry_the_acpi_rsdp_at_0x70() -> None:
    # On a UEFI machine the started kernel finds ACPI only there.
    raw = _params(bootproto.BzImage.parse(make_bzimage()), 0x7FB7E014)
    assert int.from_bytes(raw[0x70:0x78], "little") == 0x7FB7E014
    assert bootproto.BootParams.parse(raw).acpi_rsdp == 0x7FB7E014


def test_boot_params_without_an_rsdp_leave_it_zero() -> None:
    raw = _params(bootproto.BzImage.parse(make_bzimage()), None)
    assert bootproto.BootParams.parse(raw).acpi_rsdp == 0


def test_boot_params_carry_no_efi_information() -> None:
    # efi_info (0x1c0-0x1df): B must not call runtime services set up for A.
    raw = _params(bootproto.BzImage.parse(make_bzimage()), 0x7FB7E014)
    assert raw[0x1C0:0x1E0] == bytes(32)


def test_kernels_before_protocol_2_14_get_no_rsdp() -> None:
    old = bytearray(make_bzimage())
    old[bootproto.OFF_VERSION : bootproto.OFF_VERSION + 2] = (0x020D).to_bytes(2, "little")
    raw = _params(bootproto.BzImage.parse(bytes(old)), 0x7FB7E014)
    assert raw[0x70:0x78] == bytes(8)
