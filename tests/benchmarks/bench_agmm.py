"""Cost of attention-guided masking: step time with each guidance source against random masking, in one run.

A step is what the training loop does for MLM + ITM with policy masking of the captions: draw the masks (for the
guided variants, from relevance), the ITM pass and the MLM pass with their backward, and AdamW. Variants:

- `random`: the `random` policy (same ratio draws, same masking code, no relevance);
- `reuse`: `high`, relevance from the step's own ITM pass (its matched rows; the others fall back to random);
- `pass`: `high`, relevance from a separate no-grad pass of the model;
- `ema`: `high`, relevance from an EMA teacher's pass, plus the teacher's EMA update.

Variants are timed in rotation, so drifts of the machine affect all of them alike. Prints one JSON object on its
last line: `overhead_reuse`, `overhead_pass`, `overhead_ema` (median step time / random's; target for reuse: at
most 1.10) and the medians in seconds.
"""

import argparse
import copy
import json
import statistics
import tempfile
import time

import numpy as np
import torch

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
from vlp.modeling_vlp.losses_vlp import ema_update
from vlp.processing.collator import PretrainingCollator
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as shapes_world
from vlp.training.objectives import objective_inputs
from vlp.training.pretrain.guided_masking import GuidedMasking, guidance_relevance
from vlp.training.pretrain.loop import matched_relevance

VARIANTS = ("random", "reuse", "pass", "ema")


def make_batch(batch_size, image_size, cache_dir):
    rows = shapes_world.build_dataset(
        shapes_world.WorldConfig(num_scenes=4 * batch_size, seed=0, image_size=image_size), cache_dir=cache_dir
    )
    tokenizer = train_wordpiece_tokenizer((c for cs in rows["captions"] for c in cs), vocab_size=1000)
    processor = VLPProcessor(VLPImageProcessor(size={"height": image_size, "width": image_size}), tokenizer)
    dataset = PretrainingDataset(rows, processor, seed=0, concept_words=shapes_world.concept_words())
    collator = PretrainingCollator(tokenizer, seed=0, mlm_probability=0.0)
    return collator([dataset[i] for i in range(batch_size)]), tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        batch, tokenizer = make_batch(args.batch, args.image_size, cache)
    torch.manual_seed(0)
    model = VLPForPreTraining(
        VLPConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            intermediate_size=4 * args.hidden,
            image_size=args.image_size,
            patch_size=args.patch_size,
            max_position_embeddings=40,
        )
    )
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    common = dict(
        targets=("mlm",),
        seed=0,
        mask_token_id=tokenizer.mask_token_id,
        replacement_ids=np.arange(5, len(tokenizer)),
        never_masked_ids=np.array([tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]),
        patch_size=args.patch_size,
    )
    guides = {
        "random": GuidedMasking(policy="random", **common),
        "reuse": GuidedMasking(policy="high", source="itm", **common),
        "pass": GuidedMasking(policy="high", source="model", **common),
        "ema": GuidedMasking(policy="high", source="ema", **common),
    }
    counter = iter(range(10**9))

    def step(variant):
        guide = guides[variant]
        number = next(counter)
        started = time.perf_counter()
        current = dict(batch)
        if variant in ("pass", "ema"):
            relevance = guidance_relevance(
                teacher if variant == "ema" else model, objective_inputs("guidance", current, {}), guide
            )
            guide.apply(current, number, relevance)
        elif variant == "random":
            guide.apply(current, number)
        inputs = objective_inputs("itm", current, {})
        if variant == "reuse":
            inputs["relevance_weights"] = guide.request(inputs)
        out = model(**inputs)
        out.loss.backward()
        if variant == "reuse":
            guide.apply(current, number, *matched_relevance(out.relevance, inputs, current, hard=False))
        model(**objective_inputs("mlm", current, {})).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if variant == "ema":
            ema_update(teacher.parameters(), model.parameters(), 0.996)
        return time.perf_counter() - started

    for variant in VARIANTS:  # warm-up
        step(variant)
    times = {variant: [] for variant in VARIANTS}
    for round_number in range(args.steps):
        order = VARIANTS[round_number % len(VARIANTS) :] + VARIANTS[: round_number % len(VARIANTS)]
        for variant in order:
            times[variant].append(step(variant))
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    result = {
        "batch": args.batch,
        "hidden": args.hidden,
        "layers": args.layers,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
    }
    result.update({f"step_s_{variant}": value for variant, value in medians.items()})
    result.update({f"overhead_{variant}": medians[variant] / medians["random"] for variant in VARIANTS[1:]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
