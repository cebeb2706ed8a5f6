"""Downstream readers: VQA v2 (questions, annotations, pairs, results), answer vocabulary and soft targets,
Karpathy splits, COCO caption results."""

import json
import os

import numpy as np
import pytest
import repo_paths
from conftest import BENCHMARK_SAMPLES

from vlp.processing.readers.downstream import (
    VQA_ROW_KEYS,
    answer_targets,
    build_answer_vocabulary,
    join_vqa,
    pairs_from_rows,
    read_caption_results,
    read_complementary_pairs,
    read_karpathy_split,
    read_vqa_annotations,
    read_vqa_questions,
    read_vqa_results,
    read_vqa_v2,
    retrieval_index,
    soft_target_vector,
    vqa_features,
    write_caption_results,
    write_vqa_results,
)

FIXTURES = os.path.join(repo_paths.FIXTURES, "downstream")
QUESTIONS = os.path.join(FIXTURES, "v2_OpenEnded_mscoco_val2014_questions.json")
ANNOTATIONS = os.path.join(FIXTURES, "v2_mscoco_val2014_annotations.json")
PAIRS = os.path.join(FIXTURES, "v2_mscoco_val2014_complementary_pairs.json")
RESULTS = os.path.join(FIXTURES, "vqa_fake_results.json")
KARPATHY_COCO = os.path.join(FIXTURES, "dataset_coco.json")
KARPATHY_FLICKR = os.path.join(FIXTURES, "dataset_flickr30k.json")
CAPTION_RESULTS = os.path.join(FIXTURES, "captions_val2014_fakecap_results.json")
SAMPLES = os.path.abspath(BENCHMARK_SAMPLES)
needs_samples = pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="benchmark samples not present")


def _mutated(tmp_path, source, edit, name=None):
    """A copy of a fixture json with ``edit(data)`` applied."""
    with open(source, encoding="utf-8") as f:
        data = json.load(f)
    edit(data)
    path = tmp_path / (name or os.path.basename(source))
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------------------------
# VQA v2
# --------------------------------------------------------------------------------------------


def test_read_and_join_vqa_fixture():
    questions = read_vqa_questions(QUESTIONS)
    annotations = read_vqa_annotations(ANNOTATIONS)
    assert questions.data_subtype == annotations.data_subtype == "val2014"
    assert len(questions.questions) == len(annotations.annotations) == 8
    rows = join_vqa(questions, annotations, pairs=read_complementary_pairs(PAIRS))
    assert all(tuple(row) == VQA_ROW_KEYS for row in rows)
    first = rows[0]
    assert first["question_id"] == 501000 and first["image_id"] == 501 and first["image"] is None
    assert first["question"] == "How many kites are in the sky?"
    assert first["answers"] == ["3", "3", "3", "3", "4", "3", "three", "3", "2", "3"]
    assert (first["question_type"], first["answer_type"]) == ("how many", "number")
    assert first["multiple_choice_answer"] == "3"
    pair_of = {row["question_id"]: row["pair_id"] for row in rows}
    assert pair_of[501001] == pair_of[502000] == 0 and pair_of[77003001] == pair_of[501000] == 1
    assert pair_of[90210000] == -1
    assert sorted(pairs_from_rows(rows)) == [(501000, 77003001), (501001, 502000)]
    assert read_vqa_v2(QUESTIONS, ANNOTATIONS, pairs_path=PAIRS) == rows


def test_join_without_annotations_for_test_splits():
    rows = read_vqa_v2(QUESTIONS)
    assert len(rows) == 8 and all(row["answers"] == [] and row["pair_id"] == -1 for row in rows)


