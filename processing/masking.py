"""Patch masking for masked image modeling: which patches of a `num_rows` x `num_cols` grid the model must restore.

Policies are pure functions `(..., ratio, rng) -> bool mask` of shape (num_rows * num_cols,), True = masked, in the
row-major patch order of the model's patch embedding. They mask exactly `masked_count(num_rows * num_cols, ratio)`
patches, and draw only from the numpy Generator `rng`, so a mask is a function of its seed.

Token masking by relevance (AttMask's `random`, `high`, `low` and `hint`, for text and image tokens alike) follows
below: `policy_mask` for one sample, `word_policy_mask` for whole words, `batch_policy_masks` for a batch with one
ratio drawn by `sample_ratio`. They take scores and validity, never a model.
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


# Attention-guided masking (AttMask, carried to text and image tokens): which tokens of one stream to hide, given a
# relevance score per token (e.g. a teacher's attention). Conventions shared by the functions below:
#   - `valid` is False for special tokens and padding: they are never masked and never counted in n_valid;
#   - k = guided_count(n_valid, ratio) = floor(ratio * n_valid), but at least 1 when ratio > 0 and n_valid > 0;
#   - tokens are ranked by score (descending for `high` and `hint`, ascending for `low`); equal scores are ordered by a
#     random permutation drawn from `rng`, so constant scores give a uniformly random choice, not the first tokens;
#   - every random draw comes from the numpy Generator `rng`, so a mask is a function of its seed.

POLICIES = ("random", "high", "low", "hint")
GROUP_REDUCTIONS = ("mean", "max")
_FLOOR_SLACK = 1e-9  # ratio * n is computed in floating point: 0.29 * 100 must floor to 29, not 28


def _check_ratio(ratio, name="masking ratio"):
    if isinstance(ratio, bool) or not (isinstance(ratio, (int, float, np.floating, np.integer)) and 0 <= ratio <= 1):
        raise ValueError(f"{name}={ratio!r} must be a number in [0, 1]")
    return float(ratio)


def _check_policy(policy):
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"masking policy={policy!r} must be one of {POLICIES}")
    return policy


def _floor(x):
    return int(math.floor(x + _FLOOR_SLACK))


def _ceil(x):
    return int(math.ceil(x - _FLOOR_SLACK))


def guided_count(n_valid, ratio):
    """Tokens (or words) to mask out of `n_valid`: floor(ratio * n_valid), at least 1 when ratio > 0 and n_valid > 0.

    Unlike `masked_count` (half up, for patch grids), this follows AttMask's floor; the minimum of one keeps short
    captions from going unmasked. Raises ValueError unless 0 <= ratio <= 1.
    """
    ratio = _check_ratio(ratio)
    if n_valid <= 0 or ratio == 0:
        return 0
    return min(int(n_valid), max(1, _floor(ratio * n_valid)))


def hint_count(n_valid, ratio, hint_share=0.1):
    """Masked units `hint` reveals again: floor(hint_share * ratio * n_valid) (AttMask: 10 % of the masked share), but
    at least one whenever it masks two or more (k = guided_count >= 2) and hint_share > 0, and never all k.

    Without the minimum, a six-word caption at ratio 0.5 would reveal floor(0.3) = 0 words and `hint` would be `high`.
    """
    hint_share = _check_ratio(hint_share, "hint_share")
    k = guided_count(n_valid, ratio)
    if k < 2 or hint_share == 0:
        return 0
    return min(k - 1, max(1, _floor(hint_share * _check_ratio(ratio) * n_valid)))


def sample_ratio(rng, ratio=None, low=0.1, high=0.5):
    """The masking ratio of one batch: `ratio` itself when given (no draw), else uniform in [low, high] from `rng`.

    Draw it once per batch, from an rng seeded by (seed, global step), for every policy, `random` included, so that
    the amount masked and the guidance are not confounded.
    """
    if ratio is not None:
        return _check_ratio(ratio)
    low, high = _check_ratio(low, "low"), _check_ratio(high, "high")
    if low > high:
        raise ValueError(f"ratio range low={low!r} > high={high!r}")
    return float(rng.uniform(low, high))


def _check_scores(scores, valid):
    scores = np.asarray(scores, dtype=float)
    valid = np.asarray(valid)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (N,); got shape {scores.shape}")
    if valid.shape != scores.shape:
        raise ValueError(f"valid has shape {valid.shape} but scores have shape {scores.shape}")
    if valid.dtype != bool:
        raise ValueError(f"valid must be a bool array; got dtype {valid.dtype}")
    if not np.isfinite(scores[valid]).all():
        raise ValueError(f"scores of valid tokens must be finite; got {scores[valid][~np.isfinite(scores[valid])]}")
    return scores, valid


def policy_mask(scores, valid, ratio, policy, rng, hint_share=0.1, hint_pool=0.1, random_share=0.0):
    """The bool mask (N,) of one sample (True = masked) under `policy`, from relevance `scores` (N,) of its tokens.

    With n = valid.sum() and k = guided_count(n, ratio):
      - `random`: k valid tokens, uniformly;
      - `high` / `low`: the k valid tokens of highest / lowest score (ties in random order, see above);
      - `hint`: the top k, then r = hint_count(n, ratio, hint_share) of them revealed (unmasked again; r >= 1 when
        k >= 2), uniformly among the max(ceil(hint_pool * n), r) highest-scored of the tokens it chose by score; so
        k - r are masked.
    `random_share`: floor(random_share * k) of the k positions are first drawn uniformly from the valid tokens; the
    policy then chooses the rest in its own order among the tokens not drawn (for `hint`, only tokens it chose by score
    are revealed). Invalid tokens are never masked.
    """
    policy = _check_policy(policy)
    scores, valid = _check_scores(scores, valid)
    random_share = _check_ratio(random_share, "random_share")
    hint_pool = _check_ratio(hint_pool, "hint_pool")
    positions = np.flatnonzero(valid)
    n = len(positions)
    k = guided_count(n, ratio)
    reveal = hint_count(n, ratio, hint_share)
    mask = np.zeros(len(scores), dtype=bool)
    if k == 0:
        return mask
    if policy == "random":
        mask[rng.choice(positions, size=k, replace=False)] = True
        return mask
    keys = scores[positions] if policy == "low" else -scores[positions]
    ranking = positions[np.lexsort((rng.permutation(n), keys))]  # best first; ties in random order
    drawn = rng.choice(positions, size=_floor(random_share * k), replace=False)
    chosen = ranking[~np.isin(ranking, drawn)][: k - len(drawn)]
    mask[drawn] = True
    mask[chosen] = True
    if policy == "hint" and reveal:
        candidates = chosen[: max(_ceil(hint_pool * n), reveal)]  # `chosen` is in rank order, best first
        mask[rng.choice(candidates, size=min(reveal, len(candidates)), replace=False)] = False
    return mask


def _check_word_ids(word_ids, shape):
    word_ids = np.asarray(word_ids)
    if word_ids.shape != shape:
        raise ValueError(f"word_ids has shape {word_ids.shape} but scores have shape {shape}")
    if word_ids.size and (not np.issubdtype(word_ids.dtype, np.integer) or word_ids.min() < -1):
        raise ValueError(f"word_ids must be integers >= -1 (-1 = no word); got {word_ids}")
    return word_ids.astype(np.int64)


def _word_table(scores, word_ids, reduce):
    """(word ids present, index of each token's word or -1, aggregated score per word)."""
    if reduce not in GROUP_REDUCTIONS:
        raise ValueError(f"reduce={reduce!r} must be one of {GROUP_REDUCTIONS}")
    in_word = word_ids >= 0
    words, inverse = np.unique(word_ids[in_word], return_inverse=True)
    token_word = np.full(len(word_ids), -1)
    token_word[in_word] = inverse
    if reduce == "mean":
        word_scores = np.bincount(inverse, weights=scores[in_word], minlength=len(words)) / np.bincount(inverse)
    else:
        word_scores = np.full(len(words), -np.inf)
        np.maximum.at(word_scores, inverse, scores[in_word])
    return words, token_word, word_scores


def group_scores(scores, word_ids, reduce="mean"):
    """Per-token scores replaced by their word's `reduce` ("mean" or "max") over its tokens; a word is all tokens with
    the same id in `word_ids` (N,), contiguous or not. Tokens with word id -1 keep their own score."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (N,); got shape {scores.shape}")
    word_ids = _check_word_ids(word_ids, scores.shape)
    _, token_word, word_scores = _word_table(scores, word_ids, reduce)
    return np.where(token_word >= 0, word_scores[np.maximum(token_word, 0)] if len(word_scores) else scores, scores)


def word_policy_mask(scores, word_ids, ratio, policy, rng, valid=None, reduce="mean", **policy_kwargs):
    """Whole-word `policy_mask`: the unit is the word, scored by `reduce` over its tokens (see `group_scores`).

    k = guided_count(number of words, ratio) words are chosen (hint reveals and random_share count words too), and
    all tokens of a chosen word are masked together. Tokens with word id -1 or valid False are never masked (a word
    keeps its other tokens).
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (N,); got shape {scores.shape}")
    word_ids = _check_word_ids(word_ids, scores.shape)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != scores.shape or valid.dtype != bool:
            raise ValueError(f"valid must be a bool array of shape {scores.shape}; got {valid.dtype} {valid.shape}")
        word_ids = np.where(valid, word_ids, -1)
    _, token_word, word_scores = _word_table(scores, word_ids, reduce)
    word_mask = policy_mask(word_scores, np.ones(len(word_scores), dtype=bool), ratio, policy, rng, **policy_kwargs)
    return (token_word >= 0) & word_mask[np.maximum(token_word, 0)] if len(word_scores) else token_word >= 0


def batch_policy_masks(
    scores,
    valid,
    policy,
    rng,
    ratio=None,
    mask_probability=0.5,
    word_ids=None,
    ratio_range=(0.1, 0.5),
    reduce="mean",
    sample_rngs=None,
    **policy_kwargs,
):
    """Masks (B, N) for a batch of scores (B, N) and the ratio used.

    Draws, in this order from `rng`: the batch's ratio (`sample_ratio(rng, ratio, *ratio_range)`, no draw when `ratio`
    is fixed), then B uniforms deciding which samples are masked at all (each with `mask_probability`; the others get
    an empty mask), then each masked sample's `policy_mask` (or `word_policy_mask` when `word_ids` (B, N) is given).
    With `sample_rngs` (one Generator per sample, e.g. seeded by (seed, epoch, index)), `rng` draws only the ratio and
    sample i's coin and mask come from `sample_rngs[i]`, so a sample's mask does not depend on its batch.
    """
    _check_policy(policy)
    scores = np.asarray(scores, dtype=float)
    valid = np.asarray(valid)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, N); got shape {scores.shape}")
    if valid.shape != scores.shape:
        raise ValueError(f"valid has shape {valid.shape} but scores have shape {scores.shape}")
    if word_ids is not None and np.shape(word_ids) != scores.shape:
        raise ValueError(f"word_ids has shape {np.shape(word_ids)} but scores have shape {scores.shape}")
    mask_probability = _check_ratio(mask_probability, "mask_probability")
    batch_ratio = sample_ratio(rng, ratio, *ratio_range)
    if sample_rngs is None:
        masked_samples = rng.random(len(scores)) < mask_probability
        rngs = [rng] * len(scores)
    else:
        if len(sample_rngs) != len(scores):
            raise ValueError(f"sample_rngs has {len(sample_rngs)} generators for {len(scores)} samples")
        rngs = list(sample_rngs)
        masked_samples = np.array([r.random() < mask_probability for r in rngs], dtype=bool)
    masks = np.zeros(scores.shape, dtype=bool)
    for i in np.flatnonzero(masked_samples):
        if word_ids is None:
            masks[i] = policy_mask(scores[i], valid[i], batch_ratio, policy, rngs[i], **policy_kwargs)
        else:
            masks[i] = word_policy_mask(
                scores[i], word_ids[i], batch_ratio, policy, rngs[i], valid=valid[i], reduce=reduce, **policy_kwargs
            )
    return masks, batch_ratio
