"""The input pieces every objective's pass is built from: a batch's texts and images."""

IMAGE_KEYS = ("pixel_values", "pixel_mask")


def text(batch, prefix=""):
    """The batch's (masked, or with `prefix` "itm_" the ITM) captions."""
    return {
        "input_ids": batch[f"{prefix}input_ids"],
        "attention_mask": batch[f"{prefix}attention_mask"],
        "token_type_ids": batch[f"{prefix}token_type_ids"],
    }


def images(batch, rows=None):
    """The batch's images (and pixel masks), or those of `rows`."""
    return {key: batch[key] if rows is None else batch[key][rows] for key in IMAGE_KEYS if key in batch}


def plain_text(batch):
    """The rows' own captions, unmasked."""
    return {
        "input_ids": batch["plain_input_ids"],
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch["token_type_ids"],
    }
