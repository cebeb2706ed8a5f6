"""Winoground text, image and group scores, each with a bootstrap 95 % interval over items."""

import datasets
import evaluate
import numpy as np

from vlp.training.statistics import bootstrap_ci

_DESCRIPTION = """\
Winoground scores (Thrush et al., 2022). Each item has two images and two captions with the same words in a
different order; caption c0 is true of image i0 and caption c1 of image i1. With s(c, i) the model's match score:

- text score: both images pick their own caption, s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1);
- image score: both captions pick their own image, s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0);
- group score: both of the above.

Comparisons are strict, so a tie counts as wrong. Chance is 25 % for text and image scores, 16.7 % for group.
Every figure comes with a percentile bootstrap interval over items (`<name>_low`, `<name>_high`), all on the same
resamples.
"""

_KWARGS_DESCRIPTION = """
Args:
    c0_i0, c0_i1, c1_i0, c1_i1 (`list` of `float`): s(caption, image) for each item, e.g. c1_i0 = s(c1, i0).
    n_resamples (`int`, default 2000), confidence (`float`, default 0.95), seed (`int`, default 0): the bootstrap.
Returns:
    text_score, image_score, group_score, each with `_low` and `_high`; n_items.
Examples:
    >>> from vlp.training.metrics import load_metric
    >>> winoground = load_metric("winoground")
    >>> result = winoground.compute(c0_i0=[0.9, 0.8], c0_i1=[0.1, 0.85], c1_i0=[0.2, 0.3], c1_i1=[0.7, 0.9])
    >>> result["text_score"], result["image_score"], result["group_score"]
    (1.0, 0.5, 0.5)
"""

_CITATION = """\
@inproceedings{thrush2022winoground,
    title = {Winoground: Probing Vision and Language Models for Visio-Linguistic Compositionality},
    author = {Thrush, Tristan and Jiang, Ryan and Bartolo, Max and Singh, Amanpreet and Williams, Adina and
              Kiela, Douwe and Ross, Candace},
    booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
    year = {2022},
    pages = {5238--5248},
}
"""

SCORE_NAMES = ("c0_i0", "c0_i1", "c1_i0", "c1_i1")


def item_scores(c0_i0, c0_i1, c1_i0, c1_i1):
    """Per-item text, image and group success (booleans of shape (n,))."""
    text = (c0_i0 > c1_i0) & (c1_i1 > c0_i1)
    image = (c0_i0 > c0_i1) & (c1_i1 > c1_i0)
    return {"text_score": text, "image_score": image, "group_score": text & image}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Winoground(evaluate.Metric):
    """Winoground text, image and group scores with bootstrap intervals."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({name: datasets.Value("float64") for name in SCORE_NAMES}),
            reference_urls=["https://arxiv.org/abs/2204.03162", "https://huggingface.co/datasets/facebook/winoground"],
            format="numpy",
        )

    def _compute(self, c0_i0, c0_i1, c1_i0, c1_i1, n_resamples=2000, confidence=0.95, seed=0):
        scores = [np.asarray(s, dtype=np.float64) for s in (c0_i0, c0_i1, c1_i0, c1_i1)]
        if scores[0].size == 0:
            raise ValueError("winoground: expected at least one item, got none")
        for name, s in zip(SCORE_NAMES, scores):
            if not np.all(np.isfinite(s)):
                raise ValueError(f"winoground: {name} holds NaN or infinite scores")
        result = {}
        for name, success in item_scores(*scores).items():
            interval = bootstrap_ci(success.astype(np.float64), "mean", n_resamples, confidence, seed)
            result.update({name: interval.point, f"{name}_low": interval.low, f"{name}_high": interval.high})
        result["n_items"] = int(scores[0].size)
        return result
