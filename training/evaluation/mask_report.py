"""What each masking policy hides, measured on a trained model: concept-word and object-patch shares with intervals,
and a PNG grid of example masks (`vlp masks RUN_DIR`).

Every policy masks the same samples at the same ratio from the same relevance (one guidance pass per batch), so
the shares differ only by what the policy picks. Intervals: percentile bootstrap over samples, paired across
policies (the same resampled samples for both), of the ratio of summed counts.
"""

from __future__ import annotations

import copy
import os
import textwrap

import numpy as np
import torch

from ...processing import strict_json
from ...processing.masking import POLICIES
from ..objectives import objective_inputs
from ..pretrain.guided_masking import GuidedMasking, guidance_relevance

COUNTS = ("masked_concept_words", "masked_words", "masked_object_patches", "masked_patches")


def policy_counts(
    model,
    batches,
    tokenizer,
    policies=POLICIES,
    targets=("mlm", "mim"),
    ratio=0.3,
    source="model",
    word_query="patches",
    patch_query="text",
    layers="last",
    seed=0,
    scoring="lift",
):
    """Per-sample counts (N,) of masked words, masked concept words, masked patches and masked object patches for
    each policy, and the masked batches of the first batch (for pictures). Every sample is masked (probability 1)."""
    encoder = model.vlp if hasattr(model, "vlp") else model
    guides = {
        policy: GuidedMasking.from_args(
            _Args(policy, targets, source, word_query, patch_query, layers, ratio, seed, scoring),
            tokenizer,
            encoder.config.patch_size,
        )
        for policy in policies
    }
    counts = {policy: {key: [] for key in COUNTS} for policy in policies}
    examples = {}
    for number, batch in enumerate(batches):
        relevance = guidance_relevance(encoder, objective_inputs("guidance", batch, {}), guides[policies[0]])
        for policy in policies:
            masked = copy.copy(batch)
            guides[policy].apply(masked, step=number, relevance=relevance)
            for key, values in _sample_counts(masked).items():
                counts[policy][key].append(values)
            if number == 0:
                examples[policy] = masked
    return {policy: {key: np.concatenate(v) for key, v in c.items() if v} for policy, c in counts.items()}, examples


def _sample_counts(batch):
    out = {}
    if "mlm_labels" in batch:
        masked = (batch["mlm_labels"] != -100).cpu()
        out["masked_words"] = masked.sum(dim=1).numpy()
        out["masked_concept_words"] = (masked & batch["concept_mask"].bool().cpu()).sum(dim=1).numpy()
    if "mim_mask" in batch and "object_patches" in batch:
        mask = batch["mim_mask"].bool().cpu()
        out["masked_patches"] = mask.sum(dim=1).numpy()
        out["masked_object_patches"] = (mask & batch["object_patches"].bool().cpu()).sum(dim=1).numpy()
    return out


def share_table(counts, baseline="random", n_resamples=2000, confidence=0.95, seed=0):
    """{policy: {concept_word_share, object_patch_share, and for each policy but the baseline the difference to the
    baseline with its paired bootstrap interval}}; a share is sum(masked on concept/object) / sum(masked)."""
    rng = np.random.default_rng(seed)
    size = len(next(iter(next(iter(counts.values())).values())))
    resamples = rng.integers(0, size, size=(n_resamples, size))
    tail = (1 - confidence) / 2 * 100
    table = {}
    for policy, c in counts.items():
        row = {}
        for share, top, bottom in (
            ("concept_word_share", "masked_concept_words", "masked_words"),
            ("object_patch_share", "masked_object_patches", "masked_patches"),
        ):
            if top not in c:
                continue
            row[share] = float(c[top].sum() / max(c[bottom].sum(), 1))
            if policy != baseline and baseline in counts:
                base = counts[baseline]
                mine = c[top][resamples].sum(1) / np.maximum(c[bottom][resamples].sum(1), 1)
                theirs = base[top][resamples].sum(1) / np.maximum(base[bottom][resamples].sum(1), 1)
                diff = mine - theirs
                row[f"{share}_minus_{baseline}"] = row[share] - float(base[top].sum() / max(base[bottom].sum(), 1))
                row[f"{share}_minus_{baseline}_low"] = float(np.percentile(diff, tail))
                row[f"{share}_minus_{baseline}_high"] = float(np.percentile(diff, 100 - tail))
        row["samples"] = int(size)
        table[policy] = row
    return table


