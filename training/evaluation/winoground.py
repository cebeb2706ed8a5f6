"""The Winoground suite: two images and two captions -> text, image and group scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .figures import comparison, difference, load_metric_module, metric_figures
from .runner import ImageBank, Runner, derangement, match_scores, rng_for
from .settings import BLANK, Settings

WINOGROUND_FIGURES = ("text_score", "image_score", "group_score")


def winoground_scores(runner: Runner, bank: ImageBank, image_ids: np.ndarray, captions: Sequence) -> dict:
    """s(c, i) for the four combinations of each item's two captions and two images (``image_ids`` (N, 2))."""
    n = len(captions)
    ids = np.concatenate([image_ids[:, 0], image_ids[:, 1], image_ids[:, 0], image_ids[:, 1]])
    texts = [c[0] for c in captions] * 2 + [c[1] for c in captions] * 2
    scores = match_scores(runner, bank, ids, texts)
    return {"c0_i0": scores[:n], "c0_i1": scores[n : 2 * n], "c1_i0": scores[2 * n : 3 * n], "c1_i1": scores[3 * n :]}


def winoground_success(s: Mapping) -> dict[str, np.ndarray]:
    """Per-item text, image and group success (strict comparisons: a tie is a failure)."""
    text = (s["c0_i0"] > s["c1_i0"]) & (s["c1_i1"] > s["c0_i1"])
    image = (s["c0_i0"] > s["c0_i1"]) & (s["c1_i1"] > s["c1_i0"])
    return {"text_score": text, "image_score": image, "group_score": text & image}


def run_winoground(
    runner: Runner,
    bank: ImageBank,
    image_ids: np.ndarray,
    captions: Sequence,
    groups: Sequence[str],
    settings: Settings,
) -> dict:
    """The Winoground suite: the images, then both images blanked and both taken from another item."""
    n = len(captions)
    mismatched = image_ids[derangement(n, rng_for(settings, "winoground/mismatched"))]
    conditions = {
        "image": winoground_scores(runner, bank, image_ids, captions),
        "blank": winoground_scores(runner, bank, np.full_like(image_ids, BLANK), captions),
        "mismatched": winoground_scores(runner, bank, mismatched, captions),
    }
    success = {name: winoground_success(s) for name, s in conditions.items()}
    blocks = {}
    selections = {"all": np.arange(n)}
    for name in dict.fromkeys(groups):
        selections[name] = np.flatnonzero(np.asarray(groups) == name)
    for group, items in selections.items():
        figures = {}
        for name, s in conditions.items():
            result = load_metric_module("winoground").compute(
                **{k: v[items] for k, v in s.items()},
                n_resamples=settings.n_resamples,
                confidence=settings.confidence,
                seed=settings.seed,
            )
            figures[name] = metric_figures(result, WINOGROUND_FIGURES)
        floors = {name: figures[name] for name in conditions if name != "image"}
        differences = {
            name: difference(
                success[name]["group_score"][items], success["image"]["group_score"][items], settings, "group_score"
            )
            for name in floors
        }
        blocks[group] = comparison(
            items.size,
            "group_score",
            figures["image"],
            floors,
            differences,
            {name: success["image"][name][items] for name in WINOGROUND_FIGURES},
        )
    return {"phenomena": blocks}
