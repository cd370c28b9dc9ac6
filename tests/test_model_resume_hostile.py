"""Resuming hostile or foreign images on the model, through the engine as
kernel C's daemon runs it: each is refused with exactly the error the image
reader (or the loader's own check) gives, and C's kernel is left with no
staged image, nothing loaded and every page it lent to the load back."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kexechibd.cycle.engine import KexecEngine
from kexechibd.errors import BadImage
from kexechibd.image import ImageMeta, Run, open_store
from kexechibd.image import format as fmt
from kexechibd.kernel import abi
from kexechibd.kernel.api import KernelGone
from kexechibd.model import bzimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import populate
from kexechibd.operation import CancelToken, HibernateOptions, Mode, ResumeOptions
from tests.image_support import IMAGE_DESC_AT, IMAGE_FIELD, Layout, layout
from tests.model_cycle import Recorder, boot_b_and_save, settings
from tests.sizes import MIB

START, MID = abi.Stage.START, abi.Stage.MID


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machine, Path]]:
    """A machine whose A hibernated: B saved the image and powered off."""
    tmp = tmp_path_factory.mktemp("hostile")
    machine = Machine.create(tmp / "machine", ram=512 * MIB)
    machine.power_on()
    config = settings(tmp)

    async def hibernate() -> None:
        with ModelKernel(machine) as a:
            populate(a, pages=3_000, seed=2)
            engine = KexecEngine(config, a)
            task = asyncio.get_running_loop().create_task(
                engine.hibernate(HibernateOptions(mode=Mode.POWEROFF), Recorder(), CancelToken())
            )
            with pytest.raises(KernelGone):
                await boot_b_and_save(machine, a.id, config, task)

    asyncio.run(hibernate())
    yield machine, config.image_location
    machine.close()


class Restorer:
    """Kernel C, freshly booted on ``machine``, with a log of the
    ``kexec_load`` calls its daemon makes: (stage, number of segments)."""

    def __init__(self, machine: Machine) -> None:
        if machine.power == "on":
            machine.power_off()
        machine.power_on()
        self.kernel = ModelKernel(machine)
        self.free_at_boot = self.kernel.allocator.free_pages
        self.calls: list[tuple[abi.Stage, int]] = []
        load = self.kernel.kexec_load

        def logged(entry: int, segments: Sequence[abi.Segment], flags: int) -> None:
            self.calls.append((abi.Stage.of(flags), len(segments)))
            load(entry, segments, flags)

        self.kernel.kexec_load = logged  # type: ignore[method-assign]

    def resume(self, image: Path, tmp_path: Path, options: ResumeOptions) -> None:
        engine = KexecEngine(settings(tmp_path), self.kernel)
        asyncio.run(engine.resume(image, options, Recorder(), CancelToken()))

    def refusal(self, image: Path, tmp_path: Path, options: ResumeOptions | None = None) -> str:
        with pytest.raises(BadImage) as info:
            self.resume(image, tmp_path, options or ResumeOptions())
        return str(info.value)

    def assert_nothing_left(self) -> None:
        assert not self.kernel.kexec_loaded()
        assert self.kernel.kexec_pgmap() == b"", "a staged image was left behind"
        assert self.kernel.allocator.free_pages == self.free_at_boot, "pages were not given back"
        self.kernel.close()


def refused(machine: Machine, image: Path, tmp_path: Path) -> str:
    """Resume ``image`` on a fresh C; the refusal's message, once the test
    has seen that nothing is left staged or loaded and nothing was loaded
    before the refusal."""
    c = Restorer(machine)
    message = c.refusal(image, tmp_path)
    assert c.calls in ([], [(START, 0)]), "the image was refused only after loading from it"
    c.assert_nothing_left()
    return message


def copy(image: Path, tmp_path: Path) -> Path:
    target = tmp_path / "hostile-image"
    shutil.copyfile(image, target)
    os.chmod(target, 0o600)
    return target


def edit(path: Path, offset: int, value: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
    edit(path, offset, bytes([byte[0] ^ 0x40]))


def shape(image: Path) -> Layout:
    return layout(image.read_bytes())


def meta_of(image: Path) -> ImageMeta:
    with open_store(image).open() as reader:
        return reader.meta


def first_run(image: Path) -> Run:
    with open_store(image).open() as reader:
        return next(iter(reader.covered()))


# -- truncation ---------------------------------------------------------------------


def test_truncation_at_every_chunk_boundary_names_the_missing_chunk(saved, tmp_path) -> None:
    machine, image = saved
    size = image.stat().st_size
    for k, entry in enumerate(shape(image).entries):
        bad = copy(image, tmp_path)
        os.truncate(bad, entry.offset)
        assert refused(machine, bad, tmp_path) == (
            f"image truncated: the file ends at {entry.offset:#x}, the image is {size} bytes; "
            f"chunk {k} (from {entry.offset:#x}) is missing (chunk {k}, offset {entry.offset:#x})"
        )


def test_truncation_inside_a_chunk_says_it_is_incomplete(saved, tmp_path) -> None:
    machine, image = saved
    entry = shape(image).entries[5]
    cut = entry.offset + entry.length // 2
    bad = copy(image, tmp_path)
    os.truncate(bad, cut)
    end = entry.offset + entry.length
    assert refused(machine, bad, tmp_path) == (
        f"image truncated: the file ends at {cut:#x}, the image is {image.stat().st_size} bytes; "
        f"chunk 5 ({entry.offset:#x}..{end:#x}) is incomplete (chunk 5, offset {cut:#x})"
    )


def test_truncation_inside_the_index_says_so(saved, tmp_path) -> None:
    machine, image = saved
    size = image.stat().st_size
    index = shape(image).index_offset
    bad = copy(image, tmp_path)
    os.truncate(bad, index + 1)
    assert refused(machine, bad, tmp_path) == (
        f"image truncated: the file ends at {index + 1:#x}, the image is {size} bytes; "
        f"the index ({index:#x}..{size:#x}) is incomplete (offset {index + 1:#x})"
    )


def test_truncation_inside_the_header_says_how_much_is_missing(saved, tmp_path) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    os.truncate(bad, 300)
    notes_end = shape(image).notes_end
    assert refused(machine, bad, tmp_path) == (
        f"image truncated: 300 bytes, but {notes_end} are needed for the header (offset 0x12c)"
    )


# -- bit flips ----------------------------------------------------------------------


def test_a_flip_in_the_metadata_notes_fails_the_header_checksum(saved, tmp_path) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    flip(bad, IMAGE_DESC_AT + IMAGE_FIELD["chunks"])
    digest_at = shape(image).notes_end - 32
    assert refused(machine, bad, tmp_path) == (
        f"header checksum mismatch: bytes 0..{digest_at:#x} do not match the SHA-256 "
        f"stored at {digest_at:#x} (offset 0x0)"
    )


def test_a_flip_in_the_index_fails_the_index_checksum(saved, tmp_path) -> None:
    machine, image = saved
    index = shape(image).index_offset
    bad = copy(image, tmp_path)
    flip(bad, index + 100)
    assert refused(machine, bad, tmp_path) == (
        f"index checksum mismatch: bytes {index:#x}..{image.stat().st_size:#x} do not match "
        f"the header's digest (offset {index:#x})"
    )


def test_a_flip_in_a_run_table_is_caught_before_anything_is_loaded(saved, tmp_path) -> None:
    machine, image = saved
    entry = shape(image).entries[3]
    bad = copy(image, tmp_path)
    flip(bad, entry.offset + fmt.CHUNK_HEAD.size + 5)
    # Found while checking the destinations (from the run tables alone).
    assert refused(machine, bad, tmp_path) == (
        f"{bad}: chunk header or run table checksum mismatch (it does not match the index) "
        f"(chunk 3, offset {entry.offset:#x})"
    )


def chunk_data(image: Path, k: int) -> tuple[int, int, str]:
    """Where chunk ``k``'s stored data starts and ends, and what the reader
    says when it does not match its checksum."""
    lay = shape(image)
    start = lay.payload_at(image.read_bytes(), k)
    end = lay.entries[k].offset + lay.entries[k].length
    message = (
        f"chunk data checksum mismatch ({end - start} bytes from {start:#x}) "
        f"(chunk {k}, offset {start:#x})"
    )
    return start, end, message


def test_a_flip_in_the_first_chunks_data_is_refused_before_any_segment_is_loaded(
    saved, tmp_path
) -> None:
    machine, image = saved
    start, _, message = chunk_data(image, 0)
    bad = copy(image, tmp_path)
    flip(bad, start + 10)
    assert refused(machine, bad, tmp_path) == message


def test_a_flip_in_the_last_chunks_data_discards_everything_staged_before_it(
    saved, tmp_path
) -> None:
    machine, image = saved
    last = len(shape(image).entries) - 1
    _, end, message = chunk_data(image, last)
    bad = copy(image, tmp_path)
    flip(bad, end - 1)
    c = Restorer(machine)
    assert c.refusal(bad, tmp_path) == message
    # Every chunk before the bad one was staged (KS_start, then KS_mid…);
    # then one KS_start with no segments threw all of it away.
    stages = [stage for stage, _ in c.calls]
    assert last >= 10
    assert stages == [START] + [MID] * (last - 1) + [START]
    assert all(n > 0 for _, n in c.calls[:-1]) and c.calls[-1] == (START, 0)
    c.assert_nothing_left()


# -- foreign headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "offset, value, message",
    [
        (
            fmt.MAGIC_OFFSET,
            b"KXHIBIMH",
            f"not a kexechib image: magic is b'KXHIBIMH' (offset {fmt.MAGIC_OFFSET:#x})",
        ),
        (
            fmt.VERSION_OFFSET,
            struct.pack("<I", 2),
            "image format version 2 is not supported (this reader knows version 1) "
            f"(offset {fmt.VERSION_OFFSET:#x})",
        ),
        (
            18,  # e_machine
            struct.pack("<H", 183),
            "machine is EM_AARCH64, not EM_X86_64: the image is for another architecture "
            "(offset 0x12)",
        ),
    ],
    ids=["magic", "version", "architecture"],
)
def test_a_foreign_header_is_named_precisely(
    saved, tmp_path, offset: int, value: bytes, message: str
) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    edit(bad, offset, value)
    assert refused(machine, bad, tmp_path) == message


def test_a_world_writable_image_is_refused(saved, tmp_path) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    os.chmod(bad, 0o606)
    assert refused(machine, bad, tmp_path) == (
        f"{bad} cannot be used as an image: it has mode 0606: others may read or "
        f"change it (it must be 0600: chmod 600 {bad} if it is trusted)"
    )


def test_a_missing_image_is_bad_image(saved, tmp_path) -> None:
    machine, _ = saved
    assert refused(machine, tmp_path / "absent", tmp_path) == f"no image at {tmp_path / 'absent'}"


# -- made elsewhere: another machine, another kernel build, other RAM ----------------


def test_an_image_of_another_machine_is_refused(saved, tmp_path) -> None:
    _, image = saved
    other = Machine.create(tmp_path / "other", ram=512 * MIB, seed=99)
    assert refused(other, copy(image, tmp_path), tmp_path) == (
        f"the image was made on machine {meta_of(image).machine_id}, this is "
        f"{other.machine_id}; refusing to resume another machine's memory"
    )
    other.close()


def boot_another_kernel_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Firmware boots of the model run the kernel release ``DEFAULT_RELEASE``
    (the build id is derived from it): C now boots a different build."""
    monkeypatch.setattr(bzimage, "DEFAULT_RELEASE", bzimage.DEFAULT_RELEASE + "-rebuilt")


