"""Downstream finetuning through transformers' Trainer: VQA, image-text retrieval and captioning.

`finetune_vqa`, `finetune_retrieval` and `finetune_caption` load a checkpoint with `from_pretrained`, finetune it with a
plain `transformers.Trainer` and a collator from `processing/finetune_collators.py`, evaluate with VLP's local
`evaluate` modules and write `results.json` (and the finetuned model with its processor under `model/`) to the output
folder. Beside the pretrained score they report baselines, so that what pretraining bought is visible:

- `random_init`: the same config and the same finetuning from fresh weights;
- VQA `question_only`: the pretrained checkpoint finetuned and evaluated with every image blanked (a constant image,
  `pixel_values` all zero): what the question alone tells;
- captioning `blank_image`: the same for captions (a caption prior learnt by the same model), and `most_frequent`:
  the most frequent training caption given for every image (no training).

VQA results also hold `floors`, scored on the same questions: `blank_image`, the finetuned pretrained model shown
blank images, and `text_only`, a bag of words trained on the training questions that never sees an image
(`question_only_logits`), each with the pretrained model's paired gain over it (`gain_over_blank_image`,
`gain_over_text_only`).

    vlp finetune vqa RUN/model --output_dir out/vqa                 # synthetic VQA with complementary pairs
    vlp finetune retrieval RUN/model --output_dir out/ret           # the shapes world's captions
    vlp finetune caption RUN/model --output_dir out/cap --num_beams 3
    vlp finetune vqa RUN/model --output_dir out --data vqa2 --train_questions ... --eval_pairs ...
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Literal, get_type_hints

import datasets
import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from ..modeling_vlp import VLPForConditionalGeneration, VLPForImageTextRetrieval, VLPForQuestionAnswering
from ..processing import shapes_world, strict_json
from ..processing.downstream_readers import build_answer_vocabulary, read_karpathy_split, read_vqa_v2, vqa_features
from ..processing.finetune_collators import (
    CaptionCollator,
    CaptionPairs,
    ImageCollator,
    RetrievalCollator,
    VQACollator,
    image_batch,
)
from ..processing.processing_vlp import VLPProcessor
from ..processing.synthetic_vqa import QUESTION_FAMILIES, SyntheticVQAConfig, build_synthetic_vqa_dataset
from .cli_args import parse_command
from .config import ConfigError
from .metrics import load_metric
from .statistics import mean_interval

VQA_VARIANTS = ("pretrained", "question_only", "random_init")
RETRIEVAL_VARIANTS = ("pretrained", "random_init")
CAPTION_VARIANTS = ("pretrained", "blank_image", "random_init")
RESULTS_FILE = "results.json"


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------------


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


def _train(model, output_dir, settings, train_dataset, collator, **overrides):
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


def _load(model_class, model_dir, variant, seed, **config_updates):
    """The task model from the checkpoint (pretrained variants), or with the same config and fresh weights."""
    set_seed(seed)
    if variant == "random_init":
        config = model_class.config_class.from_pretrained(model_dir, **config_updates)
        return model_class(config)
    return model_class.from_pretrained(model_dir, **config_updates)


def _column(rows, key):
    """One column of a datasets.Dataset or of a list of dicts, without decoding the other columns."""
    return list(rows[key]) if hasattr(rows, "column_names") else [row[key] for row in rows]


def _write_results(output_dir, results):
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        strict_json.dump(results, handle, indent=2)
    return path


def _save(model, processor, output_dir):
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


def _image_size(processor):
    """The side images are resized to (synthetic data is rendered at it)."""
    return int(processor.image_processor.size["height"])


def _check_variants(variants, allowed):
    variants = tuple(variants)
    unknown = [v for v in variants if v not in allowed]
    if unknown or not variants:
        raise ConfigError(f"variants {unknown or 'none given'}: expected names from {allowed}")
    return variants


# ---------------------------------------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------------------------------------


def synthetic_vqa_splits(
    num_train_pairs, num_eval_pairs, image_size=64, seed=0, max_objects=3, families=QUESTION_FAMILIES
):
    """Training and evaluation sets of synthetic VQA (separately seeded splits, complementary pairs)."""
    common = dict(seed=seed, image_size=image_size, max_objects=max_objects, families=tuple(families))
    train = build_synthetic_vqa_dataset(SyntheticVQAConfig(num_pairs=num_train_pairs, split="train", **common))
    evaluation = build_synthetic_vqa_dataset(SyntheticVQAConfig(num_pairs=num_eval_pairs, split="val", **common))
    return train, evaluation


def answer_vocabulary(rows, min_count=9):
    """(id2label, label2id) of the answers given at least `min_count` times over all annotators' answers."""
    answers = build_answer_vocabulary(({"answers": a} for a in _column(rows, "answers")), min_count=min_count)
    if not answers:
        raise ConfigError(f"min_answer_count={min_count} leaves no answer in the training set")
    return {i: a for i, a in enumerate(answers)}, {a: i for i, a in enumerate(answers)}


