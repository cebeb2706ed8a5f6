"""Reading a manifest and one shard (each sample a row or a skip marker), caption banks and shuffle buffers."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from ... import strict_json
from ..captions import EMPTY_CAPTION, NON_UTF8_CAPTION, caption_problem, describe_error, header_problem, mixture_quotas
from .formats import (
    CORRUPT_JSON,
    CORRUPT_SHARD,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    NO_CAPTION,
    NO_IMAGE,
    SHARD_MISSING,
)
from .writing import _member_groups


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
