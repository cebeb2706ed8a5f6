"""GITM: grouped image-text matching on its own batch (`processing/grouping.py`): canvases of several images and
texts of several caption segments; each segment scored against each cell and 'none' (`losses_vlp`).

Validation: assignment accuracy overall and per segment kind (own caption, easy and hard distractor), 'none'
precision and recall, whole groups exactly right, and two chance levels (`validation_counts`,
`validation_figures`)."""

import torch

from ...modeling_vlp.losses_vlp import gitm_classes, grouped_matching_metrics
from ..statistics import accuracy_figures, newcombe_difference

KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "segment_ids",
    "pixel_values",
    "pixel_mask",
    "gitm_segment_targets",
    "gitm_cell_ids",
    "gitm_cell_mask",
)
SEGMENT_KINDS = {"own": 0, "easy": 1, "hard": 2}  # processing.grouping's segment kinds
COUNT_FIELDS = ("segments", "correct", "none_predicted", "none_actual", "none_correct", "groups", "groups_exact")


def inputs(batch, context):
    """The micro-batch's grouped-matching canvases and segment texts (`batch["gitm"]`)."""
    return {key: batch["gitm"][key] for key in KEYS}


def count(batches, hard_negatives=False):
    """Scored segments."""
    return sum(int((b["gitm"]["gitm_segment_targets"] != -100).sum()) for b in batches)


def num_counts(num_cells):
    """The length of `validation_counts`' vector for a grid of `num_cells` cells."""
    return len(COUNT_FIELDS) + 2 * len(SEGMENT_KINDS) + num_cells + 1


@torch.no_grad()
def validation_counts(model, group, num_cells):
    """One validation batch's counts behind the figures: segments and correct assignments, 'none' predicted /
    actual / right, whole groups and exactly right groups (`COUNT_FIELDS`); segments and correct ones per segment
    kind; then the number of segments whose target is each cell of the grid and 'none'."""
    counts = torch.zeros(num_counts(num_cells), dtype=torch.float64)
    if len(group["index"]) == 0:
        return counts
    logits = model(**inputs({"gitm": group}, {})).gitm_logits
    targets = group["gitm_segment_targets"]
    metrics = grouped_matching_metrics(logits, targets)
    counts[: len(COUNT_FIELDS)] = torch.tensor([float(metrics[f]) for f in COUNT_FIELDS], dtype=torch.float64)
    predicted = logits.argmax(dim=-1)
    wanted = gitm_classes(targets, num_cells)
    for position, kind in enumerate(SEGMENT_KINDS):
        rows = (group["gitm_segment_kinds"] == SEGMENT_KINDS[kind]) & (targets != -100)
        counts[len(COUNT_FIELDS) + 2 * position] = float(rows.sum())
        counts[len(COUNT_FIELDS) + 2 * position + 1] = float(((predicted == wanted) & rows).sum())
    scored = wanted[targets != -100]
    start = len(COUNT_FIELDS) + 2 * len(SEGMENT_KINDS)
    counts[start:] = torch.bincount(scored, minlength=num_cells + 1).to(torch.float64).cpu()
    return counts


def validation_figures(sums):
    """Figures from `validation_counts`' (summed, reduced) counts: accuracy with Wilson intervals overall and per
    segment kind; hard minus easy distractor accuracy with Newcombe's interval; two chance levels: uniform over
    the cells and 'none' (`gitm_chance_uniform`), and the share of the most frequent target, what always
    answering one class scores (`gitm_chance_majority`); 'none' precision and recall; whole-group exact match."""
    segments, correct, none_predicted, none_actual, none_correct, groups, exact = sums[: len(COUNT_FIELDS)]
    figures = {}
    figures.update(accuracy_figures("gitm_accuracy", int(correct), int(segments)))
    hits_of = {}
    for position, kind in enumerate(SEGMENT_KINDS):
        total, hits = sums[len(COUNT_FIELDS) + 2 * position], sums[len(COUNT_FIELDS) + 2 * position + 1]
        hits_of[kind] = (int(hits), int(total))
        figures.update(accuracy_figures(f"gitm_accuracy_{kind}", int(hits), int(total)))
    difference, low, high = newcombe_difference(*hits_of["hard"], *hits_of["easy"])
    figures.update(gitm_hard_minus_easy=difference, gitm_hard_minus_easy_ci_low=low, gitm_hard_minus_easy_ci_high=high)
    targets = sums[len(COUNT_FIELDS) + 2 * len(SEGMENT_KINDS) :]
    if len(targets) >= 2 and sum(targets):
        figures["gitm_chance_uniform"] = 1 / len(targets)
        figures["gitm_chance_majority"] = max(targets) / sum(targets)
    figures["gitm_none_precision"] = none_correct / none_predicted if none_predicted else float("nan")
    figures["gitm_none_recall"] = none_correct / none_actual if none_actual else float("nan")
    figures.update(accuracy_figures("gitm_exact_match", int(exact), int(groups)))
    return figures
