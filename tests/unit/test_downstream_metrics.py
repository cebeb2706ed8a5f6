"""Downstream metrics: official VQA accuracy, retrieval recall, caption metrics (pycocoevalcap), bootstrap helper."""

import itertools
import os
import shutil

import numpy as np
import pytest
import repo_paths

from vlp.processing.readers.downstream import (
    leave_one_out_accuracy,
    normalize_answer,
    process_punctuation,
    read_vqa_annotations,
    read_vqa_results,
    reference_answers,
    vqa_question_accuracy,
)
from vlp.training.metrics import available_metrics, load_metric
from vlp.training.statistics import mean_interval, ratio_interval

FIXTURES = os.path.join(repo_paths.FIXTURES, "downstream")
HAVE_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAVE_JAVA, reason="pycocoevalcap's tokenizer and METEOR need java")


@pytest.fixture(scope="module")
def vqa():
    return load_metric("vqa_accuracy")


@pytest.fixture(scope="module")
def recall():
    return load_metric("retrieval_recall")


@pytest.fixture(scope="module")
def captions():
    return load_metric("caption_metrics")


def test_modules_load_offline_from_the_local_folder(vqa, recall, captions):
    assert {"vqa_accuracy", "retrieval_recall", "caption_metrics"} <= set(available_metrics())
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for module, inputs in ((vqa, {"predictions", "references"}), (recall, {"predictions", "references"}),
                           (captions, {"predictions", "references"})):  # fmt: skip
        assert set(module.features) == inputs
        assert module.citation and module.description and module.inputs_description


# --------------------------------------------------------------------------------------------
# VQA normalisation: one case per rule of the evaluation code
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("  yes\n", "yes"),  # whitespace
        ("black/white", "black white"),  # a mark touching no space becomes a space
        ("black / white", "black white"),  # a mark touching a space is deleted (then words re-joined)
        ("1,000", "1000"),  # a comma between digits: every mark is deleted
        ("1,000 (about)", "1000 about"),  # ... including the brackets elsewhere in the answer
        ("red,blue", "red blue"),  # a comma between letters becomes a space
        ("yes!", "yes"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("yes.", "yes"),  # other periods go
        ("5.", "5"),  # also after a digit (the official pattern's look-behind is a look-ahead)
        ("Two", "2"),  # number words to digits, after lowercasing
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("a dog", "dog"),  # articles removed
        ("The Man", "man"),
        ("an apple a day", "apple day"),
        ("dont", "don't"),  # contractions fixed
        ("isnt it", "isn't it"),
        ("Im", "im"),  # the map's capitalised keys never match lowercased words
        ("it's", "it's"),  # the apostrophe is not punctuation
        ("12:30", "12:30"),  # nor is the colon
    ],
)
def test_normalize_answer_rules(answer, expected):
    assert normalize_answer(answer) == expected


def test_punctuation_is_checked_on_the_original_text():
    # "-" touches a space in the original, so every "-" is deleted, even the one inside "t-shirt".
    assert process_punctuation("t-shirt - red") == "tshirt  red"
    assert process_punctuation("t-shirt") == "t shirt"


# --------------------------------------------------------------------------------------------
# VQA accuracy per question
# --------------------------------------------------------------------------------------------


def _official_loop(prediction, answers):
    """Literal transcription of the evaluation code's per-question loop (references already processed)."""
    accuracies = []
    for j in range(len(answers)):
        others = answers[:j] + answers[j + 1 :]
        accuracies.append(min(1, sum(a == prediction for a in others) / 3))
    return sum(accuracies) / len(accuracies)


