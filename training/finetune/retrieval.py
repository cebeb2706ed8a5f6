"""Image-text retrieval finetuning (`finetune_retrieval`): ITC on caption pairs, R@1/5/10 in both directions,
against random init."""

from __future__ import annotations

import os
from dataclasses import asdict

import torch

from ...modeling_vlp import VLPForImageTextRetrieval
from ...processing.finetune_collators import (
    CaptionPairs,
    RetrievalCollator,
    image_batch,
)
from ...processing.worlds import shapes as shapes_world
from ..metrics import load_metric
from .common import (
    RETRIEVAL_VARIANTS,
    FinetuneSettings,
    check_variants,
    load_processor,
    load_variant,
    processor_image_size,
    resolve_model_dir,
    run_trainer,
    save_finetuned,
    write_results,
)


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


def world_caption_rows(
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
        processor_image_size(processor), num_train_scenes, num_eval_scenes, data_seed, max_objects, captions_per_scene
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
    variants = check_variants(variants, RETRIEVAL_VARIANTS)
    model_dir = resolve_model_dir(model_dir)
    processor = load_processor(model_dir, image_size)
    train_rows, eval_rows, data_name = world_caption_rows(
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
        model = load_variant(VLPForImageTextRetrieval, model_dir, variant, settings.seed)
        collator = RetrievalCollator(processor, settings.max_length)
        trainer, info = run_trainer(model, os.path.join(output_dir, variant), settings, train_pairs, collator)
        scores = retrieval_scores(model, processor, gallery, top_k, settings.eval_batch_size, settings.max_length)
        runs[variant] = {**recall_figures(scores, gallery.owners()), **info}
        if save_model and variant == "pretrained":
            save_finetuned(model, processor, output_dir)
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
    write_results(output_dir, results)
    return results
