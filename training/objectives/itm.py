"""ITM: the image with a caption that holds or not: the dataset's negatives (captions of other scenes that do not
hold), or ALBEF's hard negatives drawn in the micro-batch by ITC similarity; cross-entropy on the pooled state
(`VLPForPreTraining`'s ITM head; the draw is `losses_vlp.sample_hard_negatives`)."""

import torch

from ...modeling_vlp.losses_vlp import sample_hard_negatives
from ._inputs import images, plain_text, text


@torch.no_grad()
def text_image_similarity(model, batch):
    """ITC similarities of the batch's matched pairs without gradients, (texts, images): entry [t, i] scores text t
    against image i, as `itc_similarity` of the model's output (hard negatives when ITC is not trained)."""
    text_features, image_features = model.contrastive_features(
        batch["plain_input_ids"], batch["attention_mask"], batch["pixel_values"], batch.get("pixel_mask")
    )
    return model.contrastive.logit_scale() * text_features @ image_features.T


def hard_negative_exclusions(batch, device=None):
    """(images, texts): exclude[i, t] means text t may not serve as image i's negative: it holds for image i (the
    world's truth, `holds_matrix`) or, without it, it belongs to the same pair (`same_pairs`)."""
    holds = batch.get("holds_matrix")
    exclude = holds if holds is not None else same_pairs(batch)
    return exclude.to(device) if device is not None else exclude


def same_pairs(batch):
    """(images, texts) bool: row t's caption is image i's own pair, because the rows are one, show the same picture
    (a dataset with several captions per image: two rows of one image are no negatives of each other) or have the
    same caption. Pictures are compared by exact fingerprints of their pixels."""
    size = len(batch["itm_labels"])
    same = torch.eye(size, dtype=torch.bool)
    if "pixel_values" in batch and size:
        pixels = batch["pixel_values"].detach().flatten(1).double().cpu()
        ramp = torch.linspace(-1.0, 1.0, pixels.shape[1], dtype=torch.float64)
        prints = torch.stack([pixels.sum(1), (pixels * ramp).sum(1), (pixels * ramp.square()).sum(1)], dim=1)
        same |= (prints[:, None] == prints[None]).all(-1)
    if "plain_input_ids" in batch and size:
        ids = (batch["plain_input_ids"] * batch["attention_mask"]).cpu()
        same |= (ids[:, None] == ids[None]).all(-1)
    return same


def hard_negative_inputs(batch, text_image, generator):
    """ALBEF's ITM rows: the B matched pairs, then each image with a text drawn by similarity, then each text with
    an image drawn by similarity.

    `text_image` (B, B) is the texts x images similarity (`text_image_similarity`, the model's `itc_similarity`):
    image i draws its negative text from column i, text t its negative image from row t. Candidates exclude every
    text that holds for the image (`holds_matrix`, from the world's truth) or, without one, the pair's own text; an
    image or text with no candidate left gets no negative. Draws come from the process's own micro-batch.
    """
    size = len(batch["itm_labels"])
    if tuple(text_image.shape) != (size, size):
        raise ValueError(
            f"hard negatives need the ({size}, {size}) texts x images similarity of the micro-batch; "
            f"got shape {tuple(text_image.shape)}"
        )
    exclude = hard_negative_exclusions(batch, text_image.device)  # (images, texts)
    image_text = text_image.T
    own = torch.arange(size, device=text_image.device)
    images_with = (~exclude).any(dim=1)  # images that have a negative text
    texts_with = (~exclude).any(dim=0)  # texts that have a negative image
    negative_text = sample_hard_negatives(image_text[images_with], generator, exclude[images_with])
    negative_image = sample_hard_negatives(text_image[texts_with], generator, exclude.T[texts_with])
    text_rows = torch.cat([own, negative_text.to(own.device), own[texts_with]])
    image_rows = torch.cat([own, own[images_with], negative_image.to(own.device)])
    inputs = {key: value[text_rows] for key, value in plain_text(batch).items()}
    inputs.update(images(batch, image_rows))
    labels = torch.zeros(len(text_rows), dtype=torch.long, device=own.device)
    labels[: len(own)] = 1
    inputs["itm_labels"] = labels
    return inputs


def inputs(batch, context):
    """The ITM captions with their labels, or (`hard_negatives` in the context) ALBEF's rows, drawn by the
    similarity ITC computed this step (`similarity`) or by a pass without gradients."""
    if context.get("hard_negatives"):
        similarity = context.get("similarity")
        if similarity is None:
            similarity = text_image_similarity(context["model"], batch)
        return hard_negative_inputs(batch, similarity, context["generator"])
    return {**text(batch, "itm_"), **images(batch), "itm_labels": batch["itm_labels"]}


def count(batches, hard_negatives=False):
    """ITM rows: the pairs, and with hard negatives each image's and each text's drawn negative."""
    if not hard_negatives:
        return sum(len(b["itm_labels"]) for b in batches)
    exclusions = [hard_negative_exclusions(b) for b in batches]
    return sum(len(e) + int((~e).any(1).sum()) + int((~e).any(0).sum()) for e in exclusions)


VALIDATION_SUMS = ("loss_sum", "pairs", "correct")


@torch.no_grad()
def validation_sums(model, batch):
    """One validation batch's `VALIDATION_SUMS` on the ITM captions as written (the dataset's negatives, about half
    of them): loss x pairs, pairs, correct predictions."""
    labels = batch["itm_labels"]
    out = model(**inputs(batch, {}))
    return [float(out.itm_loss) * len(labels), len(labels), float((out.itm_logits.argmax(-1) == labels).sum())]
