"""Real image-caption collections read into the rows the synthetic world produces, and several sources mixed.

A row is `{"image": {"bytes": None, "path": absolute path}, "captions": [str, ...], "index": int, "source": str,
"annotations": JSON string}` with `image` an undecoded `datasets.Image(decode=False)` column, so that
`PretrainingDataset` decodes one image at a time in the dataloader workers.

Two layouts are read:

- the ALBEF / BLIP captions file: a JSON list (or JSON Lines) of `{"image": relative path, "caption": text or
  [texts], ...}` with an image root;
- COCO captions: `{"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "id", "caption"}]}` with an
  image root.

By default the records of one image are grouped into one row with several captions (as COCO's five captions and the
synthetic world's rows): an epoch then visits every image once and `PretrainingDataset` draws one of its captions
from (seed, epoch, index). `group_by_image=False` keeps one row per record (ALBEF's pretraining loop, where an
epoch visits every pair).

Data problems never stop a run: missing, empty, non-text or non-UTF-8 captions (a record without a 'caption' key,
or with `null`, is one) and missing images are skipped, counted and listed per source in a `SkipReport`. A
malformed record (not an object, no image path, an annotation for an image that is not listed) is a broken file,
not a data problem: it raises `ValueError` naming the file and the record.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from .. import strict_json
from ..random_streams import MIX_ORDER_STREAM, MIX_QUOTA_STREAM

# Skip reasons (the categories a SkipReport counts; the detail of each entry says more).
EMPTY_CAPTION = "empty caption"
NON_UTF8_CAPTION = "caption is not valid UTF-8"
MISSING_IMAGE = "image file not found"
NON_UTF8_PATH = "image path is not valid UTF-8"
CORRUPT_IMAGE = "corrupt image"
HUGE_IMAGE = "image too large"
NO_CAPTIONS = "image has no captions"
MISSING_CAPTION = "no caption"  # the record has no 'caption' (or 'captions') key, or null
NOT_TEXT_CAPTION = "caption is not text"

ROW_COLUMNS = ("image", "captions", "index", "source", "annotations")


def row_features() -> datasets.Features:
    """The columns every reader returns (`scene` is added by `concatenate_sources` only when all sources have it)."""
    return datasets.Features(
        {
            "image": datasets.Image(decode=False),
            "captions": datasets.List(datasets.Value("string")),
            "index": datasets.Value("int64"),
            "source": datasets.Value("string"),
            "annotations": datasets.Value("string"),
        }
    )


@dataclass
class SkipReport:
    """What was skipped, per source: one entry per skipped item, counted by reason.

    `entries` are `{"source", "where" (file:record or shard:key), "reason" (one of the module's constants),
    "detail"}`; `read` counts the items each source offered and `kept` those that became rows or samples.
    """

    entries: list[dict[str, str]] = field(default_factory=list)
    read: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)

    def add(self, source: str, where: str, reason: str, detail: str = "") -> None:
        self.entries.append({"source": source, "where": where, "reason": reason, "detail": detail})

    def counts(self) -> dict[str, dict[str, int]]:
        """{source: {reason: number of skipped items}}."""
        out: dict[str, dict[str, int]] = {}
        for entry in self.entries:
            by_reason = out.setdefault(entry["source"], {})
            by_reason[entry["reason"]] = by_reason.get(entry["reason"], 0) + 1
        return out

    def total(self, source: str | None = None) -> int:
        return sum(1 for entry in self.entries if source is None or entry["source"] == source)

    def merge(self, other: SkipReport) -> SkipReport:
        self.entries.extend(other.entries)
        self.read.update(other.read)
        self.kept.update(other.kept)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": list(self.entries),
            "read": dict(self.read),
            "kept": dict(self.kept),
            "counts": self.counts(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkipReport:
        return cls(list(data.get("entries", ())), Counter(data.get("read", {})), Counter(data.get("kept", {})))


def is_valid_text(text: str) -> bool:
    """False for strings that cannot be UTF-8 encoded (undecodable bytes kept as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def caption_problem(text: Any) -> str | None:
    """The skip reason of one caption (as read from the file), or None when it is a usable string."""
    if text is None:
        return MISSING_CAPTION
    if not isinstance(text, str):
        return NOT_TEXT_CAPTION
    if not is_valid_text(text):
        return NON_UTF8_CAPTION
    if not text.strip():
        return EMPTY_CAPTION
    return None


def image_problem(path: str, max_pixels: int | None = None) -> tuple[str, str] | None:
    """(reason, detail) when the image file cannot be used, else None.

    Only checks existence unless `max_pixels` is given; then the header is opened (no pixel decode) to reject
    non-images and images larger than `max_pixels` (width x height).
    """
    if not is_valid_text(path):
        return NON_UTF8_PATH, repr(path)
    if not os.path.isfile(path):
        return MISSING_IMAGE, path
    if max_pixels is None:
        return None
    return header_problem(path, max_pixels)


def describe_error(error: BaseException) -> str:
    """`Type: message` of an exception, with object addresses (`at 0x7f...`, different in every process) removed so
    that the same bad sample is described the same way in every run."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(error).__name__}: {error}")


def header_problem(source: Any, max_pixels: int | None) -> tuple[str, str] | None:
    """Read an image header (a path or a binary file object): (reason, detail) if it is not an image or has more
    than `max_pixels` pixels (None: no limit). The pixels are not decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(source) as image:
                width, height = image.size
    except PIL.Image.DecompressionBombError as error:
        return HUGE_IMAGE, str(error)
    except Exception as error:  # noqa: BLE001 - PIL raises many types on garbage (OSError, SyntaxError, ...)
        return CORRUPT_IMAGE, describe_error(error)
    if max_pixels is not None and width * height > max_pixels:
        return HUGE_IMAGE, f"{width}x{height} pixels > max_pixels={max_pixels}"
    return None


def _caption_detail(caption: Any) -> str:
    """How a skipped caption is listed: its first 80 characters, or what stood in its place."""
    if caption is None:
        return "no 'caption' key (or null)"
    return repr(caption[:80]) if isinstance(caption, str) else f"{type(caption).__name__}: {caption!r:.80}"


def _read_json_text(path: str) -> str:
    """The file as text; undecodable bytes become lone surrogates so one bad caption does not sink the file."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None


def _load_records(path: str) -> list[tuple[str, Any]]:
    """(label, record) pairs of a JSON list or a JSON Lines file; labels name the record in messages."""
    text = _read_json_text(path)
    if path.endswith(".jsonl"):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'image', 'caption'}} records; got {type(data).__name__}")
    return [(f"record {i}", record) for i, record in enumerate(data)]


def _record_captions(path: str, label: str, record: Any) -> tuple[str, list[Any], dict]:
    """(image path, captions, other fields) of one ALBEF/BLIP record; raises ValueError when malformed.

    The captions are returned as found (a missing caption as `[None]`): `caption_problem` judges each one."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {label}: expected an object with 'image' and 'caption'; got {record!r:.80}")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"{path}: {label}: 'image' must be a non-empty string path; got {image!r:.80}")
    caption = record.get("caption", record.get("captions"))
    captions = (caption or [None]) if isinstance(caption, list) else [caption]  # [] is no caption either
    extra = {key: value for key, value in record.items() if key not in ("image", "caption", "captions")}
    return image, captions, extra


