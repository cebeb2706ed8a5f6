"""Readers for the downstream benchmarks: VQA v2, Karpathy splits (COCO, Flickr30k/8k) and COCO caption results.

VQA v2 files are read in their official layouts and joined into one row per question::

    {"question_id", "question", "image_id", "image", "answers" (the annotators' answers), "multiple_choice_answer",
     "question_type", "answer_type", "pair_id" (-1 when the question is in no complementary pair)}

The synthetic VQA set (``synthetic_vqa.py``) produces rows with the same keys, so one finetuning code path serves
both. The official VQA answer normalisation lives here too: the answer vocabulary, the soft training targets and the
``vqa_accuracy`` metric module all use it, so training and evaluation agree on what counts as the same answer.

Image folders are parameters: a missing image file is reported (one warning) and its rows are skipped. Malformed
records raise ``ValueError`` naming the file and the record.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import strict_json

# --------------------------------------------------------------------------------------------
# Official VQA answer normalisation (the VQA v2 evaluation code's rules)
# --------------------------------------------------------------------------------------------

#: The evaluation code's contraction map, verbatim (keys with capitals never match: words are lowercased first).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
#: Number words the evaluation code maps to digits ("none" counts as zero).
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
#: Characters the evaluation code deletes or turns into spaces (the period, the apostrophe and ':' are not here).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The evaluation code's period pattern, "(?!<=\d)(\.)(?!\d)": its first group is a look-ahead (a look-behind was
# meant), which never fails before a period, so in effect a period is removed unless a digit follows it ("3.5"
# stays, "5." and "yes." lose it). It also passes re.UNICODE (32) where re.sub takes `count`: at most 32 periods go.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_COUNT = 32
REFERENCE_PROCESSING = ("official", "full")


def process_punctuation(text: str) -> str:
    """The evaluation code's punctuation rule.

    Each character of ``PUNCTUATION`` is deleted when it touches a space somewhere in ``text`` or when ``text`` has a
    comma between two digits ("1,000" -> "1000"), and is replaced by a space otherwise ("black/white" -> "black
    white"); then periods not followed by a digit are removed.
    """
    out = text
    comma_number = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or comma_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, number words to digits ("two" -> "2"), articles removed, contractions fixed ("dont" -> "don't")."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str) -> str:
    """An answer as the evaluation code compares it: whitespace, punctuation, then digits, articles, contractions."""
    if not isinstance(answer, str):
        raise ValueError(f"a VQA answer must be a string, got {answer!r}")
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def reference_answers(answers: Sequence[str], reference_processing: str = "official") -> list[str]:
    """The annotators' answers as the evaluation code compares them.

    ``"official"``: as the evaluation code does, answers are used verbatim when all annotators agree, and only
    punctuation-processed otherwise (the released annotations are already normalised; a prediction is always fully
    normalised). ``"full"``: every answer goes through :func:`normalize_answer`, for hand-made or synthetic
    references that were never normalised.
    """
    if reference_processing not in REFERENCE_PROCESSING:
        raise ValueError(f"reference_processing must be one of {REFERENCE_PROCESSING}, got {reference_processing!r}")
    answers = list(answers)
    if reference_processing == "full":
        return [normalize_answer(a) for a in answers]
    if len(set(answers)) > 1:
        return [process_punctuation(a) for a in answers]
    return answers


def leave_one_out_accuracy(num_matching: int, num_answers: int) -> float:
    """Mean over the ``num_answers`` leave-one-out subsets of min(1, matches in the subset / 3).

    With k of n annotators matching, the k subsets that drop a matching annotator hold k - 1 matches and the n - k
    others hold k, so the score is (k min(1, (k-1)/3) + (n-k) min(1, k/3)) / n; for n = 10: 0, .3, .6, .9, then 1.
    """
    if num_answers <= 0:
        raise ValueError(f"a VQA question needs at least one reference answer, got {num_answers}")
    k, n = num_matching, num_answers
    if not 0 <= k <= n:
        raise ValueError(f"num_matching must lie in [0, {n}], got {k}")
    return (k * min(1.0, (k - 1) / 3) + (n - k) * min(1.0, k / 3)) / n


def vqa_question_accuracy(prediction: str, answers: Sequence[str], reference_processing: str = "official") -> float:
    """The official VQA accuracy of one predicted answer against the annotators' answers (usually ten)."""
    predicted = normalize_answer(prediction)
    references = reference_answers(answers, reference_processing)
    return leave_one_out_accuracy(sum(ref == predicted for ref in references), len(references))


# --------------------------------------------------------------------------------------------
# Answer vocabulary and soft targets
# --------------------------------------------------------------------------------------------

VOCABULARY_SOURCES = ("answers", "multiple_choice_answer")


def build_answer_vocabulary(
    rows: Iterable[Mapping[str, Any]], min_count: int = 9, source: str = "answers"
) -> list[str]:
    """Normalised answers seen at least ``min_count`` times, most frequent first (ties alphabetical).

    ``source="answers"`` counts every annotator's answer; ``"multiple_choice_answer"`` counts one consensus answer
    per question. The list index is the class label of ``VLPForQuestionAnswering``.
    """
    if source not in VOCABULARY_SOURCES:
        raise ValueError(f"source must be one of {VOCABULARY_SOURCES}, got {source!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    counts: Counter = Counter()
    for row in rows:
        values = row[source] if source == "answers" else [row[source]]
        counts.update(normalize_answer(a) for a in values)
    kept = [(answer, n) for answer, n in counts.items() if n >= min_count and answer]
    return [answer for answer, _ in sorted(kept, key=lambda item: (-item[1], item[0]))]


def answer_targets(answers: Sequence[str], answer_to_label: Mapping[str, int]) -> tuple[list[int], list[float]]:
    """Soft targets of one question: (labels, scores) for the in-vocabulary answers the annotators gave.

    The score of a candidate is its exact leave-one-out VQA accuracy (see :func:`leave_one_out_accuracy`), i.e. the
    evaluation score a model would get by answering it; for ten annotators that is the common 0.3 / 0.6 / 0.9 / 1
    recipe, not min(1, count / 3). Answers are fully normalised before counting.
    """
    normalised = [normalize_answer(a) for a in answers]
    counts = Counter(normalised)
    labels, scores = [], []
    for answer in sorted(counts, key=lambda a: answer_to_label.get(a, -1)):
        if answer in answer_to_label:
            labels.append(int(answer_to_label[answer]))
            scores.append(leave_one_out_accuracy(counts[answer], len(normalised)))
    return labels, scores


def soft_target_vector(answers: Sequence[str], answer_to_label: Mapping[str, int], num_labels: int) -> np.ndarray:
    """Dense float32 (num_labels,) target for binary cross-entropy, from :func:`answer_targets`."""
    target = np.zeros(num_labels, dtype=np.float32)
    labels, scores = answer_targets(answers, answer_to_label)
    target[labels] = scores
    return target


# --------------------------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------------------------


def _load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a clear ValueError names the file when it is not JSON."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _short(record: Any, limit: int = 160) -> str:
    """A record's repr, cut to ``limit`` characters for error messages."""
    text = repr(record)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(path: str, where: str, record: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """``record[key]``, checked to be a ``kind``; otherwise a ValueError naming the file, the record and the key."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {where} must be a JSON object, got {_short(record)}")
    if key not in record:
        raise ValueError(f"{path}: {where} has no {key!r}: {_short(record)}")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{path}: {where} field {key!r} must be {names}, got {value!r}: {_short(record)}")
    return value


def _list_at(path: str, data: Any, key: str | None) -> list:
    """``data[key]`` (or ``data`` itself when key is None), checked to be a list."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: expected a JSON object with a {key!r} list")
        data = data[key]
    if not isinstance(data, list):
        raise ValueError(f"{path}: {key or 'the top level'} must be a JSON list, got {type(data).__name__}")
    return data


def _check_unique(path: str, ids: Iterable[int], what: str):
    """Raise naming the file and the first id that occurs twice."""
    seen: set = set()
    for value in ids:
        if value in seen:
            raise ValueError(f"{path}: {what} {value} occurs more than once")
        seen.add(value)


def _report_missing(missing: list[str], directory: str, what: str):
    """One warning for all missing image files (``missing`` has one name per skipped row)."""
    if missing:
        names = list(dict.fromkeys(missing))
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        warnings.warn(
            f"{len(names)} {what} image file(s) missing under {directory}; "
            f"their {len(missing)} row(s) skipped: {shown}",
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# VQA v2
# --------------------------------------------------------------------------------------------

VQA_ROW_KEYS = (
    "question_id",
    "question",
    "image_id",
    "image",
    "answers",
    "multiple_choice_answer",
    "question_type",
    "answer_type",
    "pair_id",
)


def vqa_features():
    """The ``datasets.Features`` of joined VQA rows (real or synthetic); ``image`` takes a path, PIL image or bytes."""
    import datasets

    return datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "answers": datasets.List(datasets.Value("string")),
            "multiple_choice_answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answer_type": datasets.Value("string"),
            "pair_id": datasets.Value("int64"),
        }
    )


#: COCO image file names of VQA v2, formatted with the questions file's data_subtype.
COCO_IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


@dataclass
class VQAQuestions:
    """A VQA questions file: its data_subtype ("val2014", ...) and records {question_id, image_id, question}."""

    path: str
    data_subtype: str
    questions: list[dict]


@dataclass
class VQAAnnotations:
    """A VQA annotations file: records {question_id, image_id, question_type, answer_type,
    multiple_choice_answer, answers (list of str, one per annotator)}."""

    path: str
    data_subtype: str
    annotations: list[dict]


def read_vqa_questions(path: str | os.PathLike) -> VQAQuestions:
    """Read an official VQA questions json ({..., "data_subtype", "questions": [{image_id, question, question_id}]})."""
    path = os.fspath(path)
    data = _load_json(path)
    records = _list_at(path, data, "questions")
    questions = []
    for i, record in enumerate(records):
        where = f"questions[{i}]"
        questions.append(
            {
                "question_id": _field(path, where, record, "question_id", int),
                "image_id": _field(path, where, record, "image_id", int),
                "question": _field(path, where, record, "question", str),
            }
        )
    _check_unique(path, (q["question_id"] for q in questions), "question_id")
    return VQAQuestions(path, str(data.get("data_subtype", "")), questions)


def read_vqa_annotations(path: str | os.PathLike) -> VQAAnnotations:
    """Read an official VQA annotations json ({..., "annotations": [{question_type, multiple_choice_answer,
    answers: [{answer, answer_confidence, answer_id}], image_id, answer_type, question_id}]})."""
    path = os.fspath(path)
    data = _load_json(path)
    records = _list_at(path, data, "annotations")
    annotations = []
    for i, record in enumerate(records):
        where = f"annotations[{i}]"
        answers = _field(path, where, record, "answers", list)
        if not answers:
            raise ValueError(f"{path}: {where} has an empty 'answers' list: {_short(record)}")
        texts = []
        for j, answer in enumerate(answers):
            texts.append(_field(path, f"{where}.answers[{j}]", answer, "answer", str))
            _field(path, f"{where}.answers[{j}]", answer, "answer_id", int)
        annotations.append(
            {
                "question_id": _field(path, where, record, "question_id", int),
                "image_id": _field(path, where, record, "image_id", int),
                "question_type": _field(path, where, record, "question_type", str),
                "answer_type": _field(path, where, record, "answer_type", str),
                "multiple_choice_answer": _field(path, where, record, "multiple_choice_answer", str),
                "answers": texts,
            }
        )
    _check_unique(path, (a["question_id"] for a in annotations), "question_id")
    return VQAAnnotations(path, str(data.get("data_subtype", "")), annotations)


def read_complementary_pairs(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Read a complementary pairs json: a list of [question_id, question_id]; a question is in at most one pair."""
    path = os.fspath(path)
    records = _list_at(path, _load_json(path), None)
    pairs = []
    for i, record in enumerate(records):
        ok = isinstance(record, list) and len(record) == 2
        ok = ok and all(isinstance(q, int) and not isinstance(q, bool) for q in record) and record[0] != record[1]
        if not ok:
            raise ValueError(f"{path}: pair [{i}] must be two different integer question ids, got {_short(record)}")
        pairs.append((record[0], record[1]))
    _check_unique(path, (q for pair in pairs for q in pair), "question_id")
    return pairs


def pairs_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """The complementary pairs of joined rows, as (question_id, question_id) from their shared ``pair_id``."""
    groups: dict[int, list[int]] = {}
    for row in rows:
        if row["pair_id"] >= 0:
            groups.setdefault(row["pair_id"], []).append(row["question_id"])
    return [(ids[0], ids[1]) for _, ids in sorted(groups.items()) if len(ids) == 2]


def join_vqa(
    questions: VQAQuestions,
    annotations: VQAAnnotations | None = None,
    image_dir: str | os.PathLike | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    pairs_path: str = "pairs",
    image_pattern: str = COCO_IMAGE_PATTERN,
) -> list[dict]:
    """Join questions with their annotations (and pairs) into rows with the keys ``VQA_ROW_KEYS``.

    Every question needs an annotation and every annotation a question (else ValueError naming the annotations
    file and the id). Without annotations (test splits) answers are empty. With ``image_dir``, ``image`` is the
    path ``image_dir/image_pattern``; questions whose image file is missing are reported and skipped. Without it,
    ``image`` is None. ``pair_id`` is the pair's index in ``pairs`` (-1 when in none).
    """
    by_question = None
    if annotations is not None:
        by_question = {a["question_id"]: a for a in annotations.annotations}
        known = {q["question_id"] for q in questions.questions}
        for a in annotations.annotations:
            if a["question_id"] not in known:
                raise ValueError(
                    f"{annotations.path}: annotation for question_id {a['question_id']} has no question in "
                    f"{questions.path}"
                )
    pair_of = {}
    if pairs is not None:
        known = {q["question_id"] for q in questions.questions}
        for index, pair in enumerate(pairs):
            for qid in pair:
                if qid not in known:
                    raise ValueError(f"{pairs_path}: pair [{index}] names question_id {qid}, not in {questions.path}")
                pair_of[qid] = index
    rows, missing = [], []
    for q in questions.questions:
        qid = q["question_id"]
        ann = {"answers": [], "multiple_choice_answer": "", "question_type": "", "answer_type": ""}
        if by_question is not None:
            if qid not in by_question:
                raise ValueError(f"{annotations.path}: no annotation for question_id {qid} (from {questions.path})")
            ann = by_question[qid]
            if ann["image_id"] != q["image_id"]:
                raise ValueError(
                    f"{annotations.path}: question_id {qid} has image_id {ann['image_id']} but {questions.path} "
                    f"says {q['image_id']}"
                )
        image = None
        if image_dir is not None:
            name = image_pattern.format(data_subtype=questions.data_subtype, image_id=q["image_id"])
            image = os.path.join(os.fspath(image_dir), name)
            if not os.path.isfile(image):
                missing.append(name)
                continue
        rows.append(
            {
                "question_id": qid,
                "question": q["question"],
                "image_id": q["image_id"],
                "image": image,
                "answers": list(ann["answers"]),
                "multiple_choice_answer": ann["multiple_choice_answer"],
                "question_type": ann["question_type"],
                "answer_type": ann["answer_type"],
                "pair_id": pair_of.get(qid, -1),
            }
        )
    if image_dir is not None:
        _report_missing(missing, os.fspath(image_dir), "VQA")
    return rows


def read_vqa_v2(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    pairs_path: str | os.PathLike | None = None,
    image_pattern: str = COCO_IMAGE_PATTERN,
) -> list[dict]:
    """Read and join a VQA v2 split: questions, annotations (optional), complementary pairs (optional), images."""
    questions = read_vqa_questions(questions_path)
    annotations = read_vqa_annotations(annotations_path) if annotations_path is not None else None
    pairs = read_complementary_pairs(pairs_path) if pairs_path is not None else None
    pairs_name = os.fspath(pairs_path) if pairs_path is not None else "pairs"
    return join_vqa(questions, annotations, image_dir, pairs, pairs_name, image_pattern)


def _read_results(path: str | os.PathLike, fields: Mapping[str, type], key: str) -> list[dict]:
    """A results json: a list of records with `fields` (name: type), `key` unique."""
    path = os.fspath(path)
    results = [
        {name: _field(path, f"results[{i}]", record, name, kind) for name, kind in fields.items()}
        for i, record in enumerate(_list_at(path, _load_json(path), None))
    ]
    _check_unique(path, (r[key] for r in results), key)
    return results


def _write_results(path: str | os.PathLike, results: Iterable[Mapping[str, Any]], fields: Mapping[str, type], key: str):
    """Write records with exactly `fields` (str, or int: a Python or NumPy integer, not a bool), `key` unique."""
    path = os.fspath(path)

    def valid(value, kind):
        if kind is int:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        return isinstance(value, kind)

    wanted = " and ".join(f"{'an integer' if kind is int else 'a string'} '{name}'" for name, kind in fields.items())
    records = []
    for i, r in enumerate(results):
        if not all(valid(r.get(name), kind) for name, kind in fields.items()):
            raise ValueError(f"{path}: result [{i}] needs {wanted}, got {_short(r)}")
        records.append({name: kind(r[name]) for name, kind in fields.items()})
    _check_unique(path, (r[key] for r in records), key)
    with open(path, "w", encoding="utf-8") as f:
        strict_json.dump(records, f)


VQA_RESULT_FIELDS = {"answer": str, "question_id": int}
CAPTION_RESULT_FIELDS = {"image_id": int, "caption": str}


def read_vqa_results(path: str | os.PathLike) -> list[dict]:
    """Read a VQA results json: a list of {answer, question_id}, one per question."""
    return _read_results(path, VQA_RESULT_FIELDS, "question_id")


def write_vqa_results(path: str | os.PathLike, results: Iterable[Mapping[str, Any]]):
    """Write a VQA results json (list of {answer, question_id}) as the evaluation server expects."""
    _write_results(path, results, VQA_RESULT_FIELDS, "question_id")


# --------------------------------------------------------------------------------------------
# Karpathy splits (COCO, Flickr30k, Flickr8k)
# --------------------------------------------------------------------------------------------

KARPATHY_SPLITS = ("train", "val", "test", "restval")


def read_karpathy_split(
    path: str | os.PathLike,
    splits: str | Sequence[str] | None = None,
    image_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Read a Karpathy split json ({"images": [...], "dataset"}) into one row per image.

    Row: {"image_id" (cocoid when present, else imgid), "imgid", "filename", "image" (path or None), "split",
    "captions" (raw sentences), "caption_tokens", "sentence_ids"}. ``splits`` keeps only those splits ("train"
    plus "restval" is the usual Karpathy training set). The image path is ``image_dir/filepath/filename`` (COCO
    has "filepath") or ``image_dir/filename``; missing images are reported and skipped, and so are images with no
    sentences.
    """
    path = os.fspath(path)
    wanted = None
    if splits is not None:
        wanted = {splits} if isinstance(splits, str) else set(splits)
        unknown = wanted - set(KARPATHY_SPLITS)
        if unknown:
            raise ValueError(f"unknown Karpathy split(s) {sorted(unknown)}; expected some of {KARPATHY_SPLITS}")
    data = _load_json(path)
    rows, missing, empty = [], [], []
    for i, record in enumerate(_list_at(path, data, "images")):
        row = _karpathy_row(path, i, record)
        if wanted is not None and row["split"] not in wanted:
            continue
        if not row["captions"]:
            empty.append(row["filename"])
            continue
        if image_dir is not None:
            image = os.path.join(os.fspath(image_dir), record.get("filepath", ""), row["filename"])
            if not os.path.isfile(image):
                missing.append(os.path.join(record.get("filepath", ""), row["filename"]))
                continue
            row["image"] = image
        rows.append(row)
    _check_unique(path, (r["imgid"] for r in rows), "imgid")
    if empty:
        warnings.warn(f"{path}: {len(empty)} image(s) without sentences skipped: {', '.join(empty[:5])}", stacklevel=2)
    if image_dir is not None:
        _report_missing(missing, os.fspath(image_dir), "Karpathy-split")
    return rows


def _karpathy_row(path: str, i: int, record: Any) -> dict:
    """Validate one Karpathy image record and turn it into a row (image path filled in by the caller)."""
    where = f"images[{i}]"
    imgid = _field(path, where, record, "imgid", int)
    split = _field(path, where, record, "split", str)
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"{path}: {where} has split {split!r}, expected one of {KARPATHY_SPLITS}: {_short(record)}")
    filename = _field(path, where, record, "filename", str)
    sentences = _field(path, where, record, "sentences", list)
    captions, tokens, sentence_ids = [], [], []
    for j, sentence in enumerate(sentences):
        at = f"{where}.sentences[{j}]"
        captions.append(_field(path, at, sentence, "raw", str))
        words = _field(path, at, sentence, "tokens", list)
        if not all(isinstance(w, str) for w in words):
            raise ValueError(f"{path}: {at} tokens must be strings: {_short(sentence)}")
        tokens.append(list(words))
        sentence_ids.append(_field(path, at, sentence, "sentid", int))
        if _field(path, at, sentence, "imgid", int) != imgid:
            raise ValueError(f"{path}: {at} has imgid {sentence['imgid']} inside image imgid {imgid}")
    image_id = _field(path, where, record, "cocoid", int) if "cocoid" in record else imgid
    return {
        "image_id": image_id,
        "imgid": imgid,
        "filename": filename,
        "image": None,
        "split": split,
        "captions": captions,
        "caption_tokens": tokens,
        "sentence_ids": sentence_ids,
    }


def retrieval_index(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[int]]:
    """Flatten image rows with captions into (texts, text_to_image): each caption and the row index of its image."""
    texts, owners = [], []
    for index, row in enumerate(rows):
        texts.extend(row["captions"])
        owners.extend([index] * len(row["captions"]))
    return texts, owners


# --------------------------------------------------------------------------------------------
# COCO caption results
# --------------------------------------------------------------------------------------------


def read_caption_results(path: str | os.PathLike) -> list[dict]:
    """Read a COCO caption results json: a list of {image_id, caption}, one caption per image."""
    return _read_results(path, CAPTION_RESULT_FIELDS, "image_id")


def write_caption_results(path: str | os.PathLike, results: Iterable[Mapping[str, Any]]):
    """Write a COCO caption results json (list of {image_id, caption})."""
    _write_results(path, results, CAPTION_RESULT_FIELDS, "image_id")
