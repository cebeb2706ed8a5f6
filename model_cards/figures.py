"""Figures for model cards: validation metrics, evaluation and study results as `Figure`s with their intervals,
and the Hub's model-index."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._format import _finite, _signed

VALIDATION_METRICS = {
    "itm_accuracy": ("ITM accuracy (captions as written, half of them negatives)", "accuracy", "image-text-matching"),
    "mlm_accuracy": ("MLM accuracy (all masked tokens)", "accuracy", "fill-mask"),
    "mlm_concept_accuracy": ("MLM accuracy on masked concept words", "accuracy", "fill-mask"),
    "colour_word_accuracy": ("masked colour-word accuracy, argmax over the colours", "accuracy", "fill-mask"),
    "colour_word_accuracy_open": ("masked colour-word accuracy, argmax over the vocabulary", "accuracy", "fill-mask"),
    "gitm_accuracy": ("grouped matching: caption-to-image assignment accuracy", "accuracy", "image-text-matching"),
    "gitm_accuracy_own": ("grouped matching: accuracy on own captions", "accuracy", "image-text-matching"),
    "gitm_accuracy_easy": ("grouped matching: accuracy on easy distractors", "accuracy", "image-text-matching"),
    "gitm_accuracy_hard": ("grouped matching: accuracy on hard distractors", "accuracy", "image-text-matching"),
    "gitm_exact_match": ("grouped matching: groups assigned exactly right", "exact_match", "image-text-matching"),
}

# The task each suite of `vlp evaluate` measures (model-index `task.type`).
SUITE_TASKS = {
    "foils": "image-text-matching",
    "winoground": "image-text-matching",
    "probes": "feature-extraction",
    "crossmodal": "fill-mask",
    "grounding": "image-text-matching",
    "frequency": "image-text-matching",
}

SYNTHETIC_DATASET = ("vlp-shapes-world", "VLP synthetic shapes world")


@dataclass(frozen=True)
class Figure:
    """One reported number: a point estimate with its 95 % interval (None where there is none)."""

    label: str  # what it is, in words
    metric: str  # model-index metric type, e.g. "accuracy", "acc_r"
    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None  # items behind it
    task: str = "image-text-matching"  # model-index task type
    dataset: tuple = (*SYNTHETIC_DATASET, "validation")  # (type, name, split)
    interval: str = ""  # what the interval covers
    comparison: str = ""  # differences to floors or to a baseline, in words

    @property
    def has_interval(self):
        return _finite(self.low) and _finite(self.high)


def is_primary(metric, patterns):
    """A pattern 'foils.acc_r' names every figure whose dotted path holds its parts in order (as `vlp study`)."""
    parts = metric.split(".")
    for pattern in patterns:
        position = 0
        for part in pattern.split("."):
            if part not in parts[position:]:
                break
            position = parts.index(part, position) + 1
        else:
            return True
    return False


# -- figures -----------------------------------------------------------------------------------------------------------


def validation_figures(final_metrics, dataset=(*SYNTHETIC_DATASET, "validation")):
    """The figures of `vlp pretrain`'s final validation: accuracies with their Wilson intervals, then the losses."""
    if not final_metrics:
        return []
    accuracies, losses = [], []
    for key, value in final_metrics.items():
        if not _finite(value) or key == "step" or key.endswith(("_ci_low", "_ci_high", "_n")):
            continue
        if key.endswith("_loss"):
            task = "fill-mask" if key.startswith("mlm") else "image-text-matching"
            losses.append(
                Figure(label=f"{key[:-5].upper()} loss", metric="loss", value=float(value), task=task, dataset=dataset)
            )
            continue
        label, metric, task = VALIDATION_METRICS.get(key, (key.replace("_", " "), key, "image-text-matching"))
        low, high = final_metrics.get(f"{key}_ci_low"), final_metrics.get(f"{key}_ci_high")
        has_interval = _finite(low) and _finite(high)
        accuracies.append(
            Figure(
                label=label,
                metric=metric,
                value=float(value),
                low=float(low) if has_interval else None,
                high=float(high) if has_interval else None,
                n=final_metrics.get(f"{key}_n"),
                task=task,
                dataset=dataset,
                interval="Wilson, over validation items" if has_interval else "",
            )
        )
    return accuracies + losses