@dataclass
class _Group:
    """Captions gathered for one image (or one record)."""

    path: str
    labels: list[str]  # records with at least one usable caption
    captions: list[str]
    annotations: dict


def _build_rows(
    groups: list[_Group], source: str, report: SkipReport, where: str, max_pixels: int | None, check_images: bool
) -> datasets.Dataset:
    """Check images, drop rows without captions, record the skips and return the rows dataset."""
    columns: dict[str, list] = {name: [] for name in ROW_COLUMNS}
    for group in groups:
        if not group.captions:
            continue  # every caption was skipped (and listed) already
        problem = image_problem(group.path, max_pixels) if check_images else None
        if problem is None and not is_valid_text(group.path):
            problem = NON_UTF8_PATH, repr(group.path)
        if problem is not None:
            for label in group.labels:
                report.add(source, f"{where}:{label}", problem[0], problem[1])
            continue
        columns["image"].append({"bytes": None, "path": group.path})
        columns["captions"].append(group.captions)
        columns["index"].append(len(columns["index"]))
        columns["source"].append(source)
        columns["annotations"].append(strict_json.dumps(group.annotations, sort_keys=True))
    report.kept[source] += len(columns["index"])
    return datasets.Dataset.from_dict(columns, features=row_features())


def read_caption_file(
    path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    source: str | None = None,
    group_by_image: bool = True,
    check_images: bool = True,
    max_pixels: int | None = None,
) -> tuple[datasets.Dataset, SkipReport]:
    """Rows of an ALBEF/BLIP captions file (`.json` list or `.jsonl`) whose image paths are relative to `image_root`
    (an absolute path in a record is used as it is).

    Args:
        source: the name in the rows' `source` column and in the report (default: the file name).
        group_by_image: one row per image with all its captions (default) or one row per record.
        check_images: skip records whose image file does not exist (one `stat` per image).
        max_pixels: also open each image header and skip non-images and images above this many pixels.

    Fields other than `image` and `caption` (e.g. BLIP's `image_id`) go to the JSON `annotations` of the row (the
    first record's, when records are grouped).
    """
    path = os.fspath(path)
    source = source or os.path.basename(path)
    report = SkipReport()
    groups: dict[str, _Group] = {}
    ordered: list[_Group] = []
    for label, record in _load_records(path):
        image, captions, extra = _record_captions(path, label, record)
        report.read[source] += 1
        full = os.path.join(os.fspath(image_root), image)
        group = groups.get(full) if group_by_image else None
        if group is None:
            group = _Group(full, [], [], extra)
            ordered.append(group)
            if group_by_image:
                groups[full] = group
        kept = 0
        for caption in captions:
            problem = caption_problem(caption)
            if problem:
                report.add(source, f"{path}:{label}", problem, _caption_detail(caption))
            else:
                group.captions.append(caption)
                kept += 1
        if kept:
            group.labels.append(label)  # the records an image problem would skip
    return _build_rows(ordered, source, report, path, max_pixels, check_images), report