def test_missing_annotation_or_unknown_question_raises_naming_file_and_id(tmp_path):
    missing = _mutated(tmp_path, ANNOTATIONS, lambda d: d["annotations"].pop(3))
    with pytest.raises(ValueError, match=r"annotations\.json.*no annotation for question_id 502000"):
        read_vqa_v2(QUESTIONS, missing)
    unknown = _mutated(tmp_path, ANNOTATIONS, lambda d: d["annotations"][0].update(question_id=123456))
    with pytest.raises(ValueError, match=r"annotations\.json.*question_id 123456 has no question"):
        read_vqa_v2(QUESTIONS, unknown)
    bad_image = _mutated(tmp_path, ANNOTATIONS, lambda d: d["annotations"][0].update(image_id=9))
    with pytest.raises(ValueError, match="question_id 501000 has image_id 9"):
        read_vqa_v2(QUESTIONS, bad_image)
    pairs = tmp_path / "pairs.json"
    pairs.write_text("[[501000, 424242]]")
    with pytest.raises(ValueError, match=r"pairs\.json.*424242"):
        read_vqa_v2(QUESTIONS, ANNOTATIONS, pairs_path=str(pairs))


@pytest.mark.parametrize(
    "source, edit, message",
    [
        (QUESTIONS, lambda d: d["questions"][2].pop("question"), r"questions\[2\] has no 'question'"),
        (QUESTIONS, lambda d: d["questions"][1].update(question_id="7"), r"questions\[1\] field 'question_id' must be"),
        (QUESTIONS, lambda d: d["questions"].append(d["questions"][0]), "question_id 501000 occurs more than once"),
        (QUESTIONS, lambda d: d.pop("questions"), "'questions' list"),
        (ANNOTATIONS, lambda d: d["annotations"][4]["answers"][2].pop("answer"), r"\[4\]\.answers\[2\] has no"),
        (ANNOTATIONS, lambda d: d["annotations"][0].update(answers=[]), r"annotations\[0\] has an empty 'answers'"),
        (ANNOTATIONS, lambda d: d["annotations"][5].update(answer_type=None), r"annotations\[5\] field 'answer_type'"),
        (ANNOTATIONS, lambda d: d["annotations"].__setitem__(1, "yes"), r"annotations\[1\] must be a JSON object"),
    ],
)
def test_malformed_vqa_records_raise_naming_file_and_record(tmp_path, source, edit, message):
    path = _mutated(tmp_path, source, edit)
    reader = read_vqa_questions if source == QUESTIONS else read_vqa_annotations
    with pytest.raises(ValueError, match=message) as error:
        reader(path)
    assert os.path.basename(path) in str(error.value)


