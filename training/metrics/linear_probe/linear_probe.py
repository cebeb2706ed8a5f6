"""Linear probe on frozen representations, with its majority-class baseline and a mismatched-image control
(Salin et al., 2022); every figure with a bootstrap 95 % interval over test items."""

import warnings

import datasets
import evaluate
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vlp.training.statistics import bootstrap_ci, paired_bootstrap_difference

_DESCRIPTION = """\
A linear probe after Salin et al. (2022): a multinomial logistic regression is fitted on frozen representations
(for example the [CLS] vector of one layer) of training items and scored on test items.

- accuracy: test accuracy of the probe (features standardised with training statistics; L2 regularisation with a
  fixed C; lbfgs; seeded).
- majority_baseline: accuracy of always answering the most frequent training label (ties: the first in text order).

Labels may be integers or strings; they are compared as text (3 and "3" are the same class).
- control_accuracy: the same probe trained and tested on control representations, computed with the image
  mismatched (the caption is kept). What the probe still gets right there comes from the text alone.
- gap = accuracy - control_accuracy, with a paired bootstrap interval over test items (control test item i is test
  item i with a mismatched image) and its two-sided bootstrap p-value `gap_p_value`.

Every figure comes with a percentile bootstrap interval over test items (`<name>_low`, `<name>_high`); all
figures use the same resamples (same seed).
"""

_KWARGS_DESCRIPTION = """
Args:
    test_features (`list` of `list` of `float`): one representation per test item, shape (n_test, dim).
    test_labels (`list` of `int` or `str`): the class of each test item.
    train_features (array-like, shape (n_train, dim)) and train_labels (n_train,): the probe's training set.
    control_train_features, control_test_features (array-like, optional): the same items with a mismatched image;
        both or neither. control_train_labels, control_test_labels default to train_labels and test_labels.
    C (`float`, default 1.0): inverse L2 regularisation strength. max_iter (`int`, default 1000).
    n_resamples (`int`, default 2000), confidence (`float`, default 0.95), seed (`int`, default 0): the bootstrap
        and the probe's random_state.
Returns:
    accuracy, majority_baseline and, with controls, control_accuracy and gap, each with `_low` and `_high`;
    gap_p_value; n_train, n_test, n_classes.
Examples:
    >>> from vlp.training.metrics import load_metric
    >>> probe = load_metric("linear_probe")
    >>> result = probe.compute(test_features=[[0.0], [1.0]], test_labels=[0, 1],
    ...                        train_features=[[0.1], [0.9], [0.2], [1.1]], train_labels=[0, 1, 0, 1])
    >>> result["accuracy"], result["majority_baseline"]
    (1.0, 0.5)
"""

_CITATION = """\
@inproceedings{salin2022vision,
    title = {Are Vision-Language Transformers Learning Multimodal Representations? A Probing Perspective},
    author = {Salin, Emmanuelle and Farah, Badreddine and Ayache, St{\\'e}phane and Favre, Benoit},
    booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
    volume = {36},
    number = {10},
    pages = {11248--11257},
    year = {2022},
}
"""


def _features(values, name):
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array (items, dim), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: holds NaN or infinite values")
    return array


def _labels(values, n, name):
    """Labels as text, so integer and string labels (and ints that passed through Arrow) compare equal."""
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name}: expected {n} labels (one per item), got shape {array.shape}")
    if array.dtype.kind in "fc":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{name}: expected integer or string class labels, got non-integral numbers")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iubUSO":
        raise ValueError(f"{name}: expected integer or string class labels, got dtype {array.dtype}")
    return array.astype(str)


def majority_label(labels):
    """The most frequent label; among equally frequent labels, the first in sorted order."""
    values, counts = np.unique(labels, return_counts=True)
    return values[int(np.argmax(counts))]