def read_coco_captions(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    source: str | None = None,
    group_by_image: bool = True,
    check_images: bool = True,
    max_pixels: int | None = None,
) -> tuple[datasets.Dataset, SkipReport]:
    """Rows of a COCO captions file (`images` + `annotations`), images under `image_root` by `file_name`.

    Rows follow the order of `images`; an image without annotations is skipped and listed. `annotations` of a row
    hold `image_id`, `file_name`, `caption_ids` (and `width` / `height` when present). Options as in
    `read_caption_file`.
    """
    path = os.fspath(annotation_file)
    source = source or os.path.basename(path)
    try:
        data = json.loads(_read_json_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise ValueError(f"{path}: expected a COCO captions object with 'images' and 'annotations' lists")
    report = SkipReport()
    images: dict[Any, dict] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
            raise ValueError(f"{path}: images[{i}]: expected an object with 'id' and 'file_name'; got {image!r:.80}")
        if image["id"] in images:
            raise ValueError(f"{path}: images[{i}]: duplicate image id {image['id']!r}")
        images[image["id"]] = image
    by_image: dict[Any, list[tuple[int, dict]]] = {image_id: [] for image_id in images}
    for i, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict):
            raise ValueError(
                f"{path}: annotations[{i}]: expected an object with 'image_id' and 'caption'; got {annotation!r:.80}"
            )
        if annotation.get("image_id") not in images:
            raise ValueError(f"{path}: annotations[{i}]: image_id {annotation.get('image_id')!r} is not in 'images'")
        by_image[annotation["image_id"]].append((i, annotation))

    groups: list[_Group] = []
    for image_id, image in images.items():
        full = os.path.join(os.fspath(image_root), image["file_name"])
        base = {
            "image_id": image_id,
            "file_name": image["file_name"],
            **{key: image[key] for key in ("width", "height") if key in image},
        }
        if not by_image[image_id]:
            report.read[source] += 1
            report.add(source, f"{path}:image {image_id}", NO_CAPTIONS, image["file_name"])
            continue
        group = None
        for i, annotation in by_image[image_id]:
            report.read[source] += 1
            if group is None or not group_by_image:
                group = _Group(full, [], [], {**base, "caption_ids": []})
                groups.append(group)
            label = f"annotation {annotation.get('id', i)}"
            problem = caption_problem(annotation.get("caption"))
            if problem:
                report.add(source, f"{path}:{label}", problem, _caption_detail(annotation.get("caption")))
                continue
            group.labels.append(label)
            group.captions.append(annotation["caption"])
            group.annotations["caption_ids"].append(annotation.get("id", i))
    return _build_rows(groups, source, report, path, max_pixels, check_images), report


def standard_rows(rows: datasets.Dataset, source: str, keep_scene: bool = False) -> datasets.Dataset:
    """Any rows (a reader's, the synthetic world's) reduced to `ROW_COLUMNS` (+ `scene`), images undecoded."""
    missing = {"image", "captions"} - set(rows.column_names)
    if missing:
        raise ValueError(f"source {source!r}: missing column(s) {sorted(missing)}; has {rows.column_names}")
    if not isinstance(rows.features["image"], datasets.Image) or rows.features["image"].decode:
        rows = rows.cast_column("image", datasets.Image(decode=False))
    if "index" not in rows.column_names:
        rows = rows.add_column("index", list(range(len(rows))))
    if "source" not in rows.column_names:
        rows = rows.add_column("source", [source] * len(rows))
    if "annotations" not in rows.column_names:
        rows = rows.add_column("annotations", ["{}"] * len(rows))
    columns = list(ROW_COLUMNS) + (["scene"] if keep_scene else [])
    features = row_features()
    if keep_scene:
        features["scene"] = datasets.Value("string")
    return rows.select_columns(columns).cast(features)