def test_leave_one_out_two_of_ten_is_point_six():
    # 2 of 10 annotators agree. Dropping one of the 2 leaves 1 match: min(1, 1/3) = 1/3 (2 subsets).
    # Dropping one of the other 8 leaves 2 matches: min(1, 2/3) = 2/3 (8 subsets).
    # Mean: (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10 = 0.6.
    answers = ["cat", "cat"] + ["dog"] * 8
    assert vqa_question_accuracy("cat", answers) == pytest.approx(0.6, abs=1e-12)
    # 1 of 10: 9 subsets with 1 match -> 9 * 1/3 / 10 = 0.3; 3 of 10: (3 * 2/3 + 7 * 1) / 10 = 0.9; 4 of 10: 1.
    assert [leave_one_out_accuracy(k, 10) for k in range(6)] == pytest.approx([0, 0.3, 0.6, 0.9, 1.0, 1.0])
    # Three annotators, one agrees: (1 * 0 + 2 * 1/3) / 3 = 2/9.
    assert vqa_question_accuracy("cat", ["cat", "dog", "dog"]) == pytest.approx(2 / 9)


def test_accuracy_matches_the_literal_official_loop_on_all_small_cases():
    vocabulary = ["2", "two", "dog", "a dog"]
    for answers in itertools.product(vocabulary, repeat=4):
        for prediction in ("2", "Two", "dog", "A dog", "cat"):
            refs = reference_answers(list(answers))
            expected = _official_loop(normalize_answer(prediction), refs)
            assert vqa_question_accuracy(prediction, list(answers)) == pytest.approx(expected)


def test_each_rule_in_a_scored_question():
    three_of_ten = ["2"] * 3 + ["3"] * 7
    assert vqa_question_accuracy("Two.", three_of_ten) == pytest.approx(0.9)  # case, period, number word
    assert vqa_question_accuracy("the 2", three_of_ten) == pytest.approx(0.9)  # article
    refs = ["black white"] * 4 + ["white"] * 6
    assert vqa_question_accuracy("Black/White", refs) == pytest.approx(1.0)  # slash -> space
    refs = ["don't know"] * 2 + ["no"] * 8
    assert vqa_question_accuracy("dont know", refs) == pytest.approx(0.6)  # contraction
    refs = ["1000"] * 10
    assert vqa_question_accuracy("1,000", refs) == pytest.approx(1.0)  # comma between digits


def test_reference_processing_official_versus_full():
    # Official: identical references are used verbatim, so un-normalised ones never match a normalised prediction.
    refs = ["Two"] * 10
    assert vqa_question_accuracy("two", refs, "official") == 0.0
    assert vqa_question_accuracy("two", refs, "full") == 1.0
    # Disagreeing references are punctuation-processed only: "a dog" keeps its article.
    refs = ["a dog"] * 5 + ["dog/cat"] * 5
    assert reference_answers(refs) == ["a dog"] * 5 + ["dog cat"] * 5
    assert vqa_question_accuracy("a dog", refs, "official") == 0.0
    assert vqa_question_accuracy("a dog", refs, "full") == 1.0
    with pytest.raises(ValueError, match="reference_processing"):
        reference_answers(refs, "lenient")


# --------------------------------------------------------------------------------------------
# The vqa_accuracy module
# --------------------------------------------------------------------------------------------


def _fixture_inputs():
    path = os.path.join(FIXTURES, "v2_mscoco_val2014_annotations.json")
    annotations = {a["question_id"]: a for a in read_vqa_annotations(path).annotations}
    results = read_vqa_results(os.path.join(FIXTURES, "vqa_fake_results.json"))
    rows = [annotations[r["question_id"]] for r in results]
    return results, rows


