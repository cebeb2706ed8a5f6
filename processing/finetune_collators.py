"""Collators for downstream finetuning with transformers' Trainer: VQA, image-text retrieval and captioning.

Rows are those of ``downstream_readers`` and ``synthetic_vqa`` (VQA: ``image``, ``question``, ``answers``) or of the
shapes world and the Karpathy reader (``image``, ``captions``), with images as PIL images, ``datasets`` Image cells
(``{"bytes", "path"}``), bytes or paths (decoded by ``pretraining_data.decode_image``). Retrieval and captioning train
on (image, caption) pairs: ``CaptionPairs`` lists every caption of every row without decoding anything up front.

A Trainer given a ``datasets.Dataset`` drops the columns the model's forward does not name unless
``TrainingArguments(remove_unused_columns=False)``; these collators need the raw columns, so set it.

Question-only and caption-prior baselines blank the image (``blank_image=True``): every image is replaced by a
constant one, ``pixel_values`` all zero (the processor's mean colour, mid-grey with the default 0.5 / 0.5
normalisation) with the real images' sizes and masks, so the model keeps its input layout but sees no content.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .pretraining_data import decode_image
from .readers.downstream import soft_target_vector
from .worlds.shapes import caption_holds


def image_batch(processor, rows: Sequence[Mapping[str, Any]], blank_image: bool = False) -> dict[str, torch.Tensor]:
    """``pixel_values`` (B, 3, H, W) and ``pixel_mask`` (B, H, W) of the rows' images; zero pixels when blanked."""
    images = [decode_image(row["image"]) for row in rows]
    batch = processor.image_processor(images, return_tensors="pt")
    pixel_values = batch["pixel_values"]
    if blank_image:
        pixel_values = torch.zeros_like(pixel_values)
    return {"pixel_values": pixel_values, "pixel_mask": batch["pixel_mask"]}


def _text_batch(processor, texts: list[str], max_length: int | None, token_types: bool = True) -> dict:
    """Tokenized texts padded to the longest, truncated to ``max_length`` when given."""
    encoded = processor.tokenizer(
        texts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt"
    )
    keys = ("input_ids", "attention_mask", "token_type_ids") if token_types else ("input_ids", "attention_mask")
    return {key: encoded[key] for key in keys if key in encoded}


def _check_keys(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...], who: str):
    """A clear error when a row lacks a column the collator needs (e.g. a Trainer dropped it)."""
    for i, row in enumerate(rows):
        missing = [key for key in keys if key not in row]
        if missing:
            raise ValueError(
                f"{who}: row {i} has no {missing} (has {sorted(row)}); with a datasets.Dataset pass "
                "TrainingArguments(remove_unused_columns=False) so the Trainer keeps the raw columns"
            )


@dataclass
class VQACollator:
    """VQA rows -> ``input_ids``, ``attention_mask``, ``token_type_ids``, ``pixel_values``, ``pixel_mask`` and
    soft-score ``labels`` (B, len(label2id)) float32 from ``downstream_readers.soft_target_vector`` (each
    in-vocabulary answer scores its leave-one-out VQA accuracy). ``blank_image`` gives the question-only baseline's
    input."""

    processor: Any
    label2id: Mapping[str, int]
    max_length: int | None = None
    blank_image: bool = False

    def __post_init__(self):
        ids = sorted(int(i) for i in self.label2id.values())
        if ids != list(range(len(ids))) or not ids:
            raise ValueError(f"label2id must map answers to 0..{len(ids) - 1} without gaps, got ids {ids[:10]}...")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        _check_keys(rows, ("image", "question", "answers"), "VQACollator")
        batch = _text_batch(self.processor, [row["question"] for row in rows], self.max_length)
        batch.update(image_batch(self.processor, rows, self.blank_image))
        num_labels = len(self.label2id)
        targets = [soft_target_vector(row["answers"], self.label2id, num_labels) for row in rows]
        batch["labels"] = torch.from_numpy(np.stack(targets))
        return batch


