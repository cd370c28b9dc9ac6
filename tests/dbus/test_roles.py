"""Role detection (DESIGN §1): a pure function of the kernel command line,
the image at the configured location and this boot's id."""

from __future__ import annotations

import pytest

from kexechibd.daemon.roles import ImageState, ImageVerdict, detect_role
from kexechibd.operation import Role

NONE = ImageState(ImageVerdict.ABSENT)
THIS_BOOT = "0b5c3f52-this-boot"


def valid(boot_id: str) -> ImageState:
    return ImageState(ImageVerdict.VALID, boot_id=boot_id)


def test_kernel_b_is_the_saver_and_knows_a_s_re_entry_point():
    decision = detect_role(
        "console=ttyS0 kexechib.role=save kexec_jump_back_entry=0x1000f0a0", NONE, THIS_BOOT
    )
    assert decision.role is Role.SAVER
    assert decision.jump_back_entry == 0x1000F0A0
    assert decision.problem == ""


@pytest.mark.parametrize(
    "cmdline, words",
    [
        ("kexechib.role=save", "kexec_jump_back_entry= is missing"),
        ("kexechib.role=save kexec_jump_back_entry=banana", "'banana' is not a hex address"),
        ('quiet kexechib.role="save" kexec_jump_back_entry=0xzz', "'0xzz' is not a hex address"),
    ],
)
def test_a_saver_without_a_usable_re_entry_point_is_a_saver_with_a_problem(cmdline, words):
    decision = detect_role(cmdline, valid("another-boot"), THIS_BOOT)
    assert decision.role is Role.SAVER
    assert decision.jump_back_entry is None
    assert words in decision.problem


def test_someone_elses_kexec_jump_is_not_a_saver():
    decision = detect_role("kexec_jump_back_entry=0x1000", NONE, THIS_BOOT)
    assert decision.role is Role.ORIGIN


def test_a_valid_image_of_an_earlier_boot_makes_a_restorer():
    decision = detect_role("ro quiet", valid("earlier-boot"), THIS_BOOT)
    assert decision.role is Role.RESTORER


def test_a_valid_image_with_no_boot_id_makes_a_restorer():
    assert detect_role("ro", valid(""), THIS_BOOT).role is Role.RESTORER


def test_a_checkpoint_of_this_very_boot_leaves_the_origin_an_origin():
    decision = detect_role("ro quiet", valid(THIS_BOOT), THIS_BOOT)
    assert decision.role is Role.ORIGIN
    assert "checkpoint" in decision.reason


@pytest.mark.parametrize(
    "state, words",
    [
        (NONE, "no image"),
        (ImageState(ImageVerdict.CONSUMED, boot_id="earlier"), "consumed"),
        (
            ImageState(ImageVerdict.INVALID, reason="chunk 7: checksum mismatch"),
            "invalid: chunk 7: checksum mismatch",
        ),
    ],
)
def test_otherwise_it_is_the_origin(state, words):
    decision = detect_role("ro quiet", state, THIS_BOOT)
    assert decision.role is Role.ORIGIN
    assert words in decision.reason


@pytest.mark.parametrize(
    "info, verdict, reason",
    [
        ({"valid": True, "state": "committed", "boot-id": "b"}, ImageVerdict.VALID, ""),
        (
            {"valid": False, "state": "consumed", "boot-id": "b"},
            ImageVerdict.CONSUMED,
            "it was resumed already",
        ),
        (
            {"valid": False, "error": "chunk 7: checksum mismatch"},
            ImageVerdict.INVALID,
            "chunk 7: checksum mismatch",
        ),
        ({"valid": False, "state": "invalid"}, ImageVerdict.INVALID, "its state is 'invalid'"),
        ({}, ImageVerdict.INVALID, "unreadable"),
        ({"valid": "yes"}, ImageVerdict.INVALID, "unreadable"),
    ],
)
def test_the_engines_inspect_result_becomes_an_image_state(info, verdict, reason):
    state = ImageState.from_inspect(info)
    assert (state.verdict, state.reason) == (verdict, reason)
