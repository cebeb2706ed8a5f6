"""Patch masking policies for MIM: exact counts, determinism, block shape, edge ratios and bad arguments."""

import re

import numpy as np
import pytest

from vlp.processing.masking import block_patch_mask, masked_count, random_patch_mask

POLICIES = [random_patch_mask, block_patch_mask]
GRIDS = [(4, 4), (7, 5), (14, 14), (1, 9)]


def rng(seed):
    return np.random.default_rng(seed)


def masked_neighbours(mask, num_rows, num_cols):
    """For each masked patch, whether one of its 4-neighbours is masked too."""
    grid = mask.reshape(num_rows, num_cols)
    padded = np.pad(grid, 1)
    neighbour = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return neighbour[grid]


def components(mask, num_rows, num_cols):
    """Number of 4-connected pieces of the mask (flood fill)."""
    grid = mask.reshape(num_rows, num_cols)
    seen, pieces = np.zeros_like(grid), 0
    for start in zip(*np.nonzero(grid)):
        if seen[start]:
            continue
        pieces += 1
        stack = [start]
        while stack:
            r, c = stack.pop()
            if not (0 <= r < num_rows and 0 <= c < num_cols) or seen[r, c] or not grid[r, c]:
                continue
            seen[r, c] = True
            stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    return pieces


def test_masked_count_rounds_half_up():
    assert masked_count(10, 0.25) == 3  # 2.5 -> 3, where Python's round would give 2
    assert masked_count(10, 0.24) == 2
    assert masked_count(196, 0.4) == 78
    assert masked_count(7, 0.0) == 0 and masked_count(7, 1.0) == 7


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("num_rows, num_cols", GRIDS)
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.4, 0.6, 0.75, 0.95, 1.0])
def test_exact_count_shape_and_dtype(policy, num_rows, num_cols, ratio):
    for seed in range(5):
        mask = policy(num_rows, num_cols, ratio, rng(seed))
        assert mask.shape == (num_rows * num_cols,) and mask.dtype == bool
        assert mask.sum() == masked_count(num_rows * num_cols, ratio)


@pytest.mark.parametrize("policy", POLICIES)
def test_deterministic_for_a_seed_and_different_across_seeds(policy):
    first = policy(14, 14, 0.4, rng(123))
    assert np.array_equal(first, policy(14, 14, 0.4, rng(123)))
    others = {policy(14, 14, 0.4, rng(seed)).tobytes() for seed in range(20)}
    assert len(others) >= 15


@pytest.mark.parametrize("policy", POLICIES)
def test_edge_ratios(policy):
    assert not policy(6, 6, 0.0, rng(0)).any()
    assert policy(6, 6, 1.0, rng(0)).all()
    assert policy(6, 6, 1, rng(0)).all()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), "0.4", None])
def test_bad_ratio_raises_naming_the_value(policy, ratio):
    with pytest.raises(ValueError, match=re.escape(repr(ratio))):
        policy(4, 4, ratio, rng(0))


@pytest.mark.parametrize("policy", POLICIES)
def test_bad_grid_raises(policy):
    with pytest.raises(ValueError, match="0 x 4"):
        policy(0, 4, 0.5, rng(0))


def test_block_masks_are_made_of_blocks():
    """Block masks are a few contiguous pieces; random masks of the same count are scattered."""
    block_pieces, random_pieces = [], []
    for seed in range(50):
        for ratio in (0.25, 0.4, 0.6):
            mask = block_patch_mask(14, 14, ratio, rng(seed))
            assert masked_neighbours(mask, 14, 14).all(), "a block mask left an isolated patch"
            block_pieces.append(components(mask, 14, 14))
            random_pieces.append(components(random_patch_mask(14, 14, ratio, rng(seed)), 14, 14))
    assert np.mean(block_pieces) < 6 < np.mean(random_pieces)


def test_block_rectangle_is_cut_in_row_major_order():
    """Below min_block patches to mask, one rectangle (area 16, aspect in [0.5, 2], so sides in [3, 6] and at least
    12 patches) is drawn and cut to the first 10 of its patches in row-major order."""
    widths = set()
    for seed in range(30):
        mask = block_patch_mask(10, 10, 0.1, rng(seed), min_block=16, min_aspect=0.5).reshape(10, 10)
        rows, cols = np.nonzero(mask)
        width = cols.max() - cols.min() + 1
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert mask.sum() == 10 and 3 <= width <= 6
        assert box[:-1].all() and box.shape[0] == -(-10 // width), "full rows then one partial row"
        last = box[-1]
        assert last[: last.sum()].all(), "the partial last row is a prefix"
        widths.add(width)
    assert len(widths) >= 2, "aspect ratios are drawn, not fixed"


def test_block_fill_completes_when_rectangles_stall():
    """With no attempt allowed, the count is still exact and filled next to the mask (one piece)."""
    mask = block_patch_mask(8, 8, 0.5, rng(3), max_attempts=0)
    assert mask.sum() == 32 and components(mask, 8, 8) == 1
