"""COCO caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, with bootstrap 95 %
intervals for the figures that are means over images (ROUGE-L, CIDEr-D)."""

import shutil
import subprocess

import datasets
import evaluate
import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vlp.training.statistics import mean_interval

_DESCRIPTION = """\
The COCO caption evaluation (Chen et al., 2015) through pycocoevalcap, on one generated caption per image and its
reference captions.

Captions are first tokenised with the Stanford PTB tokenizer (java; lowercased, punctuation dropped), as in the COCO
evaluation server; pass `tokenize=False` for captions that are already tokenised (words separated by spaces).
Then: BLEU-1..4 (corpus BLEU, "closest" reference length), METEOR 1.5 (java; the corpus score the jar reports),
ROUGE-L (mean over images), CIDEr-D (pycocoevalcap's "CIDEr": n = 1..4, sigma 6, clipped counts, x 10, document
frequencies from the references of the evaluated images; mean over images).

Names: bleu_1 .. bleu_4, meteor, rouge_l, cider_d (pycocoevalcap's Bleu_1 .. Bleu_4, METEOR, ROUGE_L, CIDEr).
ROUGE-L and CIDEr-D are means of per-image scores and get percentile bootstrap intervals over images (`_low`,
`_high`; CIDEr-D's document frequencies stay those of the full set). BLEU and METEOR are corpus-level statistics,
not means over images, and get no interval. `meteor=False` skips METEOR (its java process is the slowest part).

Java: the tokenizer and METEOR run `java` (pycocoevalcap ships the jars); a failed java call raises RuntimeError
naming java.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`): the reference captions of each image.
    tokenize (`bool`, default True): PTB-tokenise every caption first (java).
    meteor (`bool`, default True): compute METEOR (java).
    n_resamples (`int`, default 2000), confidence (`float`, default 0.95), seed (`int`, default 0): the bootstrap.
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4, meteor (when asked), rouge_l, cider_d, rouge_l_low/high, cider_d_low/high,
    rouge_l_scores and cider_d_scores (per image), n_images.
Examples:
    >>> from vlp.training.metrics import load_metric
    >>> captions = load_metric("caption_metrics")
    >>> result = captions.compute(predictions=["a red circle"], references=[["a red circle", "one red circle"]],
    ...                           tokenize=False, meteor=False)
    >>> round(result["rouge_l"], 3)
    1.0
"""

_CITATION = """\
@article{chen2015microsoft,
    title = {Microsoft {COCO} Captions: Data Collection and Evaluation Server},
    author = {Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
              Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
    journal = {arXiv preprint arXiv:1504.00325},
    year = {2015},
}
@inproceedings{vedantam2015cider,
    title = {{CIDEr}: Consensus-based Image Description Evaluation},
    author = {Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
    booktitle = {Conference on Computer Vision and Pattern Recognition (CVPR)},
    year = {2015},
}
"""


def _java_error(step, error):
    """A RuntimeError that names java, for a failed tokenizer or METEOR call."""
    found = shutil.which("java")
    where = f"java found at {found}" if found else "no `java` executable on PATH"
    return RuntimeError(
        f"caption_metrics: {step} runs java (pycocoevalcap's jar) and it failed ({where}): "
        f"{type(error).__name__}: {error}. Install a Java runtime (e.g. openjdk) or pass tokenize=False/meteor=False."
    )


def _require_java(step):
    """Fail early, before pycocoevalcap writes temporary files, when there is no java to run."""
    if shutil.which("java") is None:
        raise _java_error(step, FileNotFoundError("java"))


def ptb_tokenize(captions):
    """PTB-tokenise {key: [caption, ...]} with pycocoevalcap's tokenizer (one java call); same keys and counts."""
    _require_java("the PTB tokenizer")
    try:
        tokenized = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as error:
        raise _java_error("the PTB tokenizer", error) from error
    short = [k for k, v in captions.items() if v and len(tokenized.get(k, ())) != len(v)]
    if short:
        raise _java_error("the PTB tokenizer", ValueError(f"no or too few tokenised lines for key {short[0]!r}"))
    return tokenized


def meteor_score(gts, res):
    """pycocoevalcap's METEOR (corpus score, per-image scores); java failures raise RuntimeError naming java."""
    _require_java("METEOR")
    try:
        scorer = Meteor()
    except OSError as error:
        raise _java_error("METEOR", error) from error
    try:
        return scorer.compute_score(gts, res)
    except (OSError, ValueError) as error:  # a dead java process: broken pipe, or an empty line where a score was due
        stderr = b""
        if scorer.meteor_p.poll() is not None and scorer.meteor_p.stderr is not None:
            stderr = scorer.meteor_p.stderr.read()[-500:]
        detail = f"{error}; java said: {stderr.decode(errors='replace')}" if stderr else str(error)
        raise _java_error("METEOR", RuntimeError(detail)) from error


def _as_inputs(predictions, references, tokenize):
    """gts and res dicts keyed by image position, tokenised (one PTB call for both) or whitespace-normalised."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length")
    if not len(predictions):
        raise ValueError("caption_metrics needs at least one image")
    for i, refs in enumerate(references):
        if not len(refs):
            raise ValueError(f"image {i} has no reference caption")
    n = len(predictions)
    captions = {i: [str(p)] for i, p in enumerate(predictions)}
    captions.update({n + i: [str(r) for r in refs] for i, refs in enumerate(references)})
    if tokenize:
        captions = ptb_tokenize(captions)
    else:
        captions = {k: [" ".join(c.split()) for c in v] for k, v in captions.items()}
    res = {i: captions[i] for i in range(n)}
    gts = {i: captions[n + i] for i in range(n)}
    return gts, res


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap) with bootstrap intervals for the per-image means."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/tylin/coco-caption", "https://arxiv.org/abs/1504.00325"],
        )

    def _compute(self, predictions, references, tokenize=True, meteor=True, n_resamples=2000, confidence=0.95, seed=0):
        gts, res = _as_inputs(predictions, references, tokenize)
        result = {}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        result.update({f"bleu_{n + 1}": float(score) for n, score in enumerate(bleu)})
        if meteor:
            result["meteor"] = float(meteor_score(gts, res)[0])
        for name, scorer in (("rouge_l", Rouge()), ("cider_d", Cider())):
            score, per_image = scorer.compute_score(gts, res)
            per_image = np.asarray(per_image, dtype=np.float64)
            low, high = mean_interval(per_image, n_resamples, confidence, seed)
            result.update({name: float(score), f"{name}_low": low, f"{name}_high": high})
            result[f"{name}_scores"] = per_image.tolist()
        result["n_images"] = len(res)
        return result
