"""WRA: UNITER's word-region alignment on the ITM pairs (the dataset's negatives): an IPOT transport distance
between word and patch states, down for matched pairs and up for mismatched ones (`losses_vlp`)."""

from ._inputs import images, text


def inputs(batch, context):
    """The ITM captions with their images; the ITM labels say which pairs match."""
    return {**text(batch, "itm_"), **images(batch), "wra_labels": batch["itm_labels"]}


def count(batches, hard_negatives=False):
    """Pairs."""
    return sum(len(b["itm_labels"]) for b in batches)
