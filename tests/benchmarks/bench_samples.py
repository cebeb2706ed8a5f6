"""Pretraining samples per second on one core: the dataset's own rows read through its caches (processed images,
rows, tokenized captions) against the same samples built from the raw rows (`sample_from_row`, which decodes and
tokenizes every time), measured in the same run on the synthetic world with the world's `caption_holds`.

The first epoch fills the caches, so the cached figure is taken on the second. Prints one JSON object on its last
line: `cached_over_uncached` (samples/s ratio; above 1 is faster), both rates and how many samples were timed.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import tempfile
import time

import torch

from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as shapes_world


def rate(read, count):
    start = time.perf_counter()
    for i in range(count):
        read(i)
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
        size = {"height": args.image_size, "width": args.image_size}
        processor = VLPProcessor(VLPImageProcessor(size=size), tokenizer)
        dataset = PretrainingDataset(rows, processor, seed=0, max_length=32, holds_fn=shapes_world.caption_holds)
        dataset.set_epoch(0)
        rate(dataset.__getitem__, len(dataset))  # fills the caches
        dataset.set_epoch(1)
        cached = rate(dataset.__getitem__, len(dataset))
        raw = [rows[i] for i in range(len(rows))]
        uncached = rate(lambda i: dataset.sample_from_row(raw[i], i, epoch=1), len(rows))
    print(
        json.dumps(
            {
                "samples": len(rows),
                "cached_samples_per_s": round(cached, 1),
                "uncached_samples_per_s": round(uncached, 1),
                "cached_over_uncached": round(cached / uncached, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
