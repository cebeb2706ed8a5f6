"""Zero-shot foil metrics with the VALSE definitions: acc_r, p_c, p_f, acc, min(p_c, p_f) and AUROC, each with a
bootstrap 95 % interval over items."""

import datasets
import evaluate
import numpy as np
from scipy.stats import rankdata

from vlp.training.statistics import bootstrap_ci_paired

_DESCRIPTION = """\
Image-caption-foil metrics after VALSE (Parcalabescu et al., 2022). A model scores how well a text matches an image;
each item pairs one image with its true caption and a foil (the caption with one phenomenon changed).

- acc_r: share of (caption, foil) pairs with score(caption) > score(foil). A tie counts as wrong: a model that
  cannot tell the two apart has not shown it prefers the caption.
- p_c: share of captions judged a match (score > threshold).
- p_f: share of foils judged no match (score <= threshold).
- acc = (p_c + p_f) / 2, and min_pc_pf = min(p_c, p_f), which is low when a model says "match" (or "no match") to
  everything.
- auroc: area under the ROC curve over all scores, captions positive and foils negative (ties count one half, as
  in scikit-learn's roc_auc_score).

Several foils per caption: give one row per (caption, foil) pair, repeating the caption's score, and pass
`item_ids` with the same id on the rows of one caption. Then a caption counts once in p_c and AUROC, acc_r and p_f
count every pair, and the bootstrap resamples whole items (a caption with all its foils). Without `item_ids` every
row is its own item.

Every figure comes with a percentile bootstrap interval (`<name>_low`, `<name>_high`); all figures are computed on
the same resamples (same seed).
"""

_KWARGS_DESCRIPTION = """
Args:
    caption_scores (`list` of `float`): score(image, true caption), one per row.
    foil_scores (`list` of `float`): score(image, foil), one per row, aligned with caption_scores.
    item_ids (`list`, optional): item of each row, for captions with several foils (see the description).
    threshold (`float`, default 0.5): a score above it means "judged a match" (use 0.5 for ITM probabilities).
    n_resamples (`int`, default 2000), confidence (`float`, default 0.95), seed (`int`, default 0): the bootstrap.
Returns:
    acc_r, p_c, p_f, acc, min_pc_pf, auroc, each with `_low` and `_high`; n_items, n_pairs.
Examples:
    >>> from vlp.training.metrics import load_metric
    >>> foils = load_metric("vl_foils")
    >>> result = foils.compute(caption_scores=[0.9, 0.4, 0.7], foil_scores=[0.2, 0.6, 0.7])
    >>> [round(result[name], 3) for name in ("acc_r", "p_c", "p_f", "acc")]
    [0.333, 0.667, 0.333, 0.5]
"""

_CITATION = """\
@inproceedings{parcalabescu-etal-2022-valse,
    title = "{VALSE}: A Task-Independent Benchmark for Vision and Language Models Centered on Linguistic Phenomena",
    author = "Parcalabescu, Letitia and Cafagna, Michele and Muradjan, Lilitta and Frank, Anette and
              Calixto, Iacer and Gatt, Albert",
    booktitle = "Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics",
    year = "2022",
    pages = "8253--8280",
}
"""


