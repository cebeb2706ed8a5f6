"""Strict JSON for every file VLP writes: non-finite numbers become null, NumPy values plain Python values.

Python's `json` writes `NaN` and `Infinity` by default, which is not JSON: jq, JavaScript's `JSON.parse` and many
JSON libraries reject the file. An undefined figure (an interval over too few items, a metric of an objective a run
did not train) is therefore written as `null`. Writing goes through `dumps` / `dump` / `write_json`, which convert
first and then call `json` with `allow_nan=False`, so a non-finite number that slipped past the conversion fails
loudly instead of writing an unreadable file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """`value` with NaN and +-Infinity as None, NumPy scalars and arrays as Python values, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(key): finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def dumps(value: Any, **kwargs) -> str:
    """`json.dumps` of `finite(value)`; refuses any non-finite number left."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def dump(value: Any, handle, **kwargs) -> None:
    """`json.dump` of `finite(value)` into an open text file; refuses any non-finite number left."""
    json.dump(finite(value), handle, allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, value: Any, *, atomic: bool = False, **kwargs) -> None:
    """Write `value` to `path` (UTF-8, a final newline). `atomic`: through a temporary file renamed into place, so
    a reader sees the old file or the whole new one."""
    path = os.fspath(path)
    target = f"{path}.tmp" if atomic else path
    text = dumps(value, **kwargs)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    if atomic:
        os.replace(target, path)


def loads_strict(text: str) -> Any:
    """`json.loads` that rejects NaN and Infinity, as strict JSON readers do."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


__all__ = ["dump", "dumps", "finite", "loads_strict", "write_json"]
