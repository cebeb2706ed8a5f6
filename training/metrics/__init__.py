"""VLP's metrics as local `evaluate` modules: one folder per metric, `<name>/<name>.py`.

`evaluate.load("bleu")` fetches a script from the Hub; these load from this folder and work offline:

    from vlp.training.metrics import load_metric
    foils = load_metric("vl_foils")
    foils.compute(caption_scores=[...], foil_scores=[...])
"""

from __future__ import annotations

import os

import evaluate

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))


def available_metrics() -> list[str]:
    """Names of the metric modules shipped with VLP."""
    return sorted(
        name for name in os.listdir(METRICS_DIR) if os.path.isfile(os.path.join(METRICS_DIR, name, f"{name}.py"))
    )


def metric_path(name: str) -> str:
    """Path of the folder of metric `name`; a clear error lists the metrics that exist."""
    path = os.path.join(METRICS_DIR, name)
    if not os.path.isfile(os.path.join(path, f"{name}.py")):
        raise ValueError(f"unknown metric {name!r}; VLP ships: {', '.join(available_metrics()) or 'none'}")
    return path


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of one of VLP's local metric modules (no network access)."""
    return evaluate.load(metric_path(name), **kwargs)
