"""WebDataset tar shards: written from any rows, streamed to many processes and dataloader workers, resumable.

Layout (img2dataset's): shard `00003.tar` holds, per sample, `{key}.jpg` (or `.png`, `.webp`: the encoded image as
given), `{key}.txt` (the caption) and `{key}.json` (metadata; `write_shards` adds all captions, the row's index and
annotations). A key is the shard number followed by the sample's number in the shard, zero-padded. `manifest.json`
lists every shard with its sample count; `build_manifest` writes one for shards written elsewhere.

Streaming (`ShardStream`, a `torch.utils.data.IterableDataset`):

- Epoch order: the shards are permuted by (seed, epoch); shard j of that order goes to process `j % world_size`,
  dataloader worker `(j // world_size) % num_workers` (webdataset's split by node, then by worker). Every shard is
  read by exactly one (process, worker), so every sample is read exactly once per epoch. A set with fewer shards than
  processes x workers is refused (some worker would have nothing to read).
- Exact counts: each (process, worker) yields exactly one item per sample the manifest announces: a row, or a skip
  marker `{"index", "skipped": reason}` for a corrupt or truncated shard or image, a missing shard, an empty or
  non-UTF-8 caption or an image above `max_pixels`. The collator already drops markers and the loop counts them; the
  per-source list is kept by `ShardStream.observe` in the main process. Nothing raises.
- Uneven ends (policy: pad): every worker's items are padded to whole batches, and each process is padded with
  further padding batches up to the largest per-process batch count of the epoch, computed from the manifest
  (`batches_per_epoch`, the same on every process). Padding items `{"index": -1, "padding": True}` are dropped by
  `StreamCollate` (a batch of padding only collates to an empty batch, as a batch of unreadable samples does), so no
  sample is read twice, none is left out, and every process runs the same number of steps: no hang.
- Resume: every item carries `stream_position = (epoch, rank, worker, emitted, read)`: `emitted` counts the items the
  worker yielded this epoch, `read` is the item's position in the worker's shard sequence (-1 for padding). Batches
  of one worker reach the main process in order, so the consumed items of a worker are its first `emitted + 1`;
  `observe(batch)` records per worker the consumed count and the read cursor (largest consumed `read` + 1), and
  `state_dict()` saves them. A resumed worker starts reading at its cursor (shards before it and samples before it in
  its shard are skipped without decoding) and yields exactly the items it still owed, so process batch counts stay
  equal. Without a shuffle buffer, items are yielded in read order: the resumed run sees exactly the unseen samples.
  With a buffer of size b, items read but still in the buffer at the checkpoint are lost: at most b per worker,
  counted in `lost_on_resume` / `lost_total` (and replaced by padding so the counts stay equal).

Why a torch IterableDataset and not `datasets.IterableDataset`: `split_dataset_by_node` gives each process whole
shards only when the shard count divides the process count (otherwise every process reads every sample and keeps
one in world_size), its resumable state cannot pad processes to equal length, and it has no per-source accounting of
bad samples. Here assignment, padding, skips and cursors are explicit and computed from the manifest.

The stream yields the rows the map-style path uses (`image` as `{"bytes", "path"}`, `captions`, `index`, `source`,
`annotations`, `scene` when written from the synthetic world), so a per-row transform (`transform(row, epoch)`, run
in the workers) turns them into model samples; a transform that raises ValueError / TypeError / OSError or returns
`{"skipped": ...}` gives a skip marker.
"""

from .formats import (
    CORRUPT_JSON,
    CORRUPT_SHARD,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    NO_CAPTION,
    NO_IMAGE,
    SHARD_DIGITS,
    SHARD_MISSING,
    STATE_VERSION,
    UNREADABLE_SAMPLE,
)
from .plan import WorkerPlan, epoch_shards, plan_epoch
from .reading import Shard, caption_bank, read_manifest, read_shard, shuffled, skip_marker
from .stream import ShardStream, StreamCollate
from .writing import WrittenShards, build_manifest, split_key, write_shards

__all__ = [
    "CORRUPT_JSON",
    "CORRUPT_SHARD",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "NO_CAPTION",
    "NO_IMAGE",
    "SHARD_DIGITS",
    "SHARD_MISSING",
    "STATE_VERSION",
    "Shard",
    "ShardStream",
    "StreamCollate",
    "UNREADABLE_SAMPLE",
    "WorkerPlan",
    "WrittenShards",
    "build_manifest",
    "caption_bank",
    "epoch_shards",
    "plan_epoch",
    "read_manifest",
    "read_shard",
    "shuffled",
    "skip_marker",
    "split_key",
    "write_shards",
]