def test_an_image_of_another_kernel_build_is_refused(saved, tmp_path, monkeypatch) -> None:
    machine, image = saved
    boot_another_kernel_build(monkeypatch)
    c = Restorer(machine)
    made, here = meta_of(image), c.kernel.identity()
    assert (made.kernel_release, made.build_id) != (here.release, here.build_id)
    assert c.refusal(copy(image, tmp_path), tmp_path) == (
        f"the image was made by kernel {made.kernel_release} (build {made.build_id}), "
        f"this is {here.release} (build {here.build_id}); boot the same kernel or resume "
        "with the 'force' option"
    )
    assert c.calls == []
    c.assert_nothing_left()


def test_force_resumes_an_image_of_another_kernel_build(saved, tmp_path, monkeypatch) -> None:
    machine, image = saved
    boot_another_kernel_build(monkeypatch)
    c = Restorer(machine)
    c.resume(copy(image, tmp_path), tmp_path, ResumeOptions(force=True, load_only=True))
    assert c.calls[0][0] is START and c.calls[-1] == (abi.Stage.FINAL, 0)
    assert c.kernel.kexec_loaded()
    c.kernel.close()


def test_an_image_restoring_what_is_not_ram_here_is_refused(saved, tmp_path) -> None:
    """The same machine, but its firmware now reserves the MiB above 1 MiB,
    where the image's first run goes (the kernel would not check)."""
    machine, image = saved
    changed = Machine.create(tmp_path / "changed", ram=512 * MIB, reserved=((MIB, 2 * MIB),))
    assert changed.machine_id == machine.machine_id
    run = first_run(image)
    assert run.pfn << 12 == MIB
    assert refused(changed, copy(image, tmp_path), tmp_path) == (
        f"the image restores {MIB:#x}+{run.npages << 12:#x}, which is not RAM on this machine"
    )
    changed.close()
