"""Percentile bootstrap intervals over items, shared by VLP's metric modules (seeded, vectorised with numpy).

The metric modules import it absolutely (``from vlp.training.metrics._bootstrap import ...``): `evaluate` copies a
module script into its own cache, where relative imports would not resolve.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
#: Index draws per chunk (resamples x items), so large sets (200k VQA questions) stay within ~32 MB.
_CHUNK_ELEMENTS = 4_000_000


def _check(n_resamples: int, confidence: float):
    """Validate the bootstrap settings."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """Draws (n_resamples,) of ``statistic`` on item indices resampled with replacement.

    ``statistic`` maps an index matrix (r, n) (each row one resample of the n items) to r values, or to an
    (r, m) matrix for m figures drawn on the same resamples.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    draws = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        draws.append(np.asarray(statistic(rng.integers(0, n, size=(rows, n))), dtype=np.float64))
    return np.concatenate(draws)


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """The central ``confidence`` percentile interval [low, high] of bootstrap draws."""
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(np.asarray(draws, dtype=np.float64), [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def mean_interval(
    values, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> list[float]:
    """Percentile bootstrap interval of the mean of per-item ``values``; [nan, nan] when there are none."""
    _check(n_resamples, confidence)
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return [float("nan"), float("nan")]
    draws = bootstrap_statistic(lambda idx: values[idx].mean(axis=1), values.size, n_resamples, seed)
    return percentile_interval(draws, confidence)


def ratio_interval(
    numerators, denominators, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> list[float]:
    """Interval of sum(numerators) / sum(denominators) with items (clusters) resampled together.

    For figures averaged over units grouped in items, e.g. text-to-image recall resampled by image with all the
    image's captions. A resample whose denominator is zero gives nan and is ignored.
    """
    _check(n_resamples, confidence)
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} must be 1-d of one length")
    if num.size == 0 or den.sum() == 0:
        return [float("nan"), float("nan")]

    def ratio(idx):
        total = den[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, num[idx].sum(axis=1) / total, np.nan)

    draws = bootstrap_statistic(ratio, num.size, n_resamples, seed)
    return percentile_interval(draws[~np.isnan(draws)], confidence)
