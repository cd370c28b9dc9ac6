"""The image library's vocabulary (kexechibd/image/meta.py): resume states and
modes as enums whose values are the strings D-Bus callers see, and errors of
the library's own that the daemon alone turns into D-Bus errors."""

from __future__ import annotations

import io
import json

import pytest

from kexechibd.daemon.manager import as_daemon_error, unexpected
from kexechibd.errors import BadImage, KexechibError
from kexechibd.image import ImageError, ImageMode, ImageState, format
from kexechibd.image.store import invalidate_image, mark_image_consumed
from tests.image_support import make_meta, open_image, sample_image


def test_the_resume_states_are_the_strings_inspect_reports() -> None:
    assert [s.value for s in ImageState] == ["committed", "consumed", "invalid"]
    assert json.dumps({"state": ImageState.CONSUMED}) == '{"state": "consumed"}'
    assert f"{ImageState.INVALID}" == "invalid"


def test_every_resume_state_has_its_own_state_word() -> None:
    assert set(format.STATE_WORDS) == set(ImageState)
    assert {format.STATE_BY_WORD[w] for w in format.STATE_WORDS.values()} == set(ImageState)
    assert all(len(w) == format.STATE_SIZE for w in format.STATE_WORDS.values())


def test_a_reader_reports_the_state_as_an_image_state() -> None:
    data = bytearray(sample_image()[0])
    assert open_image(data).summary.state is ImageState.COMMITTED
    f = io.BytesIO(bytes(data))
    mark_image_consumed(f)
    assert open_image(f.getvalue()).summary.state is ImageState.CONSUMED
    invalidate_image(f)
    assert open_image(f.getvalue()).summary.state is ImageState.INVALID


def test_the_modes_are_the_strings_of_the_mode_option() -> None:
    assert [m.value for m in ImageMode] == ["poweroff", "checkpoint"]


def test_metadata_takes_the_mode_by_its_value_and_keeps_it_as_a_mode() -> None:
    meta = make_meta(mode="checkpoint")
    assert meta.mode is ImageMode.CHECKPOINT
    assert open_image(sample_image(meta=meta)[0]).meta.mode is ImageMode.CHECKPOINT


def test_an_unknown_mode_is_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match="mode 'suspend' is not one of poweroff, checkpoint"):
        make_meta(mode="suspend")


def test_image_errors_are_the_librarys_own_not_dbus_errors() -> None:
    e = ImageError("no image at /x")
    assert isinstance(e, ValueError) and not isinstance(e, KexechibError)


def test_the_daemon_reports_an_image_error_as_bad_image() -> None:
    error = as_daemon_error(ImageError("bad chunk", chunk=2, offset=0x1000))
    assert isinstance(error, BadImage)
    assert error.dbus_name == "org.kexechib1.Error.BadImage"
    assert str(error) == "bad chunk (chunk 2, offset 0x1000)"


def test_an_image_error_is_expected_not_a_fault_of_the_daemon() -> None:
    """The log gets a line for it, not a traceback."""
    assert not unexpected(ImageError("truncated"))
    assert unexpected(RuntimeError("a bug"))
