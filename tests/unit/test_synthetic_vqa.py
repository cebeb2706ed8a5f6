"""Synthetic VQA from the shapes world: answers checked against the scene by an independent recomputation,
complementary pairs, the question-only ceiling, determinism, and the row layout shared with VQA v2."""

import io
import re
from collections import Counter, defaultdict

import pytest
from PIL import Image

from vlp.processing.readers.downstream import VQA_ROW_KEYS, build_answer_vocabulary, normalize_answer
from vlp.processing.worlds.shapes import COLOURS, RELATION_MARGIN, SHAPE_PLURALS, SHAPES, caption_holds
from vlp.processing.worlds.synthetic_vqa import (
    QUESTION_FAMILIES,
    SyntheticVQAConfig,
    build_synthetic_vqa_dataset,
    generate_items,
    item_rows,
    make_pair,
)
from vlp.training.metrics import load_metric

CONFIG = SyntheticVQAConfig(num_pairs=150, seed=3, max_objects=4)


@pytest.fixture(scope="module")
def items():
    return generate_items(CONFIG)


# --------------------------------------------------------------------------------------------
# An independent reading of the questions
# --------------------------------------------------------------------------------------------

_SINGULAR = {plural: shape for shape, plural in SHAPE_PLURALS.items()}


def _parse(words):
    """Attributes named by description words: {"size", "colour", "shape"} (None when not named)."""
    *modifiers, noun = words.split()
    named = {"size": None, "colour": None, "shape": None}
    for word in modifiers:
        key = "size" if word in ("small", "large") else "colour"
        assert key == "size" or word in COLOURS, words
        named[key] = word
    if noun not in ("object", "objects"):
        named["shape"] = _SINGULAR.get(noun, noun)
        assert named["shape"] in SHAPES, words
    return named


def _hits(named, objects):
    return [o for o in objects if all(v is None or getattr(o, k) == v for k, v in named.items())]


def _the(named, objects):
    found = _hits(named, objects)
    assert len(found) == 1, f"a definite description must pick out one object, found {len(found)}"
    return found[0]


def _holds(a, relation, b):
    dx, dy = b.x - a.x, b.y - a.y
    return {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation] >= RELATION_MARGIN


def recompute(question, objects):
    """The answer to a synthetic question, from the question text and the scene's objects only."""
    if m := re.fullmatch(r"how many (.+) are there\?", question):
        return str(len(_hits(_parse(m[1]), objects)))
    if m := re.fullmatch(r"what colour is the (.+)\?", question):
        return _the(_parse(m[1]), objects).colour
    if m := re.fullmatch(r"what shape is the (.+)\?", question):
        return _the(_parse(m[1]), objects).shape
    if m := re.fullmatch(r"is there an? (.+)\?", question):
        return "yes" if _hits(_parse(m[1]), objects) else "no"
    if m := re.fullmatch(r"is the (.+) (left of|right of|above|below) the (.+)\?", question):
        a, b = _the(_parse(m[1]), objects), _the(_parse(m[3]), objects)
        assert a is not b
        return "yes" if _holds(a, m[2], b) else "no"
    if m := re.fullmatch(r"are there more (.+) than (.+)\?", question):
        return "yes" if len(_hits(_parse(m[1]), objects)) > len(_hits(_parse(m[2]), objects)) else "no"
    raise AssertionError(f"unexpected question {question!r}")


def world_caption(question, answer):
    """The same fact as a caption of the world's grammar, for ``caption_holds`` (None when it has no form)."""
    numbers = ("no", "one", "two", "three", "four", "five", "six")
    if m := re.fullmatch(r"how many (.+) are there\?", question):
        n = int(answer)
        singular = " ".join(m[1].split()[:-1] + [_SINGULAR.get(m[1].split()[-1], "object")])
        return f"there is one {singular}" if n == 1 else f"there are {numbers[n]} {m[1]}"
    if m := re.fullmatch(r"what colour is the (.+)\?", question):
        return f"the {m[1]} is {answer}"
    if m := re.fullmatch(r"is there (an? .+)\?", question):
        return m[1] if answer == "yes" else f"there is no {m[1].split(' ', 1)[1]}"
    if m := re.fullmatch(r"is the (.+) (left of|right of|above|below) the (.+)\?", question):
        return f"the {m[1]} is {m[2]} the {m[3]}" if answer == "yes" else None
    return None


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_every_answer_matches_an_independent_recomputation(items):
    for item in items:
        assert recompute(item.question, item.scene.objects) == item.answer, item
        caption = world_caption(item.question, item.answer)
        if caption is not None:
            assert caption_holds(caption, item.scene), (caption, item)


