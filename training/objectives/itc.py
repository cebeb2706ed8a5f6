"""ITC: text-only and image-only passes of the matched pairs; symmetric InfoNCE with a learnt temperature, features
gathered over processes, pairs the world says hold leaving both denominators (`losses_vlp`)."""

from ...processing.collator import holds_table


def gathered_matches(batch, holds_fn, gather):
    """(G, G) texts x images truth over the batch ITC gathers from every process (rank order, G pairs in all), or
    None when some process's batch carries no truth; `gather` is accelerate's `gather_object`, called on every
    process. Pairs of two processes are judged here, so that they leave the denominators as they do in one process.
    Costs G * G `holds_fn` calls per ITC pass on every process."""
    local = batch.get("truth_pairs") if holds_fn is not None else None
    parts = gather([local])
    if any(part is None for part in parts):
        return None
    return holds_table([pair for part in parts for pair in part], holds_fn).T  # (images, texts) -> (texts, images)


def inputs(batch, context):
    """The own captions and images, for separate passes; with the world's truth, which pairs also hold."""
    inputs = {
        "itc_input_ids": batch["plain_input_ids"],
        "itc_attention_mask": batch["attention_mask"],
        "itc_pixel_values": batch["pixel_values"],
        "itc_pixel_mask": batch.get("pixel_mask"),
    }
    if context.get("gather") is not None:  # several processes: the truth over the gathered batch
        inputs["itc_matches"] = gathered_matches(batch, context.get("holds_fn"), context["gather"])
    elif batch.get("holds_matrix") is not None:  # (images, texts) -> (texts, images): true pairs are no negatives
        inputs["itc_matches"] = batch["holds_matrix"].T
    return inputs


def count(batches, hard_negatives=False):
    """Pairs."""
    return sum(len(b["itm_labels"]) for b in batches)
