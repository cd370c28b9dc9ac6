"""The purgatory's C helpers (SHA-256, command-line append), the same source
compiled for the build host (purgatory/host/), checked against Python."""

from __future__ import annotations

import ctypes
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.purgatory_support import HOST_HELPERS

# struct sha256_ctx is 112 bytes on x86-64; a larger buffer keeps the test
# independent of its layout.
CTX_SIZE = 256


@pytest.fixture(scope="module")
def lib():
    if not HOST_HELPERS.is_file():
        pytest.fail(f"{HOST_HELPERS} is missing: run `make purgatory`")
    lib = ctypes.CDLL(str(HOST_HELPERS))
    lib.sha256_init.argtypes = [ctypes.c_void_p]
    lib.sha256_update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.sha256_final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.cmdline_append_jump_back.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64]
    lib.cmdline_append_jump_back.restype = ctypes.c_size_t
    return lib


def c_sha256(lib, chunks) -> bytes:
    ctx = ctypes.create_string_buffer(CTX_SIZE)
    out = ctypes.create_string_buffer(32)
    lib.sha256_init(ctx)
    for chunk in chunks:
        lib.sha256_update(ctx, chunk, len(chunk))
    lib.sha256_final(ctx, out)
    return out.raw


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize("length", [*range(0, 130), 1000, 4095, 4096, 4097, 65536 + 55])
def test_sha256_matches_hashlib_at_every_padding_boundary(lib, length):
    data = os.urandom(length)
    assert c_sha256(lib, [data]) == hashlib.sha256(data).digest()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_sha256_matches_hashlib_however_the_input_is_split(lib, data, cuts):
    assert c_sha256(lib, split(data, cuts)) == hashlib.sha256(data).digest()


def test_sha256_of_megabytes_matches_hashlib(lib):
    data = os.urandom(5 << 20)
    assert c_sha256(lib, [data[:12345], data[12345:]]) == hashlib.sha256(data).digest()


GUARD = 0xA5


def c_append(lib, room: int, entry: int) -> tuple[int, bytes]:
    """Append at offset 16 of a buffer filled with GUARD bytes."""
    buf = ctypes.create_string_buffer(bytes([GUARD]) * 128, 128)
    n = lib.cmdline_append_jump_back(ctypes.addressof(buf) + 16, room, entry)
    return n, buf.raw


@settings(max_examples=500, deadline=None)
@given(
    entry=st.integers(min_value=0, max_value=(1 << 64) - 1),
    room=st.integers(min_value=0, max_value=64),
)
def test_append_writes_the_parameter_whole_or_not_at_all(lib, entry, room):
    text = f" kexec_jump_back_entry=0x{entry:x}".encode() + b"\0"
    n, raw = c_append(lib, room, entry)
    if len(text) <= room:
        assert n == len(text) - 1
        assert raw[16 : 16 + len(text)] == text
        assert raw[16 + len(text) :] == bytes([GUARD]) * (128 - 16 - len(text))
    else:
        assert n == 0
        assert raw == bytes([GUARD]) * 128
    assert raw[:16] == bytes([GUARD]) * 16


def test_longest_parameter_needs_42_bytes(lib):
    assert c_append(lib, 42, (1 << 64) - 1)[0] == 41
    assert c_append(lib, 41, (1 << 64) - 1)[0] == 0


def test_zero_entry_is_written_as_0x0(lib):
    n, raw = c_append(lib, 64, 0)
    assert raw[16 : 16 + n + 1] == b" kexec_jump_back_entry=0x0\0"
