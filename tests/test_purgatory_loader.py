"""The purgatory loader: layout, relocations, variables, and refusals of
objects it cannot use.  Synthetic objects are assembled with GNU as."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from kexechibd import purgatory as pg
from kexechibd.kernel.abi import PAGE_SIZE, Segment
from kexechibd.purgatory import EntryRegs, PurgatoryError, build_purgatory
from tests.purgatory_support import (
    PURGATORY_OBJECT,
    assemble,
    link_exec,
    purgatory_object,
    random_segment,
)

BASE = 0x100000
HASHED = [Segment(b"kernel bytes", 0x1000000, 0x2000), Segment(b"", 0x1100000, 0x1000)]

# The variables every purgatory defines, with the sizes the loader writes.
VARIABLES = {
    "sha256_regions": 256,
    "sha256_digest": 32,
    "entry64_regs": 136,
    "cmdline_end": 8,
    "cmdline_room": 8,
    "jump_back_entry": 8,
}


def fake_purgatory(*, sizes=None, omit=(), bss=(), text="", data="") -> bytes:
    """A minimal purgatory-shaped object: the variables, an entry, a stack."""
    sizes = {**VARIABLES, **(sizes or {})}
    lines = [".text", ".globl purgatory_start", "purgatory_start:", "ret", text, ".data", data]
    for name, size in sizes.items():
        if name in omit or name in bss:
            continue
        lines += [f".globl {name}", f".type {name}, @object", f"{name}: .zero {size}",
                  f".size {name}, {size}"]  # fmt: skip
    lines += [".bss", ".balign 4096", ".zero 4096", ".globl stack_end", "stack_end:"]
    for name in bss:
        lines += [f".globl {name}", f"{name}: .zero {sizes[name]}", f".size {name}, {sizes[name]}"]
    return assemble("\n".join(lines) + "\n")


def build(obj: bytes | Path, **kwargs) -> pg.Purgatory:
    args = dict(
        base=BASE,
        hashed=HASHED,
        regs=EntryRegs(rip=0x1000200, rsi=0x10000),
        cmdline_end=0x11020,
        cmdline_room=64,
    )
    args.update(kwargs)
    return build_purgatory(obj, **args)


def variable(p: pg.Purgatory, name: str, size: int) -> bytes:
    at = p.symbols[name] - p.segment.mem
    return bytes(p.segment.buf[at : at + size])


# ---------------------------------------------------------------- the real one


def test_real_purgatory_is_one_page_aligned_segment_at_base():
    p = build(purgatory_object())
    assert p.segment.mem == BASE
    assert p.segment.memsz % PAGE_SIZE == 0
    assert p.segment.bufsz <= p.segment.memsz
    assert BASE <= p.entry < p.segment.end


def test_entry_is_purgatory_start_and_symbols_are_inside_the_segment():
    p = build(purgatory_object())
    assert p.entry == p.symbols["purgatory_start"]
    for name in [*VARIABLES, "stack_end"]:
        assert BASE <= p.symbols[name] <= p.segment.end, name


def test_stack_is_zero_fill_beyond_the_buffer():
    # The stack is .bss: it costs memsz, not bytes in the buffer.
    p = build(purgatory_object())
    assert p.symbols["stack_end"] > BASE + p.segment.bufsz


def test_digest_covers_buffers_and_zero_padding_in_order():
    p = build(purgatory_object())
    expected = hashlib.sha256(b"kernel bytes" + bytes(0x2000 - 12) + bytes(0x1000)).digest()
    assert variable(p, "sha256_digest", 32) == expected


def test_regions_list_each_hashed_segment_then_zeros():
    p = build(purgatory_object())
    regions = variable(p, "sha256_regions", 256)
    assert regions[:32] == struct.pack("<QQQQ", 0x1000000, 0x2000, 0x1100000, 0x1000)
    assert regions[32:] == bytes(224)


def test_entry_registers_are_packed_in_order_and_rsp_zero_is_the_stack():
    regs = EntryRegs(*range(1, 18))
    p = build(purgatory_object(), regs=regs)
    assert struct.unpack("<17Q", variable(p, "entry64_regs", 136)) == tuple(range(1, 18))
    p = build(purgatory_object(), regs=EntryRegs(rip=5))
    values = struct.unpack("<17Q", variable(p, "entry64_regs", 136))
    assert values[6] == p.symbols["stack_end"] and values[16] == 5


def test_command_line_end_and_room_are_set():
    p = build(purgatory_object(), cmdline_end=0x12345, cmdline_room=80)
    assert variable(p, "cmdline_end", 8) == struct.pack("<Q", 0x12345)
    assert variable(p, "cmdline_room", 8) == struct.pack("<Q", 80)


def test_path_and_bytes_give_the_same_purgatory():
    assert build(PURGATORY_OBJECT) == build(purgatory_object())


def test_purgatory_code_uses_no_sse_or_x87():
    import subprocess

    asm = subprocess.run(
        ["objdump", "-d", str(PURGATORY_OBJECT)], capture_output=True, text=True, check=True
    ).stdout
    for marker in ("%xmm", "%ymm", "%mm", "%st"):
        assert marker not in asm


# ---------------------------------------------------------------- relocations

RELOC_SOURCE = """
.text
.globl func
func: ret
.data
.balign 8
.globl target
target: .quad 0
.globl r64
r64: .reloc ., R_X86_64_64, target+8
     .quad 0
