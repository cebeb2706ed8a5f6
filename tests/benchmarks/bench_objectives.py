"""Step time of each pretraining objective relative to MLM alone, measured in the same run.

A step is forward, backward and AdamW on one batch of the synthetic world, with the objective's own pass (as the
training loop runs it). Objectives are timed in rotation, so drifts of the machine affect all of them alike.
Prints one JSON object on its last line: `mim`, `itc`, `itm`, `itm_hard`, `wra` (median step time / MLM's), plus
the medians in seconds.
"""

import argparse
import json
import statistics
import tempfile
import time

import torch

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
from vlp.processing.collator import PretrainingCollator
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as shapes_world
from vlp.training.objectives import objective_inputs
from vlp.training.pretrain.data import holds_for_scene

VARIANTS = {
    "mlm": ("mlm", False),
    "mim": ("mim", False),
    "itc": ("itc", False),
    "itm": ("itm", False),
    "itm_hard": ("itm", True),
    "wra": ("wra", False),
}


def make_batch(batch_size, image_size, patch_size, cache_dir):
    rows = shapes_world.build_dataset(
        shapes_world.WorldConfig(num_scenes=4 * batch_size, seed=0, image_size=image_size), cache_dir=cache_dir
    )
    tokenizer = train_wordpiece_tokenizer((c for cs in rows["captions"] for c in cs), vocab_size=1000)
    processor = VLPProcessor(VLPImageProcessor(size={"height": image_size, "width": image_size}), tokenizer)
    dataset = PretrainingDataset(rows, processor, seed=0, holds_fn=holds_for_scene)
    collator = PretrainingCollator(tokenizer, seed=0, mim_patch_size=patch_size, holds_fn=holds_for_scene)
    return collator([dataset[i] for i in range(batch_size)]), len(tokenizer)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        batch, vocab = make_batch(args.batch, args.image_size, args.patch_size, cache)
    torch.manual_seed(0)
    model = VLPForPreTraining(
        VLPConfig(
            vocab_size=vocab,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            intermediate_size=4 * args.hidden,
            image_size=args.image_size,
            patch_size=args.patch_size,
            max_position_embeddings=40,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    generator = torch.Generator().manual_seed(0)

    def step(variant):
        name, hard = VARIANTS[variant]
        context = {"model": model, "hard_negatives": hard, "generator": generator}
        started = time.perf_counter()
        model(**objective_inputs(name, batch, context)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    for variant in VARIANTS:  # warm-up
        step(variant)
    times = {variant: [] for variant in VARIANTS}
    for round_number in range(args.steps):
        order = list(VARIANTS)[round_number % len(VARIANTS) :] + list(VARIANTS)[: round_number % len(VARIANTS)]
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
    result.update({variant: medians[variant] / medians["mlm"] for variant in VARIANTS if variant != "mlm"})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
