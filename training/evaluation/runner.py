"""Images (`ImageBank`, blank and mismatched) and the batched model calls every suite makes (`Runner`: match
scores, representations, masked-word predictions, relevance, MIM losses), in eval mode under `torch.no_grad`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...processing.worlds import shapes as sw
from .settings import BLANK, BLANK_RGB, Settings


class ImageBank:
    """Images by id (0..n-1; ``BLANK`` is the blank image): scenes rendered, or files read, when asked for.

    Scenes render at ``image_size`` (exact and deterministic); files are read as RGB, cropped to their
    (x, y, w, h) box when one is given (ARO), and resized by the processor.
    """

    def __init__(
        self,
        scenes: Sequence | None = None,
        paths: Sequence[str] | None = None,
        boxes: Sequence | None = None,
        image_size: int = 64,
    ):
        if (scenes is None) == (paths is None):
            raise ValueError("ImageBank: give scenes or paths")
        self.scenes = list(scenes) if scenes is not None else None
        self.paths = list(paths) if paths is not None else None
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths or ())
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.scenes if self.scenes is not None else self.paths)

    def blank(self) -> np.ndarray:
        return np.tile(np.asarray(BLANK_RGB, dtype=np.uint8), (self.image_size, self.image_size, 1))

    def get(self, ids: Sequence[int]) -> list[np.ndarray]:
        """uint8 (H, W, 3) images for ``ids``."""
        ids = [int(i) for i in ids]
        out: list = [None] * len(ids)
        real = [k for k, i in enumerate(ids) if i != BLANK]
        if self.scenes is not None and real:
            rendered = sw.render_batch([self.scenes[ids[k]] for k in real], self.image_size)
            for k, image in zip(real, rendered):
                out[k] = image
        else:
            for k in real:
                out[k] = read_image(self.paths[ids[k]], self.boxes[ids[k]])
        blank = self.blank()
        return [blank if image is None else image for image in out]


def read_image(path: str, box=None) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), cropped to ``box`` = (x, y, w, h) when given."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if box is not None:
            x, y, w, h = box
            image = image.crop((int(x), int(y), int(x + max(w, 1)), int(y + max(h, 1))))
        return np.asarray(image, dtype=np.uint8)


def unreadable_image(path: str) -> str | None:
    """Why ``path`` cannot be read as an image, or None."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for missing, broken or unknown files
        return f"unreadable image: {path} ({type(error).__name__}: {error})"
    return None


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) with no fixed point: a random order, each taking the next one's place."""
    if n < 2:
        raise ValueError(f"a mismatched image needs at least two items, got {n}")
    order = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


def rng_for(settings: Settings, purpose: str) -> np.random.Generator:
    """A generator seeded from (settings.seed, purpose), so each draw is independent of the others' order."""
    return np.random.default_rng([settings.seed, *purpose.encode()])


