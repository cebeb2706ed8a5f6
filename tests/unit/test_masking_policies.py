"""Relevance-guided token masking (random, high, low, hint): counts, choices against an independent ranking, whole
words, determinism, the random share, the batch ratio and per-sample masking, and bad arguments."""

import math
import re

import numpy as np
import pytest

from vlp.processing.masking import (
    POLICIES,
    batch_policy_masks,
    group_scores,
    guided_count,
    hint_count,
    policy_mask,
    sample_ratio,
    word_policy_mask,
)

RATIOS = [0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0]
LENGTHS = [1, 3, 10, 37, 100]


def rng(seed):
    return np.random.default_rng(seed)


def sample(n_valid, seed, n_special=2, n_pad=5):
    """Scores (distinct) and validity for [CLS] + n_valid tokens + [SEP] + padding; padding gets the top scores so a
    policy that ignored validity would pick it."""
    generator = rng(1000 + seed)
    n = n_valid + n_special + n_pad
    scores = generator.normal(size=n)
    valid = np.zeros(n, dtype=bool)
    valid[1 : 1 + n_valid] = True
    scores[~valid] = scores.max() + 1 + np.arange((~valid).sum())
    return scores, valid


def top_k(scores, valid, k, highest=True):
    """Independent reference: the k valid positions of highest (lowest) score, by a plain argsort."""
    positions = np.flatnonzero(valid)
    order = np.argsort(scores[positions])
    chosen = order[::-1][:k] if highest else order[:k]
    return set(positions[chosen].tolist())


def test_guided_count_floors_with_a_minimum_of_one():
    assert guided_count(10, 0.25) == 2  # floor, where masked_count rounds 2.5 half up to 3
    assert guided_count(100, 0.29) == 29  # 0.29 * 100 is 28.999... in floating point
    assert guided_count(4, 0.1) == 1 and guided_count(4, 0.0) == 0 and guided_count(0, 0.5) == 0
    assert guided_count(7, 1.0) == 7
    assert hint_count(100, 0.4) == 4 and hint_count(100, 0.4, 0.25) == 10


def test_hint_reveals_at_least_one_unit_whenever_it_masks_two_or_more():
    """A six-word caption at ratio 0.5 masks 3 words: floor(0.1 * 0.5 * 6) = 0 would make `hint` equal `high`."""
    assert hint_count(6, 0.5) == 1 and hint_count(20, 0.4) == 1
    assert hint_count(6, 0.2) == 0  # k = 1: nothing to reveal without unmasking the sample
    assert hint_count(6, 0.5, hint_share=0.0) == 0  # hint switched off explicitly
    assert hint_count(4, 1.0, hint_share=1.0) == 3  # never all k
    for n in range(2, 13):
        scores, valid = sample(n, n)
        for ratio in (0.1, 0.3, 0.5):
            k = guided_count(n, ratio)
            for seed in range(5):
                high = policy_mask(scores, valid, ratio, "high", rng(seed))
                hint = policy_mask(scores, valid, ratio, "hint", rng(seed))
                assert hint.sum() == k - (1 if k >= 2 else 0) and not (hint & ~high).any()
                assert (hint != high).any() == (k >= 2)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("n_valid", LENGTHS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_exact_counts_and_invalid_never_masked(policy, n_valid, ratio):
    for seed in range(3):
        scores, valid = sample(n_valid, seed)
        mask = policy_mask(scores, valid, ratio, policy, rng(seed))
        k = max(1, math.floor(ratio * n_valid + 1e-9))
        reveal = min(k - 1, max(1, math.floor(0.1 * ratio * n_valid + 1e-9))) if k >= 2 else 0
        expected = k - reveal if policy == "hint" else k
        assert mask.shape == scores.shape and mask.dtype == bool
        assert mask.sum() == expected
        assert not mask[~valid].any()


@pytest.mark.parametrize("n_valid", LENGTHS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_high_and_low_pick_the_top_and_bottom_k(n_valid, ratio):
    for seed in range(3):
        scores, valid = sample(n_valid, seed)
        k = guided_count(n_valid, ratio)
        high = policy_mask(scores, valid, ratio, "high", rng(seed))
        low = policy_mask(scores, valid, ratio, "low", rng(seed))
        assert set(np.flatnonzero(high).tolist()) == top_k(scores, valid, k, highest=True)
        assert set(np.flatnonzero(low).tolist()) == top_k(scores, valid, k, highest=False)


@pytest.mark.parametrize("n_valid", [10, 50, 100, 200])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.9])
def test_hint_reveals_exactly_the_count_from_the_top_pool(n_valid, ratio):
    for seed in range(5):
        scores, valid = sample(n_valid, seed)
        k = guided_count(n_valid, ratio)
        mask = policy_mask(scores, valid, ratio, "hint", rng(seed))
        top = top_k(scores, valid, k)
        pool = top_k(scores, valid, math.ceil(0.1 * n_valid))
        masked = set(np.flatnonzero(mask).tolist())
        revealed = top - masked
        assert masked <= top
        assert len(revealed) == (min(k - 1, max(1, math.floor(0.1 * ratio * n_valid + 1e-9))) if k >= 2 else 0)
        assert revealed <= pool


