"""Batch pretraining samples: pad text and images, drop unreadable rows, mask words for MLM and patches for MIM.

Masks are drawn per sample from `np.random.default_rng([seed, epoch, index, STREAM])`, so a sample's masks are the
same whatever batch it lands in. MLM masks the rows' own captions (matched pairs): predicting words of a caption
that does not describe the image teaches nothing cross-modal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .masking import block_patch_mask, random_patch_mask
from .random_streams import MIM_STREAM, MLM_STREAM

IGNORE_INDEX = -100


def whole_word_mask(
    word_ids: np.ndarray, special_mask: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Pick round(ratio * words) whole words (at least one if any) and return the bool mask of their tokens.

    `word_ids` gives each token's word (tokens of one word share an id); tokens where `special_mask` is True
    are never picked. Pass one id per token for token-level masking.
    """
    word_ids = np.asarray(word_ids)
    special_mask = np.asarray(special_mask, dtype=bool)
    if word_ids.shape != special_mask.shape:
        raise ValueError(f"word_ids {word_ids.shape} and special_mask {special_mask.shape} differ in shape")
    words = np.unique(word_ids[~special_mask])
    if words.size == 0:
        return np.zeros(word_ids.shape, dtype=bool)
    count = max(1, int(round(ratio * words.size)))
    chosen = rng.choice(words, size=min(count, words.size), replace=False)
    return np.isin(word_ids, chosen) & ~special_mask


