"""The model kernel writes its entry list from the destination table by
stretches (kimage._DestTable.entry_words): the words must be exactly those
of the table's pages taken one by one, as kimage_add_entry() adds them."""

from __future__ import annotations

import array
import random

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT
from kexechibd.model import kimage


def page_by_page(table: kimage._DestTable) -> array.array[int]:
    words: array.array[int] = array.array("Q")
    expected = -1
    for dest, src in table.items():
        if dest != expected:
            words.append((dest << PAGE_SHIFT) | abi.IND_DESTINATION)
        words.append((src << PAGE_SHIFT) | abi.IND_SOURCE if src >= 0 else abi.IND_ZERO)
        expected = dest + 1
    return words


@pytest.mark.parametrize("seed", range(40))
def test_entry_words_are_the_page_by_page_entry_list(seed: int) -> None:
    rng = random.Random(seed)
    table = kimage._DestTable()
    for _ in range(rng.randrange(1, 30)):
        first, count = rng.randrange(0, 5000), rng.randrange(1, 1500)
        kind = rng.random()
        if kind < 0.5:
            table.set_own(first, count)  # pages that are their own sources
        elif kind < 0.7:
            table.mark_zero(first, count)  # zero-fill destinations
        else:  # single pages placed elsewhere, zero, or dropped: breaks in stretches
            for _ in range(rng.randrange(1, 20)):
                value = rng.choice([kimage.NONE, kimage.ZERO, rng.randrange(0, 9000)])
                table.set(rng.randrange(0, 6000), value)
    assert table.entry_words() == page_by_page(table)
