"""Patch masking for masked image modeling: which patches of a `num_rows` x `num_cols` grid the model must restore.

Policies are pure functions `(..., ratio, rng) -> bool mask` of shape (num_rows * num_cols,), True = masked, in the
row-major patch order of the model's patch embedding. They mask exactly `masked_count(num_rows * num_cols, ratio)`
patches, and draw only from the numpy Generator `rng`, so a mask is a function of its seed.
"""

import math

import numpy as np


def masked_count(num_patches, ratio):
    """The number of patches to mask: ratio * num_patches rounded half up. Raises ValueError unless 0 <= ratio <= 1."""
    if not (isinstance(ratio, (int, float, np.floating, np.integer)) and 0 <= ratio <= 1):
        raise ValueError(f"masking ratio={ratio!r} must be a number in [0, 1]")
    return min(num_patches, int(math.floor(ratio * num_patches + 0.5)))


def _check_grid(num_rows, num_cols):
    if int(num_rows) != num_rows or int(num_cols) != num_cols or num_rows < 1 or num_cols < 1:
        raise ValueError(f"the patch grid must have positive integer sides; got {num_rows} x {num_cols}")
    return int(num_rows), int(num_cols)


def random_patch_mask(num_rows, num_cols, ratio, rng):
    """Uniformly random patches, exactly `masked_count` of them (MAE, SimMIM)."""
    num_rows, num_cols = _check_grid(num_rows, num_cols)
    total = num_rows * num_cols
    mask = np.zeros(total, dtype=bool)
    mask[rng.permutation(total)[: masked_count(total, ratio)]] = True
    return mask


def block_patch_mask(num_rows, num_cols, ratio, rng, min_block=4, max_block=None, min_aspect=0.3, max_attempts=100):
    """BEiT's block-wise masking: rectangles of random area and aspect ratio until `masked_count` patches are masked.

    Areas are uniform in [min_block, min(max_block, patches still to mask)] and aspect ratios log-uniform in
    [min_aspect, 1 / min_aspect]; a rectangle larger than needed is cut in row-major order. Fewer than `min_block`
    patches left (or `max_attempts` rectangles in a row that add nothing): they are grown next to masked patches, so
    no leftover lies apart. A target below `min_block` gives one cut rectangle.
    """
    num_rows, num_cols = _check_grid(num_rows, num_cols)
    if min_block < 1 or not 0 < min_aspect <= 1:
        raise ValueError(f"block masking needs min_block >= 1 and 0 < min_aspect <= 1; got {min_block}, {min_aspect}")
    target = masked_count(num_rows * num_cols, ratio)
    mask = np.zeros((num_rows, num_cols), dtype=bool)
    log_aspects = (math.log(min_aspect), -math.log(min_aspect))
    masked, idle = 0, 0
    while masked < target and (target - masked >= min_block or masked == 0) and idle < max_attempts:
        remaining = target - masked
        area = rng.uniform(min_block, max(min_block, min(max_block or target, remaining)))
        aspect = math.exp(rng.uniform(*log_aspects))
        height = min(num_rows, max(1, round(math.sqrt(area * aspect))))
        width = min(num_cols, max(1, round(math.sqrt(area / aspect))))
        top = int(rng.integers(0, num_rows - height + 1))
        left = int(rng.integers(0, num_cols - width + 1))
        block = np.zeros_like(mask)
        block[top : top + height, left : left + width] = True
        new = np.flatnonzero(block & ~mask)[:remaining]
        mask.flat[new] = True
        masked += len(new)
        idle = 0 if len(new) else idle + 1
    if masked < target:
        _fill_next_to_mask(mask, target - masked, rng)
    return mask.reshape(-1)


def _fill_next_to_mask(mask, count, rng):
    """Masks `count` more patches one by one, each a random unmasked 4-neighbour of the mask (any patch if none)."""
    for _ in range(count):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        candidates = np.flatnonzero(grown & ~mask)
        if len(candidates) == 0:
            candidates = np.flatnonzero(~mask)
        mask.flat[rng.choice(candidates)] = True
