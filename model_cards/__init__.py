"""Model cards for published VLP checkpoints: the template (`vlp_model_card.md`) and the code that fills it from a run.

Plain data in, text out: `CardInputs` holds what was read from a run folder (config.json, run.yaml, final_metrics.json,
metrics.jsonl records, results.json files) and `render_model_card` returns the README.md text, YAML metadata first.
Nothing here reads files other than the template, or imports the training code. `figures` turns validation
metrics and results into `Figure`s and the model-index, `facts` reads what a config says, `render` writes the card.
"""

from __future__ import annotations

from .facts import data_sources, is_synthetic, objective_weights, pipeline_tag_for, repo_name
from .figures import (
    Figure,
    evaluation_figures,
    generic_figures,
    is_primary,
    model_index,
    results_figures,
    study_figures,
    validation_figures,
)
from .render import TEMPLATE_PATH, CardInputs, all_figures, card_metadata, card_tags, render_model_card, training_budget

__all__ = [
    "CardInputs",
    "Figure",
    "TEMPLATE_PATH",
    "all_figures",
    "card_metadata",
    "card_tags",
    "data_sources",
    "evaluation_figures",
    "generic_figures",
    "is_primary",
    "is_synthetic",
    "model_index",
    "objective_weights",
    "pipeline_tag_for",
    "render_model_card",
    "repo_name",
    "results_figures",
    "study_figures",
    "training_budget",
    "validation_figures",
]
