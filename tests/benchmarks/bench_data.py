"""Throughput of the synthetic shapes world on one core: scenes per second, 64 px by default.

Whole-scene generation = sampling the scene, its captions (with refs) and rendering its pixels;
PNG encoding and dataset writing are not included. Prints one JSON object on the last line.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import time

import numpy as np

from vlp.processing.worlds.shapes import WorldConfig, generate_examples, render_batch


def pin_to_one_core():
    """Pin this process to one CPU where the platform allows it; return the core or None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def time_whole(config: WorldConfig, batch: int) -> tuple[float, list]:
    """Seconds to sample, caption and render every scene of the world, batch by batch."""
    scenes, start = [], time.perf_counter()
    for first in range(0, config.num_scenes, batch):
        examples = generate_examples(config, first, min(first + batch, config.num_scenes))
        render_batch([e.scene for e in examples], config.image_size)
        scenes += [e.scene for e in examples]
    return time.perf_counter() - start, scenes


def time_render(scenes: list, image_size: int, batch: int) -> float:
    """Seconds to render already sampled scenes."""
    start = time.perf_counter()
    for first in range(0, len(scenes), batch):
        render_batch(scenes[first : first + batch], image_size)
    return time.perf_counter() - start


def best_of(repeats: int, fn):
    """The fastest of ``repeats`` runs (the least disturbed by other work on the machine)."""
    return min((fn() for _ in range(repeats)), key=lambda result: result[0] if isinstance(result, tuple) else result)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-scenes", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    core = pin_to_one_core()

    config = WorldConfig(num_scenes=args.num_scenes, image_size=args.image_size, seed=0)
    time_whole(WorldConfig(num_scenes=args.batch, image_size=args.image_size, seed=1), args.batch)  # warm caches
    whole, scenes = best_of(args.repeats, lambda: time_whole(config, args.batch))
    render_only = best_of(args.repeats, lambda: time_render(scenes, args.image_size, args.batch))
    noisy = WorldConfig(
        num_scenes=args.num_scenes // 4, image_size=args.image_size, noise_rate=0.2, background_noise=0.05
    )
    noisy_whole, _ = time_whole(noisy, args.batch)

    objects = np.mean([len(s.objects) for s in scenes])
    print(f"shapes world, {args.image_size}px, {args.num_scenes} scenes, {objects:.2f} objects/scene, core {core}")
    print(f"  whole scene generation : {args.num_scenes / whole:10.0f} scenes/s")
    print(f"  rendering only         : {args.num_scenes / render_only:10.0f} scenes/s")
    print(f"  with caption + pixel noise: {noisy.num_scenes / noisy_whole:7.0f} scenes/s")
    print(
        json.dumps(
            {
                "benchmark": "shapes_world",
                "scenes_per_s": round(args.num_scenes / whole, 1),
                "render_only_scenes_per_s": round(args.num_scenes / render_only, 1),
                "sample_and_caption_scenes_per_s": round(args.num_scenes / max(whole - render_only, 1e-9), 1),
                "noisy_scenes_per_s": round(noisy.num_scenes / noisy_whole, 1),
                "image_size": args.image_size,
                "num_scenes": args.num_scenes,
                "batch": args.batch,
                "objects_per_scene": round(float(objects), 3),
                "cores": 1 if core is not None else None,
                "target_scenes_per_s": 5000,
            }
        )
    )


if __name__ == "__main__":
    main()
