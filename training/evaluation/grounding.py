"""Grounding: attention pointing (against a random patch) and occlusion (against as many random other patches)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .figures import comparison, difference, mean_figure
from .runner import ImageBank, Runner, match_scores, phrase_relevance, rng_for
from .settings import Settings


def pointing_hits(relevance: np.ndarray, object_patches: Sequence[Sequence[int]]) -> np.ndarray:
    """Per item whether the most relevant patch (first on ties) is one of its object's patches (NaN rows: False)."""
    defined = ~np.isnan(relevance).all(axis=1)
    top = np.where(np.isnan(relevance), -np.inf, relevance).argmax(axis=1)
    return np.asarray(
        [bool(ok) and int(t) in set(patches) for ok, t, patches in zip(defined, top, object_patches)], dtype=bool
    )


def occlusion_masks(
    object_patches: Sequence[Sequence[int]], num_patches: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(object masks, random masks (N, P) bool, usable (N,)): the random mask hides as many patches as the object's,
    drawn uniformly among the other patches; an item whose object covers more than half the grid is not usable."""
    n = len(object_patches)
    objects = np.zeros((n, num_patches), dtype=bool)
    randoms = np.zeros((n, num_patches), dtype=bool)
    usable = np.zeros(n, dtype=bool)
    for k, patches in enumerate(object_patches):
        patches = np.asarray(sorted({int(p) for p in patches}), dtype=np.int64)
        objects[k, patches] = True
        others = np.flatnonzero(~objects[k])
        if 0 < patches.size <= others.size:
            randoms[k, rng.choice(others, size=patches.size, replace=False)] = True
            usable[k] = True
    return objects, randoms, usable


def occlusion_block(
    base: np.ndarray, object_scores: np.ndarray, random_scores: np.ndarray, settings: Settings, mode: str
) -> dict:
    """Drops of the match probability when the object's patches, or as many random ones, are hidden."""
    object_drop, random_drop = base - object_scores, base - random_scores
    score = {
        "object_drop": mean_figure(object_drop, settings),
        "object_drop_larger": mean_figure((object_drop > random_drop).astype(float), settings),
    }
    floors = {"random_patches": {"object_drop": mean_figure(random_drop, settings)}}
    differences = {"random_patches": difference(random_drop, object_drop, settings, "object_drop")}
    return comparison(
        base.size,
        "object_drop",
        score,
        floors,
        differences,
        {"object_drop": object_drop, "object_drop_larger": (object_drop > random_drop).astype(float)},
        occlusion=mode,
        base_score=mean_figure(base, settings),
    )


def run_grounding(runner: Runner, sets: Mapping, settings: Settings) -> dict:
    """Pointing from the phrase's attention and occlusion of the object's patches."""
    items = [item for item in sets["grounding"] if item.patch_indices]
    skipped = len(sets["grounding"]) - len(items)
    if items and (items[0].patch_size != runner.patch_size or items[0].image_size != runner.image_size):
        raise ValueError(
            f"grounding items use {items[0].image_size} px images in {items[0].patch_size} px patches; "
            f"the model takes {runner.image_size} px in {runner.patch_size} px patches"
        )
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    ids = np.arange(len(items))
    captions = [item.caption for item in items]
    patches = [item.patch_indices for item in items]
    relevance = phrase_relevance(
        runner, bank, ids, captions, [item.word_span for item in items], settings.relevance_layers
    )
    hits = pointing_hits(relevance, patches).astype(float)
    chance = np.asarray([len(p) / runner.num_patches for p in patches])
    pointing = comparison(
        len(items),
        "accuracy",
        {"accuracy": mean_figure(hits, settings)},
        {"chance": {"accuracy": mean_figure(chance, settings)}},
        {"chance": difference(chance, hits, settings, "accuracy")},
        {"accuracy": hits},
        relevance_layers=list(settings.relevance_layers),
    )
    objects, randoms, usable = occlusion_masks(patches, runner.num_patches, rng_for(settings, "occlusion"))
    rows = np.flatnonzero(usable)
    n = rows.size
    scores = match_scores(
        runner,
        bank,
        np.concatenate([rows, rows, rows]),
        [captions[k] for k in rows] * 3,
        np.concatenate([np.zeros_like(objects[rows]), objects[rows], randoms[rows]]),
        settings.occlusion,
    )
    occlusion = occlusion_block(scores[:n], scores[n : 2 * n], scores[2 * n :], settings, settings.occlusion)
    occlusion["skipped"] = int((~usable).sum())
    return {"skipped": skipped, "pointing": pointing, "occlusion": occlusion}
