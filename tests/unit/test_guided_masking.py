"""Attention-guided masking in the step: what the guidance pass is asked for, how relevance becomes MLM and MIM masks
(policies, fallback rows, joint modes, BERT replacement), and per-sample determinism."""

import numpy as np
import pytest
import torch

from vlp.processing.collator import IGNORE_INDEX
from vlp.processing.masking import guided_count, sample_ratio
from vlp.training.pretrain.guided_masking import (
    RATIO_STREAM,
    GuidedMasking,
    caption_words,
    mask_diagnostics,
    patch_validity,
    share_metrics,
)

MASK_ID, PAD, CLS, SEP = 4, 0, 2, 3
PATCH = 8


def guide(**kwargs):
    """A GuidedMasking with raw attention scoring unless told (the tests below build relevance by hand)."""
    values = dict(
        policy="high",
        targets=("mlm",),
        seed=11,
        mask_token_id=MASK_ID,
        scoring="attention",
        replacement_ids=np.arange(5, 50),
        never_masked_ids=np.array([PAD, CLS, SEP]),
        patch_size=PATCH,
        probability=1.0,
        ratio=0.5,
    )
    values.update(kwargs)
    return GuidedMasking(**values)


def make_batch(lengths=(8, 6, 7), indices=None, image=16):
    """Captions of one token per word: [CLS] w1 .. wn [SEP] + padding; 16x16 images (2x2 patches of 8)."""
    size, width = len(lengths), max(lengths)
    indices = indices or list(range(size))
    ids = torch.full((size, width), PAD)
    word_ids = torch.full((size, width), -1)
    mask = torch.zeros((size, width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.tensor([CLS] + [10 + indices[row] % 4 * 10 + k for k in range(n - 2)] + [SEP])
        word_ids[row, 1 : n - 1] = torch.arange(n - 2)
        mask[row, :n] = 1
    return {
        "input_ids": ids.clone(),
        "plain_input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": 0 * ids,
        "word_ids": word_ids,
        "mlm_labels": torch.full_like(ids, IGNORE_INDEX),
        "concept_mask": word_ids % 2 == 0,
        "pixel_values": torch.zeros(size, 3, image, image),
        "pixel_mask": torch.ones(size, image, image, dtype=torch.long),
        "index": torch.tensor(indices),
        "epoch": torch.zeros(size, dtype=torch.long),
        "object_patches": torch.tensor([[True, False, False, True]] * size),
    }


def relevance_for(batch, word_scores=None, patch_scores=None, token_rows=None):
    """A relevance tensor (B, R, S) laid out as `GuidedMasking.request` asks: set 0 ranks words, set 1 patches."""
    size, length = batch["input_ids"].shape
    patches = 4
    sets = 2 + (length if token_rows is not None else 0)
    relevance = torch.zeros(size, sets, length + 1 + patches)
    if word_scores is not None:
        relevance[:, 0, :length] = word_scores
    if patch_scores is not None:
        relevance[:, 1, length + 1 :] = patch_scores
    if token_rows is not None:
        relevance[:, 2:, length + 1 :] = token_rows
    return relevance


def test_request_asks_patches_for_words_and_words_for_patches():
    batch = make_batch()
    weights = guide().request(batch)
    length = batch["input_ids"].shape[1]
    assert weights.shape == (3, 2, length + 1 + 4)
    assert (weights[:, 0, length + 1 :] == 1).all() and weights[:, 0, : length + 1].sum() == 0
    words = caption_words(batch["attention_mask"].bool())
    assert torch.equal(weights[:, 1, :length].bool(), words)
    assert torch.equal(words, batch["word_ids"] >= 0), "[CLS], [SEP] and padding never ask"
    cls = guide(word_query="cls", patch_query="cls").request(batch)
    assert (cls[:, :, 0] == 1).all() and cls[:, :, 1:].sum() == 0
    joint = guide(targets=("mlm", "mim"), joint="together").request(batch)
    assert joint.shape[1] == 2 + length
    for j in range(length):
        assert torch.equal(joint[:, 2 + j].nonzero()[:, 1], torch.full(((joint[:, 2 + j] > 0).sum(),), j))
        assert torch.equal(joint[:, 2 + j, j].bool(), words[:, j])


def test_patch_validity_follows_the_pixel_mask():
    pixels = torch.zeros(2, 3, 16, 24)
    mask = torch.ones(2, 16, 24, dtype=torch.long)
    mask[1, :, 16:] = 0
    valid = patch_validity(pixels, mask, 8)
    assert valid.shape == (2, 6) and valid[0].all()
    assert valid[1].tolist() == [True, True, False, True, True, False]


def test_high_masks_the_top_words_low_the_bottom_and_labels_hold_the_originals():
    batch = make_batch()
    scores = torch.arange(batch["input_ids"].shape[1], dtype=torch.float).repeat(3, 1)  # later words score higher
    for policy in ("high", "low"):
        b = make_batch()
        guide(policy=policy).apply(b, step=0, relevance=relevance_for(b, word_scores=scores))
        for row in range(3):
            n_words = int((b["word_ids"][row] >= 0).sum())
            k = guided_count(n_words, 0.5)
            masked = (b["mlm_labels"][row] != IGNORE_INDEX).nonzero().flatten().tolist()
            words = (b["word_ids"][row] >= 0).nonzero().flatten().tolist()
            assert masked == (words[-k:] if policy == "high" else words[:k])
            assert torch.equal(b["mlm_labels"][row][masked], batch["plain_input_ids"][row][masked])
            kept = b["mlm_labels"][row] == IGNORE_INDEX
            assert torch.equal(b["input_ids"][row][kept], batch["plain_input_ids"][row][kept])
            assert not (b["mlm_labels"][row][b["word_ids"][row] < 0] != IGNORE_INDEX).any()


def test_bert_replacement_is_80_10_10():
    rows = 600
    b = make_batch(lengths=(22,) * rows, indices=list(range(rows)))
    guide(policy="random", ratio=1.0).apply(b, step=0)
    masked = b["mlm_labels"] != IGNORE_INDEX
    assert masked.sum() == rows * 20
    changed = b["input_ids"][masked]
    original = b["mlm_labels"][masked]
    share_mask = (changed == MASK_ID).float().mean()
    share_same = (changed == original).float().mean()
    assert abs(share_mask - 0.8) < 0.02 and abs(share_same - 0.1) < 0.015


def test_rows_without_relevance_fall_back_to_random_at_the_same_ratio():
    b = make_batch(lengths=(12, 12, 12, 12))
    scores = torch.arange(12, dtype=torch.float).repeat(2, 1)
    rel = relevance_for(make_batch(lengths=(12, 12)), word_scores=scores)
    stats = guide(ratio=None).apply(b, step=3, relevance=rel, guided_rows=torch.tensor([1, 3]))
    ratio = sample_ratio(np.random.default_rng([11, 3, RATIO_STREAM]))
    k = guided_count(10, ratio)
    counts = (b["mlm_labels"] != IGNORE_INDEX).sum(dim=1).tolist()
    assert counts == [k] * 4
    for row in (1, 3):  # guided: the top-k words
        assert (b["mlm_labels"][row, 11 - k : 11] != IGNORE_INDEX).all()
    assert stats["guided_rows"] == 2 and stats["rows"] == 4


def test_a_sample_gets_the_same_mask_in_any_batch_and_the_ratio_is_per_step():
    """Here the batches also pad to different lengths (12 and 9 tokens)."""
    scores = torch.rand(4, 12, generator=torch.Generator().manual_seed(0))
    settings = [dict(ratio=None, probability=0.5, policy="hint")] * 5 + [dict(ratio=1.0, policy="random")] * 15
    for seed, setting in enumerate(settings):
        full = make_batch(lengths=(9, 9, 12, 9), indices=[10, 11, 12, 13])
        g = guide(seed=seed, **setting)
        g.apply(full, step=5, relevance=relevance_for(full, word_scores=scores))
        part = make_batch(lengths=(9, 9), indices=[13, 11])
        g.apply(part, step=5, relevance=relevance_for(part, word_scores=scores[[3, 1], :9]))
        for key in ("mlm_labels", "input_ids"):
            assert torch.equal(part[key], full[key][[3, 1], :9]), key
    g = guide(ratio=None)
    assert g.step_ratio(5) == g.step_ratio(5) and g.step_ratio(5) != g.step_ratio(6)
    assert 0.1 <= g.step_ratio(6) <= 0.5


def test_mim_high_and_joint_modes_choose_patches_from_the_words():
    b = make_batch(lengths=(6, 6))
    patch_scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.3, 0.7]])
    g = guide(targets=("mim",), ratio=0.5)
    g.apply(b, step=0, relevance=relevance_for(b, patch_scores=patch_scores))
    assert b["mim_mask"].tolist() == [[False, True, True, False], [True, False, False, True]]
    # Joint: word scores make words 1 and 2 (positions 2, 3) the masked ones in both rows (ratio 0.5 of 4 words);
    # the masked words point at patch 0 (then 1), the visible ones at patch 3 (then 2).
    word_scores = torch.tensor([[0, 0, 5, 4, 0, 0]] * 2, dtype=torch.float)
    token_rows = torch.zeros(2, 6, 4)
    token_rows[:, 2:4, 0] = 1.0
    token_rows[:, [1, 4], 3] = 1.0
    token_rows[:, [1, 4], 2] = 0.5
    token_rows[:, :, 1] = 0.2
    for joint, expected in (("together", {0, 1}), ("complementary", {3, 2})):
        b = make_batch(lengths=(6, 6))
        g = guide(targets=("mlm", "mim"), joint=joint, ratio=0.5)
        g.apply(b, step=0, relevance=relevance_for(b, word_scores, token_rows=token_rows))
        assert ((b["mlm_labels"] != IGNORE_INDEX).nonzero()[:, 1].tolist()) == [2, 3, 2, 3]
        for row in range(2):
            assert set(b["mim_mask"][row].nonzero().flatten().tolist()) == expected, joint


