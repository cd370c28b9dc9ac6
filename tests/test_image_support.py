"""The image tests' helpers (tests/image_support.py) can be trusted: re-signing
changes nothing by itself, and the layout reader finds every chunk."""

from __future__ import annotations

from tests.image_support import layout, resign, sample_image


def test_resign_without_edits_changes_nothing() -> None:
    image, _ = sample_image()
    assert bytes(resign(bytearray(image), payloads=True)) == image


def test_layout_finds_every_chunk_of_the_sample() -> None:
    image, summary = sample_image()
    lay = layout(image)
    assert lay.chunks == summary.chunks > 3
    assert lay.entries[0].offset == lay.data_offset
    assert lay.entries[-1].offset + lay.entries[-1].length == lay.index_offset
