"""The compression policy: which codecs exist, each one's levels and default,
and that the image writer refuses what the policy refuses (so nothing A
accepts is refused by B's writer after a jump)."""

from __future__ import annotations

import io

import pytest

from kexechibd import compression as policy
from kexechibd.image import ImageWriter
from kexechibd.image.format import Codec
from tests.image_support import make_meta

BAD = [
    ("zstd", 23, "zstd levels go from -7 to 22, not 23"),
    ("zstd", -8, "zstd levels go from -7 to 22, not -8"),
    ("lz4", 20, "lz4 levels go from 0 to 16, not 20"),
    ("lz4", -1, "lz4 levels go from 0 to 16, not -1"),
    ("none", 3, "none has no levels: its level is 0 only, not 3"),
    ("none", -1, "none has no levels: its level is 0 only, not -1"),
    ("gzip", None, "compression 'gzip' is not one of zstd, lz4, none"),
    ("gzip", 3, "compression 'gzip' is not one of zstd, lz4, none"),
]


def test_the_policy_names_exactly_the_codecs_the_image_format_stores():
    assert set(policy.NAMES) == set(Codec.IDS)


@pytest.mark.parametrize("name, default", [("zstd", 3), ("lz4", 0), ("none", 0)])
def test_no_level_means_the_codecs_default(name, default):
    assert policy.resolve(name, None) == default


@pytest.mark.parametrize("name, level", [("zstd", -7), ("zstd", 22), ("lz4", 0), ("lz4", 16)])
def test_the_ends_of_each_range_are_allowed(name, level):
    assert policy.resolve(name, level) == level


@pytest.mark.parametrize("name, level, words", BAD)
def test_a_bad_combination_is_refused_naming_the_allowed_range(name, level, words):
    with pytest.raises(policy.PolicyError) as refused:
        policy.resolve(name, level)
    assert str(refused.value) == words


@pytest.mark.parametrize("name, level, words", BAD)
def test_the_image_writer_refuses_what_the_policy_refuses(name, level, words):
    with pytest.raises(ValueError, match=words):
        ImageWriter(io.BytesIO(), make_meta(), compression=name, level=level, threads=0)


@pytest.mark.parametrize(
    "given, merged",
    [
        ({}, {"compression": "zstd", "level": 19}),
        ({"level": 5}, {"compression": "zstd", "level": 5}),
        ({"compression": "zstd"}, {"compression": "zstd", "level": 19}),
        ({"compression": "lz4"}, {"compression": "lz4"}),
        ({"compression": "none"}, {"compression": "none"}),
        ({"compression": "lz4", "level": 20}, {"compression": "lz4", "level": 20}),
    ],
)
def test_a_configured_level_stays_with_its_codec(given, merged):
    defaults = {"compression": "zstd", "level": 19}
    assert policy.overlay(defaults, given) == merged
