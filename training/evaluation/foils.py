"""The foils suite: P(match) of a caption against its one-word foil, per phenomenon (VALSE's acc_r, p_c, p_f, acc,
min(p_c, p_f), AUROC), with the blank-image, mismatched-image and text-only floors."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...processing.worlds import eval_sets as es
from ...processing.worlds import shapes as sw
from .figures import comparison, difference, load_metric_module, metric_figures
from .runner import ImageBank, Runner, derangement, match_scores, rng_for
from .settings import BLANK, TEXT_FLOOR_SEED_OFFSET, Settings


@dataclass
class FoilRows:
    """Items with one image, a caption and one or more foils: ``foil_item[r]`` is the item of foil row r."""

    image_ids: np.ndarray
    captions: list[str]
    foils: list[str]
    foil_item: np.ndarray
    groups: list[str]

    @classmethod
    def from_items(cls, items: Sequence, image_ids: Sequence[int]) -> FoilRows:
        """From eval-set FoilItems (``foil``) or benchmark FoilItems (``foils``, a list)."""
        foils, foil_item = [], []
        for k, item in enumerate(items):
            for foil in item.foils if hasattr(item, "foils") else [item.foil]:
                foils.append(foil)
                foil_item.append(k)
        return cls(
            np.asarray(image_ids, dtype=np.int64),
            [item.caption for item in items],
            foils,
            np.asarray(foil_item, dtype=np.int64),
            [item.phenomenon for item in items],
        )


def foil_scores(runner: Runner, bank: ImageBank, rows: FoilRows, image_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """(caption scores (N,), foil scores (R,)) with item k shown image ``image_ids[k]``, in one batched pass."""
    n = len(rows.captions)
    ids = np.concatenate([image_ids, image_ids[rows.foil_item]])
    scores = match_scores(runner, bank, ids, rows.captions + rows.foils)
    return scores[:n], scores[n:]


def item_acc_r(captions, foils, foil_item, n):
    """Per item, the share of its foils scored below its caption (ties count as wrong)."""
    wins = np.bincount(foil_item, weights=(captions[foil_item] > foils).astype(float), minlength=n)
    return wins / np.maximum(np.bincount(foil_item, minlength=n), 1)


FOIL_FIGURES = ("acc_r", "p_c", "p_f", "acc", "min_pc_pf", "auroc")


def _foil_figures(captions, foils, foil_item, items, settings: Settings) -> dict:
    rows = np.isin(foil_item, items)
    result = load_metric_module("vl_foils").compute(
        caption_scores=captions[foil_item[rows]],
        foil_scores=foils[rows],
        item_ids=foil_item[rows].tolist(),
        n_resamples=settings.n_resamples,
        confidence=settings.confidence,
        seed=settings.seed,
    )
    return metric_figures(result, FOIL_FIGURES)


def foil_blocks(conditions: Mapping[str, tuple], rows: FoilRows, settings: Settings) -> dict:
    """Per group ("all" and each phenomenon): vl_foils figures under each condition ("image" is the score, the
    others floors) and acc_r differences score - floor."""
    n = len(rows.captions)
    per_item = {name: item_acc_r(c, f, rows.foil_item, n) for name, (c, f) in conditions.items()}
    groups = {"all": np.arange(n)}
    for name in dict.fromkeys(rows.groups):
        groups[name] = np.flatnonzero(np.asarray(rows.groups) == name)
    blocks = {}
    for group, items in groups.items():
        if items.size == 0:
            continue
        figures = {name: _foil_figures(c, f, rows.foil_item, items, settings) for name, (c, f) in conditions.items()}
        floors = {name: figures[name] for name in conditions if name != "image"}
        differences = {
            name: difference(per_item[name][items], per_item["image"][items], settings, "acc_r") for name in floors
        }
        foils_per_item = np.bincount(rows.foil_item, minlength=n)[items]
        per_item_acc_r = {"acc_r": per_item["image"][items]} if np.ptp(foils_per_item) == 0 else None
        blocks[group] = comparison(
            items.size,
            "acc_r",
            figures["image"],
            floors,
            differences,
            per_item_acc_r,
            n_pairs=int(np.isin(rows.foil_item, items).sum()),
        )
    return blocks


def run_foils(
    runner: Runner,
    bank: ImageBank,
    rows: FoilRows,
    settings: Settings,
    text_floor_pairs: Sequence[tuple[str, str]] | None = None,
) -> dict:
    """The foils suite on ``rows``: the image, then the blank and mismatched floors, and with
    ``text_floor_pairs`` ((caption, foil) training pairs) the text-only floor (`text_only_foil_scores`)."""
    mismatched = rows.image_ids[derangement(len(rows.captions), rng_for(settings, "foils/mismatched"))]
    conditions = {
        "image": foil_scores(runner, bank, rows, rows.image_ids),
        "blank": foil_scores(runner, bank, rows, np.full_like(rows.image_ids, BLANK)),
        "mismatched": foil_scores(runner, bank, rows, mismatched),
    }
    if text_floor_pairs:
        conditions["text_only"] = text_only_foil_scores(text_floor_pairs, rows)
    return {"phenomena": foil_blocks(conditions, rows, settings)}


def text_only_foil_scores(train_pairs: Sequence[tuple[str, str]], rows: FoilRows) -> tuple[np.ndarray, np.ndarray]:
    """(caption scores, foil scores) of a classifier that never sees an image: a bag of words trained to tell the
    captions of ``train_pairs`` (1) from their foils (0), scoring P(true caption) of each text of ``rows``."""
    from .shortcuts import caption_foil_scores

    return caption_foil_scores(train_pairs, rows.captions, rows.foils)


def text_floor_world(world: sw.WorldConfig) -> sw.WorldConfig:
    """The world whose items train the text-only floors: the evaluation world's config, another seed."""
    return dataclasses.replace(world, seed=world.seed + TEXT_FLOOR_SEED_OFFSET)


def text_floor_foil_pairs(world: sw.WorldConfig, items: Sequence) -> list[tuple[str, str]]:
    """(caption, foil) training pairs for the text-only floor: as many per phenomenon as ``items`` hold, drawn from
    `text_floor_world`."""
    counts = Counter(item.phenomenon for item in items)
    return [
        (item.caption, item.foil)
        for phenomenon, n in counts.items()
        for item in es.foil_items(text_floor_world(world), phenomenon, n)[0]
    ]
