"""VQA finetuning (`finetune_vqa`): synthetic VQA or VQA v2 rows, the VQA soft score and complementary-pair
accuracy, against random-init, question-only, blank-image and text-only baselines."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict

import numpy as np

from ...modeling_vlp import VLPForQuestionAnswering
from ...processing.finetune_collators import (
    VQACollator,
)
from ...processing.readers.downstream import build_answer_vocabulary
from ...processing.worlds.synthetic_vqa import QUESTION_FAMILIES, SyntheticVQAConfig, build_synthetic_vqa_dataset
from ..config import ConfigError
from ..metrics import load_metric
from ..statistics import mean_interval
from .common import (
    TASK_SETTINGS,
    VQA_VARIANTS,
    check_variants,
    column_of,
    load_processor,
    load_variant,
    processor_image_size,
    resolve_model_dir,
    run_trainer,
    save_finetuned,
    write_results,
)


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
    answers = build_answer_vocabulary(({"answers": a} for a in column_of(rows, "answers")), min_count=min_count)
    if not answers:
        raise ConfigError(f"min_answer_count={min_count} leaves no answer in the training set")
    return {i: a for i, a in enumerate(answers)}, {a: i for i, a in enumerate(answers)}


class VQAMetrics:
    """`compute_metrics` for a Trainer evaluating VQA: argmax answers of the eval rows (in their order, as the
    Trainer's sequential evaluation keeps it) scored with the `vqa_accuracy` module (official accuracy, per type,
    complementary-pair accuracy, bootstrap 95 % intervals)."""

    def __init__(self, eval_rows, id2label):
        self.references = [list(a) for a in column_of(eval_rows, "answers")]
        names = eval_rows.column_names if hasattr(eval_rows, "column_names") else list(eval_rows[0])
        self.question_types = column_of(eval_rows, "question_type") if "question_type" in names else None
        self.answer_types = column_of(eval_rows, "answer_type") if "answer_type" in names else None
        self.pair_ids = column_of(eval_rows, "pair_id") if "pair_id" in names else None
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
    variants = check_variants(variants, VQA_VARIANTS)
    model_dir = resolve_model_dir(model_dir)
    processor = load_processor(model_dir, image_size)
    if train_rows is None or eval_rows is None:
        synthetic_train, synthetic_eval = synthetic_vqa_splits(
            num_train_pairs, num_eval_pairs, processor_image_size(processor), data_seed, max_objects, families
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
    write_results(output_dir, results)
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
        "image_size": processor_image_size(processor),
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
    pretrained variant or None). The pretrained model is saved with `save_finetuned`."""
    model = load_variant(
        VLPForQuestionAnswering, model_dir, variant, settings.seed, id2label=id2label, label2id=label2id
    )
    collator = VQACollator(processor, label2id, settings.max_length, blank_image=variant == "question_only")
    trainer, info = run_trainer(model, os.path.join(output_dir, variant), settings, train_rows, collator)
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
        save_finetuned(model, processor, output_dir)
    return run, scores, floor


def question_only_logits(train_rows, eval_rows, label2id):
    """(N, answers) log-probabilities of a classifier that never sees an image: a bag of words trained on the
    training questions, each labelled with its most frequent in-vocabulary answer (the text-only floor of VQA)."""
    from ..evaluation.shortcuts import BagOfWords

    questions, answers = [], []
    for question, given in zip(column_of(train_rows, "question"), column_of(train_rows, "answers")):
        known = [answer for answer in given if answer in label2id]
        if known:
            questions.append(question)
            answers.append(Counter(known).most_common(1)[0][0])
    logits = np.full((len(eval_rows), len(label2id)), -1e9, dtype=np.float64)
    if not questions:
        return logits
    model = BagOfWords().fit(questions, answers)
    columns = [label2id[answer] for answer in model.classes]
    logits[:, columns] = np.log(np.maximum(model.scores(column_of(eval_rows, "question")), 1e-300))
    return logits