class CaptionPairs(torch.utils.data.Dataset):
    """One item per (row, caption) of image-caption rows: ``{"image", "caption", "image_index", "scene"?}``.

    ``captions_key`` names the list of captions (``captions`` in the shapes world and the Karpathy reader;
    ``clean_captions`` for the world's captions without alt-text noise); ``max_captions`` keeps the first n of each
    row. Images are read from the rows only when an item is asked for.
    """

    def __init__(self, rows, captions_key: str = "captions", max_captions: int | None = None):
        names = rows.column_names if hasattr(rows, "column_names") else (list(rows[0]) if len(rows) else [])
        if len(rows) and captions_key not in names:
            raise ValueError(f"CaptionPairs: rows have no {captions_key!r} column (have {sorted(names)})")
        if max_captions is not None and max_captions < 1:
            raise ValueError(f"max_captions must be a positive integer or None, got {max_captions!r}")
        self.rows = rows
        self.captions_key = captions_key
        captions = rows[captions_key] if hasattr(rows, "column_names") else [row[captions_key] for row in rows]
        self.captions = [list(c)[:max_captions] for c in captions]
        self.index = [(r, j) for r, caps in enumerate(self.captions) for j in range(len(caps))]
        self.has_scene = "scene" in names

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r, j = self.index[i]
        row = self.rows[r]
        item = {"image": row["image"], "caption": self.captions[r][j], "image_index": r}
        if self.has_scene:
            item["scene"] = row["scene"]
        return item

    def owners(self) -> list[int]:
        """The row index of each item's image (text -> image), for retrieval recall."""
        return [r for r, _ in self.index]

    def texts(self) -> list[str]:
        """Every caption, in item order."""
        return [self.captions[r][j] for r, j in self.index]


@dataclass
class RetrievalCollator:
    """(image, caption) pairs -> the inputs of ``VLPForImageTextRetrieval`` with ``return_loss=True`` and
    ``itm_exclude`` (B, B): True where caption j must not be an ITM negative for image i, because both pairs share an
    image (``image_index``) or, when items carry a shapes-world ``scene`` and ``use_scene_truth``, because the world
    says caption j holds for image i's scene (``shapes_world.caption_holds``)."""

    processor: Any
    max_length: int | None = None
    use_scene_truth: bool = True

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        _check_keys(items, ("image", "caption"), "RetrievalCollator")
        batch = _text_batch(self.processor, [item["caption"] for item in items], self.max_length)
        batch.update(image_batch(self.processor, items))
        batch["itm_exclude"] = self.exclude_matrix(items)
        batch["return_loss"] = True
        return batch

    def exclude_matrix(self, items: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """(B, B) bool: [i, j] True when caption j is also right for image i."""
        n = len(items)
        owners = [item.get("image_index", i) for i, item in enumerate(items)]
        exclude = torch.tensor([[owners[i] == owners[j] for j in range(n)] for i in range(n)], dtype=torch.bool)
        if self.use_scene_truth and all("scene" in item for item in items):
            for i in range(n):
                for j in range(n):
                    if not exclude[i, j] and caption_holds(items[j]["caption"], items[i]["scene"]):
                        exclude[i, j] = True
        return exclude


@dataclass
class CaptionCollator:
    """(image, caption) pairs -> ``input_ids`` ("[CLS] caption [SEP]"), ``attention_mask``, ``pixel_values``,
    ``pixel_mask`` and ``labels`` = ``input_ids`` with padding set to -100 (the model shifts them: position t predicts
    token t + 1, so [SEP] is learnt as the end of a caption). ``blank_image`` gives the caption-prior baseline."""

    processor: Any
    max_length: int | None = None
    blank_image: bool = False

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        _check_keys(items, ("image", "caption"), "CaptionCollator")
        batch = _text_batch(self.processor, [item["caption"] for item in items], self.max_length, token_types=False)
        batch.update(image_batch(self.processor, items, self.blank_image))
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


@dataclass
class ImageCollator:
    """Rows -> ``pixel_values`` and ``pixel_mask`` only (captioning evaluation: ``generate`` from the image alone)."""

    processor: Any
    blank_image: bool = False

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        _check_keys(rows, ("image",), "ImageCollator")
        return image_batch(self.processor, rows, self.blank_image)