def _comparison_figure(suite, item, block, dataset):
    """The headline figure of one comparison block of `vlp evaluate` with its score - floor differences."""
    if not isinstance(block, dict) or not block.get("score"):
        return None
    name = block.get("headline") or next(iter(block["score"]))
    score = block["score"].get(name) or next(iter(block["score"].values()))
    if not isinstance(score, dict) or not _finite(score.get("value")):
        return None
    differences = "; ".join(
        f"minus {floor} {_signed(diff)}"
        for floor, diff in (block.get("differences") or {}).items()
        if isinstance(diff, dict)
    )
    has_interval = _finite(score.get("low")) and _finite(score.get("high"))
    return Figure(
        label=f"{suite}: {item} ({name})",
        metric=name,
        value=float(score["value"]),
        low=score.get("low") if has_interval else None,
        high=score.get("high") if has_interval else None,
        n=block.get("n_items"),
        task=SUITE_TASKS.get(suite, "image-text-matching"),
        dataset=dataset,
        interval="bootstrap, over items" if has_interval else "",
        comparison=differences,
    )


def evaluation_figures(results):
    """The headline figures of a `vlp evaluate` results.json (format vlp-evaluation-results), suite by suite."""
    benchmark = results.get("benchmark")
    if benchmark:
        dataset = (benchmark["name"], f"{benchmark['name']} ({os.path.basename(benchmark.get('file', ''))})", "test")
    else:
        dataset = (SYNTHETIC_DATASET[0], f"{SYNTHETIC_DATASET[1]}, evaluation items", "test")
    suites = results.get("suites") or {}
    blocks = []
    for suite in ("foils", "winoground"):
        for item, block in (suites.get(suite) or {}).get("phenomena", {}).items():
            blocks.append((suite, item, block))
    for task, block in (suites.get("probes") or {}).get("tasks", {}).items():
        headline = block.get("headline") or {}
        blocks.append(("probes", f"{task} ({headline.get('representation')}, layer {headline.get('layer')})", headline))
    crossmodal = suites.get("crossmodal") or {}
    for item, block in (crossmodal.get("masked_word") or {}).items():
        blocks.append(("crossmodal", f"masked word: {item}", block))
    blocks.append(("crossmodal", "MIM loss", crossmodal.get("mim")))
    grounding = suites.get("grounding") or {}
    blocks += [("grounding", item, grounding.get(item)) for item in ("pointing", "occlusion")]
    frequency = suites.get("frequency") or {}
    if frequency.get("slope"):
        slope = frequency["slope"]
        blocks.append(
            (
                "frequency",
                "slope of acc_r per decade of pair frequency",
                {
                    "headline": "slope",
                    "score": {"slope": slope.get("score")},
                    "n_items": slope.get("n_items"),
                    "differences": slope.get("differences") or {},
                },
            )
        )
    blocks.append(("frequency", "held-out pairs", frequency.get("held_out")))
    figures = [_comparison_figure(suite, item, block, dataset) for suite, item, block in blocks]
    return [f for f in figures if f is not None]