@dataclass
class Runner:
    """A model and its processor, and how to batch them. The model is a VLPForPreTraining (or anything with its
    ``vlp``, ``itm_head``, ``mlm_head``, ``mim_head`` and ``config``)."""

    model: torch.nn.Module
    processor: object
    device: str = "cpu"
    batch_size: int = 64

    @property
    def image_size(self) -> int:
        size = getattr(self.processor.image_processor, "size", None)
        return int(size["height"]) if size else int(self.model.config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def max_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def encode(self, images: list | None, words: list[list[str]] | None):
        """Model inputs on the device, and the tokenizer's encoding (for word ids) when there is text."""
        inputs, encoding = {}, None
        if words is not None:
            encoding = self.processor.tokenizer(
                words,
                is_split_into_words=True,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            inputs.update({k: encoding[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding})
        if images is not None:
            pixels = self.processor.image_processor(images, return_tensors="pt")
            inputs.update({"pixel_values": pixels["pixel_values"], "pixel_mask": pixels["pixel_mask"]})
        return {k: v.to(self.device) for k, v in inputs.items()}, encoding

    @functools.cached_property
    def background_pixel(self) -> torch.Tensor:
        """The processed value (C,) of the background grey, for blanking patches in pixel space."""
        blank = np.tile(np.asarray(BLANK_RGB, dtype=np.uint8), (self.patch_size, self.patch_size, 1))
        pixels = self.processor.image_processor([blank], return_tensors="pt", do_resize=False)["pixel_values"]
        return pixels[0, :, 0, 0].to(self.device)


def row_batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _words(texts: Sequence[str]) -> list[list[str]]:
    return [text.split() for text in texts]


def blank_patches(
    pixel_values: torch.Tensor, patch_mask: torch.Tensor, patch_size: int, fill: torch.Tensor
) -> torch.Tensor:
    """``pixel_values`` (B, C, H, W) with the pixels of the patches ``patch_mask`` (B, P) marks set to ``fill`` (C,)."""
    batch, _, height, width = pixel_values.shape
    grid = patch_mask.bool().view(batch, height // patch_size, width // patch_size)
    pixels = grid.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, None]
    return torch.where(pixels, fill.view(1, -1, 1, 1).to(pixel_values.dtype), pixel_values)


@torch.no_grad()
def match_scores(
    runner: Runner,
    bank: ImageBank,
    image_ids: Sequence[int],
    texts: Sequence[str],
    patch_masks: np.ndarray | None = None,
    occlusion: str = "mask",
) -> np.ndarray:
    """P(match) from the ITM head for each (image, text) row, (N,). ``patch_masks`` (N, P) bool hides patches:
    with the model's mask embedding (``occlusion="mask"``) or by painting them background grey (``"blank"``)."""
    image_ids, texts = np.asarray(image_ids), list(texts)
    out = np.empty(len(texts), dtype=np.float64)
    for rows in row_batches(len(texts), runner.batch_size):
        inputs, _ = runner.encode(bank.get(image_ids[rows]), _words(texts[rows]))
        hidden = None
        if patch_masks is not None:
            hidden = torch.as_tensor(np.asarray(patch_masks[rows], dtype=bool), device=runner.device)
            if occlusion == "blank":
                inputs["pixel_values"] = blank_patches(
                    inputs["pixel_values"], hidden, runner.patch_size, runner.background_pixel
                )
                hidden = None
        outputs = runner.model.vlp(**inputs, bool_masked_pos=hidden)
        logits = runner.model.itm_head(outputs.pooler_output).float()
        out[rows] = logits.softmax(dim=-1)[:, 1].cpu().numpy()
    return out


@torch.no_grad()
def representations(
    runner: Runner, bank: ImageBank | None, image_ids: Sequence[int] | None, texts: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """Frozen representations per layer: {"cls", "text_mean", "image_mean"} -> (N, layers + 1, D).

    Layer 0 is the embeddings, layer l the output of block l (before the final LayerNorm). ``cls`` is the first
    position (the text [CLS], or the image [CLS] in an image-only pass), ``text_mean`` the mean over the real text
    tokens ([CLS] and [SEP] included), ``image_mean`` the mean over the valid patches (image [CLS] excluded).
    Give ``texts`` alone for a text-only pass, ``bank`` and ``image_ids`` alone for an image-only pass.
    """
    n = len(texts) if texts is not None else len(image_ids)
    chunks: dict[str, list] = {}
    for rows in row_batches(n, runner.batch_size):
        images = bank.get(np.asarray(image_ids)[rows]) if image_ids is not None else None
        words = _words(list(texts)[rows]) if texts is not None else None
        inputs, _ = runner.encode(images, words)
        outputs = runner.model.vlp(**inputs, output_hidden_states=True)
        states = torch.stack(outputs.hidden_states, dim=1).float()  # (B, L+1, S, D)
        length = outputs.text_length
        mask = outputs.attention_mask.to(states.dtype)
        found = {"cls": states[:, :, 0]}
        if length:
            weights = mask[:, :length]
            found["text_mean"] = (states[:, :, :length] * weights[:, None, :, None]).sum(2) / weights.sum(1).clamp(
                min=1
            )[:, None, None]
        if images is not None:
            weights = mask[:, length + 1 :]
            found["image_mean"] = (states[:, :, length + 1 :] * weights[:, None, :, None]).sum(2) / weights.sum(
                1
            ).clamp(min=1)[:, None, None]
        for name, value in found.items():
            chunks.setdefault(name, []).append(value.cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


@torch.no_grad()
def masked_word_predictions(
    runner: Runner, bank: ImageBank, image_ids: Sequence[int], masked_texts: Sequence[str], candidate_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """MLM logits over ``candidate_ids`` (N, K) and the open argmax token (N,) at the one [MASK] of each text."""
    mask_id = runner.processor.tokenizer.mask_token_id
    candidates = torch.as_tensor(list(candidate_ids), device=runner.device)
    closed, opened = [], []
    for rows in row_batches(len(masked_texts), runner.batch_size):
        inputs, _ = runner.encode(bank.get(np.asarray(image_ids)[rows]), _words(list(masked_texts)[rows]))
        positions = (inputs["input_ids"] == mask_id).int().argmax(dim=1)
        if not bool((inputs["input_ids"] == mask_id).sum(dim=1).eq(1).all()):
            raise ValueError("masked_word_predictions: every text must hold exactly one [MASK] token")
        states = runner.model.vlp(**inputs).last_hidden_state
        logits = runner.model.mlm_head(states[torch.arange(states.shape[0]), positions]).float()
        closed.append(logits[:, candidates].cpu().numpy())
        opened.append(logits.argmax(dim=-1).cpu().numpy())
    return np.concatenate(closed), np.concatenate(opened)


@torch.no_grad()
def phrase_relevance(
    runner: Runner,
    bank: ImageBank,
    image_ids: Sequence[int],
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]],
    layers: Sequence[int] = (-1,),
) -> np.ndarray:
    """(N, P) attention each patch receives from the tokens of the words ``spans[i]`` = [start, stop) of text i,
    heads averaged and ``layers`` averaged; rows whose phrase was truncated away are NaN."""
    out = np.full((len(texts), runner.num_patches), np.nan)
    for rows in row_batches(len(texts), runner.batch_size):
        inputs, encoding = runner.encode(bank.get(np.asarray(image_ids)[rows]), _words(list(texts)[rows]))
        length = inputs["input_ids"].shape[1]
        weights = torch.zeros(inputs["input_ids"].shape[0], length + 1 + runner.num_patches, device=runner.device)
        for b, (start, stop) in enumerate(spans[rows]):
            for position, word in enumerate(encoding.word_ids(b)):
                if word is not None and start <= word < stop:
                    weights[b, position] = 1.0
        keep = weights.sum(dim=1) > 0
        outputs = runner.model.vlp(**inputs, relevance_weights=weights, relevance_layers=tuple(layers))
        patches = outputs.relevance[:, length + 1 :].float().cpu().numpy()
        block = out[rows]
        block[keep.cpu().numpy()] = patches[keep.cpu().numpy()]
        out[rows] = block
    return out


@torch.no_grad()
def mim_losses(
    runner: Runner, bank: ImageBank, image_ids: Sequence[int], texts: Sequence[str] | None, patch_masks: np.ndarray
) -> np.ndarray:
    """Per-item MIM loss (N,) over the patches ``patch_masks`` (N, P) hides (mask embedding), with ``texts`` as
    the text of the pass, or an image-only pass when ``texts`` is None. Pixel targets (the model's MIM head)."""
    from ...modeling_vlp.losses_vlp import mim_loss, mim_pixel_targets

    config = runner.model.config
    out = np.empty(len(image_ids), dtype=np.float64)
    for rows in row_batches(len(image_ids), runner.batch_size):
        words = _words(list(texts)[rows]) if texts is not None else None
        inputs, _ = runner.encode(bank.get(np.asarray(image_ids)[rows]), words)
        mask = torch.as_tensor(np.asarray(patch_masks[rows], dtype=bool), device=runner.device)
        outputs = runner.model.vlp(**inputs, bool_masked_pos=mask)
        predictions = runner.model.mim_head(outputs.last_hidden_state[:, outputs.text_length + 1 :])
        targets = mim_pixel_targets(inputs["pixel_values"], config.patch_size, config.mim_norm_pix_loss)
        losses = []
        for b in range(predictions.shape[0]):  # the loss of each row alone (no forward pass in this loop)
            summed, count = mim_loss(predictions[b : b + 1], targets[b : b + 1], mask[b : b + 1], config.mim_loss)
            losses.append(float(summed) / max(float(count), 1.0))
        out[rows] = losses
    return out
