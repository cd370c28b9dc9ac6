"""The kernel interface module: flag values, struct layout, page-map codec."""

import errno

import pytest

from kexechibd.kernel import abi


def test_stage_values_are_clear_of_mainline_flags_and_arch_mask():
    assert abi.KEXEC_STAGE_MASK & (abi.KEXEC_ARCH_MASK | 0x1F) == 0
    assert {s.value for s in abi.Stage} == {0, 0x100, 0x200, 0x300}


def test_segment_struct_is_32_bytes():
    assert abi.KEXEC_SEGMENT.size == 32


def test_page_map_round_trips():
    runs = list(abi.coalesce_page_map([(10, 100), (11, 101), (12, 7), (20, 8)]))
    assert runs == [abi.PageMapRun(10, 100, 2), abi.PageMapRun(12, 7, 1), abi.PageMapRun(20, 8, 1)]
    assert abi.decode_page_map(abi.encode_page_map(runs)) == runs


def test_empty_page_map_file_is_an_empty_map():
    assert abi.decode_page_map(b"") == []


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"KXPGMAP1", "truncated"),
        (b"XXPGMAP1" + bytes(8), "magic"),
        (abi.PGMAP_HEADER.pack(abi.PGMAP_MAGIC, 4096, 0) + bytes(5), "multiple"),
        (abi.encode_page_map([abi.PageMapRun(5, 1, 2), abi.PageMapRun(6, 9, 1)]), "unsorted"),
    ],
)
def test_malformed_page_map_is_refused_precisely(data, fragment):
    with pytest.raises(abi.PageMapFormatError, match=fragment):
        abi.decode_page_map(data)


def test_einval_on_preserve_context_names_kexec_jump():
    err = abi.kexec_load_error(errno.EINVAL, abi.load_flags(preserve_context=True), 3)
    assert isinstance(err, abi.KexecInvalid)
    assert "CONFIG_KEXEC_JUMP" in str(err)


def test_eperm_names_lockdown_and_capability():
    err = abi.kexec_load_error(errno.EPERM, 0, 1)
    assert isinstance(err, abi.KexecNotPermitted)
    assert "CAP_SYS_BOOT" in str(err) and "lockdown" in str(err)