class VQAMetrics:
    """`compute_metrics` for a Trainer evaluating VQA: argmax answers of the eval rows (in their order, as the
    Trainer's sequential evaluation keeps it) scored with the `vqa_accuracy` module (official accuracy, per type,
    complementary-pair accuracy, bootstrap 95 % intervals)."""

    def __init__(self, eval_rows, id2label):
        self.references = [list(a) for a in _column(eval_rows, "answers")]
        names = eval_rows.column_names if hasattr(eval_rows, "column_names") else list(eval_rows[0])
        self.question_types = _column(eval_rows, "question_type") if "question_type" in names else None
        self.answer_types = _column(eval_rows, "answer_type") if "answer_type" in names else None
        self.pair_ids = _column(eval_rows, "pair_id") if "pair_id" in names else None
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.metric = load_metric("vqa_accuracy")

    def answers(self, logits):
        """The predicted answer strings of (N, num_labels) logits."""
        return [self.id2label[int(i)] for i in np.asarray(logits).argmax(axis=-1)]

    def full(self, logits, keep_scores=False):
        """Every figure of the `vqa_accuracy` module (nested per-type dicts included; per-question `scores` only
        with `keep_scores`)."""
        predictions = self.answers(logits)
        if len(predictions) != len(self.references):
            raise ValueError(f"{len(predictions)} predictions for {len(self.references)} evaluation questions")
        pairs = self.pair_ids if self.pair_ids is not None and any(p >= 0 for p in self.pair_ids) else None
        result = self.metric.compute(
            predictions=predictions,
            references=self.references,
            question_types=self.question_types,
            answer_types=self.answer_types,
            pair_ids=pairs,
        )
        if not keep_scores:
            result.pop("scores", None)
        return result

    def __call__(self, eval_prediction):
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        result = self.full(logits)
        flat = {key: value for key, value in result.items() if not isinstance(value, dict)}
        for kind, figures in result.get("per_answer_type", {}).items():
            flat[f"accuracy_{kind.replace('/', '_')}"] = figures["accuracy"]
        return flat


def paired_gain(scores, baseline_scores, name):
    """Mean per-question accuracy difference with a paired percentile bootstrap 95 % interval (the same questions
    resampled for both models), as {name, name_low, name_high}."""
    difference = np.asarray(scores, dtype=np.float64) - np.asarray(baseline_scores, dtype=np.float64)
    low, high = mean_interval(difference)
    return {name: float(difference.mean()), f"{name}_low": low, f"{name}_high": high}


