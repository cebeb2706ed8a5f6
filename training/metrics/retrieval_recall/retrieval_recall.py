"""Image-text retrieval recall R@1, R@5, R@10 in both directions, their mean and rsum, with bootstrap 95 %
intervals resampling images (each with all its captions)."""

import datasets
import evaluate
import numpy as np

from vlp.training.statistics import bootstrap_statistic, percentile_interval

_DESCRIPTION = """\
Recall@K for image-text retrieval on a gallery where each image owns several captions (Karpathy-style splits of
COCO and Flickr30k: five captions per image).

Input: the similarity of every text to every image (the image x text similarity matrix, given one text per row:
`predictions[j][i]` = score(image i, text j)) and, per text, the index of the image that owns it (`references`).

- Image -> text (i2t): an image is a query; its rank is the number of texts it does not own that score at least
  as high as its best-scoring own text. R@K = share of images with rank < K.
- Text -> image (t2i): a text is a query; its rank is the number of other images that score at least as high as
  its own image. R@K = share of texts with rank < K.
- Ties count against the query (a constant score matrix gets recall 0, not 1).
- mean_recall is the mean of the six recalls and rsum their sum; recalls are fractions (x 100 for the usual
  percentages, rsum up to 600). i2t_medr and t2i_medr are median ranks, 1-based.

Images without a caption are gallery items for t2i but not i2t queries. Intervals: percentile bootstrap that
resamples images, each with all its captions, so both directions and the sums use the same resamples.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per text, its similarity to each image (the image x text
        matrix transposed).
    references (`list` of `int`): the index of the image that owns each text.
    ks (`list` of `int`, default [1, 5, 10]): the recall cut-offs.
    n_resamples (`int`, default 2000), confidence (`float`, default 0.95), seed (`int`, default 0): the bootstrap.
Returns:
    i2t_r{k}, t2i_r{k} for each k, mean_recall, rsum, each with `_low` and `_high`; i2t_medr, t2i_medr;
    n_images, n_texts.
Examples:
    >>> from vlp.training.metrics import load_metric
    >>> recall = load_metric("retrieval_recall")
    >>> result = recall.compute(predictions=[[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]], references=[0, 1, 1])
    >>> result["i2t_r1"], round(result["t2i_r1"], 3)
    (1.0, 0.667)
"""

_CITATION = """\
@inproceedings{karpathy2015deep,
    title = {Deep Visual-Semantic Alignments for Generating Image Descriptions},
    author = {Karpathy, Andrej and Fei-Fei, Li},
    booktitle = {Conference on Computer Vision and Pattern Recognition (CVPR)},
    year = {2015},
}
"""

_ROW_CHUNK = 256


def _check_inputs(similarity, text_to_image):
    """Validate the (n_images, n_texts) matrix and the owners; return them as arrays."""
    sim = np.asarray(similarity, dtype=np.float64)
    owners = np.asarray(text_to_image)
    if sim.ndim != 2 or sim.size == 0:
        raise ValueError(f"similarity must be a non-empty (n_images, n_texts) matrix, got shape {sim.shape}")
    if owners.shape != (sim.shape[1],) or not np.issubdtype(owners.dtype, np.integer):
        raise ValueError(f"text_to_image must hold one integer image index per text ({sim.shape[1]}), got {owners!r}")
    if owners.min() < 0 or owners.max() >= sim.shape[0]:
        raise ValueError(f"text_to_image indices must lie in [0, {sim.shape[0]}), got {owners.min()}..{owners.max()}")
    if np.isnan(sim).any():
        raise ValueError("similarity holds NaN scores")
    return sim, owners.astype(np.int64)


def retrieval_ranks(similarity, text_to_image):
    """0-based ranks: i2t (n_images,), -1 for images without a caption, and t2i (n_texts,).

    ``similarity`` is (n_images, n_texts); ties count against the query (see the module description).
    """
    sim, owners = _check_inputs(similarity, text_to_image)
    n_images, n_texts = sim.shape
    own_score = sim[owners, np.arange(n_texts)]
    t2i = (sim >= own_score[None, :]).sum(axis=0) - 1  # minus the own image, which always ties with itself
    i2t = np.full(n_images, -1, dtype=np.int64)
    for start in range(0, n_images, _ROW_CHUNK):
        rows = sim[start : start + _ROW_CHUNK]
        owned = owners[None, :] == np.arange(start, start + rows.shape[0])[:, None]
        best = np.where(owned, rows, -np.inf).max(axis=1)
        rank = ((rows >= best[:, None]) & ~owned).sum(axis=1)
        i2t[start : start + rows.shape[0]] = np.where(owned.any(axis=1), rank, -1)
    return i2t, t2i.astype(np.int64)


def _recall_tables(i2t, t2i, owners, n_images, ks):
    """Per-image numerators and denominators of every recall, for the image-resampling bootstrap."""
    texts_per_image = np.bincount(owners, minlength=n_images).astype(np.float64)
    is_query = (i2t >= 0).astype(np.float64)
    tables = {}
    for k in ks:
        tables[f"i2t_r{k}"] = (((i2t >= 0) & (i2t < k)).astype(np.float64), is_query)
        hits = np.bincount(owners, weights=(t2i < k).astype(np.float64), minlength=n_images)
        tables[f"t2i_r{k}"] = (hits, texts_per_image)
    return tables


def _ratios(tables, idx):
    """Every recall on index rows ``idx`` (r, n_images): {name: (r,)}."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: num[idx].sum(axis=1) / den[idx].sum(axis=1) for name, (num, den) in tables.items()}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Image-text retrieval Recall@K in both directions with bootstrap intervals."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://cs.stanford.edu/people/karpathy/deepimagesent/"],
        )

    def _compute(self, predictions, references, ks=(1, 5, 10), n_resamples=2000, confidence=0.95, seed=0):
        rows = np.asarray(predictions, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"predictions must be one row of image scores per text, of one length; got {rows.shape}")
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        similarity = rows.T  # (n_images, n_texts)
        i2t, t2i = retrieval_ranks(similarity, np.asarray(references))
        owners = np.asarray(references, dtype=np.int64)
        n_images = similarity.shape[0]
        tables = _recall_tables(i2t, t2i, owners, n_images, ks)
        names = [*tables, "rsum", "mean_recall"]

        def statistic(idx):
            values = _ratios(tables, idx)
            rsum = sum(values.values())
            return np.stack([*values.values(), rsum, rsum / (2 * len(ks))], axis=1)

        points = statistic(np.arange(n_images)[None, :])[0]
        draws = bootstrap_statistic(statistic, n_images, n_resamples, seed)  # (n_resamples, len(names))
        result = {}
        for column, name in enumerate(names):
            kept = draws[:, column][np.isfinite(draws[:, column])]  # a resample may hold no captioned image
            low, high = percentile_interval(kept, confidence) if kept.size else (float("nan"), float("nan"))
            result.update({name: float(points[column]), f"{name}_low": low, f"{name}_high": high})
        result["i2t_medr"] = float(np.median(i2t[i2t >= 0]) + 1)
        result["t2i_medr"] = float(np.median(t2i) + 1)
        result.update({"n_images": int(n_images), "n_texts": int(owners.size)})
        return result
