"""The pretraining objectives: one module per objective (`mlm`, `itm`, `wra`, `mim`, `itc`, `gitm`, and `joint`,
the MLM + MIM pass of joint masking), each with what its forward pass sees (`inputs(batch, context)`) and how many
units its loss averages over (`count(batches, hard_negatives)`), and its validation figures where it has more than
a loss (`mlm`, `itm`, `gitm`: `validation_sums` / `validation_counts`, used by `training/pretrain/validation.py`).
Its head and loss live in `modeling_vlp` (exported with every checkpoint); random masks are drawn by the collator in
`processing` (DataLoader workers). Adding an objective is adding a module and one line in `OBJECTIVES`.

One pass per objective and micro-batch: MLM on the masked own captions (matched pairs, as ViLT and UNITER), ITM and
WRA on the ITM captions (the dataset's negatives, or ALBEF's hard negatives drawn by ITC similarity), MIM on the
unmasked own captions with masked patches, ITC as text-only and image-only passes, GITM on its own canvases.
"""

import numpy as np
import torch

from ...processing.random_streams import OBJECTIVE_STREAM
from . import gitm, itc, itm, joint, mim, mlm, wra
from ._inputs import IMAGE_KEYS, images, plain_text
from .gitm import KEYS as GITM_KEYS
from .itc import gathered_matches
from .itm import hard_negative_exclusions, hard_negative_inputs, same_pairs, text_image_similarity

OBJECTIVES = {"mlm": mlm, "itm": itm, "wra": wra, "mim": mim, "itc": itc, "gitm": gitm}
# ITC runs first in a step, so that hard ITM negatives can reuse its similarities.
OBJECTIVE_ORDER = ("itc", "mlm", "itm", "wra", "mim", "gitm")
JOINT_PASS = joint.NAME  # MLM and MIM in one pass over a caption and image both masked (joint masking)
joint_passes = joint.passes


def step_objectives(weights, mixing, seed, step):
    """The objectives of one step: all of them (`sum`), or one drawn from (seed, step) by weight (`sample`).

    The draw depends only on (seed, step), so every process picks the same objective.
    """
    if mixing == "sum":
        return dict(weights)
    names = sorted(weights)
    probabilities = np.array([weights[n] for n in names], dtype=float)
    rng = np.random.default_rng([seed, step, OBJECTIVE_STREAM])
    choice = rng.choice(len(names), p=probabilities / probabilities.sum())
    return {names[choice]: 1.0}


def pass_objectives(name):
    """The objectives whose losses a pass gives: one, or both of a `JOINT_PASS`."""
    return JOINT_PASS.split("+") if name == JOINT_PASS else [name]


def objective_inputs(name, batch, context):
    """The model's keyword arguments for one objective's pass over a micro-batch: the objective module's `inputs`,
    `JOINT_PASS` (masked captions with masked patches), or `guidance` (the unmasked own captions with their images,
    attention-guided masking's separate pass)."""
    if name == "guidance":
        return {**plain_text(batch), **images(batch)}
    if name == JOINT_PASS:
        return joint.inputs(batch, context)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}")
    return OBJECTIVES[name].inputs(batch, context)


def objective_counts(batches, objectives, device, hard_negatives=False):
    """How many units each objective averages over in this process's micro-batches (tokens, pairs, patches), in
    sorted name order."""
    counts = [OBJECTIVES[name].count(batches, hard_negatives) for name in sorted(objectives)]
    return torch.tensor(counts, dtype=torch.float64, device=device)


__all__ = [
    "GITM_KEYS",
    "IMAGE_KEYS",
    "JOINT_PASS",
    "OBJECTIVES",
    "OBJECTIVE_ORDER",
    "gathered_matches",
    "hard_negative_exclusions",
    "hard_negative_inputs",
    "joint_passes",
    "objective_counts",
    "objective_inputs",
    "pass_objectives",
    "same_pairs",
    "step_objectives",
    "text_image_similarity",
]