def test_vqa_module_on_the_fixture_by_hand(vqa):
    results, rows = _fixture_inputs()
    out = vqa.compute(
        predictions=[r["answer"] for r in results],
        references=[a["answers"] for a in rows],
        question_types=[a["question_type"] for a in rows],
        answer_types=[a["answer_type"] for a in rows],
        question_ids=[r["question_id"] for r in results],
        pairs=[[501001, 502000], [77003001, 501000]],
        n_resamples=500,
    )
    # Per question (see tests/fixtures/downstream): "three" vs 7 x "3" -> 1; "No" vs 9 x "no" -> 1; "Red/White"
    # -> "red white" vs one "red/white" -> 0.3; "yes" x10 -> 1; "a frisbee" -> "frisbee" x7 -> 1; "1" vs one "1"
    # -> 0.3; "no" vs one "no" -> 0.3; "night" -> 0.
    assert out["scores"] == pytest.approx([1, 1, 0.3, 1, 1, 0.3, 0.3, 0])
    assert out["accuracy"] == pytest.approx(4.9 / 8)
    assert out["n_questions"] == 8
    assert out["per_answer_type"]["number"]["accuracy"] == pytest.approx(0.65)
    assert out["per_answer_type"]["yes/no"]["accuracy"] == pytest.approx(2.3 / 3)
    assert out["per_answer_type"]["other"]["accuracy"] == pytest.approx(1.3 / 3)
    assert out["per_question_type"]["how many"] == pytest.approx(
        {"accuracy": 0.65, "accuracy_low": 0.3, "accuracy_high": 1.0, "n_questions": 2}
    )
    assert out["per_question_type"]["what time"]["accuracy"] == 0.0
    # Pair 1: 1 and 1 -> right; pair 2: 0.3 and 1 -> wrong.
    assert out["pair_accuracy"] == pytest.approx(0.5) and out["n_pairs"] == 2
    assert out["accuracy_low"] <= out["accuracy"] <= out["accuracy_high"]


def test_vqa_pairs_by_ids_threshold_and_interval(vqa):
    refs = [["yes"] * 10, ["no"] * 10, ["2"] * 3 + ["3"] * 7, ["3"] * 10]
    predictions = ["yes", "no", "2", "3"]
    by_ids = vqa.compute(predictions=predictions, references=refs, pair_ids=[0, 0, 1, 1], n_resamples=200)
    by_pairs = vqa.compute(
        predictions=predictions,
        references=refs,
        question_ids=[10, 11, 12, 13],
        pairs=[[10, 11], [12, 13]],
        n_resamples=200,
    )
    assert by_ids["pair_accuracy"] == by_pairs["pair_accuracy"] == 0.5  # the 0.9 question fails threshold 1
    lenient = vqa.compute(predictions=predictions, references=refs, pair_ids=[0, 0, 1, 1], pair_threshold=0.9)
    assert lenient["pair_accuracy"] == 1.0
    # A pair whose partner is not evaluated is skipped; none usable at all is an error.
    ids = [10, 11, 12, 13]
    partial = vqa.compute(predictions=predictions, references=refs, question_ids=ids, pairs=[[10, 11], [13, 99]])
    assert partial["n_pairs"] == 1
    with pytest.raises(ValueError, match="question_ids"):
        vqa.compute(predictions=predictions, references=refs, pairs=[[10, 11]])
    with pytest.raises(ValueError, match="no complementary pair"):
        vqa.compute(predictions=predictions, references=refs, question_ids=[10, 11, 12, 13], pairs=[[98, 99]])


def test_vqa_interval_is_seeded_and_covers_a_binomial_mean(vqa):
    rng = np.random.default_rng(3)
    right = rng.random(400) < 0.7
    predictions = ["yes" if r else "no" for r in right]
    refs = [["yes"] * 10] * 400
    a = vqa.compute(predictions=predictions, references=refs, seed=5)
    b = vqa.compute(predictions=predictions, references=refs, seed=5)
    assert (a["accuracy_low"], a["accuracy_high"]) == (b["accuracy_low"], b["accuracy_high"])
    p = right.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / 400)  # the normal approximation the percentile bootstrap should match
    assert a["accuracy_low"] == pytest.approx(p - half, abs=0.012)
    assert a["accuracy_high"] == pytest.approx(p + half, abs=0.012)


# --------------------------------------------------------------------------------------------
# Bootstrap helper
# --------------------------------------------------------------------------------------------