def concatenate_sources(sources: Mapping[str, datasets.Dataset]) -> tuple[datasets.Dataset, dict[str, range]]:
    """One dataset of all sources in the common columns, and the row range of each source in it.

    `scene` is kept only when every source has it (the synthetic world's truth, needed by `holds_fn`).
    """
    if not sources:
        raise ValueError("concatenate_sources needs at least one source")
    keep_scene = all("scene" in rows.column_names for rows in sources.values())
    parts, ranges, start = [], {}, 0
    for name, rows in sources.items():
        parts.append(standard_rows(rows, name, keep_scene))
        ranges[name] = range(start, start + len(rows))
        start += len(rows)
    return (parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)), ranges


def _check_mixture(sizes: Sequence[int], weights: Sequence[float]) -> np.ndarray:
    if len(sizes) != len(weights) or not sizes:
        raise ValueError(f"need one weight per source: {len(sizes)} sources, {len(weights)} weights")
    for k, size in enumerate(sizes):
        if int(size) < 1:
            raise ValueError(f"source {k} has {size} rows; every mixed source needs at least one")
    weights = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"mixture weights must be finite and > 0; got {list(weights)}")
    return weights / weights.sum()


def mixture_quotas(total: int, weights: Sequence[float]) -> np.ndarray:
    """Integer shares of `total` proportional to `weights` (largest remainder), summing to `total` exactly."""
    weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    exact = total * weights
    quotas = np.floor(exact).astype(np.int64)
    remainder = total - int(quotas.sum())
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:remainder]] += 1
    return quotas


def mixture_indices(
    sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int, length: int | None = None
) -> np.ndarray:
    """The rows of one mixed epoch: indices into the sources concatenated in order, a pure function of
    (sizes, weights, seed, epoch).

    Source k contributes exactly its quota of `length` (default: all rows of all sources) in proportion to the
    weights: its rows without repetition, in a fresh permutation per (seed, epoch, k, pass) and cycling through
    further passes when its quota exceeds its size (upsampling). The whole epoch is then shuffled.
    """
    probabilities = _check_mixture(sizes, weights)
    length = int(sum(sizes)) if length is None else int(length)
    if length < 1:
        raise ValueError(f"a mixed epoch needs length >= 1; got {length}")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    parts = []
    for k, (size, quota) in enumerate(zip(sizes, mixture_quotas(length, probabilities))):
        passes = math.ceil(quota / size)
        rows = [np.random.default_rng([seed, epoch, k, p, MIX_QUOTA_STREAM]).permutation(size) for p in range(passes)]
        parts.append(offsets[k] + np.concatenate(rows)[:quota] if rows else np.zeros(0, dtype=np.int64))
    order = np.concatenate(parts).astype(np.int64)
    return order[np.random.default_rng([seed, epoch, MIX_ORDER_STREAM]).permutation(len(order))]


class MixedEpochDataset(torch.utils.data.Dataset):
    """A map-style view of a dataset of concatenated sources in which epoch e is `mixture_indices(..., e)`.

    Wraps anything with `set_epoch` and `__getitem__` (a `PretrainingDataset` over `concatenate_sources` rows), so
    `EpochIndexed` and `GlobalBatchSampler` work unchanged: position i of epoch e is row `order(e)[i]`. A row drawn
    twice in one epoch (upsampling) gives the same sample both times (its randomness is (seed, epoch, row)).
    """

    def __init__(
        self, dataset: Any, sizes: Sequence[int], weights: Sequence[float], seed: int = 0, length: int | None = None
    ):
        _check_mixture(sizes, weights)
        if hasattr(dataset, "__len__") and len(dataset) != sum(sizes):
            raise ValueError(f"the dataset has {len(dataset)} rows but the source sizes sum to {sum(sizes)}")
        self.dataset = dataset
        self.sizes = [int(size) for size in sizes]
        self.weights = [float(weight) for weight in weights]
        self.seed = int(seed)
        self.length = int(sum(sizes)) if length is None else int(length)
        self.epoch = 0
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Row of every position of an epoch (cached for the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._order[0] != epoch:
            self._order = (epoch, mixture_indices(self.sizes, self.weights, self.seed, epoch, self.length))
        return self._order[1]

    def __getitem__(self, position: int) -> Any:
        return self.dataset[int(self.order()[int(position)])]


__all__ = [
    "caption_problem",
    "concatenate_sources",
    "CORRUPT_IMAGE",
    "describe_error",
    "EMPTY_CAPTION",
    "header_problem",
    "HUGE_IMAGE",
    "image_problem",
    "is_valid_text",
    "MISSING_CAPTION",
    "MISSING_IMAGE",
    "MixedEpochDataset",
    "mixture_indices",
    "mixture_quotas",
    "NO_CAPTIONS",
    "NON_UTF8_CAPTION",
    "NON_UTF8_PATH",
    "NOT_TEXT_CAPTION",
    "read_caption_file",
    "read_coco_captions",
    "ROW_COLUMNS",
    "row_features",
    "SkipReport",
    "standard_rows",
]