def test_hint_reveals_uniformly_within_the_pool():
    """Over seeds every member of the pool is revealed sometimes, nothing outside it ever."""
    scores, valid = sample(100, 0)
    pool = top_k(scores, valid, 10)
    top = top_k(scores, valid, 50)
    counts = dict.fromkeys(pool, 0)
    for seed in range(300):
        revealed = top - set(np.flatnonzero(policy_mask(scores, valid, 0.5, "hint", rng(seed))).tolist())
        assert revealed <= pool and len(revealed) == 5
        for position in revealed:
            counts[position] += 1
    # 300 draws of 5 from 10: each position expected 150 times (binomial sd ~8.7)
    assert all(100 < c < 200 for c in counts.values()), counts


def test_hint_pool_and_share_are_parameters():
    scores, valid = sample(100, 1)
    mask = policy_mask(scores, valid, 0.4, "hint", rng(0), hint_share=0.5, hint_pool=0.3)
    revealed = top_k(scores, valid, 40) - set(np.flatnonzero(mask).tolist())
    assert len(revealed) == 20 and revealed <= top_k(scores, valid, 30)


def test_random_policy_is_uniform_over_valid_positions():
    scores, valid = sample(20, 0)
    counts = np.zeros(len(scores))
    for seed in range(500):
        counts += policy_mask(scores, valid, 0.25, "random", rng(seed))
    assert counts[~valid].sum() == 0
    # each valid position expected 500 * 5 / 20 = 125 times (sd ~9.7)
    assert np.all(np.abs(counts[valid] - 125) < 45), counts[valid]


def test_ties_are_broken_at_random_not_by_position():
    scores, valid = np.zeros(30), np.ones(30, dtype=bool)
    masks = [policy_mask(scores, valid, 0.2, "high", rng(seed)) for seed in range(20)]
    assert all(m.sum() == 6 for m in masks)
    assert len({m.tobytes() for m in masks}) >= 15
    assert np.mean([m[:6].all() for m in masks]) < 0.5


@pytest.mark.parametrize("policy", ["random", "hint"])
def test_same_seed_same_mask_other_seeds_differ(policy):
    scores, valid = sample(100, 3)
    first = policy_mask(scores, valid, 0.4, policy, rng(7))
    assert np.array_equal(first, policy_mask(scores, valid, 0.4, policy, rng(7)))
    others = {policy_mask(scores, valid, 0.4, policy, rng(seed)).tobytes() for seed in range(20)}
    assert len(others) >= 15


def test_high_and_low_do_not_depend_on_the_seed_for_distinct_scores():
    scores, valid = sample(60, 4)
    for policy in ("high", "low"):
        masks = {policy_mask(scores, valid, 0.3, policy, rng(seed)).tobytes() for seed in range(10)}
        assert len(masks) == 1


@pytest.mark.parametrize("policy", ["high", "low"])
def test_random_share_replaces_the_expected_share_of_the_choice(policy):
    """floor(share * k) positions are drawn uniformly from the n valid ones, so on average n_random * (n - k) / n of
    the masked positions fall outside the policy's own top-k choice; the count stays k."""
    n_valid, ratio, share = 100, 0.3, 0.5
    k, n_random = 30, 15
    outside = []
    for seed in range(400):
        scores, valid = sample(n_valid, seed)
        mask = policy_mask(scores, valid, ratio, policy, rng(seed), random_share=share)
        own = top_k(scores, valid, k, highest=policy == "high")
        assert mask.sum() == k and not mask[~valid].any()
        outside.append(len(set(np.flatnonzero(mask).tolist()) - own))
    expected = n_random * (n_valid - k) / n_valid  # 10.5; hypergeometric sd ~1.6, so sd of the mean ~0.08
    assert abs(np.mean(outside) - expected) < 0.5, np.mean(outside)


