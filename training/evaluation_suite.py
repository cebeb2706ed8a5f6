"""The evaluation suite (`vlp evaluate`): does a pretrained model extract multimodal information?

Suites (``SUITES``), on items drawn from the synthetic world (``processing/eval_sets.py``; truth from
``caption_holds``) or, for foils, Winoground and probes, on a real benchmark file (``processing/benchmark_readers.py``):

- ``foils``: ITM match probability P(match) of the caption and of its foil, per phenomenon, through the ``vl_foils``
  metric (VALSE's acc_r, p_c, p_f, acc, min(p_c, p_f), AUROC).
- ``winoground``: the four match probabilities of two images and two captions -> text, image and group scores.
- ``probes``: linear probes (the ``linear_probe`` metric) on frozen representations of every layer (``[CLS]``: the
  first position, the mean of the text tokens, the mean of the image patches); the Salin et al. tasks with their
  mismatched-image controls and the gap, and the unimodal probes (visual from an image-only pass, word order from
  a text-only pass). Split: the k-th item of a task (its control goes with it) is a test item when
  ``(k // 2) % 2 == 1`` -- half the items, and balanced for the binary tasks, whose labels alternate with k.
- ``crossmodal`` (after Frank et al. 2021): one concept word (colour, shape or size) of a grounding phrase masked,
  predicted among the words of its category, with the true image against a blank and a mismatched image; and MIM
  loss on a seeded random ``mim_probability`` share of patches, with the true caption against none.
- ``grounding``: pointing (the patch that receives most attention from the phrase's tokens, ``relevance`` in the
  chosen layers, lies among the object's patches; beside it the chance of a random patch) and occlusion (the
  caption's match probability drops more when the object's patches are hidden than when as many random other
  patches are). Hiding uses the model's mask embedding (``bool_masked_pos``, ``occlusion="mask"``, the default) or
  replaces the pixels by the background grey (``occlusion="blank"``).
- ``frequency``: colour and shape foils named by one (colour, shape) pair, scored against log10 of the pair's count
  in the pretraining world (least-squares slope of per-item acc_r, and log-spaced buckets), and the held-out pairs.

Language-bias floors: each zero-shot score is recomputed on the same items with the image blanked (a uniform image
of the world's background grey, RGB 128) and with a mismatched image (another item's image, by a seeded
derangement so that no item keeps its own); ``differences`` hold score - floor of the suite's headline per-item
figure with a paired bootstrap interval over items (``training/statistics.py``). For probes the mismatched floor is
Salin et al.'s control (a probe trained and tested on the items shown another scene) and the difference its gap;
pointing is set against the chance of a random patch, occlusion against random patches, MIM against no caption.

Model calls are batched (``batch_size`` rows a forward pass) in eval mode under ``torch.no_grad``.
``results.json`` follows ``training/results_schema.json`` (JSON Schema draft 2020-12); every figure is
``{"value", "low", "high"}`` (a 95 % percentile bootstrap interval; null where undefined).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jsonschema
import numpy as np
import torch

from ..processing import benchmark_readers as readers
from ..processing import eval_sets as es
from ..processing import shapes_world as sw
from ..processing import strict_json
from .cli_args import parse_command
from .config import ConfigError
from .statistics import (
    bootstrap_ci,
    bootstrap_ci_paired,
    cluster_ratio_ci,
    cluster_ratio_difference,
    paired_bootstrap_difference,
)

SUITES = ("foils", "winoground", "probes", "crossmodal", "grounding", "frequency", "itm", "gitm")
#: Real benchmarks and the suite each goes through.
BENCHMARKS = {"valse": "foils", "sugarcrepe": "foils", "aro": "foils", "winoground": "winoground", "probing": "probes"}
REPRESENTATIONS = ("cls", "text_mean", "image_mean")
OCCLUSION_MODES = ("mask", "blank")
CROSSMODAL_CATEGORIES = {"colour": sw.COLOURS, "shape": sw.SHAPES, "size": sw.SIZES}
BLANK = -1  # the image id of the blank image
BLANK_RGB = sw.BACKGROUND_RGB
RESULTS_FORMAT = "vlp-evaluation-results"
RESULTS_VERSION = 1
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_schema.json")
NUM_FREQUENCY_BUCKETS = 5
#: The evaluation sets (processing/eval_sets.py) each suite reads.
SUITE_SETS = {
    "foils": ("foils",),
    "winoground": ("winoground",),
    "probes": ("probes",),
    "crossmodal": ("grounding",),
    "grounding": ("grounding",),
    "frequency": ("frequency", "held_out"),
    "itm": (),
    "gitm": (),
}
#: The text-only floors train on items of the evaluation world's config with this seed offset (never evaluated).
TEXT_FLOOR_SEED_OFFSET = 7919


# ------------------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How the suite runs; ``seed`` drives the bootstrap, derangements, occlusion and MIM draws and the probes."""

    seed: int = 0
    batch_size: int = 64
    n_resamples: int = 2000
    confidence: float = 0.95
    occlusion: str = "mask"
    relevance_layers: tuple[int, ...] = (-1,)
    mim_probability: float = 0.4
    probe_C: float = 1.0

    def __post_init__(self):
        _expect(isinstance(self.seed, int) and self.seed >= 0, "--seed", self.seed, "an integer >= 0")
        _expect(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            "--batch-size",
            self.batch_size,
            "an integer >= 1",
        )
        _expect(
            isinstance(self.n_resamples, int) and self.n_resamples >= 1,
            "--n-resamples",
            self.n_resamples,
            "an integer >= 1",
        )
        _expect(0.0 < self.confidence < 1.0, "confidence", self.confidence, "a number in (0, 1)")
        _expect(self.occlusion in OCCLUSION_MODES, "--occlusion", self.occlusion, f"one of {OCCLUSION_MODES}")
        _expect(len(self.relevance_layers) > 0, "--relevance-layers", self.relevance_layers, "at least one layer")
        _expect(0.0 < self.mim_probability < 1.0, "mim_probability", self.mim_probability, "a number in (0, 1)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "relevance_layers": list(self.relevance_layers)}


def _expect(ok: bool, name: str, value, expected: str):
    """ConfigError naming the argument, its value and what was expected."""
    if not ok:
        raise ConfigError(f"{name}={value!r}: expected {expected}")


# ------------------------------------------------------------------------------------------------------------------
# The model, its run and its world
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingWorld:
    """The pretraining world: its config, the scene range the training data used, and where the config came from."""

    config: sw.WorldConfig
    training_scenes: tuple[int, int]
    source: str

    def pair_counts(self) -> Counter:
        """Objects per (colour, shape) pair in the training scenes: the pretraining data's actual counts."""
        return sw.concept_counts(sw.generate_scenes(self.config, *self.training_scenes))


def resolve_model_dir(model_dir: str) -> tuple[str, str | None]:
    """(model folder, folder of run.yaml or None) of a run folder (run.yaml, model/) or of a saved model folder."""
    model_dir = os.fspath(model_dir)
    if os.path.isfile(os.path.join(model_dir, "run.yaml")) and os.path.isdir(os.path.join(model_dir, "model")):
        return os.path.join(model_dir, "model"), model_dir
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        for candidate in (model_dir, os.path.dirname(os.path.abspath(model_dir))):
            if os.path.isfile(os.path.join(candidate, "run.yaml")):
                return model_dir, candidate
        return model_dir, None
    raise ConfigError(
        f"MODEL_DIR={model_dir!r}: expected a `vlp pretrain` run folder (run.yaml and model/) or a "
        f"saved model folder (config.json)"
    )


def read_run_record(run_dir: str) -> dict:
    """The run.yaml mapping of a run folder (``config``, ``code_version``, ``seed``...)."""
    import yaml

    path = os.path.join(run_dir, "run.yaml")
    with open(path, encoding="utf-8") as handle:
        record = yaml.safe_load(handle) or {}
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'config' mapping (a `vlp pretrain` run record)")
    return record


_WORLD_FIELDS = {f.name for f in dataclasses.fields(sw.WorldConfig)}
_RUN_WORLD_KEYS = (
    "dataset",
    "num_scenes",
    "val_scenes",
    "world_seed",
    "max_objects",
    "zipf_exponent",
    "noise_rate",
    "background_noise",
    "held_out_pairs",
    "image_size",
)


def world_from_dict(data: Mapping, source: str) -> sw.WorldConfig:
    """A WorldConfig from its fields (``WorldConfig.to_dict`` or a dataset's world_config.json)."""
    unknown = sorted(set(data) - _WORLD_FIELDS - {"world_version"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown WorldConfig field(s) {unknown}; expected names from {sorted(_WORLD_FIELDS)}"
        )
    values = {k: v for k, v in data.items() if k in _WORLD_FIELDS}
    for name in ("caption_kinds", "noise_mix"):
        if name in values:
            values[name] = tuple(values[name])
    if "held_out_pairs" in values:
        pairs = values["held_out_pairs"]
        values["held_out_pairs"] = tuple(tuple(p) if not isinstance(p, str) else p for p in pairs)
    try:
        return sw.WorldConfig(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None


def world_from_run_config(config: Mapping, source: str) -> TrainingWorld:
    """The training world of a run config (the keys ``training/data.py`` builds the world from)."""
    dataset = config.get("dataset", "shapes")
    if dataset != "shapes":
        path = os.path.join(str(dataset), "world_config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{source}: dataset={dataset!r} has no world_config.json; give --world-config FILE")
        with open(path, encoding="utf-8") as handle:
            world = world_from_dict(json.load(handle), path)
        val = int(config.get("val_scenes", 0))
        return TrainingWorld(world, (0, max(1, world.num_scenes - val)), path)
    held = [
        tuple(part.replace(":", " ").split())
        for part in str(config.get("held_out_pairs") or "").split(",")
        if part.strip()
    ]
    try:
        world = sw.WorldConfig(
            num_scenes=int(config.get("num_scenes", 4000)),
            seed=int(config.get("world_seed", 0)),
            image_size=int(config.get("image_size", 64)),
            max_objects=int(config.get("max_objects", 3)),
            zipf_exponent=float(config.get("zipf_exponent", 1.0)),
            held_out_pairs=held,
            background_noise=float(config.get("background_noise", 0.0)),
            noise_rate=float(config.get("noise_rate", 0.0)),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None
    return TrainingWorld(world, (0, world.num_scenes), source)


def load_world_file(path: str) -> TrainingWorld:
    """``--world-config FILE``: a run.yaml, a flat run config, or WorldConfig fields (YAML or JSON)."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"--world-config={path!r}: file not found")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"--world-config={path!r}: not valid YAML/JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--world-config={path!r}: expected a mapping (a run.yaml or WorldConfig fields)")
    if isinstance(data.get("config"), dict):
        return world_from_run_config(data["config"], path)
    if set(data) <= _WORLD_FIELDS | {"world_version"}:
        world = world_from_dict(data, path)
        return TrainingWorld(world, (0, world.num_scenes), path)
    if set(data) & set(_RUN_WORLD_KEYS):
        return world_from_run_config(data, path)
    raise ConfigError(
        f"--world-config={path!r}: expected a run.yaml (with 'config'), a run config (world_seed, "
        f"num_scenes, ...) or WorldConfig fields; got keys {sorted(data)[:10]}"
    )


def load_model(model_path: str, device: str = "cpu"):
    """(VLPForPreTraining in eval mode on ``device``, VLPProcessor) from a saved model folder."""
    from ..modeling_vlp import VLPForPreTraining
    from ..processing.processing_vlp import VLPProcessor

    try:
        model = VLPForPreTraining.from_pretrained(model_path)
        processor = VLPProcessor.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"MODEL_DIR: could not load a VLP model and processor from {model_path!r} ({error})"
        ) from None
    return model.to(device).eval(), processor


# ------------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------------


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


def _rng(settings: Settings, purpose: str) -> np.random.Generator:
    """A generator seeded from (settings.seed, purpose), so each draw is independent of the others' order."""
    return np.random.default_rng([settings.seed, *purpose.encode()])


# ------------------------------------------------------------------------------------------------------------------
# Batched model calls
# ------------------------------------------------------------------------------------------------------------------


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


def _batches(n: int, size: int):
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
    for rows in _batches(len(texts), runner.batch_size):
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
    for rows in _batches(n, runner.batch_size):
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
    for rows in _batches(len(masked_texts), runner.batch_size):
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
    for rows in _batches(len(texts), runner.batch_size):
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
    from ..modeling_vlp.losses_vlp import mim_loss, mim_pixel_targets

    config = runner.model.config
    out = np.empty(len(image_ids), dtype=np.float64)
    for rows in _batches(len(image_ids), runner.batch_size):
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


# ------------------------------------------------------------------------------------------------------------------
# Figures, intervals, differences
# ------------------------------------------------------------------------------------------------------------------


@functools.cache
def _metric(name: str):
    from .metrics import load_metric

    return load_metric(name)


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def figure(value, low, high) -> dict:
    """One figure: its value and the two ends of its interval (None where undefined)."""
    return {"value": _number(value), "low": _number(low), "high": _number(high)}


def metric_figures(result: Mapping, names: Sequence[str]) -> dict:
    """Figures from a metric module's flat ``name``, ``name_low``, ``name_high`` keys."""
    return {name: figure(result[name], result[f"{name}_low"], result[f"{name}_high"]) for name in names}


def mean_figure(values, settings: Settings) -> dict:
    """The mean of per-item values with its bootstrap interval; all None without items."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return figure(float("nan"), float("nan"), float("nan"))
    interval = bootstrap_ci(values, "mean", settings.n_resamples, settings.confidence, settings.seed)
    return figure(interval.point, interval.low, interval.high)


def difference(floor_values, score_values, settings: Settings, of: str) -> dict:
    """mean(score) - mean(floor) over the same items, with a paired bootstrap interval and p-value."""
    floor_values, score_values = np.asarray(floor_values, float), np.asarray(score_values, float)
    if floor_values.size == 0:
        return {"of": of, **figure(float("nan"), float("nan"), float("nan")), "p_value": None, "resampled": "items"}
    test = paired_bootstrap_difference(
        floor_values, score_values, "mean", settings.n_resamples, settings.confidence, settings.seed
    )
    return {
        "of": of,
        **figure(test.interval.point, test.interval.low, test.interval.high),
        "p_value": _number(test.p_value),
        "resampled": test.resampled,
    }


def unpaired_difference(a, b, settings: Settings, of: str) -> dict:
    """mean(b) - mean(a) over two independent sets of items, each resampled on its own."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size == 0 or b.size == 0:
        return {
            "of": of,
            **figure(float("nan"), float("nan"), float("nan")),
            "p_value": None,
            "resampled": "items (each set)",
        }
    rng = np.random.default_rng(settings.seed)
    draws_a = a[rng.integers(0, a.size, (settings.n_resamples, a.size))].mean(axis=1)
    draws_b = b[rng.integers(0, b.size, (settings.n_resamples, b.size))].mean(axis=1)
    draws = draws_b - draws_a
    tail = (1 - settings.confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    p = min(1.0, 2 * min((np.sum(draws <= 0) + 1) / (draws.size + 1), (np.sum(draws >= 0) + 1) / (draws.size + 1)))
    return {"of": of, **figure(b.mean() - a.mean(), low, high), "p_value": float(p), "resampled": "items (each set)"}


def cluster_mean_figure(sums, counts, settings: Settings) -> dict:
    """The mean over items that come in clusters, from per-cluster sums and item counts, with a cluster bootstrap
    interval (`statistics.cluster_ratio_ci`)."""
    interval = cluster_ratio_ci(sums, counts, settings.n_resamples, settings.confidence, settings.seed)
    return figure(interval.point, interval.low, interval.high)


def cluster_difference(a, b, settings: Settings, of: str) -> dict:
    """mean(b) - mean(a), each given as (per-cluster sums, per-cluster item counts) over the same clusters, with a
    cluster bootstrap interval and p-value (`statistics.cluster_ratio_difference`)."""
    test = cluster_ratio_difference(a, b, settings.n_resamples, settings.confidence, settings.seed)
    return {
        "of": of,
        **figure(test.interval.point, test.interval.low, test.interval.high),
        "p_value": _number(test.p_value),
        "resampled": "groups",
    }


def _slope_statistic(x, y):
    """Least-squares slope of y on x along the last axis (NaN where x does not vary)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    var = (xc * xc).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, (xc * yc).sum(axis=-1) / np.where(var > 0, var, 1.0), np.nan)


def slope_figure(x, y, settings: Settings) -> dict:
    """Least-squares slope of per-item y on x with an item bootstrap interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0:
        return figure(float("nan"), float("nan"), float("nan"))
    interval = bootstrap_ci_paired((x, y), _slope_statistic, settings.n_resamples, settings.confidence, settings.seed)
    return figure(interval.point, interval.low, interval.high)


def comparison(
    n_items: int,
    headline: str,
    score: dict,
    floors: dict,
    differences: dict,
    items: Mapping[str, np.ndarray] | None = None,
    **extra,
) -> dict:
    """The block every zero-shot figure is reported in: the score, its floors and score - floor; `items` holds, for
    score figures that are means over items, the per-item values in item order (what a paired comparison of two
    runs on the same items resamples)."""
    block = {
        "n_items": int(n_items),
        "headline": headline,
        "score": score,
        "floors": floors,
        "differences": differences,
        **extra,
    }
    if items:
        block["items"] = {
            name: [round(float(v), 6) for v in np.asarray(values, dtype=float)] for name, values in items.items()
        }
    return block


# ------------------------------------------------------------------------------------------------------------------
# Foils
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class FoilRows:
    """Items with one image, a caption and one or more foils: ``foil_item[r]`` is the item of foil row r."""

    image_ids: np.ndarray
    captions: list[str]
    foils: list[str]
    foil_item: np.ndarray
    groups: list[str]

    @classmethod
    def from_items(cls, items: Sequence, image_ids: Sequence[int]) -> FoilRows:
        """From eval-set FoilItems (``foil``) or benchmark FoilItems (``foils``, a list)."""
        foils, foil_item = [], []
        for k, item in enumerate(items):
            for foil in item.foils if hasattr(item, "foils") else [item.foil]:
                foils.append(foil)
                foil_item.append(k)
        return cls(
            np.asarray(image_ids, dtype=np.int64),
            [item.caption for item in items],
            foils,
            np.asarray(foil_item, dtype=np.int64),
            [item.phenomenon for item in items],
        )


def foil_scores(runner: Runner, bank: ImageBank, rows: FoilRows, image_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """(caption scores (N,), foil scores (R,)) with item k shown image ``image_ids[k]``, in one batched pass."""
    n = len(rows.captions)
    ids = np.concatenate([image_ids, image_ids[rows.foil_item]])
    scores = match_scores(runner, bank, ids, rows.captions + rows.foils)
    return scores[:n], scores[n:]


def _item_acc_r(captions, foils, foil_item, n):
    """Per item, the share of its foils scored below its caption (ties count as wrong)."""
    wins = np.bincount(foil_item, weights=(captions[foil_item] > foils).astype(float), minlength=n)
    return wins / np.maximum(np.bincount(foil_item, minlength=n), 1)


FOIL_FIGURES = ("acc_r", "p_c", "p_f", "acc", "min_pc_pf", "auroc")


def _foil_figures(captions, foils, foil_item, items, settings: Settings) -> dict:
    rows = np.isin(foil_item, items)
    result = _metric("vl_foils").compute(
        caption_scores=captions[foil_item[rows]],
        foil_scores=foils[rows],
        item_ids=foil_item[rows].tolist(),
        n_resamples=settings.n_resamples,
        confidence=settings.confidence,
        seed=settings.seed,
    )
    return metric_figures(result, FOIL_FIGURES)


def foil_blocks(conditions: Mapping[str, tuple], rows: FoilRows, settings: Settings) -> dict:
    """Per group ("all" and each phenomenon): vl_foils figures under each condition ("image" is the score, the
    others floors) and acc_r differences score - floor."""
    n = len(rows.captions)
    per_item = {name: _item_acc_r(c, f, rows.foil_item, n) for name, (c, f) in conditions.items()}
    groups = {"all": np.arange(n)}
    for name in dict.fromkeys(rows.groups):
        groups[name] = np.flatnonzero(np.asarray(rows.groups) == name)
    blocks = {}
    for group, items in groups.items():
        if items.size == 0:
            continue
        figures = {name: _foil_figures(c, f, rows.foil_item, items, settings) for name, (c, f) in conditions.items()}
        floors = {name: figures[name] for name in conditions if name != "image"}
        differences = {
            name: difference(per_item[name][items], per_item["image"][items], settings, "acc_r") for name in floors
        }
        foils_per_item = np.bincount(rows.foil_item, minlength=n)[items]
        per_item_acc_r = {"acc_r": per_item["image"][items]} if np.ptp(foils_per_item) == 0 else None
        blocks[group] = comparison(
            items.size,
            "acc_r",
            figures["image"],
            floors,
            differences,
            per_item_acc_r,
            n_pairs=int(np.isin(rows.foil_item, items).sum()),
        )
    return blocks


def run_foils(
    runner: Runner,
    bank: ImageBank,
    rows: FoilRows,
    settings: Settings,
    text_floor_pairs: Sequence[tuple[str, str]] | None = None,
) -> dict:
    """The foils suite on ``rows``: the image, then the blank and mismatched floors, and with
    ``text_floor_pairs`` ((caption, foil) training pairs) the text-only floor (`text_only_foil_scores`)."""
    mismatched = rows.image_ids[derangement(len(rows.captions), _rng(settings, "foils/mismatched"))]
    conditions = {
        "image": foil_scores(runner, bank, rows, rows.image_ids),
        "blank": foil_scores(runner, bank, rows, np.full_like(rows.image_ids, BLANK)),
        "mismatched": foil_scores(runner, bank, rows, mismatched),
    }
    if text_floor_pairs:
        conditions["text_only"] = text_only_foil_scores(text_floor_pairs, rows)
    return {"phenomena": foil_blocks(conditions, rows, settings)}


def text_only_foil_scores(train_pairs: Sequence[tuple[str, str]], rows: FoilRows) -> tuple[np.ndarray, np.ndarray]:
    """(caption scores, foil scores) of a classifier that never sees an image: a bag of words trained to tell the
    captions of ``train_pairs`` (1) from their foils (0), scoring P(true caption) of each text of ``rows``."""
    from .shortcuts import caption_foil_scores

    return caption_foil_scores(train_pairs, rows.captions, rows.foils)


def text_floor_world(world: sw.WorldConfig) -> sw.WorldConfig:
    """The world whose items train the text-only floors: the evaluation world's config, another seed."""
    return dataclasses.replace(world, seed=world.seed + TEXT_FLOOR_SEED_OFFSET)


def text_floor_foil_pairs(world: sw.WorldConfig, items: Sequence) -> list[tuple[str, str]]:
    """(caption, foil) training pairs for the text-only floor: as many per phenomenon as ``items`` hold, drawn from
    `text_floor_world`."""
    counts = Counter(item.phenomenon for item in items)
    return [
        (item.caption, item.foil)
        for phenomenon, n in counts.items()
        for item in es.foil_items(text_floor_world(world), phenomenon, n)[0]
    ]


# ------------------------------------------------------------------------------------------------------------------
# Winoground
# ------------------------------------------------------------------------------------------------------------------

WINOGROUND_FIGURES = ("text_score", "image_score", "group_score")


def winoground_scores(runner: Runner, bank: ImageBank, image_ids: np.ndarray, captions: Sequence) -> dict:
    """s(c, i) for the four combinations of each item's two captions and two images (``image_ids`` (N, 2))."""
    n = len(captions)
    ids = np.concatenate([image_ids[:, 0], image_ids[:, 1], image_ids[:, 0], image_ids[:, 1]])
    texts = [c[0] for c in captions] * 2 + [c[1] for c in captions] * 2
    scores = match_scores(runner, bank, ids, texts)
    return {"c0_i0": scores[:n], "c0_i1": scores[n : 2 * n], "c1_i0": scores[2 * n : 3 * n], "c1_i1": scores[3 * n :]}


def winoground_success(s: Mapping) -> dict[str, np.ndarray]:
    """Per-item text, image and group success (strict comparisons: a tie is a failure)."""
    text = (s["c0_i0"] > s["c1_i0"]) & (s["c1_i1"] > s["c0_i1"])
    image = (s["c0_i0"] > s["c0_i1"]) & (s["c1_i1"] > s["c1_i0"])
    return {"text_score": text, "image_score": image, "group_score": text & image}


def run_winoground(
    runner: Runner,
    bank: ImageBank,
    image_ids: np.ndarray,
    captions: Sequence,
    groups: Sequence[str],
    settings: Settings,
) -> dict:
    """The Winoground suite: the images, then both images blanked and both taken from another item."""
    n = len(captions)
    mismatched = image_ids[derangement(n, _rng(settings, "winoground/mismatched"))]
    conditions = {
        "image": winoground_scores(runner, bank, image_ids, captions),
        "blank": winoground_scores(runner, bank, np.full_like(image_ids, BLANK), captions),
        "mismatched": winoground_scores(runner, bank, mismatched, captions),
    }
    success = {name: winoground_success(s) for name, s in conditions.items()}
    blocks = {}
    selections = {"all": np.arange(n)}
    for name in dict.fromkeys(groups):
        selections[name] = np.flatnonzero(np.asarray(groups) == name)
    for group, items in selections.items():
        figures = {}
        for name, s in conditions.items():
            result = _metric("winoground").compute(
                **{k: v[items] for k, v in s.items()},
                n_resamples=settings.n_resamples,
                confidence=settings.confidence,
                seed=settings.seed,
            )
            figures[name] = metric_figures(result, WINOGROUND_FIGURES)
        floors = {name: figures[name] for name in conditions if name != "image"}
        differences = {
            name: difference(
                success[name]["group_score"][items], success["image"]["group_score"][items], settings, "group_score"
            )
            for name in floors
        }
        blocks[group] = comparison(
            items.size,
            "group_score",
            figures["image"],
            floors,
            differences,
            {name: success["image"][name][items] for name in WINOGROUND_FIGURES},
        )
    return {"phenomena": blocks}


# ------------------------------------------------------------------------------------------------------------------
# Probes
# ------------------------------------------------------------------------------------------------------------------


def probe_test_mask(n: int) -> np.ndarray:
    """Test items of a probe task: item k when (k // 2) % 2 == 1 (half; balanced where labels alternate with k)."""
    return (np.arange(n) // 2) % 2 == 1


def _probe_block(
    features: np.ndarray, labels: np.ndarray, test: np.ndarray, floors: Mapping[str, np.ndarray], settings: Settings
) -> dict:
    """Probe accuracy on one representation (N, D), with each floor's features as the control (its gap)."""
    if np.unique(labels[~test]).size < 2:  # no probe can be fitted; say so instead of failing the whole run
        none = figure(float("nan"), float("nan"), float("nan"))
        return comparison(
            int(test.sum()),
            "accuracy",
            {"accuracy": none, "majority_baseline": none},
            {name: {"accuracy": none} for name in floors},
            {name: {"of": "accuracy", **none, "p_value": None, "resampled": "items"} for name in floors},
            n_train=int((~test).sum()),
            note="one class among the training items: increase --items-per-phenomenon",
        )
    metric = _metric("linear_probe")
    common = {
        "test_features": features[test],
        "test_labels": labels[test].tolist(),
        "train_features": features[~test],
        "train_labels": labels[~test].tolist(),
        "C": settings.probe_C,
        "n_resamples": settings.n_resamples,
        "confidence": settings.confidence,
        "seed": settings.seed,
    }
    if not floors:
        result = metric.compute(**common)
        return comparison(
            int(test.sum()),
            "accuracy",
            metric_figures(result, ("accuracy", "majority_baseline")),
            {},
            {},
            {"accuracy": result["correct"]},
            n_train=int((~test).sum()),
        )
    score, floor_figures, differences = None, {}, {}
    for name, control in floors.items():
        result = metric.compute(**common, control_train_features=control[~test], control_test_features=control[test])
        score = metric_figures(result, ("accuracy", "majority_baseline"))
        floor_figures[name] = {"accuracy": metric_figures(result, ("control_accuracy",))["control_accuracy"]}
        differences[name] = {
            "of": "accuracy",
            **metric_figures(result, ("gap",))["gap"],
            "p_value": _number(result["gap_p_value"]),
            "resampled": "items",
        }
    return comparison(
        int(test.sum()),
        "accuracy",
        score,
        floor_figures,
        differences,
        {"accuracy": result["correct"]},
        n_train=int((~test).sum()),
    )


def _multilabel_block(features: np.ndarray, labels: np.ndarray, test: np.ndarray, settings: Settings) -> dict:
    """One binary probe per label column; per test item the share of columns predicted right (and the majority's)."""
    from .metrics.linear_probe.linear_probe import majority_label, probe_correct

    correct, majority = [], []
    for j in range(labels.shape[1]):
        train_y, test_y = labels[~test, j].astype(str), labels[test, j].astype(str)
        if np.unique(train_y).size < 2:
            correct.append((test_y == train_y[0]).astype(float))
        else:
            correct.append(
                probe_correct(features[~test], train_y, features[test], test_y, settings.probe_C, 1000, settings.seed)
            )
        majority.append((test_y == majority_label(train_y)).astype(float))
    score = {
        "accuracy": mean_figure(np.mean(correct, axis=0), settings),
        "majority_baseline": mean_figure(np.mean(majority, axis=0), settings),
    }
    return comparison(
        int(test.sum()), "accuracy", score, {}, {}, {"accuracy": np.mean(correct, axis=0)}, n_train=int((~test).sum())
    )


def probe_task(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    floors: Mapping[str, Mapping[str, np.ndarray]],
    headline: str,
    settings: Settings,
) -> dict:
    """A probe task over every representation and layer; ``features[rep]`` is (N, layers + 1, D), ``floors`` maps a
    floor name to features of the same shape (the same items with a mismatched or blank image)."""
    from threadpoolctl import threadpool_limits

    test = probe_test_mask(len(labels))
    if test.all() or not test.any():
        raise ValueError(f"a probe task needs at least 4 items for its train/test split, got {len(labels)}")
    with threadpool_limits(1, user_api="blas"):  # small fits: BLAS threads only contend (10x slower on 2 cores)
        table = _probe_table(features, labels, test, floors, settings)
    last = str(next(iter(features.values())).shape[1] - 1)
    return {
        "headline": {"representation": headline, "layer": int(last), **table[headline][last]},
        "representations": table,
    }


def _probe_table(features, labels, test, floors, settings: Settings) -> dict:
    """representation -> layer -> probe block."""
    table = {}
    for rep, values in features.items():
        table[rep] = {}
        for layer in range(values.shape[1]):
            if labels.ndim == 2:
                table[rep][str(layer)] = _multilabel_block(values[:, layer], labels, test, settings)
            else:
                table[rep][str(layer)] = _probe_block(
                    values[:, layer], labels, test, {name: f[rep][:, layer] for name, f in floors.items()}, settings
                )
    return table


def _probe_labels(items) -> np.ndarray:
    labels = [item.label for item in items]
    if isinstance(labels[0], tuple):
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([str(label) for label in labels])


def run_probes(runner: Runner, sets: Mapping, settings: Settings) -> dict:
    """Every probe task of the eval sets: multimodal tasks with their mismatched (Salin control) and blank floors,
    visual tasks from an image-only pass, word order from a text-only pass."""
    items = list(sets["probes"])
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    by_task: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_task.setdefault(item.task, []).append(k)
    tasks = {}
    multimodal = [k for k, item in enumerate(items) if item.task in es.PROBE_TASKS and not item.control]
    if multimodal:
        controls = {(items[k].task, items[k].index): k for k, item in enumerate(items) if item.control}
        control_ids = np.asarray([controls[(items[k].task, items[k].index)] for k in multimodal])
        texts = [items[k].caption for k in multimodal]
        features = representations(runner, bank, multimodal, texts)
        floors = {
            "mismatched": representations(runner, bank, control_ids, texts),
            "blank": representations(runner, bank, np.full(len(multimodal), BLANK), texts),
        }
        position = {k: p for p, k in enumerate(multimodal)}
        for task in es.PROBE_TASKS:
            rows = np.asarray([position[k] for k in by_task.get(task, []) if k in position])
            if rows.size:
                tasks[task] = probe_task(
                    {r: v[rows] for r, v in features.items()},
                    _probe_labels([items[multimodal[p]] for p in rows]),
                    {name: {r: v[rows] for r, v in f.items()} for name, f in floors.items()},
                    "text_mean",
                    settings,
                )
    for task in ("visual_count", "visual_colours"):
        rows = by_task.get(task, [])
        if rows:
            features = representations(runner, bank, rows, None)
            tasks[task] = probe_task(features, _probe_labels([items[k] for k in rows]), {}, "image_mean", settings)
    rows = by_task.get("word_order", [])
    if rows:
        features = representations(runner, None, None, [items[k].caption for k in rows])
        tasks["word_order"] = probe_task(features, _probe_labels([items[k] for k in rows]), {}, "text_mean", settings)
    return {"split": "item k of a task is a test item when (k // 2) % 2 == 1", "tasks": tasks}


def run_benchmark_probes(runner: Runner, items: Sequence, bank: ImageBank, settings: Settings) -> dict:
    """Salin et al. csv items: the probe on ``text`` -> ``target``, mismatched (derangement) and blank floors."""
    ids = np.arange(len(items))
    texts = [item.text for item in items]
    labels = np.asarray([str(item.target) for item in items])
    mismatched = derangement(len(items), _rng(settings, "probes/mismatched"))
    features = representations(runner, bank, ids, texts)
    floors = {
        "mismatched": representations(runner, bank, mismatched, texts),
        "blank": representations(runner, bank, np.full(len(items), BLANK), texts),
    }
    task = items[0].task
    return {
        "split": "item k of a task is a test item when (k // 2) % 2 == 1",
        "tasks": {task: probe_task(features, labels, floors, "text_mean", settings)},
    }


# ------------------------------------------------------------------------------------------------------------------
# Cross-modal use (Frank et al. 2021)
# ------------------------------------------------------------------------------------------------------------------


def single_token_ids(tokenizer, words: Sequence[str]) -> dict[str, int]:
    """The words that are one token of the vocabulary, with their ids."""
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in words}
    return {w: i for w, i in ids.items() if i is not None and i != tokenizer.unk_token_id}


def masked_concept_items(items: Sequence, tokenizer) -> tuple[list[tuple[int, int, str]], int]:
    """(item, word position, category) per usable grounding item, and how many had no usable word.

    The candidates are the words of the item's referring phrase that are colour, shape or size words, one token,
    and said once in the caption; item k takes candidate k % (number of candidates).
    """
    vocab = {c: single_token_ids(tokenizer, words) for c, words in CROSSMODAL_CATEGORIES.items()}
    chosen, skipped = [], 0
    for k, item in enumerate(items):
        words = item.caption.split()
        start, stop = item.word_span
        candidates = [(j, sw.concept_category(words[j])) for j in range(start, stop)]
        candidates = [
            (j, c) for j, c in candidates if c in vocab and words[j] in vocab[c] and words.count(words[j]) == 1
        ]
        if not candidates:
            skipped += 1
            continue
        j, category = candidates[k % len(candidates)]
        chosen.append((k, j, category))
    return chosen, skipped


def run_crossmodal(runner: Runner, sets: Mapping, settings: Settings, objectives: Sequence[str] | None = None) -> dict:
    """Masked concept-word accuracy with the true, a blank and a mismatched image; MIM loss with and without caption
    (skipped when ``objectives``, the run's pretraining objectives, are known and lack MIM: its head is untrained)."""
    items = list(sets["grounding"])
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    tokenizer = runner.processor.tokenizer
    chosen, skipped = masked_concept_items(items, tokenizer)
    result = {"source": "grounding items: one concept word of the referring phrase masked", "skipped": skipped}
    if len(chosen) >= 2:
        vocab = {c: single_token_ids(tokenizer, words) for c, words in CROSSMODAL_CATEGORIES.items()}
        candidate_ids = sorted({i for ids in vocab.values() for i in ids.values()})
        column = {i: p for p, i in enumerate(candidate_ids)}
        texts, targets, categories = [], [], []
        for k, j, category in chosen:
            words = items[k].caption.split()
            targets.append(vocab[category][words[j]])
            words[j] = tokenizer.mask_token
            texts.append(" ".join(words))
            categories.append(category)
        targets = np.asarray(targets)
        allowed = np.zeros((len(chosen), len(candidate_ids)), dtype=bool)
        for row, category in enumerate(categories):
            allowed[row, [column[i] for i in vocab[category].values()]] = True
        image_ids = np.asarray([k for k, _, _ in chosen])
        conditions = {
            "image": image_ids,
            "blank": np.full_like(image_ids, BLANK),
            "mismatched": image_ids[derangement(len(chosen), _rng(settings, "crossmodal/mismatched"))],
        }
        correct, open_correct = {}, {}
        for name, ids in conditions.items():
            closed, opened = masked_word_predictions(runner, bank, ids, texts, candidate_ids)
            predicted = np.asarray(candidate_ids)[np.where(allowed, closed, -np.inf).argmax(axis=1)]
            correct[name] = (predicted == targets).astype(float)
            open_correct[name] = (opened == targets).astype(float)
        selections = {"all": np.arange(len(chosen))}
        for category in CROSSMODAL_CATEGORIES:
            selections[category] = np.flatnonzero(np.asarray(categories) == category)
        words = {}
        for group, rows in selections.items():
            if rows.size == 0:
                continue
            score = {
                "accuracy": mean_figure(correct["image"][rows], settings),
                "open_accuracy": mean_figure(open_correct["image"][rows], settings),
                "chance": mean_figure(1.0 / allowed[rows].sum(axis=1), settings),
            }
            floors = {
                name: {"accuracy": mean_figure(correct[name][rows], settings)} for name in ("blank", "mismatched")
            }
            differences = {
                name: difference(correct[name][rows], correct["image"][rows], settings, "accuracy") for name in floors
            }
            words[group] = comparison(
                rows.size,
                "accuracy",
                score,
                floors,
                differences,
                {"accuracy": correct["image"][rows], "open_accuracy": open_correct["image"][rows]},
            )
        result["masked_word"] = words
    if objectives is not None and "mim" not in objectives:
        result["mim"] = {"skipped": f"the model was not pretrained with MIM (objectives {','.join(objectives)})"}
    else:
        result["mim"] = run_mim(runner, items, bank, settings)
    return result


def random_patch_masks(n: int, num_patches: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """(n, num_patches) bool: round(share * num_patches) patches (at least one) hidden per row, uniformly drawn."""
    count = max(1, round(share * num_patches))
    order = np.argsort(rng.random((n, num_patches)), axis=1)[:, :count]
    masks = np.zeros((n, num_patches), dtype=bool)
    np.put_along_axis(masks, order, True, axis=1)
    return masks


def run_mim(runner: Runner, items: Sequence, bank: ImageBank, settings: Settings) -> dict:
    """MIM loss on the same hidden patches with the item's caption and with no text."""
    config = runner.model.config
    if getattr(config, "mim_target", "pixel") != "pixel":
        return {"skipped": f"mim_target={config.mim_target!r}: the teacher's targets are not saved with the model"}
    if len(items) < 2:
        return {"skipped": f"{len(items)} items"}
    masks = random_patch_masks(len(items), runner.num_patches, settings.mim_probability, _rng(settings, "mim"))
    ids = np.arange(len(items))
    with_caption = mim_losses(runner, bank, ids, [item.caption for item in items], masks)
    without = mim_losses(runner, bank, ids, None, masks)
    score = {"loss": mean_figure(with_caption, settings)}
    floors = {"no_caption": {"loss": mean_figure(without, settings)}}
    # Lower is better: the difference is floor - score, positive when the caption helps reconstruct the image.
    differences = {"no_caption": difference(with_caption, without, settings, "loss (no caption - caption)")}
    return comparison(
        len(items), "loss", score, floors, differences, {"loss": with_caption}, mim_probability=settings.mim_probability
    )


# ------------------------------------------------------------------------------------------------------------------
# Grounding
# ------------------------------------------------------------------------------------------------------------------


def pointing_hits(relevance: np.ndarray, object_patches: Sequence[Sequence[int]]) -> np.ndarray:
    """Per item whether the most relevant patch (first on ties) is one of its object's patches (NaN rows: False)."""
    defined = ~np.isnan(relevance).all(axis=1)
    top = np.where(np.isnan(relevance), -np.inf, relevance).argmax(axis=1)
    return np.asarray(
        [bool(ok) and int(t) in set(patches) for ok, t, patches in zip(defined, top, object_patches)], dtype=bool
    )


def occlusion_masks(
    object_patches: Sequence[Sequence[int]], num_patches: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(object masks, random masks (N, P) bool, usable (N,)): the random mask hides as many patches as the object's,
    drawn uniformly among the other patches; an item whose object covers more than half the grid is not usable."""
    n = len(object_patches)
    objects = np.zeros((n, num_patches), dtype=bool)
    randoms = np.zeros((n, num_patches), dtype=bool)
    usable = np.zeros(n, dtype=bool)
    for k, patches in enumerate(object_patches):
        patches = np.asarray(sorted({int(p) for p in patches}), dtype=np.int64)
        objects[k, patches] = True
        others = np.flatnonzero(~objects[k])
        if 0 < patches.size <= others.size:
            randoms[k, rng.choice(others, size=patches.size, replace=False)] = True
            usable[k] = True
    return objects, randoms, usable


def occlusion_block(
    base: np.ndarray, object_scores: np.ndarray, random_scores: np.ndarray, settings: Settings, mode: str
) -> dict:
    """Drops of the match probability when the object's patches, or as many random ones, are hidden."""
    object_drop, random_drop = base - object_scores, base - random_scores
    score = {
        "object_drop": mean_figure(object_drop, settings),
        "object_drop_larger": mean_figure((object_drop > random_drop).astype(float), settings),
    }
    floors = {"random_patches": {"object_drop": mean_figure(random_drop, settings)}}
    differences = {"random_patches": difference(random_drop, object_drop, settings, "object_drop")}
    return comparison(
        base.size,
        "object_drop",
        score,
        floors,
        differences,
        {"object_drop": object_drop, "object_drop_larger": (object_drop > random_drop).astype(float)},
        occlusion=mode,
        base_score=mean_figure(base, settings),
    )


def run_grounding(runner: Runner, sets: Mapping, settings: Settings) -> dict:
    """Pointing from the phrase's attention and occlusion of the object's patches."""
    items = [item for item in sets["grounding"] if item.patch_indices]
    skipped = len(sets["grounding"]) - len(items)
    if items and (items[0].patch_size != runner.patch_size or items[0].image_size != runner.image_size):
        raise ValueError(
            f"grounding items use {items[0].image_size} px images in {items[0].patch_size} px patches; "
            f"the model takes {runner.image_size} px in {runner.patch_size} px patches"
        )
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    ids = np.arange(len(items))
    captions = [item.caption for item in items]
    patches = [item.patch_indices for item in items]
    relevance = phrase_relevance(
        runner, bank, ids, captions, [item.word_span for item in items], settings.relevance_layers
    )
    hits = pointing_hits(relevance, patches).astype(float)
    chance = np.asarray([len(p) / runner.num_patches for p in patches])
    pointing = comparison(
        len(items),
        "accuracy",
        {"accuracy": mean_figure(hits, settings)},
        {"chance": {"accuracy": mean_figure(chance, settings)}},
        {"chance": difference(chance, hits, settings, "accuracy")},
        {"accuracy": hits},
        relevance_layers=list(settings.relevance_layers),
    )
    objects, randoms, usable = occlusion_masks(patches, runner.num_patches, _rng(settings, "occlusion"))
    rows = np.flatnonzero(usable)
    n = rows.size
    scores = match_scores(
        runner,
        bank,
        np.concatenate([rows, rows, rows]),
        [captions[k] for k in rows] * 3,
        np.concatenate([np.zeros_like(objects[rows]), objects[rows], randoms[rows]]),
        settings.occlusion,
    )
    occlusion = occlusion_block(scores[:n], scores[n : 2 * n], scores[2 * n :], settings, settings.occlusion)
    occlusion["skipped"] = int((~usable).sum())
    return {"skipped": skipped, "pointing": pointing, "occlusion": occlusion}


# ------------------------------------------------------------------------------------------------------------------
# Concept frequency
# ------------------------------------------------------------------------------------------------------------------


def _foil_item_correct(runner: Runner, bank: ImageBank, rows: FoilRows, settings: Settings, tag: str) -> dict:
    """Per-item acc_r under the image, blank and mismatched conditions."""
    n = len(rows.captions)
    conditions = {
        "image": rows.image_ids,
        "blank": np.full_like(rows.image_ids, BLANK),
        "mismatched": rows.image_ids[derangement(n, _rng(settings, f"{tag}/mismatched"))],
    }
    return {
        name: _item_acc_r(*foil_scores(runner, bank, rows, ids), rows.foil_item, n) for name, ids in conditions.items()
    }


def _acc_block(correct: Mapping[str, np.ndarray], rows: np.ndarray, settings: Settings, **extra) -> dict:
    score = {"acc_r": mean_figure(correct["image"][rows], settings)}
    floors = {name: {"acc_r": mean_figure(correct[name][rows], settings)} for name in ("blank", "mismatched")}
    differences = {name: difference(correct[name][rows], correct["image"][rows], settings, "acc_r") for name in floors}
    return comparison(rows.size, "acc_r", score, floors, differences, {"acc_r": correct["image"][rows]}, **extra)


def run_frequency(runner: Runner, sets: Mapping, pair_counts: Mapping, settings: Settings) -> dict:
    """acc_r against log10 of the named pair's pretraining count (slope and buckets), and on held-out pairs."""
    seen, held = list(sets["frequency"]), list(sets.get("held_out", []))
    items = seen + held
    if len(seen) < 2:
        raise ValueError("the frequency suite needs at least two frequency items")
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    rows = FoilRows.from_items(items, np.arange(len(items)))
    correct = _foil_item_correct(runner, bank, rows, settings, "frequency")
    counts = np.asarray([np.nan if c is None else c for c in es.item_frequencies(seen, pair_counts)], dtype=float)
    observed = np.flatnonzero(counts >= 1)
    x = np.log10(counts[observed])
    slope = {
        "n_items": int(observed.size),
        "x": "log10(pretraining count of the named colour-shape pair)",
        "score": slope_figure(x, correct["image"][observed], settings),
        "floors": {name: slope_figure(x, correct[name][observed], settings) for name in ("blank", "mismatched")},
        "differences": {
            name: {
                "of": "acc_r slope",
                **slope_figure(x, correct["image"][observed] - correct[name][observed], settings),
                "p_value": None,
                "resampled": "items",
            }
            for name in ("blank", "mismatched")
        },
    }
    buckets = es.log_buckets(pair_counts, NUM_FREQUENCY_BUCKETS)  # held-out pairs count 0: bucket 0
    of_item = np.asarray([buckets.bucket(c) if np.isfinite(c) else -1 for c in counts])
    table = []
    for b in range(NUM_FREQUENCY_BUCKETS + 1):
        members = np.flatnonzero(of_item == b)
        if members.size:
            low = 0.0 if b == 0 else buckets.edges[b - 1]
            high = 0.0 if b == 0 else buckets.edges[b]
            table.append(
                {
                    "bucket": b,
                    "count_low": float(low),
                    "count_high": float(high),
                    **_acc_block(correct, members, settings),
                }
            )
    result = {
        "n_items": len(seen),
        "slope": slope,
        "buckets": table,
        "bucket_edges": list(buckets.edges),
        "held_out": None,
        "held_out_versus_seen": None,
        "held_out_pairs": [list(p) for p in sorted({q for i in held for q in es.item_pairs(i)})],
    }
    if held:
        held_rows = np.arange(len(seen), len(items))
        result["held_out"] = _acc_block(correct, held_rows, settings)
        result["held_out_versus_seen"] = unpaired_difference(
            correct["image"][: len(seen)], correct["image"][held_rows], settings, "acc_r (held out - seen)"
        )
    return result


# ------------------------------------------------------------------------------------------------------------------
# Grouped matching
# ------------------------------------------------------------------------------------------------------------------

GITM_GROUPS_PER_ITEM = 4  # groups of the gitm suite per --items-per-phenomenon
GITM_KEYS = ("gitm_rows", "gitm_cols", "gitm_mode", "gitm_own_probability", "gitm_distractors", "gitm_max_length")


def gitm_settings(config: Mapping | None) -> dict:
    """The grid a run's grouped-matching head was trained on (its config's gitm_* keys, defaults otherwise)."""
    from .config import DataArguments

    defaults = DataArguments()
    return {key: (config or {}).get(key, getattr(defaults, key)) for key in GITM_KEYS}


def matching_pairs(world: sw.WorldConfig, n: int, runner: Runner, seed: int) -> tuple[list, list[str], np.ndarray]:
    """(scenes, captions, labels) of ``n`` image-text matching pairs drawn as pretraining draws them
    (`PretrainingDataset`: half negatives, each false for its scene; positives balanced to match)."""
    from ..processing.pretraining_data import PretrainingDataset
    from .data import holds_for_scene

    rows = sw.build_dataset(dataclasses.replace(world, num_scenes=n))
    dataset = PretrainingDataset(rows, runner.processor, seed=seed, holds_fn=holds_for_scene)
    samples = [dataset.sample_from_row(dataset.rows[i], i) for i in range(len(rows))]
    samples = [sample for sample in samples if "skipped" not in sample]
    scenes = [sw.Scene.from_dict(sample["scene"]) for sample in samples]
    return scenes, [s["itm_caption"] for s in samples], np.asarray([s["itm_label"] for s in samples])


def run_matching(
    runner: Runner, world: sw.WorldConfig, n_pairs: int, settings: Settings, objectives: Sequence[str] | None = None
) -> dict:
    """Zero-shot image-text matching with the run's ITM head on ``n_pairs`` pairs of the evaluation world
    (`matching_pairs`): accuracy of P(match) > 0.5 against its floors: the same captions with a blank image, a
    classifier that never sees an image (a bag of words trained on pairs of `text_floor_world`), and always
    answering the training majority."""
    from .shortcuts import BagOfWords

    if objectives is not None and "itm" not in objectives:
        return {"skipped": f"the model was not pretrained with image-text matching (objectives {','.join(objectives)})"}
    scenes, captions, labels = matching_pairs(world, n_pairs, runner, settings.seed)
    if not captions:
        return {"skipped": "no readable pair"}
    bank = ImageBank(scenes=scenes, image_size=runner.image_size)
    ids = np.arange(len(captions))
    correct = ((match_scores(runner, bank, ids, captions) > 0.5) == labels).astype(float)
    blank = ((match_scores(runner, bank, np.full_like(ids, BLANK), captions) > 0.5) == labels).astype(float)
    _, train_captions, train_labels = matching_pairs(text_floor_world(world), n_pairs, runner, settings.seed)
    text_model = BagOfWords().fit(train_captions, train_labels.tolist())
    text_only = (np.asarray(text_model.predict(captions)) == labels).astype(float)
    majority = (labels == Counter(train_labels.tolist()).most_common(1)[0][0]).astype(float)
    floor_values = {"blank": blank, "text_only": text_only, "chance_majority": majority}
    floors = {name: {"accuracy": mean_figure(values, settings)} for name, values in floor_values.items()}
    differences = {name: difference(values, correct, settings, "accuracy") for name, values in floor_values.items()}
    return comparison(
        len(captions),
        "accuracy",
        {"accuracy": mean_figure(correct, settings)},
        floors,
        differences,
        {"accuracy": correct},
        positives=int(labels.sum()),
    )


def _gitm_text_only(texts, targets, cells, world, n_groups, runner, config, grid, settings) -> np.ndarray:
    """Per scored segment, the expected accuracy of a classifier that never sees the canvas: a bag of words trained
    on the segments of ``n_groups`` groups of `text_floor_world` to tell a cell's caption from a distractor. Saying
    'none' is right for a distractor; saying 'a cell's' is right for a caption with chance 1 / cells (which cell,
    the text cannot say)."""
    from ..processing.grouping import GroupedMatchingDataset
    from .shortcuts import BagOfWords, gitm_segment_items

    rows = sw.build_dataset(dataclasses.replace(text_floor_world(world), num_scenes=n_groups))
    train = GroupedMatchingDataset(
        rows,
        runner.processor,
        config,
        mode=grid["gitm_mode"],
        patch_size=runner.patch_size,
        image_size=runner.image_size,
        seed=settings.seed,
        max_length=grid["gitm_max_length"],
    )
    model = BagOfWords().fit(*gitm_segment_items(train, range(len(train))))
    if len(texts) != len(targets):
        raise RuntimeError(f"grouped matching: {len(texts)} segment texts for {len(targets)} scored segments")
    says_none = np.asarray([label == "none" for label in model.predict(texts)])
    is_none = np.asarray(targets) == cells  # gitm_classes puts 'none' after the cells
    return np.where(says_none, is_none.astype(float), np.where(is_none, 0.0, 1.0 / cells))


def run_grouped_matching(
    runner: Runner,
    world: sw.WorldConfig,
    n_groups: int,
    grid: Mapping,
    settings: Settings,
    objectives: Sequence[str] | None = None,
) -> dict:
    """Zero-shot grouped matching with the run's trained head on ``n_groups`` groups drawn from the evaluation world
    (one group per scene, the grid and distractors of ``grid``): segment accuracy overall and per kind (own caption,
    easy and hard distractor), against its floors: two chance levels (uniform over the cells and 'none'; always the
    most frequent target), the same texts on a blank canvas, and a classifier that never sees the canvas
    (`_gitm_text_only`); hard minus easy, and whole-group exact match. Items are segments (their per-item values are
    kept), but the segments of one group are not independent: every interval here resamples groups."""
    if objectives is not None and "gitm" not in objectives:
        return {"skipped": f"the model was not pretrained with grouped matching (objectives {','.join(objectives)})"}
    if not getattr(runner.model.config, "num_text_segments", 0):
        return {"skipped": "the model has no grouped-matching head (num_text_segments=0)"}
    groups = _grouped_dataset(runner, world, n_groups, grid, settings)
    scored = _score_groups(runner, groups)
    if scored["correct"].size == 0:
        return {"skipped": "no readable group"}
    cells = groups.spec.num_cells
    text_only = _gitm_text_only(
        scored["texts"], scored["targets"], cells, world, n_groups, runner, groups.config, grid, settings
    )
    return _grouped_figures(scored, cells, text_only, grid, settings)


def _grouped_dataset(runner, world, n_groups, grid, settings):
    """The evaluation groups (epoch 0): one per scene of an `n_groups`-scene evaluation world, the run's grid."""
    from ..processing.grouping import GroupConfig, GroupedMatchingDataset

    rows = sw.build_dataset(dataclasses.replace(world, num_scenes=n_groups))
    config = GroupConfig(
        rows=grid["gitm_rows"],
        cols=grid["gitm_cols"],
        own_probability=grid["gitm_own_probability"],
        distractors=grid["gitm_distractors"],
    )
    groups = GroupedMatchingDataset(
        rows,
        runner.processor,
        config,
        mode=grid["gitm_mode"],
        patch_size=runner.patch_size,
        image_size=runner.image_size,
        seed=settings.seed,
        max_length=grid["gitm_max_length"],
    )
    groups.set_epoch(0)
    return groups


def _score_groups(runner, groups) -> dict:
    """Per scored segment: hit (`correct`) with the true and with a blank canvas, kind, target and group; per group
    its exact match; the segments' texts."""
    from ..modeling_vlp.losses_vlp import gitm_classes
    from ..processing.grouping import collate_grouped
    from .objectives import objective_inputs

    cells, pad = groups.spec.num_cells, runner.processor.tokenizer.pad_token_id
    out = {key: [] for key in ("correct", "blank_correct", "kinds", "targets", "group_of", "exact", "texts")}
    with torch.no_grad():
        for batch_rows in _batches(len(groups), runner.batch_size):
            samples = [groups[i] for i in range(len(groups))[batch_rows]]
            batch = collate_grouped(samples, pad_token_id=pad)
            if len(batch["index"]) == 0:
                continue
            batch = {k: v.to(runner.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            wanted = gitm_classes(batch["gitm_segment_targets"], cells)
            scored = batch["gitm_segment_targets"] != -100
            logits = runner.model(**objective_inputs("gitm", {"gitm": batch}, {})).gitm_logits
            hits = (logits.argmax(dim=-1) == wanted) | ~scored
            # The blank-canvas floor: the same texts, every cell background grey.
            grey = runner.background_pixel.view(1, -1, 1, 1).to(batch["pixel_values"].dtype)
            blank = dict(batch, pixel_values=torch.ones_like(batch["pixel_values"]) * grey)
            blank_logits = runner.model(**objective_inputs("gitm", {"gitm": blank}, {})).gitm_logits
            out["blank_correct"] += (blank_logits.argmax(dim=-1) == wanted)[scored].float().cpu().tolist()
            first = len(out["exact"])
            rows_in_batch = torch.arange(first, first + hits.shape[0], device=hits.device)
            out["group_of"] += rows_in_batch[:, None].expand_as(hits)[scored].cpu().tolist()
            out["exact"] += hits.all(dim=1).float().cpu().tolist()
            out["correct"] += hits[scored].float().cpu().tolist()
            out["kinds"] += batch["gitm_segment_kinds"][scored].cpu().tolist()
            out["targets"] += wanted[scored].cpu().tolist()
            out["texts"] += [text for sample in samples if "group" in sample for text in sample["group"].segments]
    for key in ("correct", "blank_correct", "kinds", "targets", "group_of"):
        out[key] = np.asarray(out[key])
    return out


def _grouped_figures(scored, cells, text_only, grid, settings) -> dict:
    """The grouped-matching comparison block: scores, floors and differences, every interval over groups."""
    from .evaluation import GITM_KINDS

    correct, kinds, targets, group_of = (scored[k] for k in ("correct", "kinds", "targets", "group_of"))
    exact = scored["exact"]

    def per_group(values, chosen=None):
        """(sum of `values` over each group's chosen segments, their number): the segments of one group are not
        independent, so every interval resamples groups."""
        weights = np.ones(correct.size) if chosen is None else chosen.astype(float)
        return (
            np.bincount(group_of, weights=values * weights, minlength=len(exact)),
            np.bincount(group_of, weights=weights, minlength=len(exact)),
        )

    of_kind = {kind: kinds == code for kind, code in GITM_KINDS.items()}
    share = np.bincount(targets, minlength=cells + 1) / targets.size
    majority = (targets == share.argmax()).astype(float)  # what always answering the most frequent target scores
    uniform = np.full(correct.size, 1.0 / (cells + 1))
    score = {
        "accuracy": cluster_mean_figure(*per_group(correct), settings),
        **{
            f"accuracy_{kind}": cluster_mean_figure(*per_group(correct, chosen), settings)
            for kind, chosen in of_kind.items()
        },
        "exact_match": mean_figure(exact, settings),
    }
    floor_values = {
        "chance_uniform": uniform,
        "chance_majority": majority,
        "blank_canvas": scored["blank_correct"],
        "text_only": text_only,
    }
    floors = {
        name: {"accuracy": cluster_mean_figure(*per_group(values), settings)} for name, values in floor_values.items()
    }
    differences = {
        name: cluster_difference(per_group(values), per_group(correct), settings, "accuracy")
        for name, values in floor_values.items()
    }
    hard_minus_easy = cluster_difference(
        per_group(correct, of_kind["easy"]),
        per_group(correct, of_kind["hard"]),
        settings,
        "accuracy (hard - easy distractors)",
    )
    return comparison(
        correct.size,
        "accuracy",
        score,
        floors,
        differences,
        {"accuracy": correct},
        n_groups=len(exact),
        grid={**grid},
        hard_minus_easy=hard_minus_easy,
        segments_per_kind={kind: int(chosen.sum()) for kind, chosen in of_kind.items()},
    )


# ------------------------------------------------------------------------------------------------------------------
# Running suites
# ------------------------------------------------------------------------------------------------------------------


def eval_set_sizes(suites: Sequence[str], items_per_phenomenon: int, world: sw.WorldConfig) -> dict[str, int]:
    """Items to draw for the chosen suites (eval_sets.default_sizes for the sets they need, zero for the others)."""
    defaults = es.default_sizes(items_per_phenomenon, world)
    sizes = dict.fromkeys(es.SET_NAMES, 0)
    for suite in suites:
        for name in SUITE_SETS[suite]:
            sizes[name] = defaults[name]
    return sizes


def run_synthetic(
    runner: Runner,
    suites: Sequence[str],
    sets: Mapping,
    pair_counts: Mapping | None,
    settings: Settings,
    log=None,
    objectives: Sequence[str] | None = None,
    run_config: Mapping | None = None,
    items_per_phenomenon: int = 200,
) -> dict:
    """The chosen suites on evaluation sets of the synthetic world; {suite: results}. ``objectives``: the run's
    pretraining objectives when known (the MIM part of ``crossmodal`` needs a trained MIM head, ``gitm`` a trained
    grouped-matching head); ``run_config``: the run's config (the grid grouped matching was trained on);
    ``gitm`` draws ``GITM_GROUPS_PER_ITEM * items_per_phenomenon`` groups."""
    results = {}
    for suite in suites:
        started = time.perf_counter()
        if suite == "foils":
            items = list(sets["foils"])
            bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
            world = world_from_dict(sets.meta["world_config"], "evaluation world")
            results[suite] = run_foils(
                runner,
                bank,
                FoilRows.from_items(items, np.arange(len(items))),
                settings,
                text_floor_foil_pairs(world, items),
            )
        elif suite == "winoground":
            items = list(sets["winoground"])
            bank = ImageBank(scenes=[s for item in items for s in item.scenes], image_size=runner.image_size)
            ids = np.arange(2 * len(items)).reshape(-1, 2)
            results[suite] = run_winoground(
                runner, bank, ids, [item.captions for item in items], [item.phenomenon for item in items], settings
            )
        elif suite == "probes":
            results[suite] = run_probes(runner, sets, settings)
        elif suite == "crossmodal":
            results[suite] = run_crossmodal(runner, sets, settings, objectives)
        elif suite == "grounding":
            results[suite] = run_grounding(runner, sets, settings)
        elif suite == "frequency":
            results[suite] = run_frequency(runner, sets, pair_counts or {}, settings)
        elif suite == "itm":
            world = world_from_dict(sets.meta["world_config"], "evaluation world")
            results[suite] = run_matching(
                runner, world, GITM_GROUPS_PER_ITEM * items_per_phenomenon, settings, objectives
            )
        elif suite == "gitm":
            world = world_from_dict(sets.meta["world_config"], "evaluation world")
            results[suite] = run_grouped_matching(
                runner,
                world,
                GITM_GROUPS_PER_ITEM * items_per_phenomenon,
                gitm_settings(run_config),
                settings,
                objectives,
            )
        else:
            raise ConfigError(f"--suite={suite!r}: expected one of {SUITES} or 'all'")
        if log:
            log(f"{suite}: {time.perf_counter() - started:.1f} s")
    return results


READERS = {
    "valse": readers.read_valse,
    "sugarcrepe": readers.read_sugarcrepe,
    "aro": readers.read_aro,
    "winoground": readers.read_winoground,
    "probing": readers.read_probing_csv,
}


def read_benchmark(name: str, path: str, image_dir: str) -> tuple[list, list[dict], int]:
    """(usable items, skipped records [{"id", "reason"}], records read) of a benchmark file: records with a missing
    image are skipped by the reader, records whose image cannot be opened here."""
    if name not in READERS:
        raise ConfigError(f"--benchmark={name!r}: expected one of {tuple(READERS)}")
    if not path or not os.path.isfile(path):
        raise ConfigError(f"--benchmark-file={path!r}: expected an existing {name} file")
    if not image_dir or not os.path.isdir(image_dir):
        raise ConfigError(f"--image-dir={image_dir!r}: expected the folder of the benchmark's images")
    try:
        read = READERS[name](path, image_dir)
    except ValueError as error:  # a malformed record: the reader names the file and the record
        raise ConfigError(f"--benchmark-file: {error}") from None
    skipped = [{"id": entry.id, "reason": entry.reason} for entry in read.skipped]
    items = []
    for item in read.items:
        paths = item.image_paths if hasattr(item, "image_paths") else [item.image_path]
        problem = next((p for p in map(unreadable_image, paths) if p), None)
        if problem:
            skipped.append({"id": item.id, "reason": problem})
        else:
            items.append(item)
    return items, skipped, len(read.items) + len(read.skipped)


def run_benchmark(runner: Runner, name: str, items: Sequence, settings: Settings) -> dict:
    """The suite of benchmark ``name`` on its items; {suite: results}."""
    suite = BENCHMARKS[name]
    minimum = 4 if suite == "probes" else 2
    if len(items) < minimum:
        raise ValueError(f"{name}: {len(items)} usable items; the {suite} suite needs at least {minimum}")
    if suite == "winoground":
        paths = list(dict.fromkeys(p for item in items for p in item.image_paths))
        index = {p: k for k, p in enumerate(paths)}
        bank = ImageBank(paths=paths, image_size=runner.image_size)
        ids = np.asarray([[index[p] for p in item.image_paths] for item in items])
        return {
            suite: run_winoground(
                runner,
                bank,
                ids,
                [tuple(item.captions) for item in items],
                [item.collapsed_tag or item.tag for item in items],
                settings,
            )
        }
    boxes = [tuple(item.meta["bbox"]) if "bbox" in item.meta else None for item in items]
    bank = ImageBank(paths=[item.image_path for item in items], boxes=boxes, image_size=runner.image_size)
    if suite == "probes":
        return {suite: run_benchmark_probes(runner, items, bank, settings)}
    return {suite: run_foils(runner, bank, FoilRows.from_items(items, np.arange(len(items))), settings)}


# ------------------------------------------------------------------------------------------------------------------
# results.json: cleaning, validation, summary
# ------------------------------------------------------------------------------------------------------------------


def json_ready(value):
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as None (strict JSON)."""
    return strict_json.finite(value)


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return json.load(handle)


def validate_json(instance, schema: Mapping, root: Mapping | None = None) -> list[str]:
    """Errors of ``instance`` against ``schema`` (JSON Schema 2020-12, checked by `jsonschema`), each as
    "<JSON path>: <message>", in path order; an empty list means valid. ``root`` is the document whose ``$defs`` the
    references of a sub-schema point to (``#/$defs/...``)."""
    if root is not None and "$defs" in root:
        schema = {**schema, "$defs": root["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda error: [str(p) for p in error.absolute_path])
    return [f"{error.json_path}: {error.message}" for error in errors]


def _fmt(fig: Mapping | None, signed: bool = False) -> str:
    if not fig or fig.get("value") is None:
        return "-"
    value = f"{fig['value']:+.3f}" if signed else f"{fig['value']:.3f}"
    if fig.get("low") is None:
        return value
    return f"{value} [{fig['low']:.3f}, {fig['high']:.3f}]"


def _summary_rows(results: Mapping) -> list[tuple]:
    """(suite, item, figure, score, floor name, floor value, score - floor) rows of the headline figures."""
    rows = []

    def add(suite, item, block):
        if not block or "score" not in block:
            return
        name = block["headline"]
        score = block["score"].get(name) or next(iter(block["score"].values()))
        floors = list(block["floors"]) or [None]
        for k, floor in enumerate(floors):
            floor_fig = (
                None
                if floor is None
                else (block["floors"][floor].get(name) or next(iter(block["floors"][floor].values())))
            )
            rows.append(
                (
                    suite if k == 0 else "",
                    item if k == 0 else "",
                    name if k == 0 else "",
                    _fmt(score) if k == 0 else "",
                    floor or "-",
                    _fmt(floor_fig) if floor else "-",
                    _fmt(block["differences"].get(floor), signed=True) if floor else "-",
                )
            )

    suites = results.get("suites", {})
    for suite in ("foils", "winoground"):
        for item, block in suites.get(suite, {}).get("phenomena", {}).items():
            add(suite, item, block)
    for task, block in suites.get("probes", {}).get("tasks", {}).items():
        headline = block["headline"]
        add("probes", f"{task} ({headline['representation']}, layer {headline['layer']})", headline)
    crossmodal = suites.get("crossmodal", {})
    for item, block in crossmodal.get("masked_word", {}).items():
        add("crossmodal", f"masked word: {item}", block)
    if "score" in crossmodal.get("mim", {}):
        add("crossmodal", "MIM loss", crossmodal["mim"])
    grounding = suites.get("grounding", {})
    for item in ("pointing", "occlusion"):
        add("grounding", item, grounding.get(item))
    frequency = suites.get("frequency", {})
    if frequency:
        slope = frequency["slope"]
        add(
            "frequency",
            "slope per decade",
            {
                "headline": "acc_r",
                "score": {"acc_r": slope["score"]},
                "floors": {k: {"acc_r": v} for k, v in slope["floors"].items()},
                "differences": slope["differences"],
            },
        )
        for bucket in frequency["buckets"]:
            add(
                "frequency", f"bucket {bucket['bucket']} ({bucket['count_low']:.0f}-{bucket['count_high']:.0f})", bucket
            )
        add("frequency", "held-out pairs", frequency.get("held_out"))
    add("itm", "matched or not", suites.get("itm"))
    gitm = suites.get("gitm", {})
    if "score" in gitm:
        add("gitm", f"{gitm['grid']['gitm_rows']}x{gitm['grid']['gitm_cols']} {gitm['grid']['gitm_mode']}", gitm)
        add(
            "gitm",
            "hard - easy distractors",
            {"headline": "accuracy", "score": {"accuracy": gitm["hard_minus_easy"]}, "floors": {}, "differences": {}},
        )
    return rows


def summary_table(results: Mapping) -> str:
    """A readable table of the headline figures: score [95 % CI], each floor, score - floor [95 % CI]."""
    header = ("suite", "item", "figure", "score [95% CI]", "floor", "floor value", "score - floor [95% CI]")
    rows = [header] + _summary_rows(results)
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = results.get("item_counts", {})
    lines.append("")
    lines.append("items: " + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int)))
    benchmark = results.get("benchmark")
    if benchmark:
        lines.append(
            f"benchmark {benchmark['name']}: {benchmark['n_items']} of {benchmark['n_records']} records "
            f"evaluated, {benchmark['n_skipped']} skipped {benchmark['skipped_by_reason']}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# evaluate() and the CLI
# ------------------------------------------------------------------------------------------------------------------


def _code_version() -> str:
    from .pretrain import code_version

    return code_version()


def run_objectives(record: Mapping | None) -> list[str] | None:
    """The pretraining objectives named in a run record ('mlm,itm:0.5' -> ['mlm', 'itm']), None when unknown."""
    text = ((record or {}).get("config") or {}).get("objectives")
    if not isinstance(text, str):
        return None
    return [part.split(":")[0].strip() for part in text.split(",") if part.strip()]


def expand_suites(suites: Sequence[str]) -> list[str]:
    """Suite names in run order; "all" is every suite."""
    chosen = []
    for name in suites:
        if name == "all":
            chosen += SUITES
        elif name in SUITES:
            chosen.append(name)
        else:
            raise ConfigError(f"--suite={name!r}: expected one of {SUITES} or 'all'")
    return list(dict.fromkeys(chosen))


def evaluate(
    model_dir: str,
    suites: Sequence[str] = ("all",),
    output: str | None = None,
    items_per_phenomenon: int = 200,
    settings: Settings = Settings(),
    world_config: str | None = None,
    eval_sets_file: str | None = None,
    benchmark: str | None = None,
    benchmark_file: str | None = None,
    image_dir: str | None = None,
    device: str | None = None,
    log=print,
) -> dict:
    """Run the suites (or a real benchmark) on the model in ``model_dir``; write ``output`` and return the results."""
    chosen = _check_request(suites, items_per_phenomenon, benchmark, benchmark_file, image_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path, run_dir = resolve_model_dir(model_dir)
    record = read_run_record(run_dir) if run_dir else None
    world = None if benchmark else _world_for(model_dir, world_config, record, run_dir)
    model, processor = load_model(model_path, device)
    runner = Runner(model, processor, device, settings.batch_size)
    started = time.perf_counter()
    results = _results_header(model_dir, model_path, record, device, settings)
    if benchmark:
        _add_benchmark(results, runner, benchmark, benchmark_file, image_dir, settings, log)
    else:
        sets = _synthetic_sets(chosen, world, runner, eval_sets_file, items_per_phenomenon)
        _add_synthetic(results, runner, chosen, world, sets, record, items_per_phenomenon, settings, log)
    results["seconds"] = round(time.perf_counter() - started, 2)
    results = json_ready(results)
    errors = validate_json(results, load_schema())
    if errors:
        raise RuntimeError("results do not follow training/results_schema.json:\n" + "\n".join(errors[:20]))
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as handle:
            strict_json.dump(results, handle, indent=1)
    return results


def _check_request(suites, items_per_phenomenon, benchmark, benchmark_file, image_dir) -> list[str]:
    """The chosen suites, after checking the request (before any work)."""
    _expect(
        isinstance(items_per_phenomenon, int) and items_per_phenomenon >= 4,
        "--items-per-phenomenon",
        items_per_phenomenon,
        "an integer >= 4 (a quick run a few hundred, a full run thousands)",
    )
    chosen = expand_suites(suites)
    if benchmark and benchmark not in BENCHMARKS:
        raise ConfigError(f"--benchmark={benchmark!r}: expected one of {tuple(BENCHMARKS)}")
    if benchmark and tuple(suites) != ("all",) and chosen != [BENCHMARKS[benchmark]]:
        raise ConfigError(
            f"--suite={','.join(suites)}: --benchmark {benchmark} runs the "
            f"{BENCHMARKS[benchmark]!r} suite; leave --suite out or give that one"
        )
    if benchmark:
        if not benchmark_file or not os.path.isfile(benchmark_file):
            raise ConfigError(f"--benchmark-file={benchmark_file!r}: expected an existing {benchmark} file")
        if not image_dir or not os.path.isdir(image_dir):
            raise ConfigError(f"--image-dir={image_dir!r}: expected the folder of the benchmark's images")
    return chosen


def _world_for(model_dir, world_config, record, run_dir):
    """The synthetic world the model was pretrained on: --world-config, else the run's run.yaml."""
    if world_config:
        return load_world_file(world_config)
    if record:
        return world_from_run_config(record["config"], os.path.join(run_dir, "run.yaml"))
    raise ConfigError(
        f"--world-config: {model_dir!r} has no run.yaml inside or beside it; give "
        f"--world-config FILE (a run.yaml, a run config or WorldConfig fields)"
    )


def _results_header(model_dir, model_path, record, device, settings) -> dict:
    """results.json before any suite ran: what was evaluated, with which code and settings."""
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "model_dir": os.path.abspath(model_dir),
        "model_path": os.path.abspath(model_path),
        "code_version": _code_version(),
        "model_code_version": record.get("code_version") if record else None,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "config": record["config"] if record else None,
        "settings": settings.to_dict(),
        "seeds": {"evaluation": settings.seed},
        "world_config": None,
        "eval_world_config": None,
        "item_counts": {},
        "skipped": {},
        "benchmark": None,
        "suites": {},
    }


def _add_benchmark(results, runner, benchmark, benchmark_file, image_dir, settings, log) -> None:
    """A real benchmark's file read (skipped records counted, listed and their reasons tallied) and its suite run."""
    items, skipped, records = read_benchmark(benchmark, benchmark_file, image_dir)
    reasons = Counter(entry["reason"].split(":")[0] for entry in skipped)
    results["benchmark"] = {
        "name": benchmark,
        "file": os.path.abspath(benchmark_file),
        "image_dir": os.path.abspath(image_dir),
        "n_records": records,
        "n_items": len(items),
        "n_skipped": len(skipped),
        "skipped_by_reason": dict(reasons),
        "skipped": skipped[:100],
    }
    for entry in skipped[:5]:
        log(f"skipped {entry['id']}: {entry['reason']}")
    results["item_counts"] = {BENCHMARKS[benchmark]: len(items)}
    results["suites"] = run_benchmark(runner, benchmark, items, settings)


def _synthetic_sets(chosen, world, runner, eval_sets_file, items_per_phenomenon):
    """The evaluation sets: read from --eval-sets (checked against the model and the suites) or built."""
    if not eval_sets_file:
        sizes = eval_set_sizes(chosen, items_per_phenomenon, world.config)
        return es.build_eval_sets(world.config, sizes, image_size=runner.image_size, patch_size=runner.patch_size)
    try:
        sets = es.load_eval_sets(eval_sets_file)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--eval-sets={eval_sets_file!r}: {error}") from None
    if sets.meta.get("patch_size") != runner.patch_size or sets.meta.get("image_size") != runner.image_size:
        raise ConfigError(
            f"--eval-sets={eval_sets_file!r}: built for {sets.meta.get('image_size')} px images "
            f"in {sets.meta.get('patch_size')} px patches; the model takes "
            f"{runner.image_size} px in {runner.patch_size} px patches"
        )
    for suite in chosen:
        for name in SUITE_SETS[suite][:1]:  # held-out items are optional
            if not sets.get(name):
                raise ConfigError(
                    f"--eval-sets={eval_sets_file!r}: holds no {name!r} items, which the {suite} suite needs"
                )
    return sets


def _add_synthetic(results, runner, chosen, world, sets, record, items_per_phenomenon, settings, log) -> None:
    """The synthetic suites run on `sets`, with the world, seeds and item counts they used."""
    pair_counts = world.pair_counts() if "frequency" in chosen else None
    results["world_config"] = {
        "source": world.source,
        "training_scenes": list(world.training_scenes),
        **world.config.to_dict(),
    }
    results["eval_world_config"] = sets.meta.get("world_config")
    results["seeds"].update(
        {
            "world": world.config.seed,
            "eval_world": (sets.meta.get("world_config") or {}).get("seed"),
            "eval_seed_offset": sets.meta.get("seed_offset"),
        }
    )
    results["item_counts"] = {name: len(items) for name, items in sets.items()}
    results["skipped"] = dict(sets.skipped)
    results["settings"]["items_per_phenomenon"] = items_per_phenomenon
    config = record["config"] if record else None
    objectives = run_objectives(record)
    results["suites"] = run_synthetic(
        runner, chosen, sets, pair_counts, settings, log, objectives, config, items_per_phenomenon
    )


@dataclass
class EvaluateArguments:
    """`vlp evaluate MODEL_DIR --output FILE`: the options, parsed by `HfArgumentParser`."""

    model_dir: str = field(metadata={"help": "a `vlp pretrain` run folder (run.yaml, model/) or a saved model folder"})
    output: str = field(metadata={"help": "where to write results.json"})
    suite: str = field(default="all", metadata={"help": f"comma-separated suites from {', '.join(SUITES)}, or 'all'"})
    items_per_phenomenon: int = field(
        default=200,
        metadata={
            "help": "items per foil phenomenon / Winoground phenomenon / probe task, grounding items; frequency "
            "items per pair are a 64th of it (a full run thousands)"
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seed of the bootstrap, mismatched images, occlusion and MIM draws and probes; the items "
            "themselves come from the world's seed, identical for every model"
        },
    )
    world_config: str | None = field(
        default=None,
        metadata={
            "help": "the pretraining world: a run.yaml, a run config or WorldConfig fields (default: run.yaml of "
            "MODEL_DIR or beside it)"
        },
    )
    eval_sets: str | None = field(
        default=None, metadata={"help": "evaluation sets saved with eval_sets.save_eval_sets (instead of drawing)"}
    )
    benchmark: str | None = field(
        default=None, metadata={"help": f"a real benchmark instead of the synthetic world: {', '.join(BENCHMARKS)}"}
    )
    benchmark_file: str | None = field(
        default=None,
        metadata={"help": "the benchmark's file (VALSE/SugarCrepe/ARO json, Winoground examples.jsonl, probing csv)"},
    )
    image_dir: str | None = field(default=None, metadata={"help": "the folder of the benchmark's images"})
    batch_size: int = field(default=64, metadata={"help": "rows per forward pass"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples"})
    occlusion: str = field(
        default="mask",
        metadata={"help": "hide patches with the model's 'mask' embedding or 'blank' pixels (background grey)"},
    )
    relevance_layers: str = field(
        default="-1", metadata={"help": "layers whose attention points (comma-separated; -1 the last; averaged)"}
    )
    device: str | None = field(default=None, metadata={"help": "torch device (default cuda when available, else cpu)"})


EVALUATE_DESCRIPTION = (
    "Run the evaluation suite on a pretrained model: zero-shot foils, Winoground pairs, probes, cross-modal use, "
    "grounding and concept frequency on the synthetic world (or a real benchmark), each beside its language-bias "
    "floor. Writes results.json and prints a summary."
)


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected comma-separated integers, e.g. '-1' or '0,1'") from None
    _expect(bool(values), name, text, "at least one layer index")
    return values


def cli(argv: Sequence[str]) -> dict:
    """``vlp evaluate MODEL_DIR --suite ... --output results.json [...]``."""
    args = parse_command(EvaluateArguments, argv, "vlp evaluate", EVALUATE_DESCRIPTION, positional=("model_dir",))
    if args.benchmark and not (args.benchmark_file and args.image_dir):
        raise ConfigError(f"--benchmark {args.benchmark}: expected --benchmark-file FILE and --image-dir DIR too")
    if not args.benchmark and (args.benchmark_file or args.image_dir):
        raise ConfigError("--benchmark-file/--image-dir: expected --benchmark NAME beside them")
    suites = tuple(part.strip() for part in args.suite.split(",") if part.strip()) or ("all",)
    settings = Settings(
        seed=args.seed,
        batch_size=args.batch_size,
        n_resamples=args.n_resamples,
        occlusion=args.occlusion,
        relevance_layers=_int_list(args.relevance_layers, "--relevance-layers"),
    )

    def log(message):
        print(message, file=sys.stderr, flush=True)

    results = evaluate(
        args.model_dir,
        suites,
        args.output,
        args.items_per_phenomenon,
        settings,
        args.world_config,
        args.eval_sets,
        args.benchmark,
        args.benchmark_file,
        args.image_dir,
        args.device,
        log,
    )
    print(summary_table(results))
    print(f"\nwrote {args.output} ({results['seconds']:.0f} s)")
    return results


__all__ = [
    "BENCHMARKS",
    "SUITES",
    "FoilRows",
    "ImageBank",
    "Runner",
    "Settings",
    "cli",
    "derangement",
    "evaluate",
    "match_scores",
    "occlusion_masks",
    "pointing_hits",
    "representations",
    "run_benchmark",
    "run_synthetic",
    "summary_table",
    "validate_json",
]