def test_diagnostics_count_concept_words_and_object_patches():
    b = make_batch(lengths=(6,))
    b["mlm_labels"][0, [1, 2]] = 7  # words 0 (concept) and 1 (not)
    b["mim_mask"] = torch.tensor([[True, True, False, False]])
    stats = mask_diagnostics(b)
    assert stats["masked_words"] == 2 and stats["masked_concept_words"] == 1
    assert stats["caption_words"] == 4 and stats["caption_concept_words"] == 2
    assert stats["masked_patches"] == 2 and stats["masked_object_patches"] == 1 and stats["object_patches"] == 2
    shares = share_metrics(stats)
    assert shares["concept_word_share"] == 0.5 and shares["object_patch_share"] == 0.5
    assert shares["concept_word_base"] == 0.5 and shares["masked_word_share"] == 0.5


@pytest.mark.parametrize("policy", ["high", "hint", "low"])
def test_warmup_and_random_need_no_guidance(policy):
    g = guide(policy=policy, warmup_steps=10)
    assert not g.needs_guidance(9) and g.needs_guidance(10)
    assert not guide(policy="random").needs_guidance(100)


def test_lift_scoring_discounts_what_every_position_attends_to():
    assert GuidedMasking(policy="high", targets=("mlm",)).scoring == "lift"  # the default, by measurement (README)
    g = guide(scoring="lift")
    b = make_batch(lengths=(6,))
    weights = g.request(b)
    assert weights.shape[1] == 3 and torch.equal(weights[0, 2].bool(), torch.ones(6 + 1 + 4, dtype=torch.bool))
    relevance = np.zeros((1, 3, 11))
    relevance[0, 0, 1:5] = [0.4, 0.1, 0.1, 0.05]  # from the patches
    relevance[0, 2, 1:5] = [0.4, 0.02, 0.1, 0.1]  # from everything: word 0 is a sink
    words, _ = g.scores(relevance)
    assert np.argmax(words[0, 1:5]) == 1 and np.allclose(words[0, 1:5], [1.0, 5.0, 1.0, 0.5])
    plain, _ = guide().scores(relevance)
    assert np.argmax(plain[0, 1:5]) == 0


def test_object_patches_cover_the_objects_and_the_collator_passes_them_on():
    import json

    from vlp.processing.worlds import shapes as shapes_world
    from vlp.training.pretrain.data import object_patches_for_scene

    scene = shapes_world.sample_scene(shapes_world.WorldConfig(seed=0, max_objects=3), 5)
    scene_json = json.dumps(scene.to_dict(), sort_keys=True)
    flags = object_patches_for_scene(scene_json, 4, 4, 16).reshape(4, 4)
    coverage = shapes_world.object_masks(scene, 64).max(axis=0)
    for r in range(4):
        for c in range(4):  # independent: the covered share of each 16 x 16 block
            share = coverage[16 * r : 16 * r + 16, 16 * c : 16 * c + 16].mean()
            assert flags[r, c] == (share >= 0.1)
    for obj in scene.objects:  # every object's centre patch is flagged
        assert flags[min(int(obj.y * 4), 3), min(int(obj.x * 4), 3)]
    assert not flags.all()