def test_random_share_zero_and_one():
    scores, valid = sample(50, 2)
    own = top_k(scores, valid, 20)
    assert set(np.flatnonzero(policy_mask(scores, valid, 0.4, "high", rng(0), random_share=0.0)).tolist()) == own
    full = [
        set(np.flatnonzero(policy_mask(scores, valid, 0.4, "high", rng(seed), random_share=1.0)).tolist())
        for seed in range(50)
    ]
    assert all(len(m) == 20 for m in full)
    assert np.mean([len(m - own) for m in full]) > 8  # uniform: 20 * 30 / 50 = 12 expected outside the top 20


def test_group_scores_mean_and_max():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 8.0, 0.5, 4.0, -1.0])
    word_ids = np.array([-1, 0, 0, 1, 2, 2, 0, -1])  # word 0 is split (non-contiguous ids still one word)
    assert np.allclose(group_scores(scores, word_ids, "mean"), [5.0, 8 / 3, 8 / 3, 2.0, 4.25, 4.25, 8 / 3, -1.0])
    assert np.allclose(group_scores(scores, word_ids, "max"), [5.0, 4.0, 4.0, 2.0, 8.0, 8.0, 4.0, -1.0])
    with pytest.raises(ValueError, match="'median'"):
        group_scores(scores, word_ids, "median")


def random_words(seed, n_words=30, n_pad=4):
    """Word ids for [CLS] + n_words words of 1-3 tokens + [SEP] + padding, and token scores."""
    generator = rng(2000 + seed)
    lengths = generator.integers(1, 4, size=n_words)
    word_ids = np.concatenate([[-1], np.repeat(np.arange(n_words), lengths), [-1] * (1 + n_pad)])
    return generator.normal(size=len(word_ids)), word_ids


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_whole_words_stay_whole_and_counts_are_in_words(policy, ratio, reduce):
    for seed in range(5):
        scores, word_ids = random_words(seed)
        mask = word_policy_mask(scores, word_ids, ratio, policy, rng(seed), reduce=reduce)
        assert not mask[word_ids == -1].any()
        masked_words = set()
        for word in range(30):
            tokens = mask[word_ids == word]
            assert tokens.all() or not tokens.any(), f"word {word} split"
            if tokens.all():
                masked_words.add(word)
        k = guided_count(30, ratio)
        assert len(masked_words) == (k - hint_count(30, ratio) if policy == "hint" else k)
        if policy in ("high", "low"):
            word_scores = np.array([getattr(np, reduce)(scores[word_ids == w]) for w in range(30)])
            order = np.argsort(word_scores)
            assert masked_words == set((order[::-1] if policy == "high" else order)[:k].tolist())


def test_word_mask_respects_valid():
    scores, word_ids = random_words(0)
    valid = word_ids >= 0
    valid[1:4] = False  # the first tokens become special
    for seed in range(10):
        mask = word_policy_mask(scores, word_ids, 1.0, "random", rng(seed), valid=valid)
        assert not mask[~valid].any() and mask[valid].all()


def test_batch_ratio_drawn_once_in_range_and_shared_by_policies():
    scores = np.stack([sample(40, s)[0] for s in range(16)])
    valid = np.stack([sample(40, s)[1] for s in range(16)])
    ratios = set()
    for seed in range(30):
        masks, ratio = batch_policy_masks(scores, valid, "high", rng(seed), mask_probability=1.0)
        assert 0.1 <= ratio <= 0.5
        assert masks.shape == scores.shape and masks.dtype == bool
        assert (masks.sum(axis=1) == guided_count(40, ratio)).all(), "one ratio for every sample of the batch"
        assert not masks[~valid].any()
        _, random_ratio = batch_policy_masks(scores, valid, "random", rng(seed), mask_probability=1.0)
        _, hint_ratio = batch_policy_masks(scores, valid, "hint", rng(seed), mask_probability=1.0)
        assert random_ratio == ratio == hint_ratio == sample_ratio(rng(seed))
        ratios.add(ratio)
    assert len(ratios) == 30 and min(ratios) < 0.2 and max(ratios) > 0.4


def test_batch_fixed_ratio_and_share_of_masked_samples():
    batch = 2000
    scores, valid = rng(0).normal(size=(batch, 12)), np.ones((batch, 12), dtype=bool)
    for probability in (0.5, 0.2):
        masks, ratio = batch_policy_masks(scores, valid, "low", rng(1), ratio=0.25, mask_probability=probability)
        assert ratio == 0.25
        masked = masks.any(axis=1)
        assert set(masks.sum(axis=1).tolist()) == {0, 3}
        sd = math.sqrt(probability * (1 - probability) / batch)
        assert abs(masked.mean() - probability) < 5 * sd, masked.mean()
    assert not batch_policy_masks(scores, valid, "high", rng(1), mask_probability=0.0)[0].any()


