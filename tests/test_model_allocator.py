"""The model's page allocator: top down, recently freed pages first, a
particular page on request, and nothing changed by a failure.  Placement
relies on none of its order (DESIGN §2.2); these pin what the model does so
that its benchmarks and failures are reproducible."""

from __future__ import annotations

import pytest

from kexechibd.model.allocator import OutOfPages, PageAllocator


def allocator(*free: tuple[int, int], npages: int = 64) -> PageAllocator:
    return PageAllocator.with_free(npages, free)


def test_pages_come_from_the_top_down() -> None:
    a = allocator((8, 12), (20, 24))
    assert [a.alloc() for _ in range(8)] == [23, 22, 21, 20, 11, 10, 9, 8]


def test_a_freed_page_is_handed_out_again_first() -> None:
    a = allocator((8, 24))
    taken = [a.alloc() for _ in range(4)]
    a.free(taken[0])
    assert a.alloc() == taken[0]
    assert a.alloc() == 19


def test_a_particular_page_is_taken_only_when_free() -> None:
    a = allocator((8, 12))
    assert a.take(9)
    assert not a.take(9)
    assert not a.take(30)
    assert not a.take(-1)
    assert [a.alloc() for _ in range(3)] == [11, 10, 8]


def test_running_out_changes_nothing() -> None:
    a = allocator((8, 10))
    a.alloc()
    a.alloc()
    before = a.to_bytes()
    with pytest.raises(OutOfPages):
        a.alloc()
    assert a.to_bytes() == before
    a.free(8)
    assert a.alloc() == 8


def test_a_double_free_is_refused() -> None:
    a = allocator((8, 10))
    page = a.alloc()
    a.free(page)
    with pytest.raises(ValueError):
        a.free(page)


def test_free_run_stops_at_a_used_page_the_limit_or_the_end() -> None:
    a = allocator((8, 16), (60, 64))
    assert a.free_run(8, 100) == 8
    assert a.free_run(10, 3) == 3
    assert a.free_run(16, 4) == 0
    assert a.free_run(62, 10) == 2


def test_free_pages_counts_what_is_left() -> None:
    a = allocator((8, 16))
    a.alloc()
    a.take(8)
    a.reserve(10, 12)
    assert a.free_pages == 8 - 1 - 1 - 2