def test_bootstrap_helpers():
    assert mean_interval([0.4] * 50) == [pytest.approx(0.4), pytest.approx(0.4)]
    assert all(np.isnan(mean_interval([])))
    # Cluster ratio: two clusters with 1/1 and 0/3 -> resamples give 1, 0 or 1/4; the point 1/4 lies inside.
    low, high = ratio_interval([1, 0], [1, 3], n_resamples=400)
    assert low == 0.0 and high == 1.0
    with pytest.raises(ValueError, match="n_resamples"):
        mean_interval([1.0], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([1.0], confidence=1.5)


# --------------------------------------------------------------------------------------------
# Retrieval recall
# --------------------------------------------------------------------------------------------


def _brute_force_ranks(sim, owners):
    """Ranks by sorting (no ties in the input): i2t per image (best own text), t2i per text."""
    n_images, n_texts = sim.shape
    i2t = []
    for i in range(n_images):
        order = list(np.argsort(-sim[i]))
        own = [j for j in range(n_texts) if owners[j] == i]
        i2t.append(min(order.index(j) for j in own))  # position of the best own text = foreign texts above it
    t2i = [list(np.argsort(-sim[:, j])).index(owners[j]) for j in range(n_texts)]
    return np.array(i2t), np.array(t2i)


def test_recall_on_a_constructed_matrix_with_known_ranks(recall):
    # 3 images, 2 captions each: texts 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2.
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.3, 0.0, 0.05],  # image 0: own text 0 is first -> i2t rank 0
            [0.8, 0.7, 0.6, 0.1, 0.0, 0.05],  # image 1: best own (text 2, 0.6) below texts 0, 1 -> rank 2
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # image 2: own text 5 first -> rank 0
        ]
    )
    owners = [0, 0, 1, 1, 2, 2]
    out = recall.compute(predictions=sim.T, references=owners, ks=[1, 2, 3], n_resamples=200)
    # t2i ranks: text0 col [.9,.8,.1] own 0 -> 0; text1 [.1,.7,.2] own 0 -> 2; text2 [.2,.6,.3] own 1 -> 0;
    # text3 [.3,.1,.4] own 1 -> 2; text4 [0,0,.5] -> 0; text5 [.05,.05,.6] -> 0.
    assert out["i2t_r1"] == pytest.approx(2 / 3) and out["i2t_r3"] == 1.0
    assert out["t2i_r1"] == pytest.approx(4 / 6) and out["t2i_r2"] == pytest.approx(4 / 6) and out["t2i_r3"] == 1.0
    assert out["rsum"] == pytest.approx(2 / 3 + 2 / 3 + 1 + 4 / 6 + 4 / 6 + 1)
    assert out["mean_recall"] == pytest.approx(out["rsum"] / 6)
    assert out["i2t_medr"] == 1.0 and out["t2i_medr"] == 1.0
    assert (out["n_images"], out["n_texts"]) == (3, 6)
    for name in ("i2t_r1", "t2i_r1", "rsum"):
        assert out[f"{name}_low"] <= out[name] <= out[f"{name}_high"]


def test_recall_equals_brute_force_ranks_on_random_scores(recall):
    rng = np.random.default_rng(0)
    n_images, per_image = 30, 5
    owners = np.repeat(np.arange(n_images), per_image)
    sim = rng.normal(size=(n_images, n_images * per_image))
    sim[owners, np.arange(owners.size)] += 1.5  # better than chance, so recalls are neither 0 nor 1
    i2t, t2i = _brute_force_ranks(sim, owners)
    out = recall.compute(predictions=sim.T, references=owners, n_resamples=200)
    for k in (1, 5, 10):
        assert out[f"i2t_r{k}"] == pytest.approx(np.mean(i2t < k))
        assert out[f"t2i_r{k}"] == pytest.approx(np.mean(t2i < k))
    assert out["i2t_medr"] == np.median(i2t) + 1 and out["t2i_medr"] == np.median(t2i) + 1
    assert 0 < out["t2i_r1"] < 1


def test_recall_ties_count_against_the_query_and_uncaptioned_images(recall):
    # Constant scores: every foreign candidate ties with the own one.
    sim = np.zeros((4, 4))
    out = recall.compute(predictions=sim.T, references=[0, 1, 2, 2], ks=[1, 3, 4], n_resamples=50)
    # t2i: 3 other images tie -> rank 3. i2t: images 0, 1 have 3 foreign texts tied -> rank 3; image 2 rank 2;
    # image 3 owns no text and is no i2t query.
    assert out["t2i_r1"] == 0.0 and out["t2i_r3"] == 0.0 and out["t2i_r4"] == 1.0
    assert out["i2t_r1"] == 0.0 and out["i2t_r3"] == pytest.approx(1 / 3) and out["i2t_r4"] == 1.0
    # Perfect scores: each text's own image alone scores 1.
    perfect = np.eye(3)[[0, 1, 2, 2]].T  # (images, texts)
    out = recall.compute(predictions=perfect.T, references=[0, 1, 2, 2], ks=[1], n_resamples=50)
    assert out["i2t_r1"] == out["t2i_r1"] == 1.0 and out["rsum"] == 2.0