def finetune_vqa(
    model_dir,
    output_dir,
    train_rows=None,
    eval_rows=None,
    *,
    num_train_pairs=1000,
    num_eval_pairs=250,
    data_seed=0,
    max_objects=3,
    families=QUESTION_FAMILIES,
    min_answer_count=9,
    image_size=None,
    variants=VQA_VARIANTS,
    settings=None,
    save_model=True,
    data_name=None,
):
    """Finetune VLPForQuestionAnswering from `model_dir` on VQA rows and report each variant's VQA accuracy.

    Rows (`downstream_readers.VQA_ROW_KEYS`) default to synthetic VQA at the processor's image size: `num_train_pairs`
    and `num_eval_pairs` complementary pairs of the question `families`. The answer vocabulary holds the training
    answers given at least `min_answer_count` times (over all annotators). `image_size` finetunes and evaluates at
    another resolution than the checkpoint's processor (see `load_processor`). Returns the results written to
    output_dir/results.json:
    per variant the accuracy with its 95 % interval, complementary-pair accuracy, per question and answer type;
    and the pretrained model's gain over each baseline with a paired bootstrap interval (`gain_over_question_only`,
    `gain_over_random_init`).
    """
    settings = settings or TASK_SETTINGS["vqa"]
    variants = _check_variants(variants, VQA_VARIANTS)
    model_dir = resolve_model_dir(model_dir)
    processor = load_processor(model_dir, image_size)
    if train_rows is None or eval_rows is None:
        synthetic_train, synthetic_eval = synthetic_vqa_splits(
            num_train_pairs, num_eval_pairs, _image_size(processor), data_seed, max_objects, families
        )
        train_rows = synthetic_train if train_rows is None else train_rows
        eval_rows = synthetic_eval if eval_rows is None else eval_rows
        data_name = data_name or "synthetic"
    id2label, label2id = answer_vocabulary(train_rows, min_answer_count)
    metrics = VQAMetrics(eval_rows, id2label)
    runs, scores, floors = {}, {}, {}
    for variant in variants:
        runs[variant], scores[variant], blank_floor = _vqa_variant(
            variant,
            model_dir,
            output_dir,
            processor,
            train_rows,
            eval_rows,
            id2label,
            label2id,
            metrics,
            settings,
            save_model,
        )
        if blank_floor is not None:
            floors["blank_image"] = blank_floor
    floors["text_only"] = metrics.full(question_only_logits(train_rows, eval_rows, label2id), keep_scores=True)
    results = _vqa_results(
        model_dir, data_name, train_rows, eval_rows, id2label, processor, settings, families, runs, scores, floors
    )
    _write_results(output_dir, results)
    return results


def _vqa_results(
    model_dir, data_name, train_rows, eval_rows, id2label, processor, settings, families, runs, scores, floors
):
    """results.json of a VQA finetune: the runs, the floors, and the pretrained model's paired gain over each."""
    results = {
        "task": "vqa",
        "model_dir": os.path.abspath(model_dir),
        "data": data_name or "given rows",
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "num_answers": len(id2label),
        "image_size": _image_size(processor),
        "settings": asdict(settings),
        "runs": runs,
    }
    if results["data"] == "synthetic":
        results["families"] = list(families)
    for baseline in ("question_only", "random_init"):
        if "pretrained" in runs and baseline in runs:
            results.update(paired_gain(scores["pretrained"], scores[baseline], f"gain_over_{baseline}"))
    floor_scores = {name: np.asarray(figures.pop("scores"), dtype=np.float64) for name, figures in floors.items()}
    results["floors"] = floors
    for name, values in floor_scores.items():
        if "pretrained" in runs:
            results.update(paired_gain(scores["pretrained"], values, f"gain_over_{name}"))
    return results


def _vqa_variant(
    variant, model_dir, output_dir, processor, train_rows, eval_rows, id2label, label2id, metrics, settings, save_model
):
    """One variant finetuned and evaluated: (its figures, its per-question scores, the blank-image floor of the
    pretrained variant or None). The pretrained model is saved with `save_model`."""
    model = _load(VLPForQuestionAnswering, model_dir, variant, settings.seed, id2label=id2label, label2id=label2id)
    collator = VQACollator(processor, label2id, settings.max_length, blank_image=variant == "question_only")
    trainer, info = _train(model, os.path.join(output_dir, variant), settings, train_rows, collator)
    prediction = trainer.predict(eval_rows)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    figures = metrics.full(logits, keep_scores=True)
    scores = np.asarray(figures.pop("scores"), dtype=np.float64)
    run = {
        **figures,
        **info,
        "eval_loss": float(prediction.metrics["test_loss"]),
        "accuracy_items": [round(float(v), 6) for v in scores],
    }
    if variant != "pretrained":
        return run, scores, None
    # The image floor: the same finetuned model, every evaluation image blanked.
    trainer.data_collator = VQACollator(processor, label2id, settings.max_length, blank_image=True)
    blank = trainer.predict(eval_rows)
    blank_logits = blank.predictions[0] if isinstance(blank.predictions, tuple) else blank.predictions
    floor = metrics.full(blank_logits, keep_scores=True)
    if save_model:
        _save(model, processor, output_dir)
    return run, scores, floor