def test_bad_json_and_bad_pairs(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"questions": [')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        read_vqa_questions(broken)
    cases = (("[[1, 2, 3]]", r"pair \[0\]"), ("[[1, 1]]", "two different"), ("[[1, 2], [2, 3]]", "id 2 occurs"))
    for content, message in cases:
        path = tmp_path / "pairs.json"
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            read_complementary_pairs(path)


def test_missing_images_are_reported_and_skipped(tmp_path):
    (tmp_path / "COCO_val2014_000000000501.jpg").write_bytes(b"")
    (tmp_path / "COCO_val2014_000000090210.jpg").write_bytes(b"")
    message = r"2 VQA image file\(s\) missing.*4 row\(s\) skipped: COCO_val2014_000000000502\.jpg, COCO_val"
    with pytest.warns(UserWarning, match=message):
        rows = read_vqa_v2(QUESTIONS, ANNOTATIONS, image_dir=tmp_path)
    assert [row["image_id"] for row in rows] == [501, 501, 501, 90210]
    assert rows[0]["image"] == str(tmp_path / "COCO_val2014_000000000501.jpg")


def test_results_round_trip_and_validation(tmp_path):
    results = read_vqa_results(RESULTS)
    assert results[0] == {"answer": "three", "question_id": 501000} and len(results) == 8
    path = tmp_path / "results.json"
    write_vqa_results(path, [{"question_id": np.int64(7), "answer": "yes"}, {"answer": "2", "question_id": 8}])
    assert path.read_text() == '[{"answer": "yes", "question_id": 7}, {"answer": "2", "question_id": 8}]'
    assert read_vqa_results(path) == [{"answer": "yes", "question_id": 7}, {"answer": "2", "question_id": 8}]
    with pytest.raises(ValueError, match="question_id 7 occurs more than once"):
        write_vqa_results(path, [{"answer": "a", "question_id": 7}, {"answer": "b", "question_id": 7}])
    with pytest.raises(ValueError, match=r"result \[0\] needs a string 'answer' and an integer 'question_id'"):
        write_vqa_results(path, [{"answer": 3, "question_id": 7}])
    with pytest.raises(ValueError, match=r"result \[1\]"):  # a bool is not a question id
        write_vqa_results(path, [{"answer": "a", "question_id": 7}, {"answer": "b", "question_id": True}])


# --------------------------------------------------------------------------------------------
# Answer vocabulary and soft targets
# --------------------------------------------------------------------------------------------


def test_answer_vocabulary_counts_normalised_answers():
    rows = read_vqa_v2(QUESTIONS, ANNOTATIONS)
    vocabulary = build_answer_vocabulary(rows, min_count=5)
    # yes 1 + 10 + 9 = 20, no 9 + 1 = 10; "three" is normalised to "3": 7 + 1 + 1 = 9, "2" 1 + 8 = 9 (ties are
    # alphabetical); "a frisbee" to "frisbee": 8; red 7 ("red/white" is another answer); afternoon 5.
    assert vocabulary == ["yes", "no", "2", "3", "frisbee", "red", "afternoon"]
    assert build_answer_vocabulary(rows, min_count=9) == ["yes", "no", "2", "3"]
    consensus = build_answer_vocabulary(rows, min_count=2, source="multiple_choice_answer")
    assert consensus == ["yes"]
    with pytest.raises(ValueError, match="min_count"):
        build_answer_vocabulary(rows, min_count=0)


def test_soft_targets_are_leave_one_out_scores():
    vocabulary = {"red": 0, "orange": 1, "red white": 2, "blue": 3}
    answers = ["red"] * 6 + ["orange"] * 2 + ["red/white", "pink"]
    labels, scores = answer_targets(answers, vocabulary)
    # red: 6 of 10 -> 1; orange: 2 of 10 -> 0.6; "red/white" -> "red white": 1 of 10 -> 0.3; pink is out of vocabulary.
    assert labels == [0, 1, 2] and scores == pytest.approx([1.0, 0.6, 0.3])
    dense = soft_target_vector(answers, vocabulary, num_labels=4)
    assert dense.dtype == np.float32 and dense.tolist() == pytest.approx([1.0, 0.6, 0.3, 0.0])
    three = answer_targets(["Two"] * 3 + ["3"] * 7, {"2": 5})
    assert three == ([5], [pytest.approx(0.9)])


def test_vqa_features_accept_joined_rows():
    import datasets

    rows = read_vqa_v2(QUESTIONS, ANNOTATIONS, pairs_path=PAIRS)
    dataset = datasets.Dataset.from_list(rows, features=vqa_features())
    assert dataset[0]["answers"] == rows[0]["answers"] and dataset[0]["image"] is None


# --------------------------------------------------------------------------------------------
# Karpathy splits
# --------------------------------------------------------------------------------------------


def test_karpathy_coco_layout_with_filepath_and_cocoid(tmp_path):
    rows = read_karpathy_split(KARPATHY_COCO)
    assert [r["split"] for r in rows] == ["test", "restval", "train", "val"]
    first = rows[0]
    assert first["image_id"] == 501 and first["imgid"] == 0 and first["filename"] == "COCO_val2014_000000000501.jpg"
    assert len(first["captions"]) == 5 and first["captions"][0] == "Three kites fly in a grey sky."
    assert first["caption_tokens"][0] == ["three", "kites", "fly", "in", "a", "grey", "sky"]
    assert first["sentence_ids"] == [0, 1, 2, 3, 4]
    train = read_karpathy_split(KARPATHY_COCO, splits=("train", "restval"))
    assert [r["image_id"] for r in train] == [502, 77003]
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000000501.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"1 Karpathy-split image file\(s\) missing.*train2014"):
        found = read_karpathy_split(KARPATHY_COCO, splits=["test", "train"], image_dir=tmp_path)
    assert [r["image"] for r in found] == [str(tmp_path / "val2014" / "COCO_val2014_000000000501.jpg")]


def test_karpathy_flickr_layout_and_retrieval_index():
    rows = read_karpathy_split(KARPATHY_FLICKR, splits="test")
    assert len(rows) == 1 and rows[0]["image_id"] == rows[0]["imgid"] == 2
    rows = read_karpathy_split(KARPATHY_FLICKR)
    texts, owners = retrieval_index(rows)
    assert len(texts) == 15 and owners == [0] * 5 + [1] * 5 + [2] * 5
    assert texts[5] == "Two dogs run on the sand ."


def test_karpathy_malformed_records(tmp_path):
    cases = [
        (lambda d: d["images"][1]["sentences"][0].update(imgid=7), r"images\[1\]\.sentences\[0\] has imgid 7"),
        (lambda d: d["images"][0].update(split="holdout"), r"images\[0\] has split 'holdout'"),
        (lambda d: d["images"][2].pop("filename"), r"images\[2\] has no 'filename'"),
        (lambda d: d["images"][0]["sentences"][1].update(tokens=[1, 2]), r"images\[0\]\.sentences\[1\] tokens"),
    ]
    for edit, message in cases:
        path = _mutated(tmp_path, KARPATHY_FLICKR, edit)
        with pytest.raises(ValueError, match=message):
            read_karpathy_split(path)
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        read_karpathy_split(KARPATHY_FLICKR, splits="dev")
    empty = _mutated(tmp_path, KARPATHY_FLICKR, lambda d: d["images"][2].update(sentences=[], sentids=[]))
    with pytest.warns(UserWarning, match="without sentences"):
        assert len(read_karpathy_split(empty)) == 2


# --------------------------------------------------------------------------------------------
# COCO caption results
# --------------------------------------------------------------------------------------------


def test_caption_results_round_trip(tmp_path):
    results = read_caption_results(CAPTION_RESULTS)
    assert results[1] == {"image_id": 502, "caption": "a dog with a frisbee in its mouth"}
    path = tmp_path / "captions.json"
    write_caption_results(path, results)
    assert read_caption_results(path) == results
    with pytest.raises(ValueError, match="image_id 502 occurs more than once"):
        write_caption_results(path, results + results[1:2])
    with pytest.raises(ValueError, match=r"result \[0\] needs an integer 'image_id' and a string 'caption'"):
        write_caption_results(path, [{"image_id": "502", "caption": "a dog"}])
    bad = _mutated(tmp_path, CAPTION_RESULTS, lambda d: d[2].update(caption=None), "bad.json")
    with pytest.raises(ValueError, match=r"bad\.json: results\[2\] field 'caption'"):
        read_caption_results(bad)


# --------------------------------------------------------------------------------------------
# Real excerpts (skipped when the samples folder is absent)
# --------------------------------------------------------------------------------------------


@needs_samples
def test_real_vqa_questions_and_results_excerpts():
    path = os.path.join(SAMPLES, "vqa-v2", "v2_OpenEnded_mscoco_val2014_questions.json")
    questions = read_vqa_questions(path)
    assert questions.data_subtype == "val2014" and len(questions.questions) == 18
    assert all(q["question_id"] // 1000 == q["image_id"] for q in questions.questions)
    rows = join_vqa(questions)
    assert rows[0]["question"] == "Where is he looking?" and rows[0]["image_id"] == 262148
    fake = os.path.join(SAMPLES, "vqa-v2", "Results", "OpenEnded_mscoco_train2014_fake_results.json")
    results = read_vqa_results(fake)
    assert [r["question_id"] for r in results] == list(range(1, 11)) and results[8]["answer"] == "2"


@needs_samples
def test_real_karpathy_and_caption_results_excerpts():
    rows = read_karpathy_split(os.path.join(SAMPLES, "karpathy-splits", "dataset_flickr8k.json"))
    assert len(rows) == 10 and all(len(r["captions"]) == 5 and r["split"] == "train" for r in rows)
    assert rows[0]["filename"] == "2513260012_03d33305cf.jpg" and rows[0]["image_id"] == 0
    assert rows[0]["caption_tokens"][1] == ["black", "dog", "chasing", "brown", "dog", "through", "snow"]
    texts, owners = retrieval_index(rows)
    assert len(texts) == 50 and owners[-1] == 9
    fakecap = os.path.join(SAMPLES, "coco-captions", "results", "captions_val2014_fakecap_results.json")
    results = read_caption_results(fakecap)
    assert len(results) == 20 and results[0]["image_id"] == 404464
