"""The epoch plan: a pure function of the manifests, (seed, epoch) and the process/worker layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...random_streams import SHARD_MIX_STREAM, SHARD_ORDER_STREAM
from ..captions import mixture_quotas
from .reading import Shard


@dataclass(frozen=True)
class WorkerPlan:
    """One (process, worker)'s share of an epoch.

    `samples` items come from its shards (rows or skip markers, one per manifest sample); `items` is that plus
    padding, a whole number of batches, chosen so that every process has the same number of batches.
    """

    rank: int
    worker: int
    shards: tuple[Shard, ...]
    samples: int
    items: int


def epoch_shards(
    sources: Sequence[Sequence[Shard]],
    seed: int,
    epoch: int,
    weights: Sequence[float] | None = None,
    samples_per_epoch: int | None = None,
) -> list[Shard]:
    """The shards of one epoch in their order, a pure function of (sources, weights, seed, epoch).

    Without weights: every shard of every source once. With weights: each source k contributes shards (a fresh
    permutation per (seed, epoch, k, pass), cycling when it must give more than it has) until its samples come
    closest to its share of `samples_per_epoch` (default: all samples), at least one shard. Mixing is per shard, as
    open_clip's upsampling factors; the shuffle buffer then mixes samples inside a worker. An upsampled shard is read
    more than once in the epoch, its samples keeping their indices (so their per-sample draws repeat).
    """
    if weights is None:
        shards = [shard for source in sources for shard in source]
    else:
        if len(weights) != len(sources):
            raise ValueError(f"need one weight per source: {len(sources)} sources, {len(weights)} weights")
        if any(not np.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"mixture weights must be finite and > 0; got {list(weights)}")
        total = sum(shard.samples for source in sources for shard in source)
        quotas = mixture_quotas(int(samples_per_epoch or total), weights)
        shards = []
        for k, (source, quota) in enumerate(zip(sources, quotas)):
            if not source or sum(shard.samples for shard in source) == 0:
                raise ValueError(f"source {k} has no samples; it cannot be mixed with weight {weights[k]}")
            chosen, count, cycle = [], 0, 0
            while True:
                order = np.random.default_rng([seed, epoch, k, cycle, SHARD_MIX_STREAM]).permutation(len(source))
                full = False
                for j in order:
                    shard = source[int(j)]
                    if chosen and count + shard.samples / 2 > quota:
                        full = True
                        break
                    chosen.append(shard)
                    count += shard.samples
                if full:
                    break
                cycle += 1
            shards.extend(chosen)
    order = np.random.default_rng([seed, epoch, SHARD_ORDER_STREAM]).permutation(len(shards))
    return [shards[int(j)] for j in order]


def plan_epoch(
    shards: Sequence[Shard], world_size: int, num_workers: int, batch_size: int
) -> dict[tuple[int, int], WorkerPlan]:
    """Each (rank, worker)'s shards and item count for an epoch whose shard order is `shards`.

    Shard j goes to rank `j % world_size`, worker `(j // world_size) % workers` (workers = max(1, num_workers)).
    A worker's items are padded to whole batches; a rank with fewer batches than the largest rank gets padding
    batches, each to its worker with the fewest batches (lowest id first).
    """
    workers = max(1, int(num_workers))
    slots = world_size * workers
    if len(shards) < slots:
        raise ValueError(
            f"{len(shards)} shard(s) cannot feed {world_size} process(es) x {workers} dataloader worker(s): every "
            f"worker needs at least one shard, so at least {slots} shards are needed. Write more, smaller shards "
            f"(write_shards(..., samples_per_shard=...)) or use fewer processes or workers."
        )
    assigned: dict[tuple[int, int], list[Shard]] = {(r, w): [] for r in range(world_size) for w in range(workers)}
    for j, shard in enumerate(shards):
        assigned[(j % world_size, (j // world_size) % workers)].append(shard)
    samples = {key: sum(shard.samples for shard in group) for key, group in assigned.items()}
    batches = {key: -(-count // batch_size) for key, count in samples.items()}
    per_rank = max(sum(batches[(r, w)] for w in range(workers)) for r in range(world_size))
    for r in range(world_size):
        for _ in range(per_rank - sum(batches[(r, w)] for w in range(workers))):
            batches[(r, min(range(workers), key=lambda w: (batches[(r, w)], w)))] += 1
    return {
        key: WorkerPlan(key[0], key[1], tuple(assigned[key]), samples[key], batches[key] * batch_size)
        for key in assigned
    }
