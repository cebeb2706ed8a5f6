"""Captioning finetuning (`finetune_caption`): generation from the image, BLEU-4/CIDEr (and METEOR), against
random init, a blank image and the most frequent caption."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict

import torch

from ...modeling_vlp import VLPForConditionalGeneration
from ...processing.finetune_collators import (
    CaptionCollator,
    CaptionPairs,
    ImageCollator,
)
from ..metrics import load_metric
from .common import (
    CAPTION_VARIANTS,
    FinetuneSettings,
    check_variants,
    column_of,
    load_processor,
    load_variant,
    resolve_model_dir,
    run_trainer,
    save_finetuned,
    write_results,
)
from .retrieval import world_caption_rows


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
    variants = check_variants(variants, CAPTION_VARIANTS)
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
    references = [list(c) for c in column_of(eval_rows, "captions")]
    frequent = Counter(train_pairs.texts()).most_common(1)[0][0]
    runs = {
        "most_frequent": {
            **caption_figures([frequent] * len(references), references, tokenize, meteor),
            "caption": frequent,
        }
    }
    for variant in variants:
        model = load_variant(VLPForConditionalGeneration, model_dir, variant, settings.seed)
        setup_generation(model, processor.tokenizer, max_new_tokens)
        blank = variant == "blank_image"
        collator = CaptionCollator(processor, settings.max_length, blank_image=blank)
        trainer, info = run_trainer(model, os.path.join(output_dir, variant), settings, train_pairs, collator)
        predictions = generate_captions(model, processor, eval_rows, blank, num_beams, settings.eval_batch_size)
        runs[variant] = {
            **caption_figures(predictions, references, tokenize, meteor),
            **info,
            "examples": predictions[:num_examples],
        }
        if save_model and variant == "pretrained":
            save_finetuned(model, processor, output_dir)
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
    write_results(output_dir, results)
    return results
