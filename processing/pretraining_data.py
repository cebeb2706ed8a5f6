"""Image-caption rows -> model-ready pretraining samples with a matched or a negative caption (for ITM).

Every random choice for row i (which caption, whether the pair is negative, which other row gives the
negative caption) is drawn from `np.random.default_rng([seed, epoch, i, stream])`, so a sample does not
depend on the batch it lands in, the number of data-loader workers or the number of processes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from .random_streams import CAPTION_STREAM, ITM_POSITIVE_STREAM, ITM_STREAM
from .readers.captions import describe_error
from .row_cache import CACHE_PIXEL_BYTES, CACHE_ROWS, RowCache, rows_within

#: Side assumed for the pixel cache's bound when the image processor keeps each image's own size.
_UNRESIZED_SIDE = 384

# Stream ids keep the independent draws of one sample apart (caption choice does not move when the ITM
# settings change). The collator's MLM masking uses its own stream (see collator.MLM_STREAM).


def decode_image(value: Any) -> PIL.Image.Image:
    """Decode one image cell (datasets' {"bytes", "path"} dict, raw bytes, a path or a PIL image) fully.

    Raises `ValueError` with the reason (and the path when there is one) for missing, unreadable, truncated or
    corrupt images; `load()` forces the whole decode so truncated files fail here, not later.
    """
    if isinstance(value, PIL.Image.Image):
        return value
    data, path = None, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        path = value
    elif value is not None:
        raise ValueError(f"unsupported image cell of type {type(value).__name__}")
    where = f" ({path})" if path else ""
    if data is None and not path:
        raise ValueError("no image: the cell has neither bytes nor a path")
    try:
        image = PIL.Image.open(io.BytesIO(data)) if data is not None else PIL.Image.open(path)
        image.load()
    except FileNotFoundError:
        raise ValueError(f"image file not found{where}") from None
    except Exception as error:  # PIL raises many types on corrupt data (OSError, SyntaxError, struct.error, ...)
        raise ValueError(f"cannot decode image{where}: {describe_error(error)}") from error
    return image


class PretrainingDataset(torch.utils.data.Dataset):
    r"""
    Wraps a `datasets.Dataset` with columns `image`, `captions` (list of str), `index` and optionally `scene`
    (a JSON string) into samples for MLM + ITM pretraining.

    Args:
        hf_dataset: the rows. The `image` column is read undecoded and decoded here, one row at a time, so a
            corrupt image only affects its own row.
        processor: a `VLPProcessor` (anything with `.tokenizer` and `.image_processor`); or pass `tokenizer`
            and `image_processor` instead.
        seed, max_length: random seed and caption length in tokens (special tokens included).
        itm_probability: share of samples whose ITM caption is a negative (itm_label 0).

    Each sample carries two texts for one image: the row's own caption (`input_ids`, ..., for MLM: masked
    modeling runs on matched pairs only, as in ViLT and UNITER) and the caption for image-text matching
    (`itm_input_ids`, ...), which is a negative with probability `itm_probability`.
        holds_fn: `(caption, scene_json) -> bool`. When given, a negative caption is redrawn until it does not
            hold for this row's scene (needs the `scene` column). When None, any caption of another row is a
            negative. In both cases a caption equal to one of the row's own captions is never a negative.
        concept_words: words whose tokens get `concept_mask` True (case-insensitive when the tokenizer lowercases).
        strict: raise `ValueError` for unreadable rows instead of returning `{"index": i, "skipped": reason}`.
        max_negative_draws: draws before giving up on finding a negative; the sample then stays matched.

    Rows are pure functions of their index (no augmentation), so the dataset's own rows are read once: their
    processed images, caption lists and scenes, and the tokenized captions, are cached, bounded (`CACHE_ROWS`,
    `CACHE_PIXEL_BYTES` per dataset copy; each DataLoader worker holds its own). A sample's `pixel_values` and
    `pixel_mask` are shared with the cache: never write into them.
    """

    def __init__(
        self,
        hf_dataset: datasets.Dataset,
        processor: Any = None,
        seed: int = 0,
        max_length: int = 40,
        itm_probability: float = 0.5,
        holds_fn: Callable[[str, str], bool] | None = None,
        concept_words: Iterable[str] | None = None,
        strict: bool = False,
        *,
        tokenizer: Any = None,
        image_processor: Any = None,
        max_negative_draws: int = 100,
    ):
        if processor is not None:
            tokenizer = processor.tokenizer if tokenizer is None else tokenizer
            image_processor = processor.image_processor if image_processor is None else image_processor
        if tokenizer is None or image_processor is None:
            raise ValueError("PretrainingDataset needs a processor, or both a tokenizer and an image_processor")
        for column in ("image", "captions"):
            if column not in hf_dataset.column_names:
                raise ValueError(f"dataset has no {column!r} column; columns: {hf_dataset.column_names}")
        if holds_fn is not None and "scene" not in hf_dataset.column_names:
            raise ValueError("holds_fn needs a 'scene' column to judge negatives; the dataset has none")
        if not 0.0 <= itm_probability <= 1.0:
            raise ValueError(f"itm_probability must be in [0, 1]; got {itm_probability}")
        if itm_probability > 0 and len(hf_dataset) < 2:
            raise ValueError("negative captions come from other rows: the dataset needs at least 2 rows")
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS], one token and [SEP]; got {max_length}")

        features = hf_dataset.features
        if isinstance(features.get("image"), datasets.Image) and features["image"].decode:
            hf_dataset = hf_dataset.cast_column("image", datasets.Image(decode=False))
        self.rows = hf_dataset
        text_columns = [name for name in ("captions", "scene") if name in hf_dataset.column_names]
        self.texts = hf_dataset.select_columns(text_columns)  # cheap access to other rows' captions
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.seed = int(seed)
        self.epoch = 0
        self.max_length = int(max_length)
        self.itm_probability = float(itm_probability)
        self.holds_fn = holds_fn
        self.lowercase = bool(getattr(tokenizer, "do_lower_case", False))
        words = set(concept_words or ())
        self.concept_words = {word.lower() for word in words} if self.lowercase else words
        self.strict = bool(strict)
        self.max_negative_draws = int(max_negative_draws)
        size = getattr(image_processor, "size", None) or {}
        height, width = (size.get("height"), size.get("width")) if isinstance(size, dict) else (None, None)
        pixels = int(height or _UNRESIZED_SIDE) * int(width or _UNRESIZED_SIDE)
        self._pixels = RowCache(self._read_pixels, rows_within(CACHE_PIXEL_BYTES, pixels * (3 * 4 + 8)))
        self._text_rows = RowCache(self._read_text_row, CACHE_ROWS)
        self._encodings = RowCache(self._encode, CACHE_ROWS)

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose captions and negatives `__getitem__` draws (call before iterating)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, stream: int, epoch: int | None = None) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), index, stream])

    @staticmethod
    def _caption_list(value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return [caption for caption in value if isinstance(caption, str) and caption.strip()]

    def _draw_negative(
        self, index: int, own_captions: list[str], scene: str | None, rng: np.random.Generator, pool: Any = None
    ) -> str | None:
        """A caption of another row that is not one of this row's captions and (with holds_fn) is false here.

        `pool`: rows with `captions` to draw from instead of this dataset's own (a stream's caption bank); the row
        itself is not among them, so every pool row is a candidate.
        """
        texts = self.texts if pool is None else pool
        size = len(texts)
        if size < (2 if pool is None else 1):
            return None
        for _ in range(self.max_negative_draws):
            if pool is None:
                other = int(rng.integers(size - 1))
                other += other >= index  # uniform over every row except `index`
            else:
                other = int(rng.integers(size))
            candidates = self._caption_list((self._text_rows(other) if pool is None else texts[other])["captions"])
            if not candidates:
                continue
            caption = candidates[int(rng.integers(len(candidates)))]
            if caption in own_captions:
                continue
            if self.holds_fn is not None and self.holds_fn(caption, scene):
                continue
            return caption
        return None

    def _draw_positive(self, index: int, own_captions: list[str], rng: np.random.Generator, pool: Any = None) -> str:
        """The ITM positive: one of the row's captions that is false for the scene of a random other row.

        A negative is kept only when it is false for this row's scene, which favours captions that rarely hold (a
        negation holds for almost every scene and is almost never a negative). The positive passes the same test
        against a scene drawn as the negative's row is, so captions reach both labels at the same rates and the
        caption alone does not tell the label. After `max_negative_draws` failures, the last caption drawn.
        """
        texts = self.texts if pool is None else pool
        size = len(texts)
        caption = own_captions[int(rng.integers(len(own_captions)))]
        if size < (2 if pool is None else 1):
            return caption
        for _ in range(self.max_negative_draws):
            caption = own_captions[int(rng.integers(len(own_captions)))]
            other = int(rng.integers(size - 1 if pool is None else size))
            other += pool is None and other >= index
            scene = (self._text_rows(other) if pool is None else texts[other]).get("scene")
            if scene is None or not self.holds_fn(caption, scene):
                return caption
        return caption

    def _skip(self, index: int, reason: str) -> dict[str, Any]:
        if self.strict:
            raise ValueError(f"row {index}: {reason}")
        return {"index": index, "skipped": reason}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self.rows):
            raise IndexError(f"row {index} out of range for a dataset of {len(self.rows)} rows")
        return self._sample(self._text_rows(index), index, self.epoch, None, lambda: self._pixels(index))

    def sample_from_row(
        self, row: dict[str, Any], index: int, epoch: int | None = None, negatives: Any = None
    ) -> dict[str, Any]:
        """The sample of one row (`image`, `captions`, optional `scene`) at `index`, drawn for `epoch` (default: the
        current one). A stream passes the rows it reads, with `negatives`, the rows (`captions`) its ITM negatives
        are drawn from (see `_draw_negative`); for the dataset's own rows this is what `__getitem__` returns (which
        reads them through the cache)."""
        epoch = self.epoch if epoch is None else int(epoch)
        return self._sample(row, int(index), epoch, negatives, lambda: self._process(row.get("image")))

    def _read_text_row(self, index: int) -> dict[str, Any]:
        return self.texts[int(index)]

    def _read_pixels(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._process(self.rows[int(index)]["image"])

    def _process(self, cell: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values, pixel_mask) of one image cell; `ValueError` with the reason when it cannot be read."""
        pixels = self.image_processor(decode_image(cell), return_tensors="pt")
        return pixels["pixel_values"][0], pixels["pixel_mask"][0]

    def _sample(
        self, row: dict[str, Any], index: int, epoch: int, negatives: Any, pixels_of: Callable[[], tuple]
    ) -> dict[str, Any]:
        captions = self._caption_list(row.get("captions"))
        if not captions:
            return self._skip(index, "row has no captions")
        try:
            pixel_values, pixel_mask = pixels_of()
        except (ValueError, TypeError) as error:
            return self._skip(index, str(error))

        caption = captions[int(self._rng(index, CAPTION_STREAM, epoch).integers(len(captions)))]
        text = self.encode_caption(caption)
        itm_caption, itm_label = caption, 1
        itm_rng = self._rng(index, ITM_STREAM, epoch)
        negative = None
        if itm_rng.random() < self.itm_probability:
            negative = self._draw_negative(index, captions, row.get("scene"), itm_rng, negatives)
            if negative is not None:
                itm_caption, itm_label = negative, 0
        if negative is None and self.holds_fn is not None:
            itm_caption = self._draw_positive(index, captions, self._rng(index, ITM_POSITIVE_STREAM, epoch), negatives)
        itm_text = text if itm_caption == caption else self.encode_caption(itm_caption)
        return {
            "index": index,
            "epoch": epoch,
            "caption": caption,
            "scene": row.get("scene"),
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            **text,
            "itm_input_ids": itm_text["input_ids"],
            "itm_attention_mask": itm_text["attention_mask"],
            "itm_token_type_ids": itm_text["token_type_ids"],
            "itm_label": itm_label,
            "itm_caption": itm_caption,
        }

    def encode_caption(self, caption: str) -> dict[str, torch.Tensor]:
        """Tokenize "[CLS] caption [SEP]" with word ids (-1 on special tokens) and the concept-word mask (fresh
        tensors; the tokenization is cached per caption)."""
        input_ids, attention_mask, token_type_ids, word_ids, concept = self._encodings(caption)
        input_ids = torch.tensor(input_ids, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            "token_type_ids": torch.zeros_like(input_ids)
            if token_type_ids is None
            else torch.tensor(token_type_ids, dtype=torch.long),
            "word_ids": torch.tensor(word_ids, dtype=torch.long),
            "concept_mask": torch.tensor(concept, dtype=torch.bool),
        }

    def _encode(self, caption: str) -> tuple:
        encoding = self.tokenizer(caption, truncation=True, max_length=self.max_length)
        word_ids = [-1 if word is None else word for word in encoding.word_ids()]
        concept = []
        for word in word_ids:
            if word < 0 or not self.concept_words:
                concept.append(False)
                continue
            span = encoding.word_to_chars(word)
            text = caption[span.start : span.end]
            concept.append((text.lower() if self.lowercase else text) in self.concept_words)
        token_type_ids = encoding.get("token_type_ids")
        return (
            tuple(encoding["input_ids"]),
            tuple(encoding["attention_mask"]),
            None if token_type_ids is None else tuple(token_type_ids),
            tuple(word_ids),
            tuple(concept),
        )


__all__ = ["PretrainingDataset", "decode_image"]