def test_batch_by_words_and_determinism():
    pairs = [random_words(s) for s in range(8)]
    width = max(len(ids) for _, ids in pairs)
    scores = np.stack([np.pad(s, (0, width - len(s))) for s, _ in pairs])
    word_ids = np.stack([np.pad(ids, (0, width - len(ids)), constant_values=-1) for _, ids in pairs])
    valid = word_ids >= 0
    masks, ratio = batch_policy_masks(scores, valid, "hint", rng(5), word_ids=word_ids, mask_probability=1.0)
    again, _ = batch_policy_masks(scores, valid, "hint", rng(5), word_ids=word_ids, mask_probability=1.0)
    assert np.array_equal(masks, again)
    expected_words = guided_count(30, ratio) - hint_count(30, ratio)
    for row, ids in zip(masks, word_ids):
        whole = [row[ids == w].all() for w in range(30)]
        assert all(row[ids == w].all() or not row[ids == w].any() for w in range(30))
        assert sum(whole) == expected_words and not row[ids == -1].any()


def test_batch_with_per_sample_generators_does_not_depend_on_the_batch():
    """With sample_rngs, sample i's coin and mask come from its own generator: the same sample gets the same mask in
    any batch, given the same ratio; the step's rng draws the ratio only."""
    scores = np.stack([sample(20, s)[0] for s in range(6)])
    valid = np.stack([sample(20, s)[1] for s in range(6)])
    own = [lambda i=i: rng(100 + i) for i in range(6)]
    full, ratio = batch_policy_masks(
        scores, valid, "high", rng(7), mask_probability=0.5, sample_rngs=[make() for make in own]
    )
    assert ratio == sample_ratio(rng(7))
    order = [4, 1, 5]
    part, part_ratio = batch_policy_masks(
        scores[order], valid[order], "high", rng(7), mask_probability=0.5, sample_rngs=[own[i]() for i in order]
    )
    assert part_ratio == ratio and np.array_equal(part, full[order])
    for i in range(6):
        coin = rng(100 + i).random() < 0.5
        assert full[i].any() == coin
        if coin:
            assert full[i].sum() == guided_count(20, ratio)
    with pytest.raises(ValueError, match="2 generators for 6 samples"):
        batch_policy_masks(scores, valid, "high", rng(7), sample_rngs=[rng(0), rng(1)])


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), "0.4", True])
def test_bad_ratio_raises_naming_the_value(ratio):
    scores, valid = sample(10, 0)
    with pytest.raises(ValueError, match=re.escape(repr(ratio))):
        policy_mask(scores, valid, ratio, "high", rng(0))
    with pytest.raises(ValueError, match=re.escape(repr(ratio))):
        sample_ratio(rng(0), ratio)


def test_bad_arguments_raise_naming_the_value():
    scores, valid = sample(10, 0)
    with pytest.raises(ValueError, match="'highest'"):
        policy_mask(scores, valid, 0.3, "highest", rng(0))
    with pytest.raises(ValueError, match="'middle'"):
        batch_policy_masks(scores[None], valid[None], "middle", rng(0))
    with pytest.raises(ValueError, match=re.escape(str(valid[:-1].shape))):
        policy_mask(scores, valid[:-1], 0.3, "high", rng(0))
    with pytest.raises(ValueError, match="int64"):
        policy_mask(scores, valid.astype(np.int64), 0.3, "high", rng(0))
    with pytest.raises(ValueError, match=re.escape(str((2, 3)))):
        word_policy_mask(scores, np.zeros((2, 3), dtype=int), 0.3, "high", rng(0))
    with pytest.raises(ValueError, match="-2"):
        word_policy_mask(scores, np.full(len(scores), -2), 0.3, "high", rng(0))
    with pytest.raises(ValueError, match="random_share=1.5"):
        policy_mask(scores, valid, 0.3, "high", rng(0), random_share=1.5)
    with pytest.raises(ValueError, match="mask_probability=2"):
        batch_policy_masks(scores[None], valid[None], "high", rng(0), mask_probability=2)
    with pytest.raises(ValueError, match=re.escape(str(scores.shape))):
        batch_policy_masks(scores, valid, "high", rng(0))
    with pytest.raises(ValueError, match="low=0.6"):
        sample_ratio(rng(0), low=0.6, high=0.2)
    bad = scores.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="nan"):
        policy_mask(bad, valid, 0.3, "high", rng(0))
    ignored = np.where(valid, scores, np.nan)  # non-finite scores of invalid tokens are ignored
    assert policy_mask(ignored, valid, 0.3, "high", rng(0)).sum() == 3
