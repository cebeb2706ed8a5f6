"""ShardStream, the resumable stream over shards, and StreamCollate."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...random_streams import BUFFER_STREAM
from ..captions import SkipReport, describe_error
from .formats import DEFAULT_MAX_PIXELS, STATE_VERSION, UNREADABLE_SAMPLE
from .plan import WorkerPlan, epoch_shards, plan_epoch
from .reading import Shard, read_manifest, read_shard, shuffled, skip_marker


class ShardStream(torch.utils.data.IterableDataset):
    r"""
    Streams the samples of one or more shard folders to one process's dataloader workers (see the module docstring
    for the assignment, padding and resume rules).

    Args:
        sources: a folder with `manifest.json`, or several (their sources are mixed).
        batch_size: the per-process batch size the DataLoader uses (`loader()` passes it); padding is in its units.
        rank, world_size: this process and the number of processes.
        num_workers: the DataLoader's worker count (0: read in the main process). It is checked in the workers.
        seed: the shard order, the mixture and the shuffle buffers are functions of (seed, epoch, ...).
        weights, samples_per_epoch: mix several sources per shard in these proportions (see `epoch_shards`);
            without weights every shard of every source is read once per epoch.
        shuffle_buffer: items per worker held for shuffling (0 or 1: read order); seeded from
            (seed, epoch, rank, worker, cursor).
        max_pixels: images with more pixels (from the header) are skipped; None: no limit.
        transform: `(row, epoch) -> sample`, run in the workers (decoding and preprocessing happen there).
        gather: a function turning this process's `[state]` into the list over all processes (accelerate's
            `gather_object`), called in `state_dict()` so that the main process saves every rank's cursors.
    """

    def __init__(
        self,
        sources: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        transform: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
        gather: Callable[[list], list] | None = None,
    ):
        folders = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
        if not folders:
            raise ValueError("ShardStream needs at least one shard folder")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
        if int(num_workers) < 0 or int(shuffle_buffer) < 0:
            raise ValueError(f"num_workers and shuffle_buffer must be >= 0; got {num_workers}, {shuffle_buffer}")
        self.sources: list[list[Shard]] = []
        first = 0
        for folder in folders:
            shards = read_manifest(folder, first_index=first)
            first += sum(shard.samples for shard in shards)
            self.sources.append(shards)
        names = [self.source_name(k) for k in range(len(self.sources))]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be distinct (the manifests' 'source'); got {names}")
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.workers = max(1, self.num_workers)
        self.seed = int(seed)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = int(shuffle_buffer)
        self.max_pixels = max_pixels
        self.transform = transform
        self.gather = gather
        self.report = SkipReport()
        self.lost_total = 0  # items lost to shuffle buffers over all resumes of this run (this rank)
        self.lost_on_resume = 0  # lost by the last load_state_dict (this rank)
        self.set_epoch(0)

    def source_name(self, k: int) -> str:
        return self.sources[k][0].source if self.sources[k] else f"source{k}"

    # -- the plan ------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning (call before creating the DataLoader iterator)."""
        self.epoch = int(epoch)
        self._plan = plan_epoch(
            epoch_shards(self.sources, self.seed, self.epoch, self.weights, self.samples_per_epoch),
            self.world_size,
            self.num_workers,
            self.batch_size,
        )
        self._start: dict[int, dict[str, int]] = {}  # worker -> {"emitted", "cursor"} to resume from
        self._progress: dict[int, dict[str, int]] = {}  # worker -> consumed {"emitted", "cursor", "real"}

    def plan(self) -> dict[tuple[int, int], WorkerPlan]:
        """The current epoch's plan for every (rank, worker)."""
        return self._plan

    @property
    def batches_per_epoch(self) -> int:
        """Batches every process yields in a whole epoch (the same on every rank)."""
        return sum(self._plan[(self.rank, w)].items for w in range(self.workers)) // self.batch_size

    def __len__(self) -> int:
        """Items this process still yields in the current epoch (padding included; whole batches)."""
        return sum(
            self._plan[(self.rank, w)].items - self._start.get(w, {}).get("emitted", 0) for w in range(self.workers)
        )

    # -- iteration (runs in the workers) -------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, count = (info.id, info.num_workers) if info is not None else (0, 1)
        if count != self.workers:
            raise RuntimeError(
                f"ShardStream was planned for num_workers={self.num_workers} but runs in a "
                f"DataLoader with {count if info is not None else 0} workers; build the loader with "
                f".loader()"
            )
        plan = self._plan[(self.rank, worker)]
        start = self._start.get(worker, {"emitted": 0, "cursor": 0})
        items: Iterable[tuple[int, dict[str, Any]]] = self._read(plan, start["cursor"])
        if self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, start["cursor"], BUFFER_STREAM])
            items = shuffled(items, self.shuffle_buffer, rng)
        emitted = start["emitted"]
        for read, item in items:
            if emitted >= plan.items:
                break
            yield self._finish(item, worker, emitted, read)
            emitted += 1
        while emitted < plan.items:
            yield {"index": -1, "padding": True, "stream_position": (self.epoch, self.rank, worker, emitted, -1)}
            emitted += 1

    def _read(self, plan: WorkerPlan, cursor: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(read position, item) of a worker's shard sequence from `cursor` on."""
        position = 0
        for shard in plan.shards:
            if position + shard.samples > cursor:
                for offset, item in read_shard(shard, max(0, cursor - position), self.max_pixels):
                    yield position + offset, item
            position += shard.samples

    def _finish(self, item: dict[str, Any], worker: int, emitted: int, read: int) -> dict[str, Any]:
        """Apply the transform to a row (a refusal becomes a skip marker) and attach the stream position."""
        if self.transform is not None and "skipped" not in item:
            where = f"{item['shard']}:{item['key']}"
            try:
                sample = self.transform(item, self.epoch)
            except (ValueError, TypeError, OSError) as error:
                sample = {"skipped": describe_error(error)}
            if "skipped" in sample:
                sample = skip_marker(item["source"], item["index"], where, UNREADABLE_SAMPLE, str(sample["skipped"]))
            item = sample
        item["stream_position"] = (self.epoch, self.rank, worker, emitted, read)
        return item

    # -- the main process: consumption, state, loader ------------------------------------------

    def loader(self, collate_fn: Callable[[list], Any] | None = None, **kwargs: Any) -> torch.utils.data.DataLoader:
        """A DataLoader with this stream's batch size and worker count, `StreamCollate(collate_fn)` and
        non-persistent workers (they copy the stream, epoch and resume point included, at each `iter()`)."""
        if kwargs.get("persistent_workers"):
            raise ValueError("persistent workers would keep an old epoch and resume point; leave them off")
        return torch.utils.data.DataLoader(
            self,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=StreamCollate(collate_fn),
            **kwargs,
        )

    def _progress_of(self, worker: int) -> dict[str, int]:
        if worker not in self._progress:
            start = self._start.get(worker, {"emitted": 0, "cursor": 0})
            self._progress[worker] = {"emitted": start["emitted"], "cursor": start["cursor"], "real": start["cursor"]}
        return self._progress[worker]

    def observe(self, batch: Mapping[str, Any]) -> None:
        """Record a batch the training loop consumed (call on every batch, in order, in the main process)."""
        for epoch, rank, worker, emitted, read in batch["stream_positions"]:
            if epoch != self.epoch or rank != self.rank:
                raise ValueError(
                    f"batch of epoch {epoch}, rank {rank} observed by the stream of epoch {self.epoch}, "
                    f"rank {self.rank}: call set_epoch() before iterating a new epoch"
                )
            progress = self._progress_of(worker)
            progress["emitted"] = max(progress["emitted"], emitted + 1)
            if read >= 0:
                progress["cursor"] = max(progress["cursor"], read + 1)
                progress["real"] += 1
        for entry in batch.get("stream_skipped", ()):
            self.report.add(**entry)

    def layout(self) -> dict[str, Any]:
        """What a mid-epoch resume must find unchanged."""
        return {
            "seed": self.seed,
            "world_size": self.world_size,
            "workers": self.workers,
            "batch_size": self.batch_size,
            "weights": self.weights,
            "samples_per_epoch": self.samples_per_epoch,
            "sources": [self.source_name(k) for k in range(len(self.sources))],
            "shards": [[shard.name for shard in source] for source in self.sources],
            "samples": [[shard.samples for shard in source] for source in self.sources],
        }

    def state_dict(self) -> dict[str, Any]:
        """Epoch, layout and every worker's consumed count and read cursor (all ranks' when `gather` is set)."""
        local = {
            "rank": self.rank,
            "lost_total": self.lost_total,
            "workers": {str(w): dict(self._progress_of(w)) for w in range(self.workers)},
        }
        gathered = self.gather([local]) if self.gather is not None else [local]
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "layout": self.layout(),
            "ranks": {str(entry["rank"]): entry for entry in gathered},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the saved epoch: each worker from its cursor, owing the items it had not yet delivered.

        Items read before the cursor but never consumed (they were in a shuffle buffer) are lost: their number is
        `lost_on_resume` (added to `lost_total`). A mid-epoch state needs the same layout (processes, workers, batch
        size, seed, shards); a state taken before anything was consumed resumes under any layout.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')!r}; expected {STATE_VERSION}")
        ranks = state["ranks"]
        consumed = any(w["emitted"] > 0 for entry in ranks.values() for w in entry["workers"].values())
        if consumed:
            saved, current = state["layout"], self.layout()
            for key in current:
                if saved.get(key) != current[key]:
                    raise ValueError(
                        f"cannot resume the stream mid-epoch: {key} was {saved.get(key)!r} and is "
                        f"{current[key]!r}; resume with the same processes, workers, batch size, seed "
                        f"and shards (or from a checkpoint at an epoch boundary)"
                    )
            if str(self.rank) not in ranks:
                raise ValueError(
                    f"the stream state has no cursors for rank {self.rank} (ranks "
                    f"{sorted(ranks)}): it was saved without `gather` on a multi-process run"
                )
        self.set_epoch(int(state["epoch"]))
        entry = ranks.get(str(self.rank), {})
        self.lost_on_resume = 0
        for worker, saved in (entry.get("workers", {}) if consumed else {}).items():
            self._start[int(worker)] = {"emitted": int(saved["emitted"]), "cursor": int(saved["cursor"])}
            self.lost_on_resume += int(saved["cursor"]) - int(saved["real"])
        self.lost_total = int(entry.get("lost_total", 0)) + self.lost_on_resume


class StreamCollate:
    """Collate for `ShardStream` items: drops padding, keeps positions and per-source skips beside the batch.

    The inner `collate_fn` (e.g. `PretrainingCollator`) gets the real items (rows or samples and skip markers); with
    none, the batch is `{"samples": [...]}`. Adds `stream_positions` (for `ShardStream.observe`) and
    `stream_skipped` (the skip entries with their source).
    """

    def __init__(self, collate_fn: Callable[[list], Any] | None = None):
        self.collate_fn = collate_fn

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        positions, skipped, kept = [], [], []
        for item in items:
            item = dict(item)
            positions.append(tuple(item.pop("stream_position")))
            if item.get("padding"):
                continue
            if "skip" in item:
                skipped.append(item.pop("skip"))
            kept.append(item)
        batch = self.collate_fn(kept) if self.collate_fn is not None else {"samples": kept}
        if not isinstance(batch, dict):
            raise TypeError(f"the inner collate_fn must return a dict; got {type(batch).__name__}")
        batch["stream_positions"] = positions
        batch["stream_skipped"] = skipped
        return batch
