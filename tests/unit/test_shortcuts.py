"""Text-only floors (training/evaluation/shortcuts.py) and the balancing that keeps captions alone from telling the
answer (processing/worlds/text_balance.py, the ITM positive, GITM hard distractors and the evaluation foils)."""

import random
from collections import Counter

import numpy as np
import pytest

from vlp.processing.grouping import GroupConfig, GroupedMatchingDataset
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import eval_sets
from vlp.processing.worlds import shapes as sw
from vlp.processing.worlds.text_balance import CaptionFrequencies
from vlp.training.evaluation.shortcuts import (
    BagOfWords,
    features_of,
    foil_acc_r,
    gitm_segment_items,
    itm_pair_items,
    text_only_floor,
)
from vlp.training.pretrain.data import holds_for_scene


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    cache = tmp_path_factory.mktemp("worlds")
    train = sw.build_dataset(sw.WorldConfig(num_scenes=1500, seed=0, image_size=32), cache_dir=cache)
    held = sw.build_dataset(sw.WorldConfig(num_scenes=1000, seed=1, image_size=32), cache_dir=cache)
    tokenizer = train_wordpiece_tokenizer((c for cs in train["captions"] for c in cs), vocab_size=400)
    processor = VLPProcessor(VLPImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    return train, held, processor


def test_features_are_words_and_word_pairs():
    assert features_of("There is a red circle", ngram=2) == [
        "there",
        "is",
        "a",
        "red",
        "circle",
        "<s> there",
        "there is",
        "is a",
        "a red",
        "red circle",
        "circle </s>",
    ]


def test_bag_of_words_learns_a_word_rule_and_the_floor_reports_it_against_the_majority():
    rng = random.Random(0)
    words = ["red", "blue", "green", "circle", "square", "star"]
    texts = [" ".join(rng.choice(words) for _ in range(4)) for _ in range(400)]
    labels = ["yes" if "star" in t.split() else "no" for t in texts]
    floor = text_only_floor(texts[:300], labels[:300], texts[300:], labels[300:])
    assert floor["accuracy"] >= 0.97 and floor["majority"] < 0.8
    assert floor["ci_low"] <= floor["accuracy"] <= floor["ci_high"] and floor["n_eval"] == 100
    # Labels independent of the text: nothing to learn, the classifier falls back to about the majority.
    coin = [rng.choice(["yes", "no"]) for _ in texts]
    floor = text_only_floor(texts[:300], coin[:300], texts[300:], coin[300:])
    assert abs(floor["accuracy"] - floor["majority"]) < 0.12
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        BagOfWords().fit(["a", "b", "c"], [0, 1])


def test_foil_acc_r_sees_a_foil_word_and_is_half_on_mirrored_pairs():
    rng = random.Random(1)
    captions = [f"there is a {rng.choice(['red', 'blue'])} {rng.choice(['circle', 'square'])}" for _ in range(200)]
    marked = [(c, c + " zzz") for c in captions]  # every foil carries a word no caption has
    assert foil_acc_r(marked[:150], marked[150:])["acc_r"] == 1.0
    # Each pair also appears with its roles swapped: no text-only scorer can do better than chance.
    mirrored = [(a, b) for a, b in zip(captions[::2], captions[1::2])]
    mirrored += [(b, a) for a, b in mirrored]
    assert foil_acc_r(mirrored, mirrored)["acc_r"] == pytest.approx(0.5, abs=0.03)


def test_caption_frequencies_accept_and_choose_at_the_rates_they_promise():
    frequencies = CaptionFrequencies(["a red circle"] * 9 + ["a blue circle"])
    assert frequencies.log_prob("a red circle") > frequencies.log_prob("a blue circle")
    rng = random.Random(0)
    ratio = np.exp(frequencies.log_prob("a blue circle") - frequencies.log_prob("a red circle"))
    accepted = np.mean([frequencies.accept("a red circle", "a blue circle", rng) for _ in range(4000)])
    assert accepted == pytest.approx(ratio, abs=0.03)  # min(1, P(foil) / P(caption))
    assert all(frequencies.accept("a blue circle", "a red circle", rng) for _ in range(100))  # ratio > 1
    drawn = Counter(frequencies.choose(["a red circle", "a blue circle"], rng) for _ in range(4000))
    assert drawn["a red circle"] / 4000 == pytest.approx(1 / (1 + ratio), abs=0.03)
    assert frequencies.choose([], rng) is None
    with pytest.raises(ValueError, match="at least one caption"):
        CaptionFrequencies([])


def test_itm_caption_alone_does_not_tell_the_label(worlds):
    """Negatives are kept only when false for the sample's scene; the positive passes the same test against another
    row's scene. Negations (true for almost every scene) then reach both labels alike."""
    train, held, processor = worlds
    dataset = PretrainingDataset(train, processor, holds_fn=holds_for_scene)
    texts, labels = itm_pair_items(dataset, range(len(train)))
    negation = np.array([" no " in f" {t} " for t in texts])
    labels = np.array(labels)
    assert negation.sum() > 5
    assert abs(negation[labels == 1].mean() - negation[labels == 0].mean()) < 0.02
    assert all(t in c for t, c, label in zip(texts, train["captions"], labels) if label == 1)  # own captions
    floor = text_only_floor(
        texts,
        labels.tolist(),
        *itm_pair_items(PretrainingDataset(held, processor, holds_fn=holds_for_scene), range(len(held))),
    )
    assert floor["accuracy"] <= floor["majority"] + 0.03, floor


def test_itm_positive_without_the_world_truth_is_the_shown_caption(worlds):
    train, _, processor = worlds
    dataset = PretrainingDataset(train, processor, itm_probability=0.0)
    assert all(dataset[i]["itm_caption"] == dataset[i]["caption"] for i in range(20))


def test_grouped_matching_segments_alone_do_not_tell_own_from_distractor(worlds):
    """Hard distractors only, own probability 0.5: a caption-only classifier stays at the majority answer."""
    train, held, processor = worlds

    def items(rows):
        config = GroupConfig(rows=2, cols=2, own_probability=0.5, distractors="hard")
        return gitm_segment_items(
            GroupedMatchingDataset(rows, processor, config, patch_size=8, image_size=32, max_length=64),
            range(len(rows)),
        )

    floor = text_only_floor(*items(train), *items(held))
    assert floor["n_eval"] > 3000
    assert floor["accuracy"] <= floor["majority"] + 0.03, floor


def test_evaluation_foils_alone_do_not_tell_caption_from_foil():
    """Over every phenomenon, a text-only scorer trained on the training world's foils has acc_r near 0.5 on the
    evaluation world's (uniform foils gave 0.68, and 0.93 on counts)."""
    train_world = sw.WorldConfig(num_scenes=1500, seed=0, image_size=32)

    def pairs(world):
        return [
            (item.caption, item.foil)
            for phenomenon in eval_sets.FOIL_PHENOMENA
            for item in eval_sets.foil_items(world, phenomenon, 200)[0]
        ]

    result = foil_acc_r(pairs(train_world), pairs(eval_sets.eval_world(train_world)))
    assert result["n_eval"] == 200 * len(eval_sets.FOIL_PHENOMENA)
    assert abs(result["acc_r"] - 0.5) < 0.05, result
