"""Bootstrap intervals (coverage on simulated data), paired and hierarchical differences, Holm and BH corrections."""

import numpy as np
import pytest

from vlp.training.statistics import (
    DifferenceTest,
    Interval,
    benjamini_hochberg,
    bootstrap_ci,
    bootstrap_ci_paired,
    cluster_ratio_ci,
    cluster_ratio_difference,
    hierarchical_bootstrap_difference,
    holm_correction,
    paired_bootstrap_difference,
)

N_SIMULATIONS = 500
COVERAGE_RANGE = (0.92, 0.98)


# ---------------------------------------------------------------------------------------------------------------
# Multiple comparisons, against hand-computed adjustments
# ---------------------------------------------------------------------------------------------------------------


def test_holm_hand_computed():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Ascending: 0.005, 0.01, 0.03, 0.04
    # times (m - j + 1) = 4, 3, 2, 1:    0.020, 0.030, 0.060, 0.040
    # running maximum:                   0.020, 0.030, 0.060, 0.060
    # back in input order: [0.03, 0.06, 0.06, 0.02]; rejected at 0.05: the first and the last.
    adjusted, reject = holm_correction([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]


def test_holm_caps_at_one_and_keeps_order():
    # p = [0.5, 0.2, 0.9]: ascending 0.2, 0.5, 0.9 times 3, 2, 1 = 0.6, 1.0, 0.9 -> running max 0.6, 1.0, 1.0
    adjusted, reject = holm_correction([0.5, 0.2, 0.9])
    np.testing.assert_allclose(adjusted, [1.0, 0.6, 1.0])
    assert not reject.any()


def test_benjamini_hochberg_hand_computed():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Ascending: 0.005, 0.01, 0.03, 0.04
    # times m / j = 4, 2, 4/3, 1:        0.020, 0.020, 0.040, 0.040
    # running minimum from the largest:  0.020, 0.020, 0.040, 0.040
    # back in input order: [0.02, 0.04, 0.04, 0.02]; all four rejected at 0.05 (Holm rejected two).
    adjusted, reject = benjamini_hochberg([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(adjusted, [0.02, 0.04, 0.04, 0.02])
    assert reject.all()


def test_benjamini_hochberg_step_up_minimum():
    # p = [0.5, 0.2, 0.9]: ascending times m / j = 0.2*3 = 0.6, 0.5*3/2 = 0.75, 0.9*3/3 = 0.9 (already monotone)
    np.testing.assert_allclose(benjamini_hochberg([0.5, 0.2, 0.9]).adjusted, [0.75, 0.6, 0.9])
    # p = [0.04, 0.045, 0.2]: 0.04*3 = 0.12, 0.045*3/2 = 0.0675, 0.2 -> the minimum from above pulls 0.12 to 0.0675
    adjusted, reject = benjamini_hochberg([0.04, 0.045, 0.2], alpha=0.07)
    np.testing.assert_allclose(adjusted, [0.0675, 0.0675, 0.2])
    assert reject.tolist() == [True, True, False]


@pytest.mark.parametrize("bad", [[0.1, 1.2], [0.1, -0.01], [0.1, float("nan")]])
def test_corrections_reject_invalid_pvalues(bad):
    with pytest.raises(ValueError, match="pvalues"):
        holm_correction(bad)
    with pytest.raises(ValueError, match="pvalues"):
        benjamini_hochberg(bad)


# ---------------------------------------------------------------------------------------------------------------
# Coverage on simulated data with a known value (500 simulations each; vectorised bootstraps keep this fast)
# ---------------------------------------------------------------------------------------------------------------


def _coverage(covers):
    rate = np.mean([covers(k) for k in range(N_SIMULATIONS)])
    assert COVERAGE_RANGE[0] <= rate <= COVERAGE_RANGE[1], f"coverage {rate:.3f} outside {COVERAGE_RANGE}"
    return rate


def test_bootstrap_ci_coverage_of_a_proportion():
    true_p = 0.7  # the share of correct items, e.g. an accuracy, with 150 items

    def covers(k):
        values = (np.random.default_rng(1000 + k).random(150) < true_p).astype(float)
        interval = bootstrap_ci(values, n_resamples=1000, seed=k)
        return interval.low <= true_p <= interval.high

    _coverage(covers)


def test_paired_difference_coverage():
    # Two mixes scored on the same 200 items; an item's difficulty is shared, so a and b are correlated.
    # b succeeds where a does plus 10 % more items, except 20 % of items redrawn at 0.65: E[b - a] = 0.08 + 0.01.
    true_difference = 0.8 * 0.1 + 0.2 * (0.65 - 0.6)

    def covers(k):
        rng = np.random.default_rng(2000 + k)
        difficulty = rng.random(200)
        a = (difficulty < 0.6).astype(float)
        b = (difficulty < 0.7).astype(float)
        redrawn = rng.random(200) < 0.2
        b[redrawn] = rng.random(redrawn.sum()) < 0.65
        interval = paired_bootstrap_difference(a, b, n_resamples=1000, seed=k).interval
        return interval.low <= true_difference <= interval.high

    _coverage(covers)


def test_hierarchical_difference_coverage():
    # 5 seeds; each seed shifts the difference by u_s ~ N(0, 0.05^2) (pretraining noise); 150 items per seed with an
    # item effect shared by both mixes and N(0, 0.5^2) noise per mix. The population difference is 0.1.
    true_difference, n_seeds, n_items = 0.1, 5, 150

    def covers(k):
        rng = np.random.default_rng(3000 + k)
        a_by_seed, b_by_seed = [], []
        for _ in range(n_seeds):
            item = rng.normal(0.0, 1.0, n_items)
            shift = rng.normal(0.0, 0.05)
            a_by_seed.append(item + rng.normal(0.0, 0.5, n_items))
            b_by_seed.append(item + true_difference + shift + rng.normal(0.0, 0.5, n_items))
        interval = hierarchical_bootstrap_difference(a_by_seed, b_by_seed, n_resamples=1000, seed=k).interval
        return interval.low <= true_difference <= interval.high

    _coverage(covers)


def _clustered_outcomes(rng, n_clusters=150):
    """Correct (1) / wrong (0) items in clusters of 2 to 4 (the segments of grouped-matching inputs): a cluster is
    easy (success 0.9) or hard (0.3) with equal odds, so its items are correlated; the population mean is 0.6."""
    sizes = rng.integers(2, 5, n_clusters)
    success = np.where(rng.random(n_clusters) < 0.5, 0.9, 0.3)
    outcomes = [(rng.random(size) < p).astype(float) for size, p in zip(sizes, success)]
    return outcomes, sizes


def test_cluster_bootstrap_coverage_where_the_item_bootstrap_falls_short():
    true_mean = 0.6
    item_covers = []

    def covers(k):
        outcomes, sizes = _clustered_outcomes(np.random.default_rng(4000 + k))
        sums = np.array([o.sum() for o in outcomes])
        interval = cluster_ratio_ci(sums, sizes, n_resamples=1000, seed=k)
        items = bootstrap_ci(np.concatenate(outcomes), n_resamples=1000, seed=k)
        item_covers.append(items.low <= true_mean <= items.high)
        return interval.low <= true_mean <= interval.high

    _coverage(covers)
    # Items of a cluster are correlated (design effect about 1.8 here): resampling items one by one is too narrow.
    # That this falls short shows the simulation is clustered enough for the check above to tell the two apart.
    assert np.mean(item_covers) < 0.91


def test_cluster_difference_coverage_of_two_kinds_in_the_same_clusters():
    # Each cluster holds items of two kinds (as easy and hard distractors share groups); the cluster effect moves
    # both, kind b succeeds 0.1 less often. The difference b - a is -0.1.
    true_difference = -0.1

    def covers(k):
        rng = np.random.default_rng(5000 + k)
        base = np.where(rng.random(200) < 0.5, 0.85, 0.35)
        n_a, n_b = rng.integers(1, 3, 200), rng.integers(1, 3, 200)
        sums_a = np.array([(rng.random(n) < p).sum() for n, p in zip(n_a, base)], dtype=float)
        sums_b = np.array([(rng.random(n) < p - 0.1).sum() for n, p in zip(n_b, base)], dtype=float)
        interval = cluster_ratio_difference((sums_a, n_a), (sums_b, n_b), n_resamples=1000, seed=k).interval
        return interval.low <= true_difference <= interval.high

    _coverage(covers)


def test_cluster_bootstrap_with_one_item_per_cluster_is_the_item_bootstrap():
    rng = np.random.default_rng(6)
    a, b = (rng.random(80) < 0.5).astype(float), (rng.random(80) < 0.7).astype(float)
    ones = np.ones(80)
    assert cluster_ratio_ci(b, ones, n_resamples=500, seed=3) == bootstrap_ci(b, n_resamples=500, seed=3)
    clustered = cluster_ratio_difference((a, ones), (b, ones), n_resamples=500, seed=3)
    items = paired_bootstrap_difference(a, b, n_resamples=500, seed=3)
    assert (clustered.interval, clustered.p_value) == (items.interval, items.p_value)
    assert clustered.resampled == "clusters"


def test_cluster_bootstrap_of_identical_copies_is_the_bootstrap_of_the_cluster_values():
    # Every cluster repeats one value 9 times: the clusters, not the 9 x 60 items, are the independent draws.
    values = np.random.default_rng(7).normal(size=60)
    clustered = cluster_ratio_ci(9 * values, np.full(60, 9.0), n_resamples=800, seed=1)
    by_value = bootstrap_ci(values, n_resamples=800, seed=1)
    assert clustered.point == pytest.approx(by_value.point)
    assert (clustered.low, clustered.high) == pytest.approx((by_value.low, by_value.high))
    copies = bootstrap_ci(np.repeat(values, 9), n_resamples=800, seed=1)
    assert (copies.high - copies.low) < 0.5 * (clustered.high - clustered.low)  # about a third


def test_clusters_without_items_count_nothing():
    # Cluster 2 has no item of this kind: the mean is over the items that exist, and resamples still work.
    interval = cluster_ratio_ci([1.0, 0.0, 0.0, 2.0], [1.0, 1.0, 0.0, 2.0], n_resamples=300, seed=0)
    assert interval.point == pytest.approx(3 / 4)
    assert 0.0 <= interval.low <= interval.point <= interval.high <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_same_interval_and_other_seed_differs():
    values = np.random.default_rng(0).normal(size=120)
    first, again = bootstrap_ci(values, seed=7), bootstrap_ci(values, seed=7)
    assert first == again
    assert bootstrap_ci(values, seed=8) != first
    a, b = values, values + np.random.default_rng(1).normal(0.2, 1.0, size=120)
    assert paired_bootstrap_difference(a, b, seed=3) == paired_bootstrap_difference(a, b, seed=3)
    by_seed = ([a, a[::-1]], [b, b[::-1]])
    assert hierarchical_bootstrap_difference(*by_seed, seed=3) == hierarchical_bootstrap_difference(*by_seed, seed=3)


def test_interval_brackets_the_point_and_serialises():
    values = np.random.default_rng(2).exponential(size=80)
    interval = bootstrap_ci(values, "median", n_resamples=500)
    assert interval.point == pytest.approx(np.median(values))
    assert interval.low <= interval.point <= interval.high
    assert interval.to_dict() == {"point": interval.point, "low": interval.low, "high": interval.high}
    assert isinstance(interval, Interval)


def test_callable_statistic_reduces_the_item_axis():
    values = np.random.default_rng(3).normal(size=60)
    interval = bootstrap_ci(values, lambda x: np.std(x, axis=-1), n_resamples=300)
    assert interval.point == pytest.approx(np.std(values))
    with pytest.raises(ValueError, match="reduce the item axis"):
        bootstrap_ci(values, lambda x: x, n_resamples=10)  # returns (resamples, items), not (resamples,)


def test_paired_resampling_keeps_rows_together():
    # Resampling (x, x) together: x - x is 0 in every resample. Drawn independently it would not be.
    x = np.random.default_rng(4).normal(size=100)
    interval = bootstrap_ci_paired((x, x.copy()), lambda a, b: np.mean(a - b, axis=-1), n_resamples=500)
    assert (interval.low, interval.point, interval.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_of_auroc_matches_the_point_estimate():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    labels = rng.random(120) < 0.5
    scores = np.round(labels * 0.5 + rng.normal(size=120), 1)  # rounded: many ties

    def auroc(s, y):  # (B, n) scores and labels -> (B,), via pairwise comparisons
        pos = np.where(y[:, :, None], s[:, :, None], np.nan)
        neg = np.where(~y[:, None, :], s[:, None, :], np.nan)
        wins = np.nansum((pos > neg) + 0.5 * (pos == neg), axis=(1, 2))
        return wins / (y.sum(1) * (~y).sum(1))

    interval = bootstrap_ci_paired((scores, labels), auroc, n_resamples=200)
    assert interval.point == pytest.approx(roc_auc_score(labels, scores))
    assert 0.5 < interval.low < interval.point < interval.high < 1.0


def test_p_value_small_for_a_clear_difference_and_large_for_none():
    rng = np.random.default_rng(6)
    a = rng.normal(size=150)
    clear = paired_bootstrap_difference(a, a + 0.5 + rng.normal(0, 0.3, 150))
    assert isinstance(clear, DifferenceTest) and clear.p_value < 0.01 and clear.interval.low > 0
    symmetric = np.tile([-1.0, 1.0], 75)  # b - a has mean exactly 0
    none = paired_bootstrap_difference(np.zeros(150), symmetric)
    assert none.interval.point == 0.0 and none.p_value > 0.5 and none.interval.low < 0 < none.interval.high
    assert clear.to_dict()["p_value"] == clear.p_value


def test_hierarchical_with_one_seed_resamples_items_only():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=90), rng.normal(0.3, 1.0, size=90)
    single = hierarchical_bootstrap_difference([a], [b], seed=11)
    paired = paired_bootstrap_difference(a, b, seed=11)
    assert single.resampled == "items"
    assert single.interval.point == pytest.approx(paired.interval.point)
    assert single.interval.low == pytest.approx(paired.interval.low)
    assert single.interval.high == pytest.approx(paired.interval.high)
    several = hierarchical_bootstrap_difference([a, a], [b, b + 1.0], seed=11)
    assert several.resampled == "seeds, items"
    assert several.interval.point == pytest.approx(np.mean(b - a) + 0.5)


def test_hierarchical_interval_widens_with_seed_variation():
    rng = np.random.default_rng(8)
    items = [rng.normal(size=100) for _ in range(4)]
    calm = hierarchical_bootstrap_difference(items, [x + 0.2 for x in items])
    shifts = [-1.0, 0.5, 1.5, -0.2]  # the mixes disagree from seed to seed
    noisy = hierarchical_bootstrap_difference(items, [x + 0.2 + s for x, s in zip(items, shifts)])
    assert (noisy.interval.high - noisy.interval.low) > 10 * (calm.interval.high - calm.interval.low)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bootstrap_ci([]), "at least one item"),
        (lambda: bootstrap_ci([1.0, float("nan")]), "finite"),
        (lambda: bootstrap_ci([1.0, 2.0], confidence=1.5), "confidence"),
        (lambda: bootstrap_ci([1.0, 2.0], n_resamples=0), "n_resamples"),
        (lambda: bootstrap_ci([1.0, 2.0], statistic="mode"), "statistic"),
        (lambda: paired_bootstrap_difference([1.0, 2.0], [1.0]), "same items"),
        (lambda: bootstrap_ci_paired(([1.0, 2.0], [1.0]), lambda a, b: a.mean(-1)), "same positive number"),
        (lambda: hierarchical_bootstrap_difference([[1.0]], [[1.0], [2.0]]), "same positive number of seeds"),
        (lambda: hierarchical_bootstrap_difference([[1.0, 2.0]], [[1.0]]), "seed 0"),
        (lambda: cluster_ratio_ci([1.0, 2.0], [1.0]), "one value per cluster"),
        (lambda: cluster_ratio_ci([1.0, 2.0], [1.0, -1.0]), "numbers of items"),
        (lambda: cluster_ratio_difference(([1.0], [1.0]), ([1.0, 2.0], [1.0, 1.0])), "same clusters"),
    ],
)
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
