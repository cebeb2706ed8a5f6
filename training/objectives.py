"""What each pretraining objective's forward pass sees, and how many units its loss averages over.

One pass per objective and micro-batch: MLM on the masked own captions (matched pairs, as ViLT and UNITER), ITM and
WRA on the ITM captions (the dataset's negatives, or ALBEF's hard negatives drawn by ITC similarity), MIM on the
unmasked own captions with masked patches, ITC as text-only and image-only passes.
"""

import numpy as np
import torch

from ..modeling_vlp.losses_vlp import sample_hard_negatives
from ..processing.collator import holds_table
from ..processing.random_streams import OBJECTIVE_STREAM


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


IMAGE_KEYS = ("pixel_values", "pixel_mask")
# ITC runs first in a step, so that hard ITM negatives can reuse its similarities.
OBJECTIVE_ORDER = ("itc", "mlm", "itm", "wra", "mim", "gitm")
JOINT_PASS = "mlm+mim"  # MLM and MIM in one pass over a caption and image both masked (joint masking)
GITM_KEYS = (
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


def _text(batch, prefix=""):
    return {
        "input_ids": batch[f"{prefix}input_ids"],
        "attention_mask": batch[f"{prefix}attention_mask"],
        "token_type_ids": batch[f"{prefix}token_type_ids"],
    }


def _images(batch, rows=None):
    return {key: batch[key] if rows is None else batch[key][rows] for key in IMAGE_KEYS if key in batch}


def _plain_text(batch):
    """The rows' own captions, unmasked."""
    return {
        "input_ids": batch["plain_input_ids"],
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch["token_type_ids"],
    }


@torch.no_grad()
def text_image_similarity(model, batch):
    """ITC similarities of the batch's matched pairs without gradients, (texts, images): entry [t, i] scores text t
    against image i, as `itc_similarity` of the model's output (hard negatives when ITC is not trained)."""
    text, image = model.contrastive_features(
        batch["plain_input_ids"], batch["attention_mask"], batch["pixel_values"], batch.get("pixel_mask")
    )
    return model.contrastive.logit_scale() * text @ image.T


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
    inputs = {key: value[text_rows] for key, value in _plain_text(batch).items()}
    inputs.update(_images(batch, image_rows))
    labels = torch.zeros(len(text_rows), dtype=torch.long, device=own.device)
    labels[: len(own)] = 1
    inputs["itm_labels"] = labels
    return inputs


def _mim_targets(batch, context):
    """The EMA teacher's patch states on the unmasked pair, when the model regresses them (`mim_target="teacher"`);
    nothing for pixel targets (the teacher may exist for guidance only)."""
    teacher, model = context.get("teacher"), context.get("model")
    if teacher is None or (model is not None and model.config.mim_target == "pixel"):
        return {}
    with torch.no_grad():
        out = teacher.vlp(**_plain_text(batch), **_images(batch))
    return {"mim_targets": out.last_hidden_state[:, out.text_length + 1 :]}


def joint_passes(passes):
    """The step's (micro-batch, objective) passes with each micro-batch's MLM and MIM passes made one `JOINT_PASS`
    (joint masking: both modalities masked in the same forward pass), where the MLM pass stood."""
    joint = [(index, JOINT_PASS if name == "mlm" else name) for index, name in passes if name != "mim"]
    if sum(name == "mlm" for _, name in passes) != sum(name == "mim" for _, name in passes):
        raise ValueError(f"joint masking needs an MLM and an MIM pass per micro-batch; got {passes}")
    return joint


def pass_objectives(name):
    """The objectives whose losses a pass gives: one, or both of a `JOINT_PASS`."""
    return JOINT_PASS.split("+") if name == JOINT_PASS else [name]


def objective_inputs(name, batch, context):
    """The model's keyword arguments for one objective's pass over a micro-batch.

    MLM: masked own captions (matched pairs). ITM and WRA: the ITM captions (random negatives) or ALBEF's hard
    negatives. MIM: unmasked own captions with masked patches. `JOINT_PASS`: masked own captions with masked
    patches. ITC: text-only and image-only passes. GITM: the batch's grouped-matching canvases and segment texts
    (`batch["gitm"]`). `guidance`: the unmasked own captions with their images (attention-guided masking's
    separate pass).
    """
    if name == "mlm":
        return {**_text(batch), **_images(batch), "mlm_labels": batch["mlm_labels"]}
    if name == "guidance":  # the unmasked, matched pairs that attention-guided masking reads relevance from
        return {**_plain_text(batch), **_images(batch)}
    if name == "itm" and context.get("hard_negatives"):
        similarity = context.get("similarity")
        if similarity is None:
            similarity = text_image_similarity(context["model"], batch)
        return hard_negative_inputs(batch, similarity, context["generator"])
    if name in ("itm", "wra"):
        labels = {"itm_labels" if name == "itm" else "wra_labels": batch["itm_labels"]}
        return {**_text(batch, "itm_"), **_images(batch), **labels}
    if name == "mim":
        return {**_plain_text(batch), **_images(batch), "mim_mask": batch["mim_mask"], **_mim_targets(batch, context)}
    if name == JOINT_PASS:  # joint masking: masked caption and masked patches in one pass, both losses from it
        return {
            **_text(batch),
            **_images(batch),
            "mlm_labels": batch["mlm_labels"],
            "mim_mask": batch["mim_mask"],
            **_mim_targets(batch, context),
        }
    if name == "gitm":  # its own batch: canvases of several images, texts of several caption segments
        return {key: batch["gitm"][key] for key in GITM_KEYS}
    if name == "itc":
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
    raise ValueError(f"unknown objective {name!r}")


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


def objective_counts(batches, objectives, device, hard_negatives=False):
    """How many units each objective averages over in this process's micro-batches (tokens, pairs, patches)."""
    counts = []
    for name in sorted(objectives):
        if name == "mlm":
            counts.append(sum(int((b["mlm_labels"] != -100).sum()) for b in batches))
        elif name == "mim":
            counts.append(sum(int(b["mim_mask"].sum()) for b in batches))
        elif name == "gitm":
            counts.append(sum(int((b["gitm"]["gitm_segment_targets"] != -100).sum()) for b in batches))
        elif name == "itm" and hard_negatives:
            exclusions = [hard_negative_exclusions(b) for b in batches]
            counts.append(sum(len(e) + int((~e).any(1).sum()) + int((~e).any(0).sum()) for e in exclusions))
        else:
            counts.append(sum(len(b["itm_labels"]) for b in batches))
    return torch.tensor(counts, dtype=torch.float64, device=device)
