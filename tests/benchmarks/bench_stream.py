"""Streaming from WebDataset shards against the in-memory dataset, and the data-wait share of a streaming run.

1. The synthetic world is written as shards (`write_shards`, PNG images as stored). One epoch of pretraining
   samples (decode, resize, tokenize, ITM negatives, MLM masks, collate: everything the loop's loader does) is read
   through the map-style path (`PretrainingDataset` + `GlobalBatchSampler`) and through the stream (`ShardStream` +
   `StreamSamples`), with the same dataloader workers, in alternation; `stream_vs_memory` is the median ratio of
   their samples per second (1.0: streaming costs nothing).
2. A short `vlp pretrain` run on the shards (one process, the same workers): `data_wait_share` is the share of step
   time spent waiting for batches after the first log window (worker start-up), target below 0.05;
   `data_wait_share_first_window` includes the start-up.

Prints one JSON object on its last line.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from vlp.processing.collator import PretrainingCollator
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.readers import webdataset as wds
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as shapes_world
from vlp.training.config import parse_config
from vlp.training.logging_utils import read_jsonl
from vlp.training.pretrain.data import EpochIndexed, StreamSamples, holds_for_scene
from vlp.training.pretrain.loop import pretrain
from vlp.training.pretrain.sampler import GlobalBatchSampler


def read_epoch(loader):
    """(seconds, samples) to iterate the loader once."""
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["index"])
    return time.perf_counter() - start, count


def loaders(rows, shard_dir, args):
    """The map-style loader over the rows and the stream's loader over their shards, building the same samples."""
    tokenizer = train_wordpiece_tokenizer((c for cs in rows["captions"] for c in cs), vocab_size=1000)
    processor = VLPProcessor(VLPImageProcessor(size={"height": args.image_size, "width": args.image_size}), tokenizer)
    common = dict(processor=processor, seed=0, holds_fn=holds_for_scene, max_length=32)
    collator = PretrainingCollator(tokenizer, seed=0, mim_patch_size=8)
    memory = PretrainingDataset(rows, **common)
    sampler = GlobalBatchSampler(len(memory), args.batch, seed=0, max_steps=len(memory) // args.batch)

    def memory_loader():
        return torch.utils.data.DataLoader(
            EpochIndexed(memory), batch_sampler=sampler, collate_fn=collator, num_workers=args.workers
        )

    bank = wds.caption_bank(shard_dir, 1000)
    builder = PretrainingDataset(bank.add_column("image", [None] * len(bank)), **common)
    stream = wds.ShardStream(
        shard_dir,
        batch_size=args.batch,
        num_workers=args.workers,
        seed=0,
        shuffle_buffer=args.buffer,
        transform=StreamSamples(builder),
    )

    def stream_loader():
        stream.set_epoch(0)
        return stream.loader(collator)

    return memory_loader, stream_loader


def data_wait(shard_dir, cache_dir, out_dir, args):
    """data_wait_share of a short streaming pretraining run: (after the first window, first window, step time)."""
    values = dict(
        dataset=f"shards:{shard_dir}",
        val_dataset="shapes",
        val_scenes=64,
        cache_dir=cache_dir,
        output_dir=out_dir,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=4 * args.hidden,
        image_size=args.image_size,
        patch_size=8,
        vocab_size=1000,
        per_device_batch_size=args.batch,
        max_steps=args.steps,
        log_every=args.log_every,
        eval_every=0,
        save_every=0,
        eval_batches=1,
        warmup_steps=5,
        num_workers=args.workers,
        shuffle_buffer=args.buffer,
        negative_bank=1000,
        progress_bar=False,
        tensorboard=False,
    )
    pretrain(*parse_config(values=values))
    records = [r for r in read_jsonl(os.path.join(out_dir, "metrics.jsonl")) if r["split"] == "train"]
    steady = records[1:] or records
    waited = sum(r["data_wait_share"] * r["step_time"] for r in steady)
    return (
        waited / sum(r["step_time"] for r in steady),
        records[0]["data_wait_share"],
        statistics.median(r["step_time"] for r in steady),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-scenes", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples-per-shard", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--buffer", type=int, default=256, help="shuffle buffer of the stream")
    parser.add_argument("--repeats", type=int, default=3, help="epochs read by each path, alternating")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        cache, shard_dir = os.path.join(scratch, "cache"), os.path.join(scratch, "shards")
        rows = shapes_world.build_dataset(
            shapes_world.WorldConfig(num_scenes=args.num_scenes, seed=0, image_size=args.image_size), cache_dir=cache
        )
        started = time.perf_counter()
        written = wds.write_shards(rows, shard_dir, args.samples_per_shard)
        write_rate = written.manifest["samples"] / (time.perf_counter() - started)
        memory_loader, stream_loader = loaders(rows, shard_dir, args)
        memory_rates, stream_rates = [], []
        for _ in range(args.repeats):
            seconds, count = read_epoch(memory_loader())
            memory_rates.append(count / seconds)
            seconds, count = read_epoch(stream_loader())
            stream_rates.append(count / seconds)
        ratios = [s / m for s, m in zip(stream_rates, memory_rates)]
        share, first, step_time = data_wait(shard_dir, cache, os.path.join(scratch, "run"), args)

    print(
        f"world {args.num_scenes} scenes at {args.image_size} px, {len(written.manifest['shards'])} shards, "
        f"batch {args.batch}, {args.workers} workers, shuffle buffer {args.buffer}"
    )
    print(f"  write shards           : {write_rate:8.0f} samples/s")
    print(f"  in-memory dataset      : {statistics.median(memory_rates):8.0f} samples/s")
    print(
        f"  shard stream           : {statistics.median(stream_rates):8.0f} samples/s "
        f"(ratio {statistics.median(ratios):.2f})"
    )
    print(
        f"  pretraining, hidden {args.hidden} x {args.layers} layers: step {step_time * 1000:.0f} ms, "
        f"data wait {share:.3f} of step time ({first:.3f} in the first window)"
    )
    print(
        json.dumps(
            {
                "benchmark": "stream",
                "stream_vs_memory": round(statistics.median(ratios), 3),
                "stream_samples_per_s": round(statistics.median(stream_rates), 1),
                "memory_samples_per_s": round(statistics.median(memory_rates), 1),
                "ratio_per_repeat": [round(r, 3) for r in ratios],
                "write_samples_per_s": round(write_rate, 1),
                "data_wait_share": round(share, 4),
                "data_wait_share_first_window": round(first, 4),
                "step_time_s": round(step_time, 4),
                "workers": args.workers,
                "batch": args.batch,
            }
        )
    )


if __name__ == "__main__":
    main()
