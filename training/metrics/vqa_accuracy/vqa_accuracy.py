"""The official VQA accuracy (VQA v2 evaluation rules) overall, per question type and per answer type, and
complementary-pair accuracy, each with a percentile bootstrap 95 % interval over questions (or pairs)."""

import datasets
import evaluate
import numpy as np

from vlp.processing.readers.downstream import REFERENCE_PROCESSING, vqa_question_accuracy
from vlp.training.statistics import mean_interval

_DESCRIPTION = """\
VQA accuracy as the VQA v2 evaluation code computes it (Antol et al., 2015; Goyal et al., 2017).

A predicted answer is normalised: newlines and tabs to spaces, stripped; punctuation (a mark touching a space,
or any mark when the answer has a comma between digits, is deleted; otherwise it becomes a space; a period is
removed unless a digit follows it); lowercased; number words to digits ("two" -> "2", "none" -> "0"); articles
(a, an, the) removed; contractions fixed with the official map ("dont" -> "don't").

The annotators' answers (usually ten) are compared as the evaluation code does (`reference_processing="official"`:
verbatim when all agree, punctuation-processed otherwise, since the released annotations are already normalised),
or fully normalised like the prediction (`"full"`, for references that were never normalised).

A question scores min(1, #matching annotators / 3) averaged over the leave-one-out subsets of annotators (ten
subsets of nine): with k of 10 matching, 0, 0.3, 0.6, 0.9 for k = 0..3 and 1 from k = 4. Accuracy is the mean over
questions, also per question type and per answer type. Figures are fractions in [0, 1] (the evaluation code prints
100 x, rounded to 2 decimals).

Complementary pairs (two similar questions with different answers, VQA v2's balancing): a pair is right when both
of its questions score at least `pair_threshold` (default 1.0: at least four annotators agree with each answer;
pass e.g. 0.3 to count any annotator agreement). Pairs are given as `pairs` (a list of [question_id, question_id],
with `question_ids`) or `pair_ids` (one per question; questions sharing an id >= 0 form a pair). Pairs with a
question that is not evaluated are skipped.

Intervals: percentile bootstrap over questions (pairs for pair accuracy), seeded (`<name>_low`, `<name>_high`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the predicted answer of each question.
    references (`list` of `list` of `str`): the annotators' answers of each question.
    question_types, answer_types (`list` of `str`, optional): for the per-type figures.
    question_ids (`list` of `int`, optional): needed with `pairs`.
    pairs (`list` of [`int`, `int`], optional): complementary pairs of question ids.
    pair_ids (`list` of `int`, optional): pair of each question (-1: none), instead of `pairs`.
    pair_threshold (`float`, default 1.0): per-question accuracy that counts as right in a pair.
    reference_processing (`str`, default "official"): "official" or "full" (see the description).
    n_resamples (`int`, default 2000), confidence (`float`, default 0.95), seed (`int`, default 0): the bootstrap.
Returns:
    accuracy, accuracy_low, accuracy_high, n_questions, scores (per question); per_question_type and
    per_answer_type ({type: {accuracy, accuracy_low, accuracy_high, n_questions}}) when types are given;
    pair_accuracy, pair_accuracy_low, pair_accuracy_high, n_pairs when pairs are given.
Examples:
    >>> from vlp.training.metrics import load_metric
    >>> vqa = load_metric("vqa_accuracy")
    >>> refs = ["2"] * 2 + ["3"] * 8
    >>> round(vqa.compute(predictions=["Two."], references=[refs])["accuracy"], 3)
    0.6
"""

_CITATION = """\
@inproceedings{antol2015vqa,
    title = {{VQA}: Visual Question Answering},
    author = {Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv and
              Zitnick, C. Lawrence and Parikh, Devi},
    booktitle = {International Conference on Computer Vision (ICCV)},
    year = {2015},
}
@inproceedings{goyal2017making,
    title = {Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
    author = {Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
    booktitle = {Conference on Computer Vision and Pattern Recognition (CVPR)},
    year = {2017},
}
"""


