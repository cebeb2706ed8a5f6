"""What the finetuning tasks share: `FinetuneSettings`, the `TrainingArguments` they build, the head optimizer,
loading a checkpoint (or fresh weights) and its processor, saving, and results.json."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from ...modeling_vlp import VLPForQuestionAnswering
from ...processing import strict_json
from ...processing.processing_vlp import VLPProcessor
from ..config import ConfigError

VQA_VARIANTS = ("pretrained", "question_only", "random_init")
RETRIEVAL_VARIANTS = ("pretrained", "random_init")
CAPTION_VARIANTS = ("pretrained", "blank_image", "random_init")
RESULTS_FILE = "results.json"


@dataclass
class FinetuneSettings:
    """Trainer settings shared by the three tasks (one value for every variant of a comparison).

    `head_lr_multiplier` scales the learning rate of every parameter outside the encoder `vlp` (ViLT trains its VQA
    head at 10 x the encoder's rate); at 1 the Trainer builds its own AdamW.
    """

    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    head_lr_multiplier: float = 1.0
    seed: int = 0
    max_length: int | None = None
    logging_steps: int = 50

    def __post_init__(self):
        checks = (
            ("epochs", self.epochs > 0, "> 0"),
            (
                "max_steps",
                isinstance(self.max_steps, int) and (self.max_steps == -1 or self.max_steps > 0),
                "-1 (use epochs) or a positive integer",
            ),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an integer >= 1"),
            ("eval_batch_size", isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1, "an integer >= 1"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "[0, 1)"),
            ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
            ("head_lr_multiplier", self.head_lr_multiplier > 0, "> 0"),
            (
                "max_length",
                self.max_length is None or (isinstance(self.max_length, int) and self.max_length >= 2),
                "None or an integer >= 2",
            ),
            ("logging_steps", isinstance(self.logging_steps, int) and self.logging_steps >= 1, "an integer >= 1"),
        )
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is out of range: expected {allowed}")


#: Default settings per task. VQA follows ViLT's recipe of a 10 x learning rate for the new answer head, which on the
#: synthetic set learns to use the image in far fewer steps; retrieval and captioning start from pretrained heads.
TASK_SETTINGS = {
    "vqa": FinetuneSettings(epochs=10.0, learning_rate=1e-3, head_lr_multiplier=10.0),
    "retrieval": FinetuneSettings(),
    "caption": FinetuneSettings(),
}


def resolve_model_dir(model_dir: str) -> str:
    """A folder with config.json, or a `vlp pretrain` run folder whose model is under `model/`."""
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        return model_dir
    inner = os.path.join(model_dir, "model")
    if os.path.isfile(os.path.join(inner, "config.json")):
        return inner
    raise ConfigError(f"MODEL_DIR={model_dir!r} has no config.json (nor model/config.json): expected a checkpoint")


def training_arguments(output_dir: str, settings: FinetuneSettings, **overrides) -> TrainingArguments:
    """TrainingArguments of one finetuning run: no checkpoints, no reporting, no hub, the raw columns kept."""
    values = dict(
        output_dir=output_dir,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,
        max_grad_norm=settings.max_grad_norm,
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.accelerator.is_available(),  # torch warns about pinning without an accelerator
        disable_tqdm=True,
        seed=settings.seed,
        data_seed=settings.seed,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def head_optimizer(model, settings):
    """AdamW with the encoder at `learning_rate` and the task heads at `head_lr_multiplier` times it; no weight
    decay on biases and LayerNorm weights (as the Trainer's own AdamW)."""
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        head = not name.startswith("vlp.")
        decay = parameter.ndim >= 2 and "LayerNorm" not in name and "layernorm" not in name
        groups.setdefault((head, decay), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": settings.weight_decay if decay else 0.0,
                "lr": settings.learning_rate * (settings.head_lr_multiplier if head else 1.0),
            }
            for (head, decay), params in groups.items()
        ],
        lr=settings.learning_rate,
    )


class TemperatureClampCallback(TrainerCallback):
    """Holds the model's learnt ITC temperature in its range after every optimizer step (`clamp_temperature_`)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None and hasattr(model, "clamp_temperature_"):
            model.clamp_temperature_()


def run_trainer(model, output_dir, settings, train_dataset, collator, **overrides):
    """Finetune with a plain Trainer; returns (trainer, {train_loss, train_seconds, train_steps})."""
    optimizers = (head_optimizer(model, settings), None) if settings.head_lr_multiplier != 1 else (None, None)
    trainer = Trainer(
        model=model,
        args=training_arguments(output_dir, settings, **overrides),
        train_dataset=train_dataset,
        data_collator=collator,
        optimizers=optimizers,
        callbacks=[TemperatureClampCallback()],
    )
    start = time.perf_counter()
    result = trainer.train()
    return trainer, {
        "train_loss": float(result.training_loss),
        "train_seconds": time.perf_counter() - start,
        "train_steps": int(result.global_step),
    }


def load_variant(model_class, model_dir, variant, seed, **config_updates):
    """The task model from the checkpoint (pretrained variants), or with the same config and fresh weights."""
    set_seed(seed)
    if variant == "random_init":
        config = model_class.config_class.from_pretrained(model_dir, **config_updates)
        return model_class(config)
    return model_class.from_pretrained(model_dir, **config_updates)


def column_of(rows, key):
    """One column of a datasets.Dataset or of a list of dicts, without decoding the other columns."""
    return list(rows[key]) if hasattr(rows, "column_names") else [row[key] for row in rows]


def write_results(output_dir, results):
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        strict_json.dump(results, handle, indent=2)
    return path


def save_finetuned(model, processor, output_dir):
    """save_pretrained of the finetuned model and its processor under output_dir/model (loadable without VLP)."""
    folder = os.path.join(output_dir, "model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def load_processor(model_dir, image_size=None):
    """The checkpoint's processor; with `image_size`, resizing images to that side instead (finetuning at a higher
    resolution than pretraining, as ALBEF and BLIP do: the position grid is interpolated to the larger patch grid)."""
    processor = VLPProcessor.from_pretrained(model_dir)
    if image_size is not None:
        patch_size = VLPForQuestionAnswering.config_class.from_pretrained(model_dir).patch_size
        if not isinstance(image_size, int) or image_size < patch_size or image_size % patch_size:
            raise ConfigError(
                f"image_size={image_size!r} is out of range: expected a positive multiple of the "
                f"model's patch_size={patch_size}"
            )
        processor.image_processor.size = {"height": image_size, "width": image_size}
    return processor


def processor_image_size(processor):
    """The side images are resized to (synthetic data is rendered at it)."""
    return int(processor.image_processor.size["height"])


def check_variants(variants, allowed):
    variants = tuple(variants)
    unknown = [v for v in variants if v not in allowed]
    if unknown or not variants:
        raise ConfigError(f"variants {unknown or 'none given'}: expected names from {allowed}")
    return variants
