"""Writing shards from any rows, and manifests for shards written elsewhere."""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import PIL.Image

from ... import strict_json
from ..captions import CORRUPT_IMAGE, EMPTY_CAPTION, MISSING_IMAGE, SkipReport, caption_problem, describe_error
from .formats import _FORMAT_EXTENSIONS, CORRUPT_SHARD, MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, SHARD_DIGITS


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
