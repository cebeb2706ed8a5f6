"""Figures with intervals: `{"value", "low", "high"}`, differences to a floor (paired, unpaired, clustered), slopes,
and the `comparison` block every suite returns (score, floors, differences)."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..statistics import (
    bootstrap_ci,
    bootstrap_ci_paired,
    cluster_ratio_ci,
    cluster_ratio_difference,
    paired_bootstrap_difference,
)
from .settings import Settings


@functools.cache
def load_metric_module(name: str):
    from ..metrics import load_metric

    return load_metric(name)


def number_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def figure(value, low, high) -> dict:
    """One figure: its value and the two ends of its interval (None where undefined)."""
    return {"value": number_or_none(value), "low": number_or_none(low), "high": number_or_none(high)}


def metric_figures(result: Mapping, names: Sequence[str]) -> dict:
    """Figures from a metric module's flat ``name``, ``name_low``, ``name_high`` keys."""
    return {name: figure(result[name], result[f"{name}_low"], result[f"{name}_high"]) for name in names}


def mean_figure(values, settings: Settings) -> dict:
    """The mean of per-item values with its bootstrap interval; all None without items."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return figure(float("nan"), float("nan"), float("nan"))
    interval = bootstrap_ci(values, "mean", settings.n_resamples, settings.confidence, settings.seed)
    return figure(interval.point, interval.low, interval.high)


def difference(floor_values, score_values, settings: Settings, of: str) -> dict:
    """mean(score) - mean(floor) over the same items, with a paired bootstrap interval and p-value."""
    floor_values, score_values = np.asarray(floor_values, float), np.asarray(score_values, float)
    if floor_values.size == 0:
        return {"of": of, **figure(float("nan"), float("nan"), float("nan")), "p_value": None, "resampled": "items"}
    test = paired_bootstrap_difference(
        floor_values, score_values, "mean", settings.n_resamples, settings.confidence, settings.seed
    )
    return {
        "of": of,
        **figure(test.interval.point, test.interval.low, test.interval.high),
        "p_value": number_or_none(test.p_value),
        "resampled": test.resampled,
    }


def unpaired_difference(a, b, settings: Settings, of: str) -> dict:
    """mean(b) - mean(a) over two independent sets of items, each resampled on its own."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size == 0 or b.size == 0:
        return {
            "of": of,
            **figure(float("nan"), float("nan"), float("nan")),
            "p_value": None,
            "resampled": "items (each set)",
        }
    rng = np.random.default_rng(settings.seed)
    draws_a = a[rng.integers(0, a.size, (settings.n_resamples, a.size))].mean(axis=1)
    draws_b = b[rng.integers(0, b.size, (settings.n_resamples, b.size))].mean(axis=1)
    draws = draws_b - draws_a
    tail = (1 - settings.confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    p = min(1.0, 2 * min((np.sum(draws <= 0) + 1) / (draws.size + 1), (np.sum(draws >= 0) + 1) / (draws.size + 1)))
    return {"of": of, **figure(b.mean() - a.mean(), low, high), "p_value": float(p), "resampled": "items (each set)"}


def cluster_mean_figure(sums, counts, settings: Settings) -> dict:
    """The mean over items that come in clusters, from per-cluster sums and item counts, with a cluster bootstrap
    interval (`statistics.cluster_ratio_ci`)."""
    interval = cluster_ratio_ci(sums, counts, settings.n_resamples, settings.confidence, settings.seed)
    return figure(interval.point, interval.low, interval.high)


def cluster_difference(a, b, settings: Settings, of: str) -> dict:
    """mean(b) - mean(a), each given as (per-cluster sums, per-cluster item counts) over the same clusters, with a
    cluster bootstrap interval and p-value (`statistics.cluster_ratio_difference`)."""
    test = cluster_ratio_difference(a, b, settings.n_resamples, settings.confidence, settings.seed)
    return {
        "of": of,
        **figure(test.interval.point, test.interval.low, test.interval.high),
        "p_value": number_or_none(test.p_value),
        "resampled": "groups",
    }


def _slope_statistic(x, y):
    """Least-squares slope of y on x along the last axis (NaN where x does not vary)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    var = (xc * xc).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, (xc * yc).sum(axis=-1) / np.where(var > 0, var, 1.0), np.nan)


def slope_figure(x, y, settings: Settings) -> dict:
    """Least-squares slope of per-item y on x with an item bootstrap interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0:
        return figure(float("nan"), float("nan"), float("nan"))
    interval = bootstrap_ci_paired((x, y), _slope_statistic, settings.n_resamples, settings.confidence, settings.seed)
    return figure(interval.point, interval.low, interval.high)


def comparison(
    n_items: int,
    headline: str,
    score: dict,
    floors: dict,
    differences: dict,
    items: Mapping[str, np.ndarray] | None = None,
    **extra,
) -> dict:
    """The block every zero-shot figure is reported in: the score, its floors and score - floor; `items` holds, for
    score figures that are means over items, the per-item values in item order (what a paired comparison of two
    runs on the same items resamples)."""
    block = {
        "n_items": int(n_items),
        "headline": headline,
        "score": score,
        "floors": floors,
        "differences": differences,
        **extra,
    }
    if items:
        block["items"] = {
            name: [round(float(v), 6) for v in np.asarray(values, dtype=float)] for name, values in items.items()
        }
    return block
