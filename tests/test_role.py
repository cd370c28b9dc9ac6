"""Role detection (DESIGN §1): one pure function of the kernel command line,
the image at the configured location and this boot's id, which the daemon
and the engine both use (``kexechibd.role``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kexechibd.cycle.engine import EngineSettings, KexecEngine
from kexechibd.errors import NotSupported
from kexechibd.kernel.api import KernelIdentity
from kexechibd.operation import CancelToken, HibernateOptions, ImageDetails, ImageReport, Role
from kexechibd.role import ImageFinding, ImageVerdict, detect_role, image_at
from tests.dbus.scripted_engine import scripted_details

NONE = ImageFinding(ImageVerdict.ABSENT)
THIS_BOOT = "0b5c3f52-this-boot"
SAVE = "kexechib.role=save"
ENTRY = "kexec_jump_back_entry=0x1000f0a0"


def valid(boot_id: str) -> ImageFinding:
    return ImageFinding(ImageVerdict.VALID, boot_id=boot_id)


CONSUMED = ImageFinding(ImageVerdict.CONSUMED, boot_id="earlier")
BROKEN = ImageFinding(ImageVerdict.INVALID, reason="chunk 7: checksum mismatch", damaged=True)


@pytest.mark.parametrize(
    "cmdline, image, role, entry, problem, reason",
    [
        # B: the saver, with A's re-entry point ...
        (f"console=ttyS0 {SAVE} {ENTRY}", NONE, Role.SAVER, 0x1000F0A0, "", "0x1000f0a0"),
        (f"{SAVE} {ENTRY}", valid("another-boot"), Role.SAVER, 0x1000F0A0, "", SAVE),
        # ... or without one: still the saver (not the user's system), with
        # a problem that stops it saving.
        (SAVE, NONE, Role.SAVER, None, "kexec_jump_back_entry= is missing", SAVE),
        (SAVE, valid("another-boot"), Role.SAVER, None, "is missing", SAVE),
        (f"{SAVE} kexec_jump_back_entry=banana", NONE, Role.SAVER, None, "'banana' is not", SAVE),
        (
            'quiet kexechib.role="save" kexec_jump_back_entry=0xzz',
            NONE,
            Role.SAVER,
            None,
            "'0xzz' is not a hex address",
            "kexechib.role=save on the command line",
        ),
        # Someone else's kexec jump is not ours to save.
        ("kexec_jump_back_entry=0x1000", NONE, Role.ORIGIN, None, "", "not a kexechib saver"),
        # C: a valid image of an earlier boot (or of no known boot).
        ("ro quiet", valid("earlier-boot"), Role.RESTORER, None, "", "awaits resume"),
        ("ro", valid(""), Role.RESTORER, None, "", "awaits resume"),
        # A: a checkpoint of this very boot, or nothing resumable.
        ("ro quiet", valid(THIS_BOOT), Role.ORIGIN, None, "", "checkpoint"),
        ("ro quiet", NONE, Role.ORIGIN, None, "", "no image"),
        ("ro quiet", CONSUMED, Role.ORIGIN, None, "", "consumed"),
        ("ro quiet", BROKEN, Role.ORIGIN, None, "", "invalid: chunk 7: checksum mismatch"),
    ],
)
def test_the_role_table(cmdline, image, role, entry, problem, reason) -> None:
    decision = detect_role(cmdline, image, THIS_BOOT)
    assert decision.role is role
    assert decision.jump_back_entry == entry
    assert (problem in decision.problem) if problem else decision.problem == ""
    assert reason in decision.reason


def test_a_damaged_image_is_named_but_an_invalidated_one_is_not() -> None:
    assert detect_role("ro", BROKEN, THIS_BOOT).damaged_image == "chunk 7: checksum mismatch"
    spent = ImageFinding(ImageVerdict.INVALID, reason="its state is 'invalid'")
    assert detect_role("ro", spent, THIS_BOOT).damaged_image == ""


def details(state: str) -> ImageDetails:
    return scripted_details(state, boot_id="b")


@pytest.mark.parametrize(
    "report, finding",
    [
        (ImageReport("/i", absent=True), NONE),
        (ImageReport("/i", details=details("committed")), ImageFinding(ImageVerdict.VALID, "b")),
        (
            ImageReport("/i", details=details("consumed")),
            ImageFinding(ImageVerdict.CONSUMED, "b", "it was resumed already"),
        ),
        (
            ImageReport("/i", details=details("invalid")),
            ImageFinding(ImageVerdict.INVALID, "b", "its state is 'invalid'"),
        ),
        (
            ImageReport("/i", error="chunk 7: checksum mismatch"),
            ImageFinding(ImageVerdict.INVALID, "", "chunk 7: checksum mismatch", damaged=True),
        ),
    ],
)
def test_the_engines_report_becomes_what_role_detection_reads(report, finding) -> None:
    assert ImageFinding.from_report(report) == finding


def test_no_file_at_the_location_is_no_image_without_asking_the_engine(tmp_path: Path) -> None:
    asked: list[Path] = []

    def inspect(path: Path) -> ImageReport:
        asked.append(path)
        return ImageReport(str(path), error="unreachable")

    assert image_at(tmp_path / "none", inspect, by_block_address=False) == NONE
    assert asked == []
    # Reached by block address (Debian's initramfs): the path need not exist.
    assert image_at(tmp_path / "none", inspect, by_block_address=True).damaged
    assert asked == [tmp_path / "none"]


class CmdlineOnly:
    """A stand-in kernel (the engine must decide before touching anything
    else): its command line and identity, nothing more."""

    backend = "model"

    def __init__(self, line: str) -> None:
        self.line = line

    def cmdline(self) -> str:
        return self.line

    def identity(self) -> KernelIdentity:
        return KernelIdentity("6.1.0", "ab", THIS_BOOT, "m")


@pytest.mark.parametrize("line", [f"{SAVE} {ENTRY}", SAVE, "ro quiet", "kexec_jump_back_entry=0x1"])
def test_an_engine_alone_decides_as_the_daemon_does(line: str, tmp_path: Path) -> None:
    settings = EngineSettings(
        image_location=tmp_path / "image",
        chunk_size=1 << 20,
        saver_kernel=tmp_path / "vmlinuz",
        saver_initrd=None,
        saver_cmdline="",
        window_start=256 << 20,
        window_size=64 << 20,
        low_memory=True,
    )
    engine = KexecEngine(settings, CmdlineOnly(line))  # type: ignore[arg-type]
    assert engine.decision == detect_role(line, NONE, THIS_BOOT)


async def test_a_saver_without_a_re_entry_point_neither_hibernates_nor_saves(
    tmp_path: Path,
) -> None:
    decision = detect_role(SAVE, NONE, THIS_BOOT)
    engine = KexecEngine(None, CmdlineOnly(SAVE), role=decision)  # type: ignore[arg-type]
    with pytest.raises(NotSupported, match="this is kernel saver"):
        await engine.hibernate(HibernateOptions(), None, CancelToken())  # type: ignore[arg-type]
    with pytest.raises(NotSupported, match="kexec_jump_back_entry= is missing"):
        await engine.save(None, CancelToken())  # type: ignore[arg-type]
