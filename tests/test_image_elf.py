"""Images and their exports are ELF cores that standard tools read: the real
``readelf`` and pyelftools, without errors or warnings."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from kexechibd.image import ImageReader, ImageWriter, export_elf_core
from kexechibd.image import format as fmt
from tests.image_support import (
    PAGE_MAP,
    PS,
    VMCOREINFO,
    make_meta,
    open_image,
    page,
    read_pages,
    sample_image,
    write_image,
)

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf")


def readelf(*args: str | Path) -> str:
    done = subprocess.run(["readelf", "-W", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # readelf reports problems as warnings on stderr
    return done.stdout


def saved(tmp_path: Path, data: bytes, name: str = "image") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def export(image: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "core"
    with path.open("wb") as out:
        export_elf_core(open_image(image), out)
    return path


def test_readelf_sees_an_x86_64_core_file(tmp_path: Path) -> None:
    out = readelf("-h", saved(tmp_path, sample_image()[0]))
    assert re.search(r"Type:\s+CORE", out)
    assert re.search(r"Machine:\s+Advanced Micro Devices X86-64", out)
    assert re.search(r"Data:\s+2's complement, little endian", out)


def test_readelf_lists_the_metadata_notes_and_vmcoreinfo(tmp_path: Path) -> None:
    out = readelf("-n", saved(tmp_path, sample_image()[0]))
    owners = re.findall(r"^\s+(KEXECHIB|VMCOREINFO)\s+0x", out, re.M)
    assert owners == ["KEXECHIB"] * 4 + ["VMCOREINFO", "KEXECHIB"]
    assert VMCOREINFO[:9].hex(" ") in out


def test_readelf_reads_an_image_without_vmcoreinfo_or_page_map(tmp_path: Path) -> None:
    image, _ = write_image([(0, page(0))], make_meta(vmcoreinfo=b"", page_map=b""))
    out = readelf("-n", saved(tmp_path, image))
    assert re.findall(r"^\s+(\S+)\s+0x", out, re.M) == ["KEXECHIB"] * 4


def test_pyelftools_reads_the_image_header_and_notes(tmp_path: Path) -> None:
    with saved(tmp_path, sample_image()[0]).open("rb") as f:
        elf = ELFFile(f)
        assert (elf["e_type"], elf["e_machine"], elf.little_endian) == (
            "ET_CORE",
            "EM_X86_64",
            True,
        )
        (seg,) = elf.iter_segments()
        notes = {(n["n_name"], n["n_type"]): n["n_descdata"] for n in seg.iter_notes()}
    assert notes[("VMCOREINFO", 0)] == VMCOREINFO
    assert notes[("KEXECHIB", fmt.NT_PAGE_MAP)] == PAGE_MAP
    assert b"kernel_release=6.1.0-kexechib\n" in notes[("KEXECHIB", fmt.NT_IDENTITY)]
    assert notes[("KEXECHIB", fmt.NT_FORMAT)][:8] == b"KXHIBIMG"


# -- export ---------------------------------------------------------------------


def test_export_has_one_pt_load_per_run(tmp_path: Path) -> None:
    image, summary = sample_image()
    out = readelf("-l", export(image, tmp_path))
    loads = re.findall(r"^\s+LOAD\s+(0x\S+) (0x\S+) (0x\S+) (0x\S+) (0x\S+)", out, re.M)
    runs = list(open_image(image).covered())
    assert len(loads) == len(runs) == summary.runs
    for (_off, vaddr, paddr, filesz, memsz), run in zip(loads, runs, strict=True):
        assert int(paddr, 16) == int(vaddr, 16) == run.pfn * PS
        assert int(memsz, 16) == run.npages * PS
        assert int(filesz, 16) == (0 if run.zero else run.npages * PS)
    assert re.search(r"^\s+NOTE\s", out, re.M)


def test_export_contents_match_the_image(tmp_path: Path) -> None:
    image, _ = sample_image()
    data, zero = read_pages(open_image(image))
    with export(image, tmp_path).open("rb") as f:
        elf = ELFFile(f)
        got: dict[int, bytes] = {}
        got_zero: set[int] = set()
        for seg in elf.iter_segments("PT_LOAD"):
            first = seg["p_paddr"] // PS
            if seg["p_filesz"] == 0:
                got_zero.update(range(first, first + seg["p_memsz"] // PS))
                continue
            blob = seg.data()
            got.update((first + i, blob[i * PS : (i + 1) * PS]) for i in range(len(blob) // PS))
    assert got == data and got_zero == zero


def test_export_carries_vmcoreinfo_for_crash(tmp_path: Path) -> None:
    image, _ = sample_image()
    with export(image, tmp_path).open("rb") as f:
        (note_seg,) = ELFFile(f).iter_segments("PT_NOTE")
        notes = {n["n_name"]: n["n_descdata"] for n in note_seg.iter_notes()}
    assert notes["VMCOREINFO"] == VMCOREINFO
    readelf("-n", tmp_path / "core")


def test_export_of_more_than_65535_runs_uses_pn_xnum(tmp_path: Path) -> None:
    n = 70_000
    out = io.BytesIO()
    with ImageWriter(out, make_meta(window=()), threads=0) as w:
        for i in range(n):  # one-page zero runs with gaps: cheap to make, many headers
            w.add(2 * i * PS, bytes(PS))
        w.add(2 * n * PS, page(1))
        w.commit()
    path = tmp_path / "core"
    with path.open("wb") as f:
        export_elf_core(ImageReader(out), f)
    assert f"There are {n + 2} program headers" in readelf("-l", path)
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf["e_phnum"] == fmt.PN_XNUM and elf.num_segments() == n + 2
        last = elf.get_segment(n + 1)
        assert last["p_paddr"] == 2 * n * PS and last.data() == page(1)


def test_export_streams_to_a_pipe(tmp_path: Path) -> None:
    image, _ = sample_image()
    piped = tmp_path / "piped"
    with piped.open("wb") as sink:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=sink)
        assert cat.stdin is not None
        export_elf_core(open_image(image), cat.stdin)  # not seekable
        cat.stdin.close()
        assert cat.wait() == 0
    assert piped.read_bytes() == export(image, tmp_path).read_bytes()
