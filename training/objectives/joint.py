"""The joint MLM + MIM pass (joint masking): the caption and the patches masked together in one forward pass, which
gives both losses."""

from ._inputs import images, text
from .mim import teacher_targets

NAME = "mlm+mim"


def inputs(batch, context):
    """Masked own captions with masked patches."""
    return {
        **text(batch),
        **images(batch),
        "mlm_labels": batch["mlm_labels"],
        "mim_mask": batch["mim_mask"],
        **teacher_targets(batch, context),
    }


def passes(step_passes):
    """The step's (micro-batch, objective) passes with each micro-batch's MLM and MIM passes made one joint pass,
    where the MLM pass stood."""
    joint = [(index, NAME if name == "mlm" else name) for index, name in step_passes if name != "mim"]
    if sum(name == "mlm" for _, name in step_passes) != sum(name == "mim" for _, name in step_passes):
        raise ValueError(f"joint masking needs an MLM and an MIM pass per micro-batch; got {step_passes}")
    return joint
