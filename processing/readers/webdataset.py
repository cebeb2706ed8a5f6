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

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from .. import strict_json
from ..random_streams import BUFFER_STREAM, SHARD_MIX_STREAM, SHARD_ORDER_STREAM
from .captions import (
    CORRUPT_IMAGE,
    EMPTY_CAPTION,
    MISSING_IMAGE,
    NON_UTF8_CAPTION,
    SkipReport,
    caption_problem,
    describe_error,
    header_problem,
    mixture_quotas,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "vlp-webdataset"
MANIFEST_VERSION = 1
STATE_VERSION = 1
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
DEFAULT_MAX_PIXELS = 2**25  # 33.5 M pixels, e.g. 8192 x 4096; larger images would stall a worker
SHARD_DIGITS = 5  # img2dataset's oom_shard_count

# rng stream ids: epoch shard order, mixture shard choice, shuffle buffers

# Skip reasons of the stream (caption and image reasons are shared with caption_readers).
SHARD_MISSING = "shard missing"
CORRUPT_SHARD = "corrupt or truncated shard"
NO_IMAGE = "no image in sample"
NO_CAPTION = "no caption in sample"
CORRUPT_JSON = "corrupt json"
UNREADABLE_SAMPLE = "unreadable sample"  # the transform refused it (e.g. the image does not decode)

_FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass
class WrittenShards:
    """What `write_shards` produced: the folder, its manifest and the rows it could not write."""

    out_dir: str
    manifest: dict[str, Any]
    report: SkipReport


def _encoded_image(value: Any) -> tuple[bytes, str | None]:
    """(encoded bytes, source path) of an image cell; a PIL image is encoded as PNG."""
    if isinstance(value, PIL.Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue(), None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"]), value.get("path")
        if value.get("path"):
            with open(value["path"], "rb") as handle:
                return handle.read(), value["path"]
    raise ValueError(f"unsupported image cell: {type(value).__name__}")


def _extension(data: bytes) -> str | None:
    """The file extension of encoded image bytes (from the header), or None when PIL cannot identify them."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return _FORMAT_EXTENSIONS.get(image.format, str(image.format).lower())
    except Exception:  # noqa: BLE001 - any PIL failure means "not an image"
        return None


def _captions_of(row: Mapping[str, Any]) -> list[Any]:
    captions = row.get("captions", row.get("caption"))
    return [captions] if isinstance(captions, str) else list(captions or ())


def _annotations_of(row: Mapping[str, Any]) -> Any:
    value = row.get("annotations")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value if value is not None else {}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same rows give the same bytes
    tar.addfile(info, io.BytesIO(data))


def _iter_rows(rows: Any) -> Iterable[Mapping[str, Any]]:
    """Rows of a `datasets.Dataset` (images left encoded) or of any iterable of dicts."""
    if (
        isinstance(rows, datasets.Dataset)
        and isinstance(rows.features.get("image"), datasets.Image)
        and rows.features["image"].decode
    ):
        rows = rows.cast_column("image", datasets.Image(decode=False))
    return rows


def write_shards(
    rows: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    samples_per_shard: int,
    *,
    source: str | None = None,
    check_images: bool = True,
) -> WrittenShards:
    """Write rows (a reader's, the synthetic world's, any dicts with `image` and `captions`) as tar shards.

    Each sample is `{key}.{ext}` (the image bytes as stored, extension from the image header), `{key}.txt` (the first
    caption) and `{key}.json` (`key`, `caption`, `captions`, `index`, `source`, `annotations`, `scene` when the row has
    one). Rows whose image is missing or (with `check_images`) not an image, or that have no usable caption, are
    skipped and listed in the report. `manifest.json` (shard names and counts) is written last; shards are written
    under a temporary name and renamed, so a folder with a manifest is complete.
    """
    if int(samples_per_shard) < 1:
        raise ValueError(f"samples_per_shard must be >= 1; got {samples_per_shard}")
    samples_per_shard = int(samples_per_shard)
    out_dir = os.fspath(out_dir)
    source = source or os.path.basename(os.path.normpath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    report = SkipReport()
    writer = _ShardWriter(out_dir, samples_per_shard)
    for position, row in enumerate(_iter_rows(rows)):
        report.read[source] += 1
        sample = _checked_sample(row, f"row {position}", source, report, check_images)
        if sample is None:
            continue
        captions, data, extension = sample
        meta = {
            "caption": captions[0],
            "captions": captions,
            "index": row.get("index", position),
            "source": row.get("source", source),
            "annotations": _annotations_of(row),
        }
        if row.get("scene") is not None:
            meta["scene"] = row["scene"]
        writer.add(data, extension, captions[0], meta)
        report.kept[source] += 1
    writer.close()
    manifest = _manifest(source, writer.shards, samples_per_shard)
    _write_manifest(out_dir, manifest)
    return WrittenShards(out_dir, manifest, report)


def _checked_sample(row, where, source, report, check_images):
    """(usable captions, image bytes, extension) of a row, or None with the reason added to `report`."""
    captions, problems = [], []
    for caption in _captions_of(row):
        problem = caption_problem(caption) if isinstance(caption, str) else EMPTY_CAPTION
        (problems if problem else captions).append(problem or caption)
    if not captions:
        report.add(source, where, problems[0] if problems else EMPTY_CAPTION, "no usable caption")
        return None
    try:
        data, path = _encoded_image(row.get("image"))
    except FileNotFoundError as error:
        report.add(source, where, MISSING_IMAGE, str(error.filename))
        return None
    except (OSError, ValueError) as error:
        report.add(source, where, CORRUPT_IMAGE, describe_error(error))
        return None
    extension = _extension(data)
    if extension is None:
        if check_images:
            report.add(source, where, CORRUPT_IMAGE, "not an image PIL can identify")
            return None
        extension = posixpath.splitext(path or "")[1].lstrip(".").lower() or "jpg"
    return captions, data, extension


class _ShardWriter:
    """Samples into numbered tar shards of `samples_per_shard`, each written under a temporary name and renamed
    when full (or at `close`), so that a shard with its final name is complete."""

    def __init__(self, out_dir, samples_per_shard):
        self.out_dir, self.samples_per_shard = out_dir, samples_per_shard
        self.digits = max(1, math.ceil(math.log10(samples_per_shard)))
        self.shards: list[dict[str, Any]] = []
        self.tar, self.tmp_path, self.in_shard = None, None, 0

    def add(self, data, extension, caption, meta):
        """One sample: `{key}.{extension}`, `{key}.txt` (`caption`) and `{key}.json` (`meta` with its key)."""
        if self.tar is None or self.in_shard == self.samples_per_shard:
            self.close()
            name = f"{len(self.shards):0{SHARD_DIGITS}d}.tar"
            self.tmp_path = os.path.join(self.out_dir, f".{name}.tmp")
            self.tar = tarfile.open(self.tmp_path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - see close
            self.shards.append({"name": name, "samples": 0})
            self.in_shard = 0
        key = f"{len(self.shards) - 1:0{SHARD_DIGITS}d}{self.in_shard:0{self.digits}d}"
        meta = {"key": key, **meta}
        _add_member(self.tar, f"{key}.{extension}", data)
        _add_member(self.tar, f"{key}.txt", caption.encode("utf-8"))
        _add_member(self.tar, f"{key}.json", strict_json.dumps(meta, sort_keys=True).encode("utf-8"))
        self.shards[-1]["samples"] += 1
        self.in_shard += 1

    def close(self):
        """The open shard closed and renamed to its final name (nothing when none is open)."""
        if self.tar is None:
            return
        self.tar.close()
        os.replace(self.tmp_path, os.path.join(self.out_dir, self.shards[-1]["name"]))
        self.tar = None


def _manifest(source: str, shards: list[dict[str, Any]], samples_per_shard: int | None) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "source": source,
        "samples": sum(shard["samples"] for shard in shards),
        "samples_per_shard": samples_per_shard,
        "shards": shards,
    }


def _write_manifest(out_dir: str, manifest: dict[str, Any]) -> None:
    tmp = os.path.join(out_dir, f".{MANIFEST_NAME}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        strict_json.dump(manifest, handle, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST_NAME))


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, as webdataset splits them: at the first dot of the file name."""
    directory, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return (posixpath.join(directory, stem) if directory else stem), extension.lower()


def _member_groups(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {extension: member}) for runs of consecutive members with the same key; headers only, no data read."""
    key, members = None, {}
    while True:
        member = tar.next()
        if member is None:
            break
        if not member.isfile():
            continue
        member_key, extension = split_key(member.name)
        if member_key != key and members:
            yield key, members
            members = {}
        key = member_key
        members.setdefault(extension, member)
    if members:
        yield key, members


def build_manifest(
    shard_dir: str | os.PathLike, source: str | None = None, suffix: str = ".tar"
) -> tuple[dict[str, Any], SkipReport]:
    """Count the samples of shards written elsewhere (e.g. by img2dataset) and write `manifest.json`.

    Only headers are read. A shard that cannot be read to its end keeps the samples counted before the damage (the
    report lists it); the stream will then read exactly those.
    """
    shard_dir = os.fspath(shard_dir)
    source = source or os.path.basename(os.path.normpath(shard_dir))
    report = SkipReport()
    shards = []
    for name in sorted(n for n in os.listdir(shard_dir) if n.endswith(suffix) and not n.startswith(".")):
        count = 0
        try:
            with tarfile.open(os.path.join(shard_dir, name), "r:") as tar:
                for _ in _member_groups(tar):
                    count += 1
        except (tarfile.TarError, OSError, EOFError) as error:
            report.add(source, name, CORRUPT_SHARD, f"counted {count} samples before {describe_error(error)}")
        shards.append({"name": name, "samples": count})
    manifest = _manifest(source, shards, None)
    _write_manifest(shard_dir, manifest)
    return manifest, report


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One tar shard: where it is, how many samples the manifest gives it, its source and its first global index."""

    path: str
    name: str
    samples: int
    source: str
    first_index: int


def read_manifest(shard_dir: str | os.PathLike, first_index: int = 0) -> list[Shard]:
    """The shards listed in `shard_dir/manifest.json`; global sample indices start at `first_index`."""
    shard_dir = os.fspath(shard_dir)
    path = os.path.join(shard_dir, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no manifest; write shards with write_shards() or count existing ones with "
            f"build_manifest({shard_dir!r})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid manifest ({error})") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or not isinstance(manifest.get("shards"), list)
    ):
        raise ValueError(f"{path}: expected a {MANIFEST_FORMAT!r} manifest with a 'shards' list")
    source = str(manifest.get("source") or os.path.basename(os.path.normpath(shard_dir)))
    shards, start = [], int(first_index)
    for i, entry in enumerate(manifest["shards"]):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("samples"), int)
            or entry["samples"] < 0
        ):
            raise ValueError(f"{path}: shards[{i}]: expected {{'name': str, 'samples': int >= 0}}; got {entry!r:.80}")
        shards.append(Shard(os.path.join(shard_dir, entry["name"]), entry["name"], entry["samples"], source, start))
        start += entry["samples"]
    return shards


