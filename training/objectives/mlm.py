"""MLM: the image with its own caption, whole words masked (the collator's masks, or attention-guided ones);
cross-entropy at the masked positions (`VLPForPreTraining`'s MLM head, tied to the word embeddings)."""

from ._inputs import images, text


def inputs(batch, context):
    """Masked own captions (matched pairs) with their images."""
    return {**text(batch), **images(batch), "mlm_labels": batch["mlm_labels"]}


def count(batches, hard_negatives=False):
    """Masked tokens: the units the MLM loss averages over."""
    return sum(int((b["mlm_labels"] != -100).sum()) for b in batches)
