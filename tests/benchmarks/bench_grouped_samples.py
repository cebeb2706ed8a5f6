"""Grouped-matching (GITM) samples per second on one core: segment token ids memoised by text (what
`GroupedMatchingDataset` does) against one tokenizer call per group, measured in the same run on the same groups of
the synthetic world (2 x 2 grids, mixed distractors, the world's `caption_holds`).

The first epoch fills the row caches and the memo; both figures are taken on the second epoch, whose groups differ
from the first's. Prints one JSON object on its last line: `memo_over_tokenizer` (samples/s ratio; above 1 is
faster), both rates and how many samples were timed.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import tempfile
import time

import torch

from vlp.processing.grouping import GroupConfig, GroupedMatchingDataset
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as shapes_world


def rate(dataset, count):
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        config = shapes_world.WorldConfig(num_scenes=args.scenes, seed=0, image_size=args.image_size)
        rows = shapes_world.build_dataset(config, cache_dir=cache)
        tokenizer = train_wordpiece_tokenizer((c for cs in rows["captions"] for c in cs), vocab_size=400)
        dataset = GroupedMatchingDataset(
            rows,
            tokenizer=tokenizer,
            image_processor=VLPImageProcessor(size={"height": args.image_size, "width": args.image_size}),
            config=GroupConfig(2, 2, distractors="mixed"),
            patch_size=16,
            max_length=64,
            seed=0,
        )
        memo = dataset.segment_token_ids
        dataset.set_epoch(0)
        rate(dataset, len(dataset))  # fills the row caches and the memo
        dataset.set_epoch(1)
        memoised = rate(dataset, len(dataset))
        dataset.segment_token_ids = None  # compose_text then calls the tokenizer once per group
        direct = rate(dataset, len(dataset))
        dataset.segment_token_ids = memo
    print(
        json.dumps(
            {
                "samples": len(dataset),
                "memo_samples_per_s": round(memoised, 1),
                "tokenizer_samples_per_s": round(direct, 1),
                "memo_over_tokenizer": round(memoised / direct, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