def item_layout(caption_scores, foil_scores, item_ids=None):
    """Captions (n_items,) and foils (n_items, max_foils), NaN-padded, from one row per (caption, foil) pair."""
    caption_scores = np.asarray(caption_scores, dtype=np.float64)
    foil_scores = np.asarray(foil_scores, dtype=np.float64)
    if caption_scores.ndim != 1 or caption_scores.shape != foil_scores.shape or caption_scores.size == 0:
        raise ValueError(
            f"caption_scores and foil_scores: expected two non-empty 1-D lists of the same length, got "
            f"shapes {caption_scores.shape} and {foil_scores.shape}"
        )
    if not (np.all(np.isfinite(caption_scores)) and np.all(np.isfinite(foil_scores))):
        raise ValueError("caption_scores and foil_scores: expected finite scores, found NaN or infinity")
    if item_ids is None:
        return caption_scores, foil_scores[:, None]
    if len(item_ids) != caption_scores.size:
        raise ValueError(f"item_ids: expected one id per row ({caption_scores.size}), got {len(item_ids)}")
    _, first, item_of_row = np.unique(np.asarray(item_ids), return_index=True, return_inverse=True)
    item_of_row = np.argsort(np.argsort(first))[item_of_row]  # items numbered in order of first appearance
    n_items = first.size
    captions = np.full(n_items, np.nan)
    captions[item_of_row] = caption_scores
    if np.any(captions[item_of_row] != caption_scores):
        bad = item_ids[int(np.flatnonzero(captions[item_of_row] != caption_scores)[0])]
        raise ValueError(
            f"item_ids: the rows of item {bad!r} carry different caption scores; repeat the caption's "
            f"score on every row of its item"
        )
    position = np.zeros(caption_scores.size, dtype=np.int64)  # rank of each row within its item
    order = np.argsort(item_of_row, kind="stable")
    sorted_items = item_of_row[order]
    starts = np.searchsorted(sorted_items, sorted_items, side="left")
    position[order] = np.arange(order.size) - starts
    foils = np.full((n_items, int(position.max()) + 1), np.nan)
    foils[item_of_row, position] = foil_scores
    return captions, foils


# Statistics over resampled items: captions (B, n), foils (B, n, K) with NaN where an item has fewer foils.


def _pairs(foils):
    return np.sum(~np.isnan(foils), axis=(1, 2))


def acc_r(captions, foils):
    return np.sum(captions[..., None] > foils, axis=(1, 2)) / _pairs(foils)


def p_c(captions, foils, threshold):
    return np.mean(captions > threshold, axis=1)


def p_f(captions, foils, threshold):
    return np.sum(foils <= threshold, axis=(1, 2)) / _pairs(foils)


def auroc(captions, foils):
    """Mann-Whitney AUROC per resample; padding foils become +inf, above every real score, so they move no rank."""
    negatives = foils.reshape(foils.shape[0], -1)
    valid = ~np.isnan(negatives)
    scores = np.concatenate([captions, np.where(valid, negatives, np.inf)], axis=1)
    ranks = rankdata(scores, axis=1)  # ties share their average rank: a tied pair counts one half
    n_pos = captions.shape[1]
    u = ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * valid.sum(axis=1))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VlFoils(evaluate.Metric):
    """VALSE foil metrics with bootstrap intervals."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"caption_scores": datasets.Value("float64"), "foil_scores": datasets.Value("float64")}
            ),
            reference_urls=["https://aclanthology.org/2022.acl-long.567/", "https://github.com/Heidelberg-NLP/VALSE"],
            format="numpy",
        )

    def _compute(
        self, caption_scores, foil_scores, item_ids=None, threshold=0.5, n_resamples=2000, confidence=0.95, seed=0
    ):
        captions, foils = item_layout(caption_scores, foil_scores, item_ids)
        figures = {
            "acc_r": acc_r,
            "p_c": lambda c, f: p_c(c, f, threshold),
            "p_f": lambda c, f: p_f(c, f, threshold),
            "acc": lambda c, f: (p_c(c, f, threshold) + p_f(c, f, threshold)) / 2.0,
            "min_pc_pf": lambda c, f: np.minimum(p_c(c, f, threshold), p_f(c, f, threshold)),
            "auroc": auroc,
        }
        result = {}
        for name, statistic in figures.items():
            interval = bootstrap_ci_paired((captions, foils), statistic, n_resamples, confidence, seed)
            result.update({name: interval.point, f"{name}_low": interval.low, f"{name}_high": interval.high})
        result.update({"n_items": int(captions.size), "n_pairs": int(np.sum(~np.isnan(foils)))})
        return result
