"""Pretraining configuration: dataclasses parsed by `HfArgumentParser` from a YAML file plus `--key value` overrides.

Every value is checked before any work starts; a bad one raises `ConfigError` naming the key and the allowed range.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

OBJECTIVES = ("mlm", "itm", "mim", "itc", "wra", "gitm")
GITM_MODES = ("resize", "full")
GITM_DISTRACTORS = ("easy", "hard", "mixed")
ITM_NEGATIVES = ("random", "hard")
MIM_TARGETS = ("pixel", "teacher")
MIM_LOSSES = ("l2", "smooth_l1", "cosine")
MIXING_MODES = ("sum", "sample")
PRECISIONS = ("no", "bf16", "fp16")
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")
MASKING_POLICIES = ("", "random", "high", "low", "hint")
MASKING_TARGETS = ("mlm", "mim")
GUIDANCE_SOURCES = ("model", "ema", "itm")
GUIDANCE_LAYERS = ("last", "mean")
WORD_QUERIES = ("patches", "cls")
PATCH_QUERIES = ("text", "cls")
JOINT_MODES = ("independent", "together", "complementary")
RELEVANCE_SCORINGS = ("attention", "lift")


class ConfigError(ValueError):
    """A configuration key with a value outside its allowed range, or a key that does not exist."""


SOURCE_KINDS = ("shards", "captions", "coco")  # the prefixes of real data sources in `dataset` / `val_dataset`
DEFAULT_MAX_PIXELS = 2**25  # images above this many pixels are skipped (webdataset.DEFAULT_MAX_PIXELS)


@dataclass(frozen=True)
class DataSource:
    """One source of `dataset`: kind 'shapes' (the embedded world), 'folder' (written by `vlp data shapes`),
    'shards' (a WebDataset folder with manifest.json), 'captions' (ALBEF/BLIP json or jsonl) or 'coco' (COCO
    captions json); `root` is the image folder of 'captions' and 'coco'."""

    kind: str
    path: str = ""
    root: str = ""

    @property
    def streaming(self):
        return self.kind == "shards"


def parse_sources(spec, key="dataset"):
    """`dataset` / `val_dataset` as a list of `DataSource`.

    Forms: 'shapes'; a folder; or comma-separated real sources 'shards:DIR', 'captions:FILE@ROOT', 'coco:FILE@ROOT'
    (without '@ROOT' images are relative to the file's folder). A part without a prefix takes the previous part's
    kind ('shards:a,b' is two shard folders). Shards stream; captions and coco are read into memory; the two do
    not mix in one run, and 'shapes' or a folder stand alone.
    """
    parts = [part.strip() for part in str(spec).split(",") if part.strip()]
    _require(bool(parts), key, spec, "'shapes', a folder, or sources such as 'shards:DIR' or 'captions:FILE@ROOT'")
    sources, kind = [], None
    for part in parts:
        prefix, colon, rest = part.partition(":")
        if colon and prefix in SOURCE_KINDS:
            kind, path = prefix, rest.strip()
        elif kind is not None:
            path = part
        elif part == "shapes":
            sources.append(DataSource("shapes"))
            continue
        else:
            sources.append(DataSource("folder", part))
            continue
        _require(bool(path), key, part, f"a path after '{kind}:'")
        root = ""
        if kind != "shards":
            path, _, root = path.rpartition("@") if "@" in path else (path, "", "")
            root = root or os.path.dirname(path)
        sources.append(DataSource(kind, path, root))
    kinds = {source.kind for source in sources}
    if len(sources) > 1 and kinds & {"shapes", "folder"}:
        raise ConfigError(
            f"{key}={spec!r}: 'shapes' and a `vlp data shapes` folder cannot be combined with other "
            f"sources; write them as shards (`vlp data shards --from shapes`) and list 'shards:DIR'"
        )
    if "shards" in kinds and kinds != {"shards"}:
        raise ConfigError(
            f"{key}={spec!r}: shards stream while caption and COCO files are read into memory; "
            f"convert those with `vlp data shards --from captions:FILE@ROOT --out DIR` and list "
            f"every source as shards"
        )
    return sources


def _joined(value):
    """A YAML list of sources or weights as the comma-separated string the command line takes."""
    return ",".join(str(item) for item in value) if isinstance(value, (list, tuple)) else value


def _require(ok, key, value, allowed):
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: expected {allowed}")


@dataclass
class ModelArguments:
    """Transformer size. The vocabulary size comes from the tokenizer."""

    hidden_size: int = field(default=128, metadata={"help": "width of the transformer"})
    num_hidden_layers: int = field(default=2, metadata={"help": "number of transformer blocks"})
    num_attention_heads: int = field(default=4, metadata={"help": "attention heads per block"})
    intermediate_size: int = field(default=512, metadata={"help": "width of the MLP inside each block"})
    image_size: int = field(default=64, metadata={"help": "side of the learned position grid, in pixels"})
    patch_size: int = field(default=8, metadata={"help": "side of one image patch, in pixels"})
    max_position_embeddings: int = field(default=40, metadata={"help": "longest text, in tokens"})
    hidden_dropout_prob: float = field(default=0.0, metadata={"help": "dropout on hidden states"})
    attention_probs_dropout_prob: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    vocab_size: int = field(default=1000, metadata={"help": "vocabulary size of the tokenizer trained on the corpus"})
    mim_target: str = field(
        default="pixel",
        metadata={"help": "MIM targets: 'pixel' (normalized, MAE) or 'teacher' (EMA teacher patch states, iBOT)"},
    )
    mim_loss: str = field(default="l2", metadata={"help": "MIM regression loss: 'l2', 'smooth_l1' or 'cosine'"})
    contrastive_temperature: float = field(default=0.07, metadata={"help": "initial ITC temperature (learnt)"})
    contrastive_min_temperature: float = field(
        default=0.01,
        metadata={
            "help": "lowest ITC temperature: the learnt one is clamped into [min, max] after every optimizer step"
        },
    )
    contrastive_max_temperature: float = field(default=0.5, metadata={"help": "highest ITC temperature"})
    init_from: str | None = field(default=None, metadata={"help": "start from this VLP checkpoint folder"})

    def __post_init__(self):
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "image_size",
            "patch_size",
            "max_position_embeddings",
            "vocab_size",
        ):
            value = getattr(self, key)
            _require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            self.hidden_size,
            f"a multiple of num_attention_heads={self.num_attention_heads}",
        )
        _require(
            self.image_size % self.patch_size == 0,
            "image_size",
            self.image_size,
            f"a multiple of patch_size={self.patch_size}",
        )
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, key)
            _require(0.0 <= value < 1.0, key, value, "[0, 1)")
        _require(self.mim_target in MIM_TARGETS, "mim_target", self.mim_target, f"one of {MIM_TARGETS}")
        _require(self.mim_loss in MIM_LOSSES, "mim_loss", self.mim_loss, f"one of {MIM_LOSSES}")
        _require(
            self.contrastive_min_temperature > 0,
            "contrastive_min_temperature",
            self.contrastive_min_temperature,
            "(0, inf)",
        )
        _require(
            self.contrastive_min_temperature <= self.contrastive_temperature <= self.contrastive_max_temperature,
            "contrastive_temperature",
            self.contrastive_temperature,
            f"[contrastive_min_temperature, contrastive_max_temperature] = "
            f"[{self.contrastive_min_temperature}, {self.contrastive_max_temperature}]",
        )


@dataclass
class DataArguments:
    """The training data (the embedded synthetic world, a folder saved with `vlp data shapes`, caption / COCO files or
    WebDataset shards, see `parse_sources`), its validation data, and how samples become inputs."""

    dataset: str = field(
        default="shapes",
        metadata={
            "help": "'shapes', a folder written by `vlp data shapes`, or real sources separated by commas (or a YAML "
            "list): 'shards:DIR' (WebDataset shards with manifest.json, streamed), 'captions:FILE@ROOT' "
            "(ALBEF/BLIP json or jsonl, images under ROOT), 'coco:FILE@ROOT' (COCO captions json)"
        },
    )
    val_dataset: str = field(
        default="",
        metadata={
            "help": "validation sources, same forms as dataset (the first val_scenes readable samples). '' = shapes: a "
            "separately seeded world; a folder: its last val_scenes rows; captions/coco: the last val_scenes "
            "rows of the sources (split evenly), held out of training; shards: required"
        },
    )
    source_weights: str = field(
        default="",
        metadata={
            "help": "one weight per source, comma-separated: mix the sources in these proportions per epoch "
            "('' = every sample of every source once)"
        },
    )
    samples_per_epoch: int = field(
        default=0, metadata={"help": "with source_weights: samples in one mixed epoch (0 = the sum of the sources)"}
    )
    shuffle_buffer: int = field(
        default=1000,
        metadata={
            "help": "shards: samples per dataloader worker held for shuffling (0 = shard order only); a resume loses "
            "at most one buffer per worker (counted as lost_samples)"
        },
    )
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={"help": "real sources: images with more pixels are skipped (headers only; 0 = no limit)"},
    )
    negative_bank: int = field(
        default=10000,
        metadata={
            "help": "shards: captions of the first readable samples, the pool of ITM negatives and the tokenizer corpus"
        },
    )
    record_samples: bool = field(
        default=False,
        metadata={"help": "debug: list the sample indices each process trains on in samples/rank<R>.jsonl"},
    )
    num_scenes: int = field(default=4000, metadata={"help": "training scenes of the synthetic world"})
    val_scenes: int = field(
        default=500,
        metadata={"help": "validation scenes (a separately seeded world), or validation samples of other sources"},
    )
    world_seed: int = field(default=0, metadata={"help": "seed of the synthetic world"})
    max_objects: int = field(default=3, metadata={"help": "most objects in one scene"})
    zipf_exponent: float = field(
        default=1.0, metadata={"help": "Zipf exponent of colour-shape pair frequencies (0 = uniform)"}
    )
    noise_rate: float = field(default=0.0, metadata={"help": "share of captions replaced by web-like noise"})
    background_noise: float = field(default=0.0, metadata={"help": "strength of the scenes' background noise"})
    held_out_pairs: str = field(
        default="", metadata={"help": "colour-shape pairs kept out, e.g. 'red circle,blue star'"}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "where generated worlds are cached"})
    max_length: int = field(default=32, metadata={"help": "longest caption, in tokens"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of words masked for MLM"})
    itm_probability: float = field(default=0.5, metadata={"help": "share of pairs given a caption that does not hold"})
    mim_probability: float = field(default=0.4, metadata={"help": "share of patches masked for MIM"})
    mim_block: bool = field(default=False, metadata={"help": "block-wise MIM masks (BEiT) instead of random"})
    num_workers: int = field(default=0, metadata={"help": "dataloader worker processes"})
    strict: bool = field(default=False, metadata={"help": "stop at the first unreadable image instead of skipping"})
    gitm_rows: int = field(default=2, metadata={"help": "grouped matching: rows of the image grid"})
    gitm_cols: int = field(default=2, metadata={"help": "grouped matching: columns of the image grid"})
    gitm_mode: str = field(
        default="resize",
        metadata={
            "help": "'resize': the canvas keeps the model's resolution (smaller cells); 'full': each cell keeps it"
        },
    )
    gitm_own_probability: float = field(
        default=0.75,
        metadata={
            "help": "grouped matching: chance that a cell's caption is its own (else a distractor); at 0.5 half the "
            "targets are 'none' and a small model learns that prior long before it matches parts to parts"
        },
    )
    gitm_distractors: str = field(
        default="mixed",
        metadata={
            "help": "'easy' (captions of images outside the grid), 'hard' (foils of the cell's own caption) or 'mixed'"
        },
    )
    gitm_max_length: int = field(default=64, metadata={"help": "grouped matching: longest text of all segments"})

    def held_out(self):
        """`held_out_pairs` as a list of (colour, shape)."""
        pairs = []
        for item in filter(None, (part.strip() for part in self.held_out_pairs.split(","))):
            words = item.replace(":", " ").split()
            _require(len(words) == 2, "held_out_pairs", item, "'colour shape' pairs separated by commas")
            pairs.append(tuple(words))
        return pairs

    def sources(self):
        """`dataset` as a list of `DataSource`."""
        return parse_sources(self.dataset, "dataset")

    def val_sources(self):
        """`val_dataset` as a list of `DataSource` (empty: validation comes from `dataset`, see its help)."""
        return parse_sources(self.val_dataset, "val_dataset") if self.val_dataset.strip() else []

    def streaming(self):
        """Whether the training data streams from shards."""
        return any(source.streaming for source in self.sources())

    def weights(self):
        """`source_weights` as a list of floats (None when empty)."""
        if not str(self.source_weights).strip():
            return None
        try:
            return [float(part) for part in str(self.source_weights).split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"source_weights={self.source_weights!r}: expected comma-separated numbers") from None

    def _check_sources(self):
        self.dataset, self.val_dataset = str(_joined(self.dataset)), str(_joined(self.val_dataset) or "")
        self.source_weights = str(_joined(self.source_weights) or "")
        sources = self.sources()
        val = self.val_sources()
        real = sources[0].kind in SOURCE_KINDS
        weights = self.weights()
        if weights is not None:
            _require(
                real, "source_weights", self.source_weights, "'' unless dataset lists shards, captions or coco sources"
            )
            _require(
                len(weights) == len(sources),
                "source_weights",
                self.source_weights,
                f"one weight per source ({len(sources)} in dataset={self.dataset!r})",
            )
            _require(
                all(math.isfinite(w) and w > 0 for w in weights),
                "source_weights",
                self.source_weights,
                "finite weights > 0",
            )
        if sources[0].streaming:
            _require(
                bool(val),
                "val_dataset",
                self.val_dataset,
                "validation sources for a streaming dataset (e.g. 'shards:VAL_DIR' or 'shapes'): samples "
                "cannot be held out of shards",
            )
        for key in ("samples_per_epoch", "shuffle_buffer", "max_pixels"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value >= 0, key, value, "an integer >= 0")
        _require(
            isinstance(self.negative_bank, int) and self.negative_bank >= 2,
            "negative_bank",
            self.negative_bank,
            "an integer >= 2",
        )

    def __post_init__(self):
        self._check_sources()
        self.held_out()
        for key in ("num_scenes", "val_scenes", "max_objects", "max_length"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        _require(self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")
        _require(self.zipf_exponent >= 0, "zipf_exponent", self.zipf_exponent, "[0, inf)")
        for key in ("noise_rate", "itm_probability", "background_noise"):
            value = getattr(self, key)
            _require(0.0 <= value <= 1.0, key, value, "[0, 1]")
        _require(0.0 < self.mlm_probability <= 1.0, "mlm_probability", self.mlm_probability, "(0, 1]")
        _require(0.0 < self.mim_probability < 1.0, "mim_probability", self.mim_probability, "(0, 1)")
        for key in ("gitm_rows", "gitm_cols", "gitm_max_length"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        _require(
            self.gitm_rows * self.gitm_cols >= 2,
            "gitm_rows",
            self.gitm_rows,
            f"a grid of at least 2 cells with gitm_cols={self.gitm_cols}",
        )
        _require(self.gitm_mode in GITM_MODES, "gitm_mode", self.gitm_mode, f"one of {GITM_MODES}")
        _require(
            self.gitm_distractors in GITM_DISTRACTORS,
            "gitm_distractors",
            self.gitm_distractors,
            f"one of {GITM_DISTRACTORS}",
        )
        _require(0.0 <= self.gitm_own_probability <= 1.0, "gitm_own_probability", self.gitm_own_probability, "[0, 1]")


@dataclass
class PretrainArguments:
    """The optimisation loop, its objectives, logging and checkpoints."""

    output_dir: str = field(default="runs/pretrain", metadata={"help": "run folder: logs, checkpoints, final model"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and every random draw"})
    max_steps: int = field(default=600, metadata={"help": "optimizer steps"})
    per_device_batch_size: int = field(default=32, metadata={"help": "samples per process and micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate of AdamW"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and norms)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "cosine decay floor, as a share of the peak"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    optim: str = field(
        default="adamw_torch_fused",
        metadata={
            "help": "'adamw_torch_fused': PyTorch's AdamW as one fused kernel per step (CPU and CUDA; where the "
            "parameters' device has none, the default below, said in the log); 'adamw_torch': PyTorch's default "
            "AdamW implementation (a loop over parameters on CPU). Same update rule; results differ in the last "
            "bits"
        },
    )
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16'"})
    objectives: str = field(default="mlm,itm", metadata={"help": "comma-separated objectives, name[:weight]"})
    mixing: str = field(default="sum", metadata={"help": "'sum': every objective every step; 'sample': one per step"})
    itm_negatives: str = field(
        default="random",
        metadata={
            "help": "'random': the dataset's negatives (captions of other scenes that do not hold); 'hard': ALBEF's, "
            "drawn in the batch by ITC similarity (texts that hold for the image excluded)"
        },
    )
    teacher_momentum: float = field(default=0.996, metadata={"help": "EMA momentum of the MIM teacher"})
    masking_policy: str = field(
        default="",
        metadata={
            "help": "'' = the collator's fixed-rate random masks (mlm_probability, mim_probability); 'random', 'high', "
            "'low' or 'hint' = per-step policy masking (attention-guided except 'random'), same ratio draws"
        },
    )
    masking_targets: str = field(default="mlm", metadata={"help": "what the policy masks: 'mlm', 'mim' or 'mlm,mim'"})
    guidance_source: str = field(
        default="model",
        metadata={
            "help": "relevance from 'model' (an extra no-grad pass), 'ema' (an EMA teacher's pass) or 'itm' (the ITM "
            "pass of the step, its matched rows; other rows fall back to random)"
        },
    )
    guidance_layers: str = field(default="last", metadata={"help": "attention of the 'last' layer or the 'mean'"})
    word_relevance_from: str = field(
        default="patches",
        metadata={"help": "words are ranked by the attention they receive from the 'patches' or from 'cls'"},
    )
    patch_relevance_from: str = field(
        default="text",
        metadata={
            "help": "patches are ranked by the attention they receive from the caption's words ('text') or 'cls'"
        },
    )
    relevance_scoring: str = field(
        default="lift",
        metadata={
            "help": "rank by the 'attention' received from the queries, or by its 'lift' over the attention received "
            "from every position (discounts attention sinks)"
        },
    )
    joint_masking: str = field(
        default="independent",
        metadata={
            "help": "with mlm,mim: 'independent'; 'together' (mask the patches the masked words point at); "
            "'complementary' (mask patches the visible words point at and the masked words do not)"
        },
    )
    masking_ratio: float = field(
        default=0.0, metadata={"help": "fixed share of words/patches masked in a masked sample (0 = drawn per step)"}
    )
    masking_ratio_min: float = field(default=0.1, metadata={"help": "per-step ratio range, low end (AttMask 0.1)"})
    masking_ratio_max: float = field(default=0.5, metadata={"help": "per-step ratio range, high end (AttMask 0.5)"})
    masking_probability: float = field(default=0.5, metadata={"help": "share of samples masked at all"})
    masking_random_share: float = field(
        default=0.0,
        metadata={"help": "share of the masked positions drawn uniformly at random, the rest by the policy"},
    )
    hint_share: float = field(default=0.1, metadata={"help": "'hint' reveals this share of the masked positions"})
    guidance_warmup_steps: int = field(
        default=0, metadata={"help": "steps that use 'random' (same ratios) before attention guides the masks"}
    )
    log_every: int = field(default=10, metadata={"help": "steps between log lines"})
    eval_every: int = field(default=100, metadata={"help": "steps between validations (0 = only at the end)"})
    eval_batches: int = field(default=8, metadata={"help": "validation batches per validation"})
    save_every: int = field(default=100, metadata={"help": "steps between checkpoints (0 = only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest checkpoint in output_dir"})
    max_nonfinite_steps: int = field(default=5, metadata={"help": "consecutive non-finite losses that stop the run"})
    tensorboard: bool = field(default=True, metadata={"help": "also write TensorBoard event files"})
    progress_bar: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def __post_init__(self):
        for key in (
            "max_steps",
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "log_every",
            "eval_batches",
            "keep_checkpoints",
            "max_nonfinite_steps",
        ):
            value = getattr(self, key)
            _require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        for key in ("warmup_steps", "eval_every", "save_every"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value >= 0, key, value, "an integer >= 0")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "(0, inf)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "[0, inf)")
        _require(0 <= self.adam_beta1 < 1, "adam_beta1", self.adam_beta1, "[0, 1)")
        _require(0 <= self.adam_beta2 < 1, "adam_beta2", self.adam_beta2, "[0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "[0, 1]")
        _require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "[0, inf)")
        _require(self.mixed_precision in PRECISIONS, "mixed_precision", self.mixed_precision, f"one of {PRECISIONS}")
        _require(self.optim in OPTIMIZERS, "optim", self.optim, f"one of {OPTIMIZERS}")
        _require(self.mixing in MIXING_MODES, "mixing", self.mixing, f"one of {MIXING_MODES}")
        _require(self.itm_negatives in ITM_NEGATIVES, "itm_negatives", self.itm_negatives, f"one of {ITM_NEGATIVES}")
        _require(0.0 <= self.teacher_momentum < 1.0, "teacher_momentum", self.teacher_momentum, "[0, 1)")
        weights = self.objective_weights()
        self._check_masking(weights)

    def masking_target_list(self):
        """`masking_targets` as a tuple, e.g. 'mlm,mim' -> ('mlm', 'mim')."""
        return tuple(dict.fromkeys(part.strip() for part in self.masking_targets.split(",") if part.strip()))

    def _check_masking(self, weights):
        _require(
            self.masking_policy in MASKING_POLICIES, "masking_policy", self.masking_policy, f"one of {MASKING_POLICIES}"
        )
        for key, allowed in (
            ("guidance_source", GUIDANCE_SOURCES),
            ("guidance_layers", GUIDANCE_LAYERS),
            ("word_relevance_from", WORD_QUERIES),
            ("patch_relevance_from", PATCH_QUERIES),
            ("joint_masking", JOINT_MODES),
            ("relevance_scoring", RELEVANCE_SCORINGS),
        ):
            _require(getattr(self, key) in allowed, key, getattr(self, key), f"one of {allowed}")
        for key in (
            "masking_ratio",
            "masking_ratio_min",
            "masking_ratio_max",
            "masking_probability",
            "masking_random_share",
            "hint_share",
        ):
            value = getattr(self, key)
            _require(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, key, value, "[0, 1]")
        _require(
            self.masking_ratio_min <= self.masking_ratio_max,
            "masking_ratio_min",
            self.masking_ratio_min,
            f"at most masking_ratio_max={self.masking_ratio_max}",
        )
        _require(
            isinstance(self.guidance_warmup_steps, int) and self.guidance_warmup_steps >= 0,
            "guidance_warmup_steps",
            self.guidance_warmup_steps,
            "an integer >= 0",
        )
        if not self.masking_policy:
            return
        targets = self.masking_target_list()
        _require(
            bool(targets) and set(targets) <= set(MASKING_TARGETS),
            "masking_targets",
            self.masking_targets,
            f"a comma-separated subset of {MASKING_TARGETS}",
        )
        for target in targets:
            _require(
                target in weights,
                "masking_targets",
                self.masking_targets,
                f"objectives that are trained (objectives={self.objectives!r})",
            )
        if self.guidance_source == "itm":
            _require(
                "itm" in weights and self.mixing == "sum",
                "guidance_source",
                "itm",
                "an ITM pass in every step: 'itm' among the objectives and mixing='sum'",
            )
        if self.joint_masking != "independent":
            _require(
                set(targets) == {"mlm", "mim"} and self.patch_relevance_from == "text",
                "joint_masking",
                self.joint_masking,
                "masking_targets='mlm,mim' with patch_relevance_from='text'",
            )

    def objective_weights(self):
        """`objectives` as {name: weight}, e.g. 'mlm,itm:0.5' -> {'mlm': 1.0, 'itm': 0.5}."""
        weights = {}
        for item in filter(None, (part.strip() for part in self.objectives.split(","))):
            name, _, weight = item.partition(":")
            _require(name in OBJECTIVES, "objectives", name, f"names from {OBJECTIVES}")
            try:
                value = float(weight) if weight else 1.0
            except ValueError:
                raise ConfigError(f"objectives: weight {weight!r} of {name!r} is not a number") from None
            _require(value > 0, "objectives", item, "a positive weight")
            weights[name] = value
        _require(bool(weights), "objectives", self.objectives, "at least one objective")
        return weights


ARGUMENT_CLASSES = (ModelArguments, DataArguments, PretrainArguments)


def _field_names():
    return {f.name: cls for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}


def read_yaml(path):
    """The parsed YAML file at `path`; a syntax error becomes one ConfigError line "FILE:LINE:COLUMN: problem"."""
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.safe_load(handle)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            context = getattr(error, "context", None)
            detail = f"{problem} ({context})" if context else problem
            raise ConfigError(f"{where}: invalid YAML: {detail}") from None


def load_yaml(path):
    """A YAML mapping of config keys (flat, or nested under model/data/training/masking)."""
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    loaded = read_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(loaded).__name__}")
    flat = {}
    for key, value in loaded.items():
        if key in ("model", "data", "training", "masking") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def parse_config(config_file=None, overrides=(), values=None):
    """Returns (ModelArguments, DataArguments, PretrainArguments) from a YAML file, a dict and CLI overrides.

    Precedence: dataclass defaults < YAML file < `values` < `--key value` overrides. Unknown keys are errors.
    """
    merged = load_yaml(config_file) if config_file else {}
    merged.update(values or {})
    known = _field_names()
    unknown = sorted(set(merged) - set(known))
    if unknown:
        source = config_file or "the given values"
        raise ConfigError(f"unknown config key(s) in {source}: {', '.join(unknown)}")
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.set_defaults(**merged)
    try:
        parsed = parser.parse_args_into_dataclasses(args=list(overrides), return_remaining_strings=True)
    except SystemExit as error:
        raise ConfigError(f"could not parse overrides {list(overrides)}") from error
    *arguments, remaining = parsed
    if remaining:
        raise ConfigError(f"unknown config key(s) on the command line: {' '.join(remaining)}")
    return tuple(arguments)


def to_dict(arguments):
    """All three dataclasses as one flat, YAML-writable dict."""
    flat = {}
    for item in arguments:
        flat.update(dataclasses.asdict(item))
    return flat