def study_figures(results, mix=None):
    """This run's mix in a `vlp study` results.json: its primary metrics (or, without any, the validation accuracies
    and losses) as mean and interval, each with the difference to the baseline mix."""
    mixes = results.get("mixes") or {}
    if mix is None and len(mixes) == 1:
        mix = next(iter(mixes))
    if mix not in mixes:
        raise ValueError(
            f"study results.json of {results.get('study')!r} has mixes {sorted(mixes)}; this run's mix "
            f"{mix!r} is not one of them (name it with --mix)"
        )
    metrics = mixes[mix].get("metrics") or {}
    primary = [m for m in metrics if is_primary(m, results.get("primary_metrics") or [])]
    chosen = primary or [m for m in metrics if m.startswith("val.") and m.endswith(("_accuracy", "_loss"))]
    seeds = results.get("seeds") or []
    baseline = results.get("baseline")
    dataset = ("vlp-study", f"study {results.get('study')}, mix {mix}, seeds {seeds}", "evaluation")
    differences = (results.get("differences") or {}).get(mix, {})
    figures = []
    for metric in chosen:
        entry = metrics[metric]
        if not _finite(entry.get("mean")):
            continue
        diff = differences.get(metric)
        comparison = ""
        if mix != baseline and isinstance(diff, dict) and _finite(diff.get("difference")):
            comparison = f"minus baseline `{baseline}` " + _signed(
                {"value": diff["difference"], "low": diff.get("low"), "high": diff.get("high")}
            )
            if _finite(diff.get("p_holm")):
                comparison += f", Holm-adjusted p {diff['p_holm']:.3f}"
        has_interval = _finite(entry.get("low")) and _finite(entry.get("high"))
        over = entry.get("interval_over")
        figures.append(
            Figure(
                label=metric,
                metric=metric.rsplit(".", 1)[-1],
                value=float(entry["mean"]),
                low=entry.get("low") if has_interval else None,
                high=entry.get("high") if has_interval else None,
                task=SUITE_TASKS.get(_suite_of(metric), "image-text-matching"),
                dataset=dataset,
                comparison=comparison,
                interval=f"bootstrap, over {over}" if has_interval and over else "",
            )
        )
    return figures


def _suite_of(metric):
    """The evaluation suite of a study metric ('eval.foils.all.acc_r' -> 'foils'), '' for others."""
    parts = metric.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "eval" else ""


def generic_figures(tree, dataset=("vlp-results", "VLP results", "evaluation"), prefix=""):
    """Every {value, low, high} figure of a results dict of another format, named by its path."""
    figures = []
    if isinstance(tree, dict):
        if _finite(tree.get("value")) and "low" in tree and "high" in tree:
            has_interval = _finite(tree["low"]) and _finite(tree["high"])
            name = prefix.rstrip(".") or "value"
            return [
                Figure(
                    label=name,
                    metric=name.rsplit(".", 1)[-1],
                    value=float(tree["value"]),
                    low=tree["low"] if has_interval else None,
                    high=tree["high"] if has_interval else None,
                    dataset=dataset,
                    interval="as reported" if has_interval else "",
                )
            ]
        for key, value in tree.items():
            figures += generic_figures(value, dataset, f"{prefix}{key}.")
    return figures


def results_figures(results, mix=None):
    """The figures of one results.json: `vlp evaluate`, `vlp study`, or any file of {value, low, high} figures."""
    kind = results.get("format")
    if kind == "vlp-evaluation-results":
        return evaluation_figures(results)
    if kind == "vlp-study-results":
        return study_figures(results, mix)
    return generic_figures(results)


# -- metadata ----------------------------------------------------------------------------------------------------------


def model_index(name, figures):
    """The model-index entry of the figures that have an interval, grouped by (task, dataset); each metric's name
    gives its interval in words."""
    grouped = {}
    for figure in figures:
        if not (_finite(figure.value) and figure.has_interval):
            continue
        grouped.setdefault((figure.task, figure.dataset), []).append(figure)
    results = []
    for (task, (dataset_type, dataset_name, split)), members in grouped.items():
        metrics = []
        for figure in members:
            text = f"{figure.label}; 95 % interval [{figure.low:.4f}, {figure.high:.4f}]"
            if figure.interval:
                text += f" ({figure.interval})"
            if figure.n:
                text += f", n = {figure.n}"
            metrics.append({"type": figure.metric, "value": round(float(figure.value), 6), "name": text})
        results.append(
            {
                "task": {"type": task},
                "dataset": {"type": dataset_type, "name": dataset_name, "split": split},
                "metrics": metrics,
            }
        )
    return [{"name": name, "results": results}] if results else []
