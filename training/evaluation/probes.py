"""Linear probes on frozen representations of every layer (Salin et al. 2022 tasks with their mismatched-image
controls; unimodal probes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...processing.worlds import eval_sets as es
from .figures import comparison, figure, load_metric_module, mean_figure, metric_figures, number_or_none
from .runner import ImageBank, Runner, derangement, representations, rng_for
from .settings import BLANK, Settings


def probe_test_mask(n: int) -> np.ndarray:
    """Test items of a probe task: item k when (k // 2) % 2 == 1 (half; balanced where labels alternate with k)."""
    return (np.arange(n) // 2) % 2 == 1


def _probe_block(
    features: np.ndarray, labels: np.ndarray, test: np.ndarray, floors: Mapping[str, np.ndarray], settings: Settings
) -> dict:
    """Probe accuracy on one representation (N, D), with each floor's features as the control (its gap)."""
    if np.unique(labels[~test]).size < 2:  # no probe can be fitted; say so instead of failing the whole run
        none = figure(float("nan"), float("nan"), float("nan"))
        return comparison(
            int(test.sum()),
            "accuracy",
            {"accuracy": none, "majority_baseline": none},
            {name: {"accuracy": none} for name in floors},
            {name: {"of": "accuracy", **none, "p_value": None, "resampled": "items"} for name in floors},
            n_train=int((~test).sum()),
            note="one class among the training items: increase --items-per-phenomenon",
        )
    metric = load_metric_module("linear_probe")
    common = {
        "test_features": features[test],
        "test_labels": labels[test].tolist(),
        "train_features": features[~test],
        "train_labels": labels[~test].tolist(),
        "C": settings.probe_C,
        "n_resamples": settings.n_resamples,
        "confidence": settings.confidence,
        "seed": settings.seed,
    }
    if not floors:
        result = metric.compute(**common)
        return comparison(
            int(test.sum()),
            "accuracy",
            metric_figures(result, ("accuracy", "majority_baseline")),
            {},
            {},
            {"accuracy": result["correct"]},
            n_train=int((~test).sum()),
        )
    score, floor_figures, differences = None, {}, {}
    for name, control in floors.items():
        result = metric.compute(**common, control_train_features=control[~test], control_test_features=control[test])
        score = metric_figures(result, ("accuracy", "majority_baseline"))
        floor_figures[name] = {"accuracy": metric_figures(result, ("control_accuracy",))["control_accuracy"]}
        differences[name] = {
            "of": "accuracy",
            **metric_figures(result, ("gap",))["gap"],
            "p_value": number_or_none(result["gap_p_value"]),
            "resampled": "items",
        }
    return comparison(
        int(test.sum()),
        "accuracy",
        score,
        floor_figures,
        differences,
        {"accuracy": result["correct"]},
        n_train=int((~test).sum()),
    )


def _multilabel_block(features: np.ndarray, labels: np.ndarray, test: np.ndarray, settings: Settings) -> dict:
    """One binary probe per label column; per test item the share of columns predicted right (and the majority's)."""
    from ..metrics.linear_probe.linear_probe import majority_label, probe_correct

    correct, majority = [], []
    for j in range(labels.shape[1]):
        train_y, test_y = labels[~test, j].astype(str), labels[test, j].astype(str)
        if np.unique(train_y).size < 2:
            correct.append((test_y == train_y[0]).astype(float))
        else:
            correct.append(
                probe_correct(features[~test], train_y, features[test], test_y, settings.probe_C, 1000, settings.seed)
            )
        majority.append((test_y == majority_label(train_y)).astype(float))
    score = {
        "accuracy": mean_figure(np.mean(correct, axis=0), settings),
        "majority_baseline": mean_figure(np.mean(majority, axis=0), settings),
    }
    return comparison(
        int(test.sum()), "accuracy", score, {}, {}, {"accuracy": np.mean(correct, axis=0)}, n_train=int((~test).sum())
    )


def probe_task(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    floors: Mapping[str, Mapping[str, np.ndarray]],
    headline: str,
    settings: Settings,
) -> dict:
    """A probe task over every representation and layer; ``features[rep]`` is (N, layers + 1, D), ``floors`` maps a
    floor name to features of the same shape (the same items with a mismatched or blank image)."""
    from threadpoolctl import threadpool_limits

    test = probe_test_mask(len(labels))
    if test.all() or not test.any():
        raise ValueError(f"a probe task needs at least 4 items for its train/test split, got {len(labels)}")
    with threadpool_limits(1, user_api="blas"):  # small fits: BLAS threads only contend (10x slower on 2 cores)
        table = _probe_table(features, labels, test, floors, settings)
    last = str(next(iter(features.values())).shape[1] - 1)
    return {
        "headline": {"representation": headline, "layer": int(last), **table[headline][last]},
        "representations": table,
    }


def _probe_table(features, labels, test, floors, settings: Settings) -> dict:
    """representation -> layer -> probe block."""
    table = {}
    for rep, values in features.items():
        table[rep] = {}
        for layer in range(values.shape[1]):
            if labels.ndim == 2:
                table[rep][str(layer)] = _multilabel_block(values[:, layer], labels, test, settings)
            else:
                table[rep][str(layer)] = _probe_block(
                    values[:, layer], labels, test, {name: f[rep][:, layer] for name, f in floors.items()}, settings
                )
    return table


def _probe_labels(items) -> np.ndarray:
    labels = [item.label for item in items]
    if isinstance(labels[0], tuple):
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([str(label) for label in labels])


def run_probes(runner: Runner, sets: Mapping, settings: Settings) -> dict:
    """Every probe task of the eval sets: multimodal tasks with their mismatched (Salin control) and blank floors,
    visual tasks from an image-only pass, word order from a text-only pass."""
    items = list(sets["probes"])
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    by_task: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_task.setdefault(item.task, []).append(k)
    tasks = {}
    multimodal = [k for k, item in enumerate(items) if item.task in es.PROBE_TASKS and not item.control]
    if multimodal:
        controls = {(items[k].task, items[k].index): k for k, item in enumerate(items) if item.control}
        control_ids = np.asarray([controls[(items[k].task, items[k].index)] for k in multimodal])
        texts = [items[k].caption for k in multimodal]
        features = representations(runner, bank, multimodal, texts)
        floors = {
            "mismatched": representations(runner, bank, control_ids, texts),
            "blank": representations(runner, bank, np.full(len(multimodal), BLANK), texts),
        }
        position = {k: p for p, k in enumerate(multimodal)}
        for task in es.PROBE_TASKS:
            rows = np.asarray([position[k] for k in by_task.get(task, []) if k in position])
            if rows.size:
                tasks[task] = probe_task(
                    {r: v[rows] for r, v in features.items()},
                    _probe_labels([items[multimodal[p]] for p in rows]),
                    {name: {r: v[rows] for r, v in f.items()} for name, f in floors.items()},
                    "text_mean",
                    settings,
                )
    for task in ("visual_count", "visual_colours"):
        rows = by_task.get(task, [])
        if rows:
            features = representations(runner, bank, rows, None)
            tasks[task] = probe_task(features, _probe_labels([items[k] for k in rows]), {}, "image_mean", settings)
    rows = by_task.get("word_order", [])
    if rows:
        features = representations(runner, None, None, [items[k].caption for k in rows])
        tasks["word_order"] = probe_task(features, _probe_labels([items[k] for k in rows]), {}, "text_mean", settings)
    return {"split": "item k of a task is a test item when (k // 2) % 2 == 1", "tasks": tasks}


def run_benchmark_probes(runner: Runner, items: Sequence, bank: ImageBank, settings: Settings) -> dict:
    """Salin et al. csv items: the probe on ``text`` -> ``target``, mismatched (derangement) and blank floors."""
    ids = np.arange(len(items))
    texts = [item.text for item in items]
    labels = np.asarray([str(item.target) for item in items])
    mismatched = derangement(len(items), rng_for(settings, "probes/mismatched"))
    features = representations(runner, bank, ids, texts)
    floors = {
        "mismatched": representations(runner, bank, mismatched, texts),
        "blank": representations(runner, bank, np.full(len(items), BLANK), texts),
    }
    task = items[0].task
    return {
        "split": "item k of a task is a test item when (k // 2) % 2 == 1",
        "tasks": {task: probe_task(features, labels, floors, "text_mean", settings)},
    }