def mask_tokens(
    input_ids: np.ndarray,
    selected: np.ndarray,
    mask_token_id: int,
    replacement_ids: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's 80/10/10 on the selected tokens: [MASK], a random non-special token, or unchanged.

    Returns (masked input ids, labels) with labels = original id where selected, -100 elsewhere.
    """
    input_ids = np.asarray(input_ids)
    labels = np.where(selected, input_ids, IGNORE_INDEX)
    action = rng.random(input_ids.shape)
    random_tokens = replacement_ids[rng.integers(len(replacement_ids), size=input_ids.shape)]
    masked = input_ids.copy()
    masked[selected & (action < 0.8)] = mask_token_id
    to_random = selected & (action >= 0.8) & (action < 0.9)
    masked[to_random] = random_tokens[to_random]
    return masked, labels


def _round_up(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple


def holds_table(pairs: list[tuple[str, Any]], holds_fn) -> torch.Tensor:
    """(images, texts) truth of (caption, scene) pairs: holds[i, j] says that pair j's caption is true of pair i's
    scene (the diagonal always is)."""
    holds = torch.eye(len(pairs), dtype=torch.bool)
    for i, (_, scene) in enumerate(pairs):
        for j, (caption, _) in enumerate(pairs):
            if i != j:
                holds[i, j] = bool(holds_fn(caption, scene))
    return holds


class PretrainingCollator:
    r"""
    Collates `PretrainingDataset` samples into a batch for MLM + ITM.

    Two views of one batch of images. MLM, on the rows' own captions: `input_ids` (masked), `plain_input_ids`
    (before masking), `attention_mask`, `token_type_ids`, `word_ids` (-1 on special and padding tokens),
    `concept_mask` (bool) and `mlm_labels` (-100 where not masked), all (B, L). ITM: `itm_input_ids`,
    `itm_attention_mask`, `itm_token_type_ids` (unmasked; a negative caption where `itm_labels` (B,) is 0).
    Images: `pixel_values` (B, 3, H, W) and `pixel_mask` (B, H, W), padded to the largest image. `index` (B,), and
    `skipped`, a list of (index, reason) for the samples the dataset could not read (dropped from the batch).
    With `mim_patch_size`: `mim_mask` (B, P), and with `object_patches_fn(scene, rows, cols, patch_size)` also
    `object_patches` (B, P), the patches that lie on an object (for masking diagnostics). `epoch` (B,) with `index`
    lets a training step draw per-sample masks from (seed, epoch, index).

    Args:
        tokenizer: gives the pad and mask ids, the special ids and the vocabulary size.
        mlm_probability: share of each caption's words (or tokens) to mask.
        seed: MLM seed; the sample's epoch and index come with the sample.
        whole_word_mask: mask all tokens of a word together (default) rather than single tokens.
        pad_to_multiple_of: round the text length up to a multiple of this.
    """

    def __init__(
        self,
        tokenizer: Any,
        mlm_probability: float = 0.15,
        seed: int = 0,
        whole_word_mask: bool = True,
        pad_to_multiple_of: int | None = None,
        mim_patch_size: int | None = None,
        mim_probability: float = 0.4,
        mim_block: bool = False,
        holds_fn: Any = None,
        object_patches_fn: Any = None,
    ):
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1]; got {mlm_probability}")
        if tokenizer.pad_token_id is None or tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer needs a pad token and a mask token")
        self.tokenizer = tokenizer
        self.mlm_probability = float(mlm_probability)
        self.seed = int(seed)
        self.whole_word_mask = bool(whole_word_mask)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.special_ids = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        structural = (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
        self.never_masked_ids = np.array([i for i in structural if i is not None], dtype=np.int64)
        self.replacement_ids = np.setdiff1d(np.arange(len(tokenizer), dtype=np.int64), self.special_ids)
        if self.replacement_ids.size == 0:
            raise ValueError("the vocabulary has no ordinary tokens to use as random replacements")
        if not 0.0 <= mim_probability <= 1.0:
            raise ValueError(f"mim_probability must be in [0, 1]; got {mim_probability}")
        self.mim_patch_size = mim_patch_size
        self.mim_probability = float(mim_probability)
        self.mim_block = bool(mim_block)
        self.holds_fn = holds_fn
        self.object_patches_fn = object_patches_fn

    def mim_mask(self, sample: dict[str, Any], rows: int, cols: int) -> np.ndarray:
        """The patches hidden from one sample for MIM (random or block-wise), from (seed, epoch, index)."""
        rng = np.random.default_rng([self.seed, int(sample["epoch"]), int(sample["index"]), MIM_STREAM])
        policy = block_patch_mask if self.mim_block else random_patch_mask
        return policy(rows, cols, self.mim_probability, rng)

    def mask_sample(self, sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels) for one unpadded matched sample."""
        input_ids = np.asarray(sample["input_ids"], dtype=np.int64)
        word_ids = np.asarray(sample["word_ids"], dtype=np.int64)
        special = (word_ids < 0) | np.isin(input_ids, self.never_masked_ids)
        units = word_ids if self.whole_word_mask else np.arange(len(input_ids))
        rng = np.random.default_rng([self.seed, int(sample["epoch"]), int(sample["index"]), MLM_STREAM])
        selected = whole_word_mask(units, special, self.mlm_probability, rng)
        return mask_tokens(input_ids, selected, self.mask_token_id, self.replacement_ids, rng)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [(int(sample["index"]), str(sample["skipped"])) for sample in samples if "skipped" in sample]
        kept = [sample for sample in samples if "skipped" not in sample]
        if not kept:
            return self._empty_batch(skipped)

        length = _round_up(max(len(sample["input_ids"]) for sample in kept), self.pad_to_multiple_of)
        batch_size = len(kept)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        token_type_ids = torch.zeros((batch_size, length), dtype=torch.long)
        word_ids = torch.full((batch_size, length), -1, dtype=torch.long)
        concept_mask = torch.zeros((batch_size, length), dtype=torch.bool)
        mlm_labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        itm_labels = torch.tensor([int(sample["itm_label"]) for sample in kept], dtype=torch.long)

        plain_input_ids = input_ids.clone()
        for row, sample in enumerate(kept):
            n = len(sample["input_ids"])
            ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            plain_input_ids[row, :n] = ids
            if self.mlm_probability > 0:
                masked, labels = self.mask_sample(sample)
                ids, mlm_labels[row, :n] = torch.from_numpy(masked), torch.from_numpy(labels)
            input_ids[row, :n] = ids
            attention_mask[row, :n] = torch.as_tensor(sample["attention_mask"], dtype=torch.long)
            if sample.get("token_type_ids") is not None:
                token_type_ids[row, :n] = torch.as_tensor(sample["token_type_ids"], dtype=torch.long)
            word_ids[row, :n] = torch.as_tensor(sample["word_ids"], dtype=torch.long)
            if sample.get("concept_mask") is not None:
                concept_mask[row, :n] = torch.as_tensor(sample["concept_mask"], dtype=torch.bool)
        itm_text = self._pad_itm_text(kept)
        extra = {}
        pixel_values, pixel_mask = self._stack_images(kept)
        if self.mim_patch_size:
            rows, cols = (size // self.mim_patch_size for size in pixel_values.shape[-2:])
            extra["mim_mask"] = torch.from_numpy(np.stack([self.mim_mask(s, rows, cols) for s in kept]))
            if self.object_patches_fn is not None and all(s.get("scene") is not None for s in kept):
                extra["object_patches"] = torch.from_numpy(
                    np.stack([self.object_patches_fn(s["scene"], rows, cols, self.mim_patch_size) for s in kept])
                )
        if self.holds_fn is not None and all(s.get("scene") is not None for s in kept):
            # The pairs travel too, so that the truth across processes can be judged on the gathered batch.
            extra["truth_pairs"] = [(str(sample["caption"]), sample["scene"]) for sample in kept]
            extra["holds_matrix"] = holds_table(extra["truth_pairs"], self.holds_fn)

        return {
            "input_ids": input_ids,
            "plain_input_ids": plain_input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "word_ids": word_ids,
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "mlm_labels": mlm_labels,
            "itm_labels": itm_labels,
            **itm_text,
            **extra,
            "concept_mask": concept_mask,
            "index": torch.tensor([int(sample["index"]) for sample in kept], dtype=torch.long),
            "epoch": torch.tensor([int(sample.get("epoch", 0)) for sample in kept], dtype=torch.long),
            "skipped": skipped,
        }

    def _pad_itm_text(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The image-text matching captions (unmasked; a negative where itm_label is 0), padded."""
        key = "itm_input_ids" if "itm_input_ids" in samples[0] else "input_ids"
        prefix = "itm_" if key == "itm_input_ids" else ""
        length = _round_up(max(len(sample[key]) for sample in samples), self.pad_to_multiple_of)
        ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        types = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample[key])
            ids[row, :n] = torch.as_tensor(sample[key], dtype=torch.long)
            mask[row, :n] = torch.as_tensor(sample[f"{prefix}attention_mask"], dtype=torch.long)
            if sample.get(f"{prefix}token_type_ids") is not None:
                types[row, :n] = torch.as_tensor(sample[f"{prefix}token_type_ids"], dtype=torch.long)
        return {"itm_input_ids": ids, "itm_attention_mask": mask, "itm_token_type_ids": types}

    @staticmethod
    def _stack_images(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pad images to the batch's largest height and width; the mask is 0 on padding."""
        images = [torch.as_tensor(sample["pixel_values"], dtype=torch.float32) for sample in samples]
        height = max(image.shape[-2] for image in images)
        width = max(image.shape[-1] for image in images)
        pixel_values = torch.zeros((len(images), images[0].shape[0], height, width), dtype=torch.float32)
        pixel_mask = torch.zeros((len(images), height, width), dtype=torch.long)
        for row, (image, sample) in enumerate(zip(images, samples, strict=True)):
            h, w = image.shape[-2:]
            pixel_values[row, :, :h, :w] = image
            own_mask = sample.get("pixel_mask")
            pixel_mask[row, :h, :w] = 1 if own_mask is None else torch.as_tensor(own_mask, dtype=torch.long)
        return pixel_values, pixel_mask

    @staticmethod
    def _empty_batch(skipped: list[tuple[int, str]]) -> dict[str, Any]:
        """Every key with batch size 0, for a batch whose samples were all unreadable."""
        empty_text = torch.zeros((0, 0), dtype=torch.long)
        return {
            "input_ids": empty_text,
            "plain_input_ids": empty_text.clone(),
            "attention_mask": empty_text.clone(),
            "token_type_ids": empty_text.clone(),
            "word_ids": empty_text.clone(),
            "pixel_values": torch.zeros((0, 3, 0, 0), dtype=torch.float32),
            "pixel_mask": torch.zeros((0, 0, 0), dtype=torch.long),
            "mlm_labels": empty_text.clone(),
            "itm_labels": torch.zeros((0,), dtype=torch.long),
            "itm_input_ids": empty_text.clone(),
            "itm_attention_mask": empty_text.clone(),
            "itm_token_type_ids": empty_text.clone(),
            "concept_mask": torch.zeros((0, 0), dtype=torch.bool),
            "index": torch.zeros((0,), dtype=torch.long),
            "epoch": torch.zeros((0,), dtype=torch.long),
            "skipped": skipped,
        }


__all__ = ["IGNORE_INDEX", "MLM_STREAM", "PretrainingCollator", "mask_tokens", "whole_word_mask"]
