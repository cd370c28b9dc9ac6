"""Finding zero pages in a large buffer without a Python step per page.

One strided slice takes the first and last byte of every page; only pages
where both are zero can be zero pages.  Runs of such candidates are checked
with one ``memcmp`` (``bytes.startswith``) each, and split by bisection only
where they turn out to hold data.  Random or text data costs a few C calls per
buffer; all-zero memory one compare per MiB.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_ZERO = bytes(1 << 20)
_ZMV = memoryview(_ZERO)
_CANDIDATES = re.compile(b"\0+")
_LINEAR = 8  # below this many pages, check page by page rather than bisect


def is_zero(buf: bytes, start: int, length: int) -> bool:
    """Whether ``buf[start:start + length]`` is all zero (no copy)."""
    while length > 0:
        n = min(length, len(_ZERO))
        if not buf.startswith(_ZMV[:n], start):
            return False
        start += n
        length -= n
    return True


def _split(buf: bytes, ps: int, a: int, b: int) -> Iterator[tuple[int, int, bool]]:
    """Runs of pages [a, b) that are all candidates: zero or data, unmerged."""
    if is_zero(buf, a * ps, (b - a) * ps):
        yield a, b - a, True
    elif b - a <= _LINEAR:
        for p in range(a, b):
            yield p, 1, is_zero(buf, p * ps, ps)
    else:
        mid = (a + b) // 2
        yield from _split(buf, ps, a, mid)
        yield from _split(buf, ps, mid, b)


def page_runs(buf: bytes, page_size: int) -> Iterator[tuple[int, int, bool]]:
    """Maximal ``(first_page, npages, zero)`` runs covering ``buf`` (whose
    length is a multiple of ``page_size``), in order."""
    npages = len(buf) // page_size
    if npages == 0:
        return
    firsts = int.from_bytes(buf[0::page_size], "little")
    lasts = int.from_bytes(buf[page_size - 1::page_size], "little")
    sample = (firsts | lasts).to_bytes(npages, "little")
    cur_start, cur_len, cur_zero = 0, 0, False
    pos = 0

    def pieces() -> Iterator[tuple[int, int, bool]]:
        nonlocal pos
        for m in _CANDIDATES.finditer(sample):
            a, b = m.span()
            if a > pos:
                yield pos, a - pos, False
            yield from _split(buf, page_size, a, b)
            pos = b
        if pos < npages:
            yield pos, npages - pos, False

    for start, n, zero in pieces():
        if cur_len and zero == cur_zero:
            cur_len += n
            continue
        if cur_len:
            yield cur_start, cur_len, cur_zero
        cur_start, cur_len, cur_zero = start, n, zero
    if cur_len:
        yield cur_start, cur_len, cur_zero