def question_only_logits(train_rows, eval_rows, label2id):
    """(N, answers) log-probabilities of a classifier that never sees an image: a bag of words trained on the
    training questions, each labelled with its most frequent in-vocabulary answer (the text-only floor of VQA)."""
    from .shortcuts import BagOfWords

    questions, answers = [], []
    for question, given in zip(_column(train_rows, "question"), _column(train_rows, "answers")):
        known = [answer for answer in given if answer in label2id]
        if known:
            questions.append(question)
            answers.append(Counter(known).most_common(1)[0][0])
    logits = np.full((len(eval_rows), len(label2id)), -1e9, dtype=np.float64)
    if not questions:
        return logits
    model = BagOfWords().fit(questions, answers)
    columns = [label2id[answer] for answer in model.classes]
    logits[:, columns] = np.log(np.maximum(model.scores(_column(eval_rows, "question")), 1e-300))
    return logits


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------------


def world_rows(num_scenes, image_size=64, seed=0, max_objects=3, captions_per_scene=4):
    """Shapes-world rows (image, captions, scene, ...) generated in memory."""
    config = shapes_world.WorldConfig(
        num_scenes=num_scenes,
        seed=seed,
        image_size=image_size,
        max_objects=max_objects,
        captions_per_scene=captions_per_scene,
    )
    return shapes_world.build_dataset(config)


def _world_splits(image_size, num_train, num_eval, seed, max_objects, captions_per_scene):
    """Training and evaluation worlds (the evaluation world is seeded apart) rendered at `image_size`."""
    train = world_rows(num_train, image_size, seed, max_objects, captions_per_scene)
    evaluation = world_rows(num_eval, image_size, seed + 1_000_003, max_objects, captions_per_scene)
    return train, evaluation


def _caption_rows(
    processor,
    train_rows,
    eval_rows,
    data_name,
    num_train_scenes,
    num_eval_scenes,
    data_seed,
    max_objects,
    captions_per_scene,
):
    """(train rows, evaluation rows, data name): the given rows, with the shapes world at the processor's image size
    standing in for whichever split is not given."""
    if train_rows is not None and eval_rows is not None:
        return train_rows, eval_rows, data_name
    train, evaluation = _world_splits(
        _image_size(processor), num_train_scenes, num_eval_scenes, data_seed, max_objects, captions_per_scene
    )
    return (
        train if train_rows is None else train_rows,
        evaluation if eval_rows is None else eval_rows,
        data_name or "synthetic",
    )