def skip_marker(source: str, index: int, where: str, reason: str, detail: str = "") -> dict[str, Any]:
    """An item standing for an unreadable sample: the collator drops it, `observe` lists it under its source."""
    return {
        "index": int(index),
        "skipped": f"{reason}: {detail} ({source} {where})",
        "skip": {"source": source, "where": where, "reason": reason, "detail": detail},
    }


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    data = handle.read()
    if len(data) != member.size:  # a truncated archive can return short data
        raise tarfile.ReadError(f"unexpected end of data in {member.name}")
    return data


def _sample(
    tar: tarfile.TarFile,
    shard: Shard,
    key: str,
    members: dict[str, tarfile.TarInfo],
    index: int,
    max_pixels: int | None,
) -> dict[str, Any]:
    """The row of one sample, or a skip marker. Truncation errors propagate (the rest of the shard is lost)."""
    where = f"{shard.name}:{key}"
    image_extension = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_extension is None:
        return skip_marker(shard.source, index, where, NO_IMAGE, f"members {sorted(members)}")
    data = _read_member(tar, members[image_extension])
    meta: Any = {}
    if "json" in members:
        raw = _read_member(tar, members["json"])
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return skip_marker(shard.source, index, where, CORRUPT_JSON, describe_error(error))
        if not isinstance(meta, dict):
            return skip_marker(shard.source, index, where, CORRUPT_JSON, f"not an object: {type(meta).__name__}")
    if isinstance(meta.get("captions"), list):
        texts = meta["captions"]
    elif "txt" in members:
        raw = _read_member(tar, members["txt"])
        try:
            texts = [raw.decode("utf-8")]
        except UnicodeDecodeError:
            return skip_marker(shard.source, index, where, NON_UTF8_CAPTION, repr(raw[:60]))
    elif isinstance(meta.get("caption"), str):
        texts = [meta["caption"]]
    else:
        return skip_marker(shard.source, index, where, NO_CAPTION, f"members {sorted(members)}")
    captions = [text for text in texts if isinstance(text, str) and caption_problem(text) is None]
    if not captions:
        first = texts[0] if texts else ""
        reason = (caption_problem(first) if isinstance(first, str) else None) or EMPTY_CAPTION
        return skip_marker(shard.source, index, where, reason, repr(first)[:80])
    problem = header_problem(io.BytesIO(data), max_pixels)
    if problem is not None:
        return skip_marker(shard.source, index, where, *problem)
    if isinstance(meta.get("annotations"), (dict, list)):
        annotations = meta["annotations"]
    else:  # img2dataset metadata (url, width, height, status, ...)
        annotations = {k: v for k, v in meta.items() if k not in ("caption", "captions", "key", "scene")}
    row = {
        "image": {"bytes": data, "path": f"{shard.name}/{key}.{image_extension}"},
        "captions": captions,
        "index": int(index),
        "source": shard.source,
        "shard": shard.name,
        "key": key,
        "annotations": strict_json.dumps(annotations, sort_keys=True),
    }
    if meta.get("scene") is not None:
        row["scene"] = meta["scene"]
    return row


