"""A bounded per-row memo for datasets whose rows are pure functions of their index (no augmentation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Default bounds, per dataset copy (each DataLoader worker holds its own).
CACHE_ROWS = 65536  # captions, parsed scenes, tokenized captions
CACHE_PIXEL_BYTES = 256 * 2**20  # processed images


class RowCache:
    """``read(key)`` remembered for the last ``max_rows`` keys read (least recently used first out); errors are
    not remembered, so an unreadable row is reported each time it is drawn. Values are shared between callers:
    never write into them."""

    def __init__(self, read: Callable[[Any], Any], max_rows: int):
        if int(max_rows) < 1:
            raise ValueError(f"a RowCache holds at least one row; got max_rows={max_rows}")
        self.read, self.max_rows, self.values = read, int(max_rows), {}

    def __call__(self, key: Any) -> Any:
        if key in self.values:
            value = self.values.pop(key)
        else:
            value = self.read(key)
            if len(self.values) >= self.max_rows:
                del self.values[next(iter(self.values))]
        self.values[key] = value
        return value

    def __len__(self) -> int:
        return len(self.values)


def rows_within(max_bytes: int, bytes_per_row: int) -> int:
    """How many rows of ``bytes_per_row`` fit in ``max_bytes`` (at least one)."""
    return max(1, int(max_bytes) // max(1, int(bytes_per_row)))


__all__ = ["CACHE_PIXEL_BYTES", "CACHE_ROWS", "RowCache", "rows_within"]
