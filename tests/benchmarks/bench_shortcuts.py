"""Shortcut audit of the training and evaluation tasks: what the text alone gives, and whether the objectives draw
what their names say.

Text-only floors (`vlp.training.shortcuts`): a bag-of-words classifier that never sees an image, trained on items
drawn from a training world and scored on items drawn from a world of another seed.
- GITM: each segment of a grouped-matching input labelled own (a cell's caption) or none (a distractor), with the
  pretraining default (own probability 0.75, mixed distractors): `gitm_text_only_accuracy` against
  `gitm_majority`; and with hard distractors only at own probability 0.5: `gitm_hard_*`.
- ITM: each ITM caption of the pretraining data labelled matched or negative; `itm_text_only_accuracy` against
  `itm_majority`.
- Foils: true caption against foil over every foil phenomenon of the evaluation suite; `foils_text_only_acc_r`
  (chance 0.5).
Objectives:
- `hard_negative_hardest_share`: with a texts x images similarity where one candidate of every row dominates by far,
  the share of drawn ITM hard negatives that are that candidate (1.0 when the orientation is right).
- `itc_false_negative_share`: share of the off-diagonal pairs of a training batch that hold in the world (the
  negatives a one-hot ITC would punish; VLP's ITC leaves them out of the denominators).

Prints one JSON object on its last line.
"""

import argparse
import json
import tempfile

import numpy as np
import torch

from vlp.modeling_vlp.losses_vlp import false_negative_share
from vlp.processing.collator import PretrainingCollator
from vlp.processing.grouping import GroupConfig, GroupedMatchingDataset
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import eval_sets
from vlp.processing.worlds import shapes as shapes_world
from vlp.training.evaluation.shortcuts import foil_acc_r, gitm_segment_items, itm_pair_items, text_only_floor
from vlp.training.objectives import hard_negative_inputs
from vlp.training.pretrain.data import holds_for_scene


def _world(scenes, seed, cache):
    return shapes_world.build_dataset(
        shapes_world.WorldConfig(num_scenes=scenes, seed=seed, image_size=32), cache_dir=cache
    )


def _foil_pairs(world_config, per_phenomenon):
    pairs = []
    for phenomenon in eval_sets.FOIL_PHENOMENA:
        items, _ = eval_sets.foil_items(world_config, phenomenon, per_phenomenon)
        pairs += [(item.caption, item.foil) for item in items]
    return pairs


def hardest_share(size=16, trials=20):
    """Share of drawn hard negatives that are their row's dominant candidate: text t matches image t+1 by far."""
    right = total = 0
    generator = torch.Generator().manual_seed(0)
    for _ in range(trials):
        text_image = torch.randn(size, size)
        dominant = (torch.arange(size) + 1) % size
        text_image[torch.arange(size), dominant] = 50.0  # text t and image t+1
        batch = {
            "itm_labels": torch.ones(size, dtype=torch.long),
            "plain_input_ids": torch.arange(size)[:, None],
            "attention_mask": torch.ones(size, 1, dtype=torch.long),
            "token_type_ids": torch.zeros(size, 1, dtype=torch.long),
            "pixel_values": torch.arange(size, dtype=torch.float)[:, None, None, None].expand(size, 3, 2, 2),
            "pixel_mask": torch.ones(size, 2, 2, dtype=torch.long),
        }
        inputs = hard_negative_inputs(batch, text_image, generator)
        texts = inputs["input_ids"][:, 0]
        images = inputs["pixel_values"][:, 0, 0, 0].long()
        # rows size..2*size: image i with a drawn text; rows 2*size..: text t with a drawn image.
        negative_texts, negative_images = texts[size : 2 * size], images[2 * size :]
        own = torch.arange(size)
        # image i's dominant text is the t with t + 1 = i; text t's dominant image is t + 1.
        right += int((negative_texts == (own - 1) % size).sum()) + int((negative_images == dominant).sum())
        total += 2 * size
    return right / total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-scenes", type=int, default=3000)
    parser.add_argument("--eval-scenes", type=int, default=1000)
    parser.add_argument("--foils-per-phenomenon", type=int, default=300)
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        train_rows, eval_rows = _world(args.train_scenes, 0, cache), _world(args.eval_scenes, 1, cache)
        tokenizer = train_wordpiece_tokenizer((c for cs in train_rows["captions"] for c in cs), vocab_size=400)
        processor = VLPProcessor(VLPImageProcessor(size={"height": 32, "width": 32}), tokenizer)

        def gitm(rows, **config):
            dataset = GroupedMatchingDataset(
                rows, processor, GroupConfig(rows=2, cols=2, **config), patch_size=8, image_size=32, max_length=64
            )
            return gitm_segment_items(dataset, range(len(rows)))

        # The pretraining default (p = 0.75, mixed distractors), then hard distractors only at p = 0.5.
        for prefix, config in (
            ("gitm", dict(own_probability=0.75, distractors="mixed")),
            ("gitm_hard", dict(own_probability=0.5, distractors="hard")),
        ):
            floor = text_only_floor(*gitm(train_rows, **config), *gitm(eval_rows, **config))
            result.update(
                {
                    f"{prefix}_text_only_accuracy": floor["accuracy"],
                    f"{prefix}_text_only_ci": [floor["ci_low"], floor["ci_high"]],
                    f"{prefix}_majority": floor["majority"],
                    f"{prefix}_eval_segments": floor["n_eval"],
                }
            )

        def itm(rows):
            return itm_pair_items(PretrainingDataset(rows, processor, holds_fn=holds_for_scene), range(len(rows)))

        floor = text_only_floor(*itm(train_rows), *itm(eval_rows))
        result.update(
            itm_text_only_accuracy=floor["accuracy"],
            itm_text_only_ci=[floor["ci_low"], floor["ci_high"]],
            itm_majority=floor["majority"],
            itm_eval_pairs=floor["n_eval"],
        )

        train_world = shapes_world.WorldConfig(num_scenes=args.train_scenes, seed=0, image_size=32)
        foils = foil_acc_r(
            _foil_pairs(train_world, args.foils_per_phenomenon),
            _foil_pairs(eval_sets.eval_world(train_world), args.foils_per_phenomenon),
        )
        result.update(
            foils_text_only_acc_r=foils["acc_r"],
            foils_text_only_ci=[foils["ci_low"], foils["ci_high"]],
            foils_eval_pairs=foils["n_eval"],
        )

        collator = PretrainingCollator(tokenizer, seed=0, holds_fn=holds_for_scene)
        dataset = PretrainingDataset(train_rows, processor, holds_fn=holds_for_scene)
        shares = [
            false_negative_share(collator([dataset[i] for i in range(start, start + 32)])["holds_matrix"])
            for start in range(0, 32 * 8, 32)
        ]
        result["itc_false_negative_share"] = float(np.mean(shares))
    result["hard_negative_hardest_share"] = hardest_share()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