def write_mask_grid(path, examples, tokenizer, image_mean, image_std, patch_size, rows=6):
    """A PNG: one row per sample, one column per policy; masked patches greyed over the image, the caption under it
    with masked words in [brackets]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(examples)
    first = examples[policies[0]]
    rows = min(rows, len(first["index"]))
    figure, axes = plt.subplots(rows, len(policies), figsize=(2.6 * len(policies), 2.9 * rows), squeeze=False)
    mean = torch.tensor(image_mean).view(3, 1, 1)
    std = torch.tensor(image_std).view(3, 1, 1)
    for column, policy in enumerate(policies):
        batch = examples[policy]
        for row in range(rows):
            image = (batch["pixel_values"][row].cpu() * std + mean).clamp(0, 1)
            if "mim_mask" in batch:
                height, width = image.shape[-2:]
                grid = batch["mim_mask"][row].cpu().view(height // patch_size, width // patch_size)
                cover = grid.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
                image = torch.where(cover[None], 0.35 * image + 0.65 * 0.5, image)
            axis = axes[row][column]
            axis.imshow(image.permute(1, 2, 0).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_xlabel(textwrap.fill(_caption_with_masks(batch, row, tokenizer), 34), fontsize=7)
            if row == 0:
                axis.set_title(policy, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _caption_with_masks(batch, row, tokenizer):
    ids = batch["plain_input_ids"][row].tolist()
    masked = (batch["mlm_labels"][row] != -100).tolist() if "mlm_labels" in batch else [False] * len(ids)
    words = []
    for token, hidden in zip(tokenizer.convert_ids_to_tokens(ids), masked):
        if token in tokenizer.all_special_tokens:
            continue
        text = token[2:] if token.startswith("##") and words else token
        text = f"[{text}]" if hidden else text
        if token.startswith("##") and words:
            words[-1] += text
        else:
            words.append(text)
    return " ".join(words)


class _Args:
    """The few `PretrainArguments` fields `GuidedMasking.from_args` reads, for a measurement outside training."""

    def __init__(self, policy, targets, source, word_query, patch_query, layers, ratio, seed, scoring):
        self.masking_policy, self.guidance_source, self.guidance_layers = policy, source, layers
        self.relevance_scoring = scoring
        self.word_relevance_from, self.patch_relevance_from, self.joint_masking = word_query, patch_query, "independent"
        self.masking_ratio, self.masking_ratio_min, self.masking_ratio_max = ratio, 0.1, 0.5
        self.masking_probability, self.masking_random_share, self.hint_share = 1.0, 0.0, 0.1
        self.guidance_warmup_steps, self.seed = 0, seed
        self._targets = tuple(targets)

    def masking_target_list(self):
        return self._targets


def masks_report(
    run_dir,
    out_dir,
    policies=POLICIES,
    num_samples=512,
    batch_size=64,
    ratio=0.3,
    grid_rows=6,
    word_query="patches",
    patch_query="text",
    layers="last",
    seed=0,
    scoring="lift",
):
    """Measures every policy's shares on the run's validation world with guidance from its final model; writes
    mask_shares.json and masks.png into `out_dir`; returns the table."""
    import yaml
    from accelerate import Accelerator

    from ...modeling_vlp import VLPForPreTraining
    from ..config import parse_config
    from ..pretrain.data import build_pretraining_data

    with open(os.path.join(run_dir, "run.yaml"), encoding="utf-8") as handle:
        config = yaml.safe_load(handle)["config"]
    model_args, data_args, train_args = parse_config(
        values={k: v for k, v in config.items() if not k.startswith(("masking_", "guidance_"))}
    )
    model = VLPForPreTraining.from_pretrained(os.path.join(run_dir, "model")).eval()
    data = build_pretraining_data(model_args, data_args, seed, run_dir, Accelerator(cpu=True), ("mlm", "itm", "mim"))
    collator = data.val_collator
    collator.mlm_probability = 0.0
    collator.mim_patch_size = model.config.patch_size
    size = min(num_samples, len(data.val))
    batches = [
        collator([data.val[i] for i in range(start, min(start + batch_size, size))])
        for start in range(0, size, batch_size)
    ]
    counts, examples = policy_counts(
        model,
        batches,
        data.processor.tokenizer,
        tuple(policies),
        ratio=ratio,
        word_query=word_query,
        patch_query=patch_query,
        layers=layers,
        seed=seed,
        scoring=scoring,
    )
    table = share_table(counts)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "mask_shares.json"), "w", encoding="utf-8") as handle:
        strict_json.dump(
            {
                "ratio": ratio,
                "word_relevance_from": word_query,
                "patch_relevance_from": patch_query,
                "guidance_layers": layers,
                "relevance_scoring": scoring,
                "policies": table,
            },
            handle,
            indent=2,
        )
    processor = data.processor.image_processor
    write_mask_grid(
        os.path.join(out_dir, "masks.png"),
        examples,
        data.processor.tokenizer,
        processor.image_mean,
        processor.image_std,
        model.config.patch_size,
        rows=grid_rows,
    )
    return table


__all__ = ["masks_report", "policy_counts", "share_table", "write_mask_grid"]