.globl r32
r32: .reloc ., R_X86_64_32, target+4
     .long 0
.globl r32s
r32s: .reloc ., R_X86_64_32S, target-4
     .long 0
.globl pc32
pc32: .reloc ., R_X86_64_PC32, target-4
     .long 0
.globl plt32
plt32: .reloc ., R_X86_64_PLT32, func-4
     .long 0
.globl none
none: .reloc ., R_X86_64_NONE, target
     .long 0x5a5a5a5a
"""


def test_each_supported_relocation_is_applied():
    p = build(fake_purgatory(data=RELOC_SOURCE))
    s = p.symbols

    def word(name: str, fmt: str) -> int:
        at = s[name] - BASE
        return int(struct.unpack_from(fmt, p.segment.buf, at)[0])

    assert word("r64", "<Q") == s["target"] + 8
    assert word("r32", "<I") == s["target"] + 4
    assert word("r32s", "<i") == s["target"] - 4
    assert word("pc32", "<i") == s["target"] - 4 - s["pc32"]
    assert word("plt32", "<i") == s["func"] - 4 - s["plt32"]
    assert word("none", "<I") == 0x5A5A5A5A


def test_relocations_follow_the_base():
    low, high = (build(fake_purgatory(data=RELOC_SOURCE), base=b) for b in (0x100000, 0x7F000000))
    delta = 0x7F000000 - 0x100000
    assert high.symbols["target"] == low.symbols["target"] + delta
    r64 = low.symbols["r64"] - 0x100000
    assert (
        struct.unpack_from("<Q", high.segment.buf, r64)[0]
        == struct.unpack_from("<Q", low.segment.buf, r64)[0] + delta
    )


@pytest.mark.parametrize(
    "rtype, base",
    [("R_X86_64_32", 0x100000000), ("R_X86_64_32S", 0x80000000)],
)
def test_absolute_32_bit_relocation_out_of_range_is_refused(rtype, base):
    data = f".globl t\nt: .quad 0\n.reloc ., {rtype}, t\n.long 0\n"
    with pytest.raises(PurgatoryError, match=f"{rtype}.*overflows.*load the purgatory lower"):
        build(fake_purgatory(data=data), base=base, cmdline_end=0x11020)


def test_unknown_relocation_is_refused_naming_type_and_section():
    text = "movq target@GOTPCREL(%rip), %rax\n.data\ntarget: .quad 0\n"
    with pytest.raises(PurgatoryError, match=r"R_X86_64_REX_GOTPCRELX.*\.rela\.text"):
        build(fake_purgatory(text=text))


def test_unknown_relocation_in_data_names_that_section():
    data = "t: .quad 0\n.reloc ., R_X86_64_GLOB_DAT, t\n.quad 0\n"
    with pytest.raises(PurgatoryError, match=r"R_X86_64_GLOB_DAT \(type 6\).*\.rela\.data"):
        build(fake_purgatory(data=data))


# ---------------------------------------------------------------- refusals


def test_wrong_machine_is_refused():
    obj = bytearray(purgatory_object())
    obj[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    with pytest.raises(PurgatoryError, match="EM_AARCH64, not EM_X86_64"):
        build(bytes(obj))


def test_32_bit_object_is_refused():
    with pytest.raises(PurgatoryError, match="EM_386"):
        build(assemble(".text\nret\n", flags=("--32",)))


def test_executable_instead_of_relocatable_is_refused():
    with pytest.raises(PurgatoryError, match="ET_EXEC"):
        build(link_exec(".globl _start\n_start: ret\n", base=0x400000))


def test_not_an_elf_file_is_refused():
    with pytest.raises(PurgatoryError, match="not a valid ELF"):
        build(b"#!/bin/sh\necho not an object\n" * 4)


def test_undefined_symbol_is_refused_by_name():
    with pytest.raises(PurgatoryError, match="undefined symbol 'memcpy'"):
        build(fake_purgatory(text="call memcpy"))


@pytest.mark.parametrize("name, size", [("cmdline_end", 4), ("sha256_digest", 64)])
def test_symbol_size_mismatch_is_refused(name, size):
    expected = VARIABLES[name]
    with pytest.raises(PurgatoryError, match=f"'{name}' is {size} bytes.*writes {expected}"):
        build(fake_purgatory(sizes={name: size}))


def test_missing_variable_is_refused_by_name():
    with pytest.raises(PurgatoryError, match="no global symbol 'cmdline_room'"):
        build(fake_purgatory(omit=("cmdline_room",)))


def test_variable_without_bytes_is_refused():
    with pytest.raises(PurgatoryError, match=r"'cmdline_room' has no bytes.*\.data"):
        build(fake_purgatory(bss=("cmdline_room",)))


def test_fake_purgatory_is_accepted():
    # The refusals above differ from an acceptable object only in what they name.
    p = build(fake_purgatory())
    assert p.entry == BASE


# ---------------------------------------------------------------- arguments


def test_unaligned_base_is_refused():
    with pytest.raises(ValueError, match="page-aligned"):
        build(purgatory_object(), base=BASE + 8)


def test_more_regions_than_purgatory_has_are_refused():
    hashed = [random_segment(0x1000000 + i * 0x1000, 1, 0) for i in range(17)]
    with pytest.raises(ValueError, match="at most 16 segments, 17 given"):
        build(purgatory_object(), hashed=hashed)


def test_too_little_command_line_room_is_refused():
    with pytest.raises(ValueError, match="reserve at least 42"):
        build(purgatory_object(), cmdline_room=41)


def test_hashed_segment_overlapping_the_purgatory_is_refused():
    with pytest.raises(ValueError, match="overlaps the purgatory"):
        build(purgatory_object(), hashed=[Segment(b"x", BASE + 0x1000, 0x1000)])


def test_command_line_room_overlapping_the_purgatory_is_refused():
    with pytest.raises(ValueError, match="overlaps the purgatory"):
        build(purgatory_object(), cmdline_end=BASE - 10)


def test_register_values_must_fit_64_bits():
    with pytest.raises(ValueError, match="rip"):
        EntryRegs(rip=1 << 64)
    with pytest.raises(ValueError, match="rax"):
        EntryRegs(rax=-1)


# ---------------------------------------------------------------- where it is


def test_environment_names_the_purgatory(monkeypatch, tmp_path):
    obj = tmp_path / "p.ro"
    obj.write_bytes(b"x")
    monkeypatch.setenv(pg.ENV_PURGATORY, str(obj))
    assert pg.default_purgatory_path() == obj


def test_environment_naming_a_missing_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(pg.ENV_PURGATORY, str(tmp_path / "nope.ro"))
    with pytest.raises(FileNotFoundError, match="KEXECHIB_PURGATORY"):
        pg.default_purgatory_path()


def test_a_wheels_package_data_comes_before_the_installed_purgatory(monkeypatch, tmp_path):
    """A wheel installed next to the Debian package uses the object built
    with its own code."""
    packaged, installed = tmp_path / "packaged.ro", tmp_path / "installed.ro"
    packaged.write_bytes(b"x")
    installed.write_bytes(b"x")
    monkeypatch.delenv(pg.ENV_PURGATORY, raising=False)
    monkeypatch.setattr(pg, "PACKAGED_PURGATORY", packaged)
    monkeypatch.setattr(pg, "INSTALLED_PURGATORY", installed)
    assert pg.default_purgatory_path() == packaged


def test_installed_purgatory_comes_before_the_source_tree(monkeypatch, tmp_path):
    installed = tmp_path / "installed.ro"
    installed.write_bytes(b"x")
    monkeypatch.delenv(pg.ENV_PURGATORY, raising=False)
    monkeypatch.setattr(pg, "PACKAGED_PURGATORY", tmp_path / "none.ro")
    monkeypatch.setattr(pg, "INSTALLED_PURGATORY", installed)
    assert pg.default_purgatory_path() == installed


def test_source_tree_purgatory_is_the_fallback(monkeypatch, tmp_path):
    monkeypatch.delenv(pg.ENV_PURGATORY, raising=False)
    monkeypatch.setattr(pg, "PACKAGED_PURGATORY", tmp_path / "none.ro")
    monkeypatch.setattr(pg, "INSTALLED_PURGATORY", tmp_path / "none.ro")
    assert pg.default_purgatory_path() == PURGATORY_OBJECT


def test_no_purgatory_anywhere_says_to_build_it(monkeypatch, tmp_path):
    monkeypatch.delenv(pg.ENV_PURGATORY, raising=False)
    monkeypatch.setattr(pg, "PACKAGED_PURGATORY", tmp_path / "p.ro")
    monkeypatch.setattr(pg, "INSTALLED_PURGATORY", tmp_path / "a.ro")
    monkeypatch.setattr(pg, "SOURCE_PURGATORY", tmp_path / "b.ro")
    with pytest.raises(FileNotFoundError, match="make purgatory"):
        pg.default_purgatory_path()