def read_shard(
    shard: Shard, start: int = 0, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, row or skip marker) for offsets `start .. shard.samples - 1`: exactly the manifest's count.

    Samples before `start` are passed over by their headers (no data read). A missing shard, or the part of a shard
    after damage (truncation, a corrupt header), gives skip markers; samples beyond the manifest count are ignored.
    """
    offset, failure = 0, None
    try:
        tar = tarfile.open(shard.path, "r:")  # noqa: SIM115 - closed by the `with tar` below
    except FileNotFoundError:
        tar, failure = None, (SHARD_MISSING, shard.path)
    except (tarfile.TarError, OSError, EOFError) as error:
        tar, failure = None, (CORRUPT_SHARD, f"cannot open: {describe_error(error)}")
    if tar is not None:
        with tar:
            groups = _member_groups(tar)
            while offset < shard.samples:
                item = None
                try:
                    key, members = next(groups)
                    if offset >= start:
                        item = _sample(tar, shard, key, members, shard.first_index + offset, max_pixels)
                except StopIteration:
                    failure = (CORRUPT_SHARD, f"ends after {offset} of the manifest's {shard.samples} samples")
                    break
                except (tarfile.TarError, OSError, EOFError) as error:
                    failure = (CORRUPT_SHARD, f"at sample {offset}: {describe_error(error)}")
                    break
                if item is not None:
                    yield offset, item
                offset += 1
    for rest in range(max(offset, start), shard.samples):
        yield rest, skip_marker(shard.source, shard.first_index + rest, f"{shard.name}#{rest}", *failure)


def caption_bank(sources: str | os.PathLike | Sequence[str | os.PathLike], size: int) -> datasets.Dataset:
    """Captions (and scenes) of the first readable samples of each source, `size` in all (split evenly).

    A fixed, layout-independent pool for what streaming cannot give: ITM negatives drawn from "another row" and the
    captions to train a tokenizer on. Rows: `captions` (+ `scene` when every sample has one).
    """
    folders = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    rows: list[dict[str, Any]] = []
    first = 0
    for folder, quota in zip(folders, mixture_quotas(int(size), [1.0] * len(folders))):
        shards = read_manifest(folder, first_index=first)
        first += sum(shard.samples for shard in shards)
        taken = 0
        for shard in shards:
            for _, item in read_shard(shard, max_pixels=None):
                if taken == quota:
                    break
                if "skipped" not in item:
                    rows.append({"captions": item["captions"], "scene": item.get("scene")})
                    taken += 1
            if taken == quota:
                break
    columns = {"captions": [row["captions"] for row in rows]}
    if rows and all(row["scene"] is not None for row in rows):
        columns["scene"] = [row["scene"] for row in rows]
    return datasets.Dataset.from_dict(columns)


def shuffled(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A shuffle buffer of `size` items: each new item replaces a random one, which is yielded; then a random drain."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    while buffer:
        j = int(rng.integers(len(buffer)))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        yield buffer.pop()


# --------------------------------------------------------------------------------------------
# The epoch plan: a pure function of the manifests, (seed, epoch) and the layout
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------


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


__all__ = [
    "CORRUPT_JSON",
    "CORRUPT_SHARD",
    "DEFAULT_MAX_PIXELS",
    "MANIFEST_NAME",
    "NO_CAPTION",
    "NO_IMAGE",
    "SHARD_MISSING",
    "UNREADABLE_SAMPLE",
    "Shard",
    "ShardStream",
    "StreamCollate",
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