def probe_correct(train_x, train_y, test_x, test_y, C=1.0, max_iter=1000, seed=0):
    """Per-test-item correctness (n_test,) of a standardised multinomial logistic regression fitted on (train_x, y)."""
    if np.unique(train_y).size < 2:
        raise ValueError(f"train labels: a probe needs at least two classes, got only {np.unique(train_y).tolist()}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features: train has dim {train_x.shape[1]} but test has dim {test_x.shape[1]}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe that has not converged is still a probe
        probe.fit(train_x, train_y)
    return (probe.predict(test_x) == test_y).astype(np.float64)


def _figure(name, interval):
    return {name: interval.point, f"{name}_low": interval.low, f"{name}_high": interval.high}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LinearProbe(evaluate.Metric):
    """Linear probe accuracy, majority baseline, control accuracy and gap, with bootstrap intervals."""

    def _info(self):
        features = [
            datasets.Features(
                {"test_features": datasets.Sequence(datasets.Value("float64")), "test_labels": datasets.Value("string")}
            ),
            datasets.Features(
                {"test_features": datasets.Sequence(datasets.Value("float64")), "test_labels": datasets.Value("int64")}
            ),
        ]  # string labels first: an int64 feature would silently turn "3" into 3
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=[
                "https://ojs.aaai.org/index.php/AAAI/article/view/21375",
                "https://github.com/ejsalin/vlm-probing",
            ],
        )

    def _compute(
        self,
        test_features,
        test_labels,
        train_features=None,
        train_labels=None,
        control_train_features=None,
        control_test_features=None,
        control_train_labels=None,
        control_test_labels=None,
        C=1.0,
        max_iter=1000,
        n_resamples=2000,
        confidence=0.95,
        seed=0,
    ):
        if train_features is None or train_labels is None:
            raise ValueError("linear_probe: train_features and train_labels are required")
        if (control_train_features is None) != (control_test_features is None):
            raise ValueError("linear_probe: give both control_train_features and control_test_features, or neither")
        test_x = _features(test_features, "test_features")
        train_x = _features(train_features, "train_features")
        test_y = _labels(test_labels, test_x.shape[0], "test_labels")
        train_y = _labels(train_labels, train_x.shape[0], "train_labels")

        correct = probe_correct(train_x, train_y, test_x, test_y, C, max_iter, seed)
        majority = (test_y == majority_label(train_y)).astype(np.float64)
        result = {
            **_figure("accuracy", bootstrap_ci(correct, "mean", n_resamples, confidence, seed)),
            **_figure("majority_baseline", bootstrap_ci(majority, "mean", n_resamples, confidence, seed)),
        }
        if control_train_features is not None:
            control_test_x = _features(control_test_features, "control_test_features")
            control_train_x = _features(control_train_features, "control_train_features")
            if control_test_x.shape[0] != test_x.shape[0]:
                raise ValueError(
                    f"control_test_features: expected the {test_x.shape[0]} test items with a mismatched "
                    f"image, got {control_test_x.shape[0]}"
                )
            control_train_y = _labels(
                train_y if control_train_labels is None else control_train_labels,
                control_train_x.shape[0],
                "control_train_labels",
            )
            control_test_y = _labels(
                test_y if control_test_labels is None else control_test_labels,
                control_test_x.shape[0],
                "control_test_labels",
            )
            control = probe_correct(control_train_x, control_train_y, control_test_x, control_test_y, C, max_iter, seed)
            gap = paired_bootstrap_difference(control, correct, "mean", n_resamples, confidence, seed)
            result.update(_figure("control_accuracy", bootstrap_ci(control, "mean", n_resamples, confidence, seed)))
            result.update(_figure("gap", gap.interval))
            result["gap_p_value"] = gap.p_value
        result.update(
            {
                "n_train": int(train_x.shape[0]),
                "n_test": int(test_x.shape[0]),
                "n_classes": int(np.unique(np.concatenate([train_y, test_y])).size),
                "correct": correct.tolist(),
            }
        )
        return result
