"""MIM: the image with masked patches and its unmasked caption; normalised pixels (MAE) or an EMA teacher's patch
states (iBOT) regressed at the masked patches (`VLPForPreTraining`'s MIM decoder).

Masks: random or block patch masks from the collator (`processing/collator.py`, in the DataLoader workers), or
attention-guided ones drawn in the step (`training/pretrain/guided_masking.py`). Validated by its loss."""

import torch

from ._inputs import images, plain_text


def teacher_targets(batch, context):
    """The EMA teacher's patch states on the unmasked pair, when the model regresses them (`mim_target="teacher"`);
    nothing for pixel targets (the teacher may exist for guidance only)."""
    teacher, model = context.get("teacher"), context.get("model")
    if teacher is None or (model is not None and model.config.mim_target == "pixel"):
        return {}
    with torch.no_grad():
        out = teacher.vlp(**plain_text(batch), **images(batch))
    return {"mim_targets": out.last_hidden_state[:, out.text_length + 1 :]}


def inputs(batch, context):
    """Unmasked own captions with masked patches."""
    return {**plain_text(batch), **images(batch), "mim_mask": batch["mim_mask"], **teacher_targets(batch, context)}


def count(batches, hard_negatives=False):
    """Masked patches: the units the MIM loss averages over."""
    return sum(int(b["mim_mask"].sum()) for b in batches)