def test_recall_rejects_bad_input(recall):
    with pytest.raises(ValueError, match="NaN"):
        recall.compute(predictions=[[np.nan, 0.0]], references=[0])
    with pytest.raises(ValueError, match="text_to_image"):
        recall.compute(predictions=[[0.1, 0.0]], references=[2])


# --------------------------------------------------------------------------------------------
# Caption metrics
# --------------------------------------------------------------------------------------------

PREDICTIONS = [
    "A red circle is left of a blue square.",
    "two green stars on a grey background",
    "a small yellow heart",
    "Three kites, flying high!",
]
REFERENCES = [
    ["The red circle is left of the blue square.", "a red circle and a blue square", "A circle beside a square"],
    ["There are two green stars.", "Two green stars", "green stars"],
    ["a large yellow heart", "there is a yellow heart"],
    ["kites in the sky", "three kites fly over the beach", "Several kites flying."],
]


def _direct_scores(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_scores = Rouge().compute_score(gts, res)
    cider, cider_scores = Cider().compute_score(gts, res)
    return bleu, rouge, rouge_scores, cider, cider_scores


def _assert_same(out, direct):
    bleu, rouge, rouge_scores, cider, cider_scores = direct
    assert [out[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu, rel=1e-12)
    assert out["rouge_l"] == pytest.approx(rouge, rel=1e-12)
    assert out["cider_d"] == pytest.approx(cider, rel=1e-12)
    assert out["rouge_l_scores"] == pytest.approx(list(rouge_scores), rel=1e-12)
    assert out["cider_d_scores"] == pytest.approx(list(cider_scores), rel=1e-12)
    assert out["cider_d_low"] <= out["cider_d"] <= out["cider_d_high"]


@needs_java
def test_caption_metrics_equal_pycocoevalcap_with_ptb_tokenizer(captions):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # As the COCO evaluation does it: references and results tokenised in separate calls.
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(REFERENCES)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)})
    out = captions.compute(predictions=PREDICTIONS, references=REFERENCES, meteor=False, n_resamples=200)
    _assert_same(out, _direct_scores(gts, res))
    assert out["n_images"] == 4 and "meteor" not in out


def test_caption_metrics_equal_pycocoevalcap_on_pretokenised_captions(captions):
    preds = ["a red circle left of a blue square", "two green stars", "a yellow heart"]
    refs = [["the red circle is left of the blue square", "a red circle"], ["two green stars"], ["a yellow star"]]
    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    out = captions.compute(predictions=preds, references=refs, tokenize=False, meteor=False, n_resamples=200)
    _assert_same(out, _direct_scores(gts, res))


@pytest.mark.slow
@needs_java
def test_caption_meteor_equals_pycocoevalcap(captions):
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(REFERENCES)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)})
    out = captions.compute(predictions=PREDICTIONS, references=REFERENCES, n_resamples=100)
    assert out["meteor"] == pytest.approx(Meteor().compute_score(gts, res)[0], rel=1e-12)
    assert 0 < out["meteor"] < 1


def test_caption_metrics_name_java_when_it_is_missing(captions, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    with pytest.raises(RuntimeError, match="java"):
        captions.compute(predictions=PREDICTIONS, references=REFERENCES)
    with pytest.raises(RuntimeError, match="METEOR.*java"):
        captions.compute(predictions=["a b"], references=[["a b c"]], tokenize=False)


def test_caption_metrics_reject_bad_input(captions):
    with pytest.raises(ValueError, match="no reference"):
        captions.compute(predictions=["a"], references=[[]], tokenize=False, meteor=False)
