"""The bounded per-row memo behind the datasets' caches."""

import pytest

from vlp.processing.row_cache import RowCache, rows_within


def test_reads_each_row_once_and_drops_the_least_recently_used():
    reads = []

    def read(row):
        reads.append(row)
        return row * 10

    cache = RowCache(read, max_rows=2)
    assert [cache(1), cache(2), cache(1)] == [10, 20, 10]
    assert reads == [1, 2]
    assert cache(3) == 30  # evicts 2, the least recently used (1 was used after it)
    assert cache(1) == 10 and reads == [1, 2, 3]
    assert cache(2) == 20 and reads == [1, 2, 3, 2]
    assert len(cache) == 2


def test_errors_are_not_remembered():
    calls = []

    def read(row):
        calls.append(row)
        raise ValueError(f"row {row} unreadable")

    cache = RowCache(read, max_rows=4)
    for _ in range(3):
        with pytest.raises(ValueError, match="row 7 unreadable"):
            cache(7)
    assert calls == [7, 7, 7] and len(cache) == 0


def test_bounds():
    assert rows_within(100, 30) == 3 and rows_within(10, 30) == 1
    with pytest.raises(ValueError, match="max_rows=0"):
        RowCache(lambda row: row, max_rows=0)