def test_all_families_appear_with_varied_answers(items):
    by_family = defaultdict(Counter)
    for item in items:
        by_family[item.family][item.answer] += 1
    assert set(by_family) == set(QUESTION_FAMILIES)
    for family in ("exists", "relation", "compare"):
        assert by_family[family]["yes"] == by_family[family]["no"]  # each pair holds one yes and one no
    assert len(by_family["colour"]) >= 4 and len(by_family["shape"]) >= 4 and len(by_family["count"]) >= 3


def test_pairs_share_the_question_and_differ_in_answer(items):
    pairs = defaultdict(list)
    for item in items:
        pairs[item.pair_id].append(item)
    assert len(pairs) == CONFIG.num_pairs
    for pair_id, (a, b) in pairs.items():
        assert a.question == b.question and a.family == b.family
        assert a.answer != b.answer
        assert a.scene != b.scene
        assert (a.question_id, b.question_id) == (2 * pair_id, 2 * pair_id + 1)


def test_question_only_majority_is_far_from_perfect(items):
    rows = item_rows(items, CONFIG, render=False)
    # The best any image-blind answerer can do: the majority answer of each question text, fit on this very set.
    answers_of = defaultdict(Counter)
    for row in rows:
        answers_of[row["question"]][row["multiple_choice_answer"]] += 1
    predictions = [answers_of[row["question"]].most_common(1)[0][0] for row in rows]
    out = load_metric("vqa_accuracy").compute(
        predictions=predictions,
        references=[row["answers"] for row in rows],
        pair_ids=[row["pair_id"] for row in rows],
        n_resamples=200,
    )
    assert out["accuracy"] <= 0.5  # both questions of a pair have one text and different answers
    assert out["pair_accuracy"] == 0.0 and out["n_pairs"] == CONFIG.num_pairs
    # A per-family prior (what a question-type-only model learns) does worse still.
    prior = defaultdict(Counter)
    for row in rows:
        prior[row["question_type"]][row["multiple_choice_answer"]] += 1
    hits = [prior[row["question_type"]].most_common(1)[0][0] == row["multiple_choice_answer"] for row in rows]
    assert sum(hits) / len(hits) < 0.45


def test_deterministic_from_seed_split_and_index(items):
    again = generate_items(CONFIG)
    assert again == items
    bigger = SyntheticVQAConfig(num_pairs=400, seed=3, max_objects=4)
    assert make_pair(bigger, 7) == tuple(items[14:16])  # a pair does not depend on the set's size
    assert generate_items(bigger, 10, 12) == items[20:24]
    other_split = generate_items(SyntheticVQAConfig(num_pairs=20, seed=3, split="val", max_objects=4))
    other_seed = generate_items(SyntheticVQAConfig(num_pairs=20, seed=4, max_objects=4))
    scenes = {item.scene for item in items[:40]}
    assert not scenes & {item.scene for item in other_split}
    assert not scenes & {item.scene for item in other_seed}
    rows_a = item_rows(items[:6], CONFIG)
    rows_b = item_rows(again[:6], CONFIG)
    assert [r["image"]["bytes"] for r in rows_a] == [r["image"]["bytes"] for r in rows_b]


def test_rows_have_the_vqa_v2_layout(items):
    rows = item_rows(items[:8], CONFIG)
    for row, item in zip(rows, items):
        assert tuple(row) == VQA_ROW_KEYS
        assert row["answers"] == [item.answer] * 10 and row["multiple_choice_answer"] == item.answer
        assert normalize_answer(item.answer) == item.answer  # scored the same by the official normaliser
        assert row["question_type"] == item.family
        assert row["answer_type"] == {"count": "number", "colour": "other", "shape": "other"}.get(item.family, "yes/no")
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert image.size == (CONFIG.image_size, CONFIG.image_size) and image.mode == "RGB"
    dataset = build_synthetic_vqa_dataset(SyntheticVQAConfig(num_pairs=3, seed=1))
    assert len(dataset) == 6 and dataset.column_names == list(VQA_ROW_KEYS)
    assert dataset[0]["image"].size == (64, 64)
    vocabulary = build_answer_vocabulary(item_rows(items, CONFIG, render=False), min_count=1)
    assert {item.answer for item in items} == set(vocabulary)


def test_config_validation():
    with pytest.raises(ValueError, match="families"):
        SyntheticVQAConfig(families=("colours",))
    with pytest.raises(ValueError, match="num_pairs"):
        SyntheticVQAConfig(num_pairs=0)
    with pytest.raises(ValueError, match="max_objects"):
        SyntheticVQAConfig(families=("relation",), max_objects=1, min_objects=1)
    with pytest.raises(ValueError, match="zipf_exponent"):
        SyntheticVQAConfig(zipf_exponent=-1.0)
    only_colour = generate_items(SyntheticVQAConfig(num_pairs=5, families=("colour",)))
    assert {item.family for item in only_colour} == {"colour"}