@torch.no_grad()
def retrieval_scores(model, processor, pairs: CaptionPairs, top_k=None, batch_size=64, max_length=None):
    """`VLPForImageTextRetrieval.similarity` over the gallery of `pairs` (its rows' images, every caption)."""
    model.eval()
    rows = pairs.rows
    images = [
        image_batch(processor, [rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        for start in range(0, len(rows), batch_size)
    ]
    pixel_values = torch.cat([b["pixel_values"] for b in images]).to(model.device)
    pixel_mask = torch.cat([b["pixel_mask"] for b in images]).to(model.device)
    texts = processor.tokenizer(
        pairs.texts(), padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt"
    )
    return model.similarity(
        texts["input_ids"].to(model.device),
        pixel_values,
        attention_mask=texts["attention_mask"].to(model.device),
        pixel_mask=pixel_mask,
        top_k=top_k,
        batch_size=batch_size,
    )


def recall_figures(scores, owners):
    """R@1/5/10 both ways with intervals: image->text from the per-image re-ranked matrix, text->image from the
    per-text one (`retrieval_recall`), and the same from the ITC scores alone (keys prefixed `itc_`)."""
    metric = load_metric("retrieval_recall")

    def compute(matrix):
        return metric.compute(predictions=matrix.T.cpu().double().numpy().tolist(), references=list(owners))

    i2t, t2i, itc = compute(scores.i2t), compute(scores.t2i), compute(scores.itc)
    result = {key: value for key, value in i2t.items() if key.startswith("i2t_")}
    result.update({key: value for key, value in t2i.items() if key.startswith("t2i_")})
    result["rsum"] = sum(result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    result.update({f"itc_{key}": value for key, value in itc.items() if key[:4] in ("i2t_", "t2i_", "rsum")})
    result.update(n_images=i2t["n_images"], n_texts=i2t["n_texts"])
    return result


def finetune_retrieval(
    model_dir,
    output_dir,
    train_rows=None,
    eval_rows=None,
    *,
    num_train_scenes=2000,
    num_eval_scenes=100,
    data_seed=0,
    max_objects=3,
    captions_per_scene=4,
    max_eval_captions=2,
    top_k=None,
    image_size=None,
    variants=RETRIEVAL_VARIANTS,
    settings=None,
    save_model=True,
    data_name=None,
):
    """Finetune VLPForImageTextRetrieval (ITC + ITM with in-batch hard negatives) on image-caption rows and report
    R@1/5/10 in both directions (ITM re-ranking of the ITC top k) for each variant.

    Rows (`image`, `captions`) default to the shapes world at the processor's image size; the gallery is `eval_rows`
    with the first `max_eval_captions` captions of each image. A caption counts as right only for its own image
    (the world's captions often hold for other scenes too, so recall on it is a lower bound).
    """
    settings = settings or FinetuneSettings()
    variants = _check_variants(variants, RETRIEVAL_VARIANTS)
    model_dir = resolve_model_dir(model_dir)
    processor = load_processor(model_dir, image_size)
    train_rows, eval_rows, data_name = _caption_rows(
        processor,
        train_rows,
        eval_rows,
        data_name,
        num_train_scenes,
        num_eval_scenes,
        data_seed,
        max_objects,
        captions_per_scene,
    )
    train_pairs = CaptionPairs(train_rows)
    gallery = CaptionPairs(eval_rows, max_captions=max_eval_captions)
    runs = {}
    for variant in variants:
        model = _load(VLPForImageTextRetrieval, model_dir, variant, settings.seed)
        collator = RetrievalCollator(processor, settings.max_length)
        trainer, info = _train(model, os.path.join(output_dir, variant), settings, train_pairs, collator)
        scores = retrieval_scores(model, processor, gallery, top_k, settings.eval_batch_size, settings.max_length)
        runs[variant] = {**recall_figures(scores, gallery.owners()), **info}
        if save_model and variant == "pretrained":
            _save(model, processor, output_dir)
    results = {
        "task": "retrieval",
        "model_dir": os.path.abspath(model_dir),
        "data": data_name or "given rows",
        "n_train_pairs": len(train_pairs),
        "n_eval_images": len(eval_rows),
        "n_eval_texts": len(gallery),
        "top_k": top_k or VLPForImageTextRetrieval.config_class.from_pretrained(model_dir).retrieval_top_k,
        "settings": asdict(settings),
        "runs": runs,
    }
    _write_results(output_dir, results)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------------------------------


def setup_generation(model, tokenizer, max_new_tokens=None):
    """Caption generation settings: [CLS] starts, [SEP] ends; at most the positions the model has."""
    room = model.config.max_position_embeddings - 1
    config = model.generation_config
    config.bos_token_id = tokenizer.cls_token_id
    config.eos_token_id = tokenizer.sep_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.decoder_start_token_id = None
    config.max_new_tokens = min(max_new_tokens or room, room)
    config.use_cache = False
    return model


@torch.no_grad()
def generate_captions(model, processor, rows, blank_image=False, num_beams=1, batch_size=64):
    """One caption per row's image with `generate` (greedy when num_beams is 1), decoded without special tokens."""
    model.eval()
    collator = ImageCollator(processor, blank_image)
    captions = []
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        batch = {key: value.to(model.device) for key, value in batch.items()}
        generated = model.generate(**batch, num_beams=num_beams, do_sample=False)
        captions.extend(processor.tokenizer.batch_decode(generated, skip_special_tokens=True))
    return [" ".join(c.split()) for c in captions]


def caption_figures(predictions, references, tokenize=True, meteor=True):
    """BLEU-4, METEOR, CIDEr-D (pycocoevalcap through `caption_metrics`), per-image scores left out."""
    result = load_metric("caption_metrics").compute(
        predictions=predictions, references=references, tokenize=tokenize, meteor=meteor
    )
    return {key: value for key, value in result.items() if not key.endswith("_scores")}


def finetune_caption(
    model_dir,
    output_dir,
    train_rows=None,
    eval_rows=None,
    *,
    num_train_scenes=2000,
    num_eval_scenes=100,
    data_seed=0,
    max_objects=3,
    captions_per_scene=4,
    num_beams=1,
    max_new_tokens=None,
    tokenize=True,
    meteor=True,
    image_size=None,
    variants=CAPTION_VARIANTS,
    settings=None,
    save_model=True,
    data_name=None,
    num_examples=5,
):
    """Finetune VLPForConditionalGeneration (prefix LM) on image-caption rows; report BLEU-4, METEOR and CIDEr-D of
    generated captions against each image's captions for each variant, and the `most_frequent` training caption.

    Rows (`image`, `captions`) default to the shapes world at the processor's image size. `tokenize=False` and
    `meteor=False` skip the java steps (PTB tokenizer, METEOR).
    """
    settings = settings or FinetuneSettings()
    variants = _check_variants(variants, CAPTION_VARIANTS)
    model_dir = resolve_model_dir(model_dir)
    processor = load_processor(model_dir, image_size)
    train_rows, eval_rows, data_name = _caption_rows(
        processor,
        train_rows,
        eval_rows,
        data_name,
        num_train_scenes,
        num_eval_scenes,
        data_seed,
        max_objects,
        captions_per_scene,
    )
    train_pairs = CaptionPairs(train_rows)
    references = [list(c) for c in _column(eval_rows, "captions")]
    frequent = Counter(train_pairs.texts()).most_common(1)[0][0]
    runs = {
        "most_frequent": {
            **caption_figures([frequent] * len(references), references, tokenize, meteor),
            "caption": frequent,
        }
    }
    for variant in variants:
        model = _load(VLPForConditionalGeneration, model_dir, variant, settings.seed)
        setup_generation(model, processor.tokenizer, max_new_tokens)
        blank = variant == "blank_image"
        collator = CaptionCollator(processor, settings.max_length, blank_image=blank)
        trainer, info = _train(model, os.path.join(output_dir, variant), settings, train_pairs, collator)
        predictions = generate_captions(model, processor, eval_rows, blank, num_beams, settings.eval_batch_size)
        runs[variant] = {
            **caption_figures(predictions, references, tokenize, meteor),
            **info,
            "examples": predictions[:num_examples],
        }
        if save_model and variant == "pretrained":
            _save(model, processor, output_dir)
    results = {
        "task": "caption",
        "model_dir": os.path.abspath(model_dir),
        "data": data_name or "given rows",
        "n_train_pairs": len(train_pairs),
        "n_eval_images": len(eval_rows),
        "num_beams": num_beams,
        "settings": asdict(settings),
        "runs": runs,
    }
    _write_results(output_dir, results)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneArguments:
    """`vlp finetune TASK MODEL_DIR --output_dir DIR`: the options besides the Trainer settings, parsed by
    `HfArgumentParser` (the settings come from `SettingsOverrides`, one option per `FinetuneSettings` field)."""

    task: Literal["vqa", "retrieval", "caption"] = field(metadata={"help": "the downstream task"})
    model_dir: str = field(metadata={"help": "a checkpoint folder (config.json), or a `vlp pretrain` run folder"})
    output_dir: str = field(metadata={"help": "where the variants' runs and results.json go"})
    data: str = field(default="synthetic", metadata={"help": "synthetic; vqa2 (vqa); karpathy (retrieval, caption)"})
    variants: str | None = field(default=None, metadata={"help": "comma-separated; default: all of the task's"})
    num_train: int | None = field(
        default=None, metadata={"help": "synthetic: training pairs (vqa, 1000) or scenes (retrieval, caption, 2000)"}
    )
    num_eval: int | None = field(
        default=None, metadata={"help": "synthetic: evaluation pairs (vqa, 250) or scenes (retrieval, caption, 100)"}
    )
    data_seed: int = field(default=0, metadata={"help": "synthetic: the data's seed"})
    max_objects: int = field(default=3, metadata={"help": "synthetic: objects per scene at most"})
    image_size: int | None = field(
        default=None, metadata={"help": "finetune and evaluate at this image side (default: the processor's)"}
    )
    min_answer_count: int = field(default=9, metadata={"help": "vqa: answers given this often form the vocabulary"})
    families: str = field(default=",".join(QUESTION_FAMILIES), metadata={"help": "vqa: synthetic question families"})
    train_questions: str | None = field(default=None, metadata={"help": "vqa2: training questions json"})
    train_annotations: str | None = field(default=None, metadata={"help": "vqa2: training annotations json"})
    train_image_dir: str | None = field(default=None, metadata={"help": "vqa2: training images"})
    eval_questions: str | None = field(default=None, metadata={"help": "vqa2: evaluation questions json"})
    eval_annotations: str | None = field(default=None, metadata={"help": "vqa2: evaluation annotations json"})
    eval_image_dir: str | None = field(default=None, metadata={"help": "vqa2: evaluation images"})
    eval_pairs: str | None = field(default=None, metadata={"help": "vqa2: complementary pairs json of the eval split"})
    karpathy_json: str | None = field(default=None, metadata={"help": "karpathy: the split file (dataset_coco.json)"})
    image_dir: str | None = field(default=None, metadata={"help": "karpathy: the images"})
    max_eval_images: int | None = field(default=None, metadata={"help": "karpathy: evaluation images at most"})
    top_k: int | None = field(default=None, metadata={"help": "retrieval: candidates re-ranked by ITM per query"})
    num_beams: int = field(default=1, metadata={"help": "caption: beam size (1: greedy)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "caption: longest generated caption"})
    no_java: bool = field(default=False, metadata={"help": "caption: skip PTB tokenization and METEOR (java)"})


def _settings_overrides():
    """A dataclass with one optional field per `FinetuneSettings` field (None: the task's default)."""
    hints = get_type_hints(FinetuneSettings)
    defaults = {task: asdict(values) for task, values in TASK_SETTINGS.items()}

    def default_help(name):
        return {"help": "default: " + ", ".join(f"{task} {values[name]}" for task, values in defaults.items())}

    fields_ = [(name, hints[name] | None, field(default=None, metadata=default_help(name))) for name in hints]
    return make_dataclass("SettingsOverrides", fields_)


SettingsOverrides = _settings_overrides()
FINETUNE_DESCRIPTION = (
    "Finetune a VLP checkpoint with transformers' Trainer and report the task's metrics beside baselines (random "
    "initialisation; question-only for VQA; blank-image and most-frequent caption for captioning) in "
    "OUTPUT_DIR/results.json."
)


def _require(args, names, data):
    missing = [f"--{name}" for name in names if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"--data {data} needs {', '.join(missing)}")


def _vqa2_rows(args):
    _require(
        args,
        (
            "train_questions",
            "train_annotations",
            "train_image_dir",
            "eval_questions",
            "eval_annotations",
            "eval_image_dir",
        ),
        "vqa2",
    )
    features = vqa_features()
    train = read_vqa_v2(args.train_questions, args.train_annotations, args.train_image_dir)
    evaluation = read_vqa_v2(args.eval_questions, args.eval_annotations, args.eval_image_dir, args.eval_pairs)
    return (
        datasets.Dataset.from_list(train, features=features),
        datasets.Dataset.from_list(evaluation, features=features),
    )


def _karpathy_rows(args):
    _require(args, ("karpathy_json", "image_dir"), "karpathy")
    train = read_karpathy_split(args.karpathy_json, ("train", "restval"), args.image_dir)
    evaluation = read_karpathy_split(args.karpathy_json, "test", args.image_dir)
    if args.max_eval_images:
        evaluation = evaluation[: args.max_eval_images]
    return train, evaluation


def cli(argv: Sequence[str]):
    """`vlp finetune vqa|retrieval|caption MODEL_DIR --output_dir DIR [...]`: prints the results."""
    args, overrides = parse_command(
        (FinetuneArguments, SettingsOverrides), argv, "vlp finetune", FINETUNE_DESCRIPTION, ("task", "model_dir")
    )
    given = {name: value for name, value in asdict(overrides).items() if value is not None}
    settings = FinetuneSettings(**{**asdict(TASK_SETTINGS[args.task]), **given})
    allowed = {
        "vqa": ("synthetic", "vqa2"),
        "retrieval": ("synthetic", "karpathy"),
        "caption": ("synthetic", "karpathy"),
    }[args.task]
    if args.data not in allowed:
        raise ConfigError(f"--data {args.data!r} for {args.task}: expected one of {allowed}")
    common = dict(
        settings=settings,
        data_seed=args.data_seed,
        max_objects=args.max_objects,
        data_name=args.data,
        image_size=args.image_size,
    )
    if args.variants is not None:
        common["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    train_rows = eval_rows = None
    if args.task == "vqa":
        if args.data == "vqa2":
            train_rows, eval_rows = _vqa2_rows(args)
        sizes = {
            key: value
            for key, value in (("num_train_pairs", args.num_train), ("num_eval_pairs", args.num_eval))
            if value is not None
        }
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
        unknown = [f for f in families if f not in QUESTION_FAMILIES]
        if unknown or not families:
            raise ConfigError(f"--families {unknown or 'none given'}: expected names from {QUESTION_FAMILIES}")
        results = finetune_vqa(
            args.model_dir,
            args.output_dir,
            train_rows,
            eval_rows,
            families=families,
            min_answer_count=args.min_answer_count,
            **sizes,
            **common,
        )
    else:
        if args.data == "karpathy":
            train_rows, eval_rows = _karpathy_rows(args)
        sizes = {
            key: value
            for key, value in (("num_train_scenes", args.num_train), ("num_eval_scenes", args.num_eval))
            if value is not None
        }
        if args.task == "retrieval":
            results = finetune_retrieval(
                args.model_dir, args.output_dir, train_rows, eval_rows, top_k=args.top_k, **sizes, **common
            )
        else:
            results = finetune_caption(
                args.model_dir,
                args.output_dir,
                train_rows,
                eval_rows,
                num_beams=args.num_beams,
                max_new_tokens=args.max_new_tokens,
                tokenize=not args.no_java,
                meteor=not args.no_java,
                **sizes,
                **common,
            )
    print(strict_json.dumps(_summary(results), indent=2))
    print(f"wrote {os.path.join(args.output_dir, RESULTS_FILE)}")
    return results


def _summary(results):
    """The headline figures of each variant, for the terminal."""
    keys = {
        "vqa": ("accuracy", "accuracy_low", "accuracy_high", "pair_accuracy"),
        "retrieval": ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"),
        "caption": ("bleu_4", "meteor", "cider_d"),
    }[results["task"]]
    return {variant: {key: run[key] for key in keys if key in run} for variant, run in results["runs"].items()}
