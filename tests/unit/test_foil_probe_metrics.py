"""The local `evaluate` modules vl_foils, winoground and linear_probe: hand-computed values, scikit-learn's AUROC,
probes on separable and random features, and intervals around every figure."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vlp.training.metrics import available_metrics, load_metric


@pytest.fixture(scope="module")
def vl_foils():
    return load_metric("vl_foils")


@pytest.fixture(scope="module")
def winoground():
    return load_metric("winoground")


@pytest.fixture(scope="module")
def linear_probe():
    return load_metric("linear_probe")


def _assert_intervals(result, names):
    for name in names:
        assert result[f"{name}_low"] <= result[name] <= result[f"{name}_high"], name


def test_modules_are_listed_and_documented(vl_foils, winoground, linear_probe):
    assert {"vl_foils", "winoground", "linear_probe"} <= set(available_metrics())
    assert "VALSE" in vl_foils.description and "parcalabescu" in vl_foils.citation
    assert "Winoground" in winoground.description and "thrush2022winoground" in winoground.citation
    assert "Salin" in linear_probe.description and "salin2022vision" in linear_probe.citation
    assert set(vl_foils.features) == {"caption_scores", "foil_scores"}
    assert set(winoground.features) == {"c0_i0", "c0_i1", "c1_i0", "c1_i1"}


# ---------------------------------------------------------------------------------------------------------------
# vl_foils
# ---------------------------------------------------------------------------------------------------------------

CAPTIONS = [0.9, 0.4, 0.7, 0.8, 0.3]
FOILS = [0.2, 0.6, 0.7, 0.1, 0.55]


def test_vl_foils_hand_computed(vl_foils):
    result = vl_foils.compute(caption_scores=CAPTIONS, foil_scores=FOILS)
    # caption > foil: yes, no, tie (wrong), yes, no                   -> acc_r = 2/5
    # captions above 0.5: 0.9, 0.7, 0.8                               -> p_c = 3/5
    # foils at or below 0.5: 0.2, 0.1                                 -> p_f = 2/5
    # AUROC: positives beat 5, 2, 4 + one tie, 5, 2 of the 5 foils    -> 18.5 / 25
    expected = {"acc_r": 0.4, "p_c": 0.6, "p_f": 0.4, "acc": 0.5, "min_pc_pf": 0.4, "auroc": 0.74}
    for name, value in expected.items():
        assert result[name] == pytest.approx(value), name
    assert result["n_items"] == 5 and result["n_pairs"] == 5
    _assert_intervals(result, expected)


def test_vl_foils_threshold(vl_foils):
    result = vl_foils.compute(caption_scores=CAPTIONS, foil_scores=FOILS, threshold=0.65)
    # captions above 0.65: 0.9, 0.7, 0.8 -> 0.6; foils at or below 0.65: 0.2, 0.6, 0.1, 0.55 -> 0.8
    assert (result["p_c"], result["p_f"]) == pytest.approx((0.6, 0.8))
    assert result["acc"] == pytest.approx(0.7) and result["min_pc_pf"] == pytest.approx(0.6)
    assert result["acc_r"] == pytest.approx(0.4) and result["auroc"] == pytest.approx(0.74)  # threshold-free


def test_vl_foils_ties_are_wrong_pairs_and_half_an_auroc_pair(vl_foils):
    result = vl_foils.compute(caption_scores=[0.5] * 4, foil_scores=[0.5] * 4)
    assert result["acc_r"] == 0.0 and result["auroc"] == 0.5


def test_vl_foils_auroc_matches_scikit_learn_with_ties(vl_foils):
    rng = np.random.default_rng(0)
    captions = np.round(rng.normal(0.4, 1.0, 300), 1)  # one decimal: many ties within and across classes
    foils = np.round(rng.normal(0.0, 1.0, 300), 1)
    result = vl_foils.compute(caption_scores=captions, foil_scores=foils, n_resamples=500)
    labels = np.r_[np.ones(300), np.zeros(300)]
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, np.r_[captions, foils]))
    assert result["acc_r"] == pytest.approx(np.mean(captions > foils))
    _assert_intervals(result, ["acc_r", "p_c", "p_f", "acc", "min_pc_pf", "auroc"])
    assert result["auroc_high"] - result["auroc_low"] < 0.2


def test_vl_foils_several_foils_per_caption(vl_foils):
    # item a: caption 0.9 with foils 0.2 and 0.95; item b: 0.4 with 0.6; item c: 0.7 with 0.7 (tie)
    result = vl_foils.compute(
        caption_scores=[0.9, 0.4, 0.9, 0.7], foil_scores=[0.2, 0.6, 0.95, 0.7], item_ids=["a", "b", "a", "c"]
    )
    # pairs won: 0.9 > 0.2 only -> acc_r 1/4; captions counted once: 0.9, 0.7 above 0.5 -> p_c 2/3;
    # foils at or below 0.5: 0.2 -> p_f 1/4; AUROC of captions {0.9, 0.4, 0.7} against the 4 foils:
    # 0.9 beats 3, 0.4 beats 1, 0.7 beats 2 and ties 1 -> 6.5 / 12
    assert result["n_items"] == 3 and result["n_pairs"] == 4
    assert result["acc_r"] == pytest.approx(0.25) and result["p_c"] == pytest.approx(2 / 3)
    assert result["p_f"] == pytest.approx(0.25) and result["auroc"] == pytest.approx(6.5 / 12)
    labels = [1, 1, 1, 0, 0, 0, 0]
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, [0.9, 0.4, 0.7, 0.2, 0.6, 0.95, 0.7]))


def test_vl_foils_item_ids_must_repeat_the_caption_score(vl_foils):
    with pytest.raises(ValueError, match="item 'a'"):
        vl_foils.compute(caption_scores=[0.9, 0.8], foil_scores=[0.2, 0.3], item_ids=["a", "a"])


def test_vl_foils_same_seed_same_intervals(vl_foils):
    rng = np.random.default_rng(1)
    captions, foils = rng.random(100), rng.random(100)
    first = vl_foils.compute(caption_scores=captions, foil_scores=foils, seed=3, n_resamples=300)
    assert vl_foils.compute(caption_scores=captions, foil_scores=foils, seed=3, n_resamples=300) == first
    other = vl_foils.compute(caption_scores=captions, foil_scores=foils, seed=4, n_resamples=300)
    assert other["acc_r_low"] != first["acc_r_low"] or other["acc_r_high"] != first["acc_r_high"]


# ---------------------------------------------------------------------------------------------------------------
# winoground
# ---------------------------------------------------------------------------------------------------------------


def test_winoground_hand_computed(winoground):
    scores = {
        #        both right, text only, image only, neither, tie
        "c0_i0": [0.9, 0.8, 0.9, 0.1, 0.5],
        "c0_i1": [0.1, 0.85, 0.2, 0.9, 0.5],
        "c1_i0": [0.2, 0.3, 0.95, 0.8, 0.5],
        "c1_i1": [0.7, 0.9, 0.96, 0.2, 0.5],
    }
    # item 1: text 0.9 > 0.2 and 0.7 > 0.1; image 0.9 > 0.1 and 0.7 > 0.2      -> text, image, group
    # item 2: text 0.8 > 0.3 and 0.9 > 0.85; image 0.8 > 0.85 fails           -> text only
    # item 3: text 0.9 > 0.95 fails; image 0.9 > 0.2 and 0.96 > 0.95          -> image only
    # item 4: text 0.1 > 0.8 fails; image 0.1 > 0.9 fails                     -> none
    # item 5: all scores tie; strict comparisons fail                        -> none
    result = winoground.compute(**scores)
    assert result["text_score"] == pytest.approx(2 / 5)
    assert result["image_score"] == pytest.approx(2 / 5)
    assert result["group_score"] == pytest.approx(1 / 5)
    assert result["n_items"] == 5
    _assert_intervals(result, ["text_score", "image_score", "group_score"])


def test_winoground_chance_on_random_scores(winoground):
    rng = np.random.default_rng(2)
    scores = {name: rng.random(2000) for name in ("c0_i0", "c0_i1", "c1_i0", "c1_i1")}
    result = winoground.compute(**scores, n_resamples=300)
    # independent random scores: text and image 1/4 each; group 1/6 (Thrush et al.)
    assert result["text_score_low"] < 0.25 < result["text_score_high"]
    assert result["image_score_low"] < 0.25 < result["image_score_high"]
    assert result["group_score_low"] < 1 / 6 < result["group_score_high"]


# ---------------------------------------------------------------------------------------------------------------
# linear_probe
# ---------------------------------------------------------------------------------------------------------------


def _clusters(rng, n, dim=16, classes=4, spread=4.0):
    labels = rng.integers(0, classes, n)
    centres = rng.normal(0.0, spread, (classes, dim))
    return centres[labels] + rng.normal(0.0, 1.0, (n, dim)), labels


def test_linear_probe_separable_features_near_perfect(linear_probe):
    features, labels = _clusters(np.random.default_rng(3), 500)
    result = linear_probe.compute(
        test_features=features[300:],
        test_labels=labels[300:],
        train_features=features[:300],
        train_labels=labels[:300],
        n_resamples=500,
    )
    assert result["accuracy"] >= 0.98
    assert result["n_train"] == 300 and result["n_test"] == 200 and result["n_classes"] == 4
    _assert_intervals(result, ["accuracy", "majority_baseline"])


def test_linear_probe_random_features_near_chance(linear_probe):
    rng = np.random.default_rng(4)
    features, labels = rng.normal(size=(800, 16)), rng.integers(0, 4, 800)
    result = linear_probe.compute(
        test_features=features[400:],
        test_labels=labels[400:],
        train_features=features[:400],
        train_labels=labels[:400],
        n_resamples=500,
    )
    assert abs(result["accuracy"] - 0.25) < 0.08
    assert result["accuracy_low"] < 0.25 + 0.02 and result["accuracy_high"] > 0.25 - 0.02


def test_linear_probe_majority_baseline_known(linear_probe):
    rng = np.random.default_rng(5)
    train_labels = ["red"] * 60 + ["blue"] * 40  # majority: red
    test_labels = ["red"] * 30 + ["blue"] * 70  # so the baseline scores 30 / 100
    result = linear_probe.compute(
        test_features=rng.normal(size=(100, 8)),
        test_labels=test_labels,
        train_features=rng.normal(size=(100, 8)),
        train_labels=train_labels,
        n_resamples=300,
    )
    assert result["majority_baseline"] == pytest.approx(0.3)
    _assert_intervals(result, ["majority_baseline"])


def test_linear_probe_control_and_gap(linear_probe):
    rng = np.random.default_rng(6)
    features, labels = _clusters(rng, 500)
    control = rng.normal(size=features.shape)  # a mismatched image: nothing left to read the class from
    result = linear_probe.compute(
        test_features=features[300:],
        test_labels=labels[300:],
        train_features=features[:300],
        train_labels=labels[:300],
        control_train_features=control[:300],
        control_test_features=control[300:],
        n_resamples=500,
    )
    assert abs(result["control_accuracy"] - 0.25) < 0.1
    assert result["gap"] == pytest.approx(result["accuracy"] - result["control_accuracy"])
    assert result["gap_low"] > 0.5 and result["gap_p_value"] < 0.01
    _assert_intervals(result, ["accuracy", "majority_baseline", "control_accuracy", "gap"])


def test_linear_probe_integer_and_string_labels_agree(linear_probe):
    features, labels = _clusters(np.random.default_rng(7), 200, classes=3, spread=1.0)
    as_ints = linear_probe.compute(
        test_features=features[100:],
        test_labels=labels[100:],
        train_features=features[:100],
        train_labels=labels[:100],
        n_resamples=200,
    )
    as_text = linear_probe.compute(
        test_features=features[100:],
        test_labels=[str(v) for v in labels[100:]],
        train_features=features[:100],
        train_labels=labels[:100],
        n_resamples=200,
    )
    assert as_ints == as_text
    assert 0.4 < as_ints["accuracy"] < 1.0  # overlapping clusters: a real, imperfect probe


def test_linear_probe_bad_input(linear_probe):
    features = np.random.default_rng(8).normal(size=(20, 4))
    with pytest.raises(ValueError, match="two classes"):
        linear_probe.compute(
            test_features=features, test_labels=[0] * 20, train_features=features, train_labels=[1] * 20
        )
    with pytest.raises(ValueError, match="train_features and train_labels"):
        linear_probe.compute(test_features=features, test_labels=[0] * 20)
    with pytest.raises(ValueError, match="control_test_features"):
        linear_probe.compute(
            test_features=features,
            test_labels=[0, 1] * 10,
            train_features=features,
            train_labels=[0, 1] * 10,
            control_train_features=features,
            control_test_features=features[:10],
        )