def question_scores(predictions, references, reference_processing="official"):
    """Per-question official accuracy, float64 (n,)."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length")
    if not len(predictions):
        raise ValueError("vqa_accuracy needs at least one question")
    return np.array(
        [vqa_question_accuracy(p, list(r), reference_processing) for p, r in zip(predictions, references)],
        dtype=np.float64,
    )


def pair_index(n, question_ids=None, pairs=None, pair_ids=None):
    """Positions (m, 2) of the complementary pairs whose two questions are both evaluated."""
    if pairs is not None and pair_ids is not None:
        raise ValueError("give complementary pairs either as `pairs` or as `pair_ids`, not both")
    if pairs is not None:
        if question_ids is None or len(question_ids) != n:
            raise ValueError(f"`pairs` needs `question_ids`, one per question ({n})")
        position = {int(q): i for i, q in enumerate(question_ids)}
        if len(position) != n:
            raise ValueError("question_ids must be unique")
        found = [(position[int(a)], position[int(b)]) for a, b in pairs if int(a) in position and int(b) in position]
        if pairs and not found:
            raise ValueError("no complementary pair has both questions among the evaluated question_ids")
        return np.array(found, dtype=np.int64).reshape(-1, 2)
    if len(pair_ids) != n:
        raise ValueError(f"pair_ids must have one entry per question ({n}), got {len(pair_ids)}")
    groups = {}
    for i, pid in enumerate(pair_ids):
        if pid is not None and int(pid) >= 0:
            groups.setdefault(int(pid), []).append(i)
    too_many = [pid for pid, members in groups.items() if len(members) > 2]
    if too_many:
        raise ValueError(f"pair_id {too_many[0]} is shared by {len(groups[too_many[0]])} questions; a pair has two")
    return np.array([m for m in groups.values() if len(m) == 2], dtype=np.int64).reshape(-1, 2)


def _figure(values, name, n_resamples, confidence, seed):
    """Mean of per-item values with its bootstrap interval, as {name, name_low, name_high}."""
    low, high = mean_interval(values, n_resamples, confidence, seed)
    return {name: float(np.mean(values)), f"{name}_low": low, f"{name}_high": high}


def _per_group(scores, groups, n_resamples, confidence, seed):
    """Accuracy and interval per group label."""
    if len(groups) != len(scores):
        raise ValueError(f"expected one type per question ({len(scores)}), got {len(groups)}")
    labels = np.asarray([str(g) for g in groups])
    result = {}
    for label in sorted(set(labels.tolist())):
        values = scores[labels == label]
        result[label] = {**_figure(values, "accuracy", n_resamples, confidence, seed), "n_questions": int(values.size)}
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    """Official VQA accuracy with per-type figures, complementary-pair accuracy and bootstrap intervals."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://visualqa.org/evaluation.html", "https://github.com/GT-Vision-Lab/VQA"],
        )

    def _compute(
        self,
        predictions,
        references,
        question_types=None,
        answer_types=None,
        question_ids=None,
        pairs=None,
        pair_ids=None,
        pair_threshold=1.0,
        reference_processing="official",
        n_resamples=2000,
        confidence=0.95,
        seed=0,
    ):
        if reference_processing not in REFERENCE_PROCESSING:
            raise ValueError(f"reference_processing must be one of {REFERENCE_PROCESSING}, got {reference_processing}")
        scores = question_scores(predictions, references, reference_processing)
        result = _figure(scores, "accuracy", n_resamples, confidence, seed)
        result["n_questions"] = int(scores.size)
        if question_types is not None:
            result["per_question_type"] = _per_group(scores, question_types, n_resamples, confidence, seed)
        if answer_types is not None:
            result["per_answer_type"] = _per_group(scores, answer_types, n_resamples, confidence, seed)
        if pairs is not None or pair_ids is not None:
            index = pair_index(scores.size, question_ids, pairs, pair_ids)
            right = (scores[index] >= pair_threshold - 1e-9).all(axis=1).astype(np.float64)
            if right.size:
                result.update(_figure(right, "pair_accuracy", n_resamples, confidence, seed))
            else:
                result.update({"pair_accuracy": float("nan"), "pair_accuracy_low": float("nan"),
                               "pair_accuracy_high": float("nan")})  # fmt: skip
            result["n_pairs"] = int(right.size)
        result["scores"] = scores.tolist()
        return result
