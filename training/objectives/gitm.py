"""GITM: grouped image-text matching on its own batch (`processing/grouping.py`): canvases of several images and
texts of several caption segments; each segment scored against each cell and 'none' (`losses_vlp`)."""

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


def inputs(batch, context):
    """The micro-batch's grouped-matching canvases and segment texts (`batch["gitm"]`)."""
    return {key: batch["gitm"][key] for key in KEYS}


def count(batches, hard_negatives=False):
    """Scored segments."""
    return sum(int((b["gitm"]["gitm_segment_targets"] != -100).sum()) for b in batches)
