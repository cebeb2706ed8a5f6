"""Training cost per image of grouped matching against plain image-text matching, measured in the same run.

A step is forward, backward and AdamW on one batch of the synthetic world. Plain ITM sees `batch` images per step;
grouped matching sees `batch` canvases of rows x cols images each, either resized into the model's resolution
(`resize`, the same number of patches as one image) or at full resolution (`full`, rows x cols times the patches).
Cost per image = median step time / images per step. Variants are timed in rotation. Prints one JSON object on its
last line: `cost_per_image_ratio` (resize / ITM; target at most 1.0), `cost_per_image_ratio_full`, and the medians.
"""

import argparse
import json
import statistics
import tempfile
import time

import torch

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
from vlp.processing.collator import PretrainingCollator
from vlp.processing.grouping import GroupConfig, GroupedMatchingDataset
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as shapes_world
from vlp.training.objectives import objective_inputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--cols", type=int, default=2)
    args = parser.parse_args()
    cells = args.rows * args.cols

    with tempfile.TemporaryDirectory() as cache:
        rows = shapes_world.build_dataset(
            shapes_world.WorldConfig(num_scenes=8 * args.batch, seed=0, image_size=args.image_size), cache_dir=cache
        )
        tokenizer = train_wordpiece_tokenizer((c for cs in rows["captions"] for c in cs), vocab_size=1000)
        processor = VLPProcessor(
            VLPImageProcessor(size={"height": args.image_size, "width": args.image_size}), tokenizer
        )
        itm_batch = PretrainingCollator(tokenizer, seed=0)(
            [PretrainingDataset(rows, processor, seed=0)[i] for i in range(args.batch)]
        )
        groups = {}
        for mode in ("resize", "full"):
            dataset = GroupedMatchingDataset(
                rows,
                processor,
                GroupConfig(rows=args.rows, cols=args.cols, distractors="mixed"),
                mode=mode,
                patch_size=args.patch_size,
                image_size=args.image_size,
                max_length=16 * cells,
            )
            groups[mode] = {"gitm": dataset.collate_fn([dataset[i] for i in range(args.batch)])}
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
            max_position_embeddings=16 * cells,
            num_text_segments=cells,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    inputs = {
        "itm": objective_inputs("itm", itm_batch, {}),
        "resize": objective_inputs("gitm", groups["resize"], {}),
        "full": objective_inputs("gitm", groups["full"], {}),
    }
    images = {"itm": args.batch, "resize": args.batch * cells, "full": args.batch * cells}

    def step(variant):
        started = time.perf_counter()
        model(**inputs[variant]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    variants = list(inputs)
    for variant in variants:  # warm-up
        step(variant)
    times = {variant: [] for variant in variants}
    for round_number in range(args.steps):
        for variant in variants[round_number % 3 :] + variants[: round_number % 3]:
            times[variant].append(step(variant))
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    per_image = {variant: medians[variant] / images[variant] for variant in variants}
    result = {
        "batch": args.batch,
        "grid": f"{args.rows}x{args.cols}",
        "hidden": args.hidden,
        "layers": args.layers,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "text_tokens_itm": int(inputs["itm"]["input_ids"].shape[1]),
        "text_tokens_gitm": int(inputs["resize"]["input_ids"].shape[1]),
    }
    result.update({f"step_s_{variant}": value for variant, value in medians.items()})
    result.update({f"s_per_image_{variant}": value for variant, value in per_image.items()})
    result["cost_per_image_ratio"] = per_image["resize"] / per_image["itm"]
    result["cost_per_image_ratio_full"] = per_image["full"] / per_image["itm"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
