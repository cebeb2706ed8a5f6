"""Concept frequency: foils acc_r against log10 of the named (colour, shape) pair's pretraining count, in buckets
and as a slope, and on held-out pairs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...processing.worlds import eval_sets as es
from .figures import comparison, difference, mean_figure, slope_figure, unpaired_difference
from .foils import FoilRows, foil_scores, item_acc_r
from .runner import ImageBank, Runner, derangement, rng_for
from .settings import BLANK, NUM_FREQUENCY_BUCKETS, Settings


def _foil_item_correct(runner: Runner, bank: ImageBank, rows: FoilRows, settings: Settings, tag: str) -> dict:
    """Per-item acc_r under the image, blank and mismatched conditions."""
    n = len(rows.captions)
    conditions = {
        "image": rows.image_ids,
        "blank": np.full_like(rows.image_ids, BLANK),
        "mismatched": rows.image_ids[derangement(n, rng_for(settings, f"{tag}/mismatched"))],
    }
    return {
        name: item_acc_r(*foil_scores(runner, bank, rows, ids), rows.foil_item, n) for name, ids in conditions.items()
    }


def _acc_block(correct: Mapping[str, np.ndarray], rows: np.ndarray, settings: Settings, **extra) -> dict:
    score = {"acc_r": mean_figure(correct["image"][rows], settings)}
    floors = {name: {"acc_r": mean_figure(correct[name][rows], settings)} for name in ("blank", "mismatched")}
    differences = {name: difference(correct[name][rows], correct["image"][rows], settings, "acc_r") for name in floors}
    return comparison(rows.size, "acc_r", score, floors, differences, {"acc_r": correct["image"][rows]}, **extra)


def run_frequency(runner: Runner, sets: Mapping, pair_counts: Mapping, settings: Settings) -> dict:
    """acc_r against log10 of the named pair's pretraining count (slope and buckets), and on held-out pairs."""
    seen, held = list(sets["frequency"]), list(sets.get("held_out", []))
    items = seen + held
    if len(seen) < 2:
        raise ValueError("the frequency suite needs at least two frequency items")
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    rows = FoilRows.from_items(items, np.arange(len(items)))
    correct = _foil_item_correct(runner, bank, rows, settings, "frequency")
    counts = np.asarray([np.nan if c is None else c for c in es.item_frequencies(seen, pair_counts)], dtype=float)
    observed = np.flatnonzero(counts >= 1)
    x = np.log10(counts[observed])
    slope = {
        "n_items": int(observed.size),
        "x": "log10(pretraining count of the named colour-shape pair)",
        "score": slope_figure(x, correct["image"][observed], settings),
        "floors": {name: slope_figure(x, correct[name][observed], settings) for name in ("blank", "mismatched")},
        "differences": {
            name: {
                "of": "acc_r slope",
                **slope_figure(x, correct["image"][observed] - correct[name][observed], settings),
                "p_value": None,
                "resampled": "items",
            }
            for name in ("blank", "mismatched")
        },
    }
    buckets = es.log_buckets(pair_counts, NUM_FREQUENCY_BUCKETS)  # held-out pairs count 0: bucket 0
    of_item = np.asarray([buckets.bucket(c) if np.isfinite(c) else -1 for c in counts])
    table = []
    for b in range(NUM_FREQUENCY_BUCKETS + 1):
        members = np.flatnonzero(of_item == b)
        if members.size:
            low = 0.0 if b == 0 else buckets.edges[b - 1]
            high = 0.0 if b == 0 else buckets.edges[b]
            table.append(
                {
                    "bucket": b,
                    "count_low": float(low),
                    "count_high": float(high),
                    **_acc_block(correct, members, settings),
                }
            )
    result = {
        "n_items": len(seen),
        "slope": slope,
        "buckets": table,
        "bucket_edges": list(buckets.edges),
        "held_out": None,
        "held_out_versus_seen": None,
        "held_out_pairs": [list(p) for p in sorted({q for i in held for q in es.item_pairs(i)})],
    }
    if held:
        held_rows = np.arange(len(seen), len(items))
        result["held_out"] = _acc_block(correct, held_rows, settings)
        result["held_out_versus_seen"] = unpaired_difference(
            correct["image"][: len(seen)], correct["image"][held_rows], settings, "acc_r (held out - seen)"
        )
    return result
