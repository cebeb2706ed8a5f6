"""Readers for real zero-shot benchmarks: VALSE, SugarCrepe, Winoground, ARO (VG-Relation, VG-Attribution) and the
probing csv files of Salin et al. (2022), each into plain item dataclasses with the image folder as a parameter.

Every reader returns a `ReadResult`: the items, and the records it skipped with the reason. A missing image is a data
problem: the record is skipped and reported, never fatal. A record that breaks the benchmark's layout (not an
object, a missing or mistyped field, a csv row with the wrong number of fields) is a broken file: the reader raises
`ValueError` naming the file and the record id (or line).

Layouts (from the benchmarks' own repositories):

- VALSE `data/<piece>.json`: one object keyed by sample id; a sample has `image_file`, `caption`, `foil`,
  `mturk` = {foil, caption, other} (votes of 3 annotators) and piece-specific fields. The valid set is
  `mturk["caption"] >= 2`.
- SugarCrepe `data/<subset>.json`: one object keyed by "0", "1", ...; a record is {filename, caption,
  negative_caption}.
- Winoground `examples.jsonl`: one object per line with id, image_0, image_1, caption_0, caption_1, tag,
  secondary_tag, num_main_preds, collapsed_tag; the images are `<image_x>.png`. caption_0 is true of image_0 and
  caption_1 of image_1.
- ARO `visual_genome_relation.json` / `visual_genome_attribution.json`: a list of records with image_path,
  bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption and relation_name (VG-Relation) or attributes
  (VG-Attribution, two attribute words). The box is where the relation or attribute is; ARO crops the image to it.
- Salin et al. `datasets/<name>.csv`: `|`-separated, header image_name|comment_number|comment|original|target, CRLF
  line ends, CSV double-quote escaping on some rows (see `read_probing_csv`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any

MISSING_IMAGE = "missing image"
FAILED_VALIDATION = "failed validation"


@dataclass
class FoilItem:
    """One image with its true caption and one or more foils (captions false of the image)."""

    id: str
    image_path: str
    caption: str
    foils: list[str]
    phenomenon: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class WinogroundItem:
    """Two images and two captions with the same words; captions[k] is true of image_paths[k] only."""

    id: str
    image_paths: list[str]
    captions: list[str]
    tag: str
    secondary_tag: str
    num_main_preds: int
    collapsed_tag: str
    source: str = "winoground"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeItem:
    """One probing example: the text given to the model (`text`), its source caption and the label to predict."""

    id: str
    image_path: str
    text: str
    original: str
    target: str
    task: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """A record left out, with why (MISSING_IMAGE or FAILED_VALIDATION, then the detail)."""

    id: str
    reason: str


@dataclass
class ReadResult:
    """The items read from one benchmark file and the records skipped."""

    path: str
    items: list = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        """One line: how many items were read and how many were skipped, by reason."""
        reasons: dict[str, int] = {}
        for entry in self.skipped:
            key = entry.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        return f"{self.path}: {len(self.items)} items, {len(self.skipped)} skipped" + (f" ({detail})" if detail else "")


# --------------------------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------------------------


def _no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise _DuplicateKey(duplicate)
    return dict(pairs)


class _DuplicateKey(Exception):
    pass


def _require_file(path: str) -> None:  # files are opened as utf-8-sig: a leading byte-order mark is dropped
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")


def _load_json(path: str) -> Any:
    """The parsed JSON file; a ValueError names the file for a missing file, bad JSON or a duplicated key."""
    _require_file(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except _DuplicateKey as duplicate:
        raise ValueError(f"{path}: key {duplicate.args[0]!r} appears twice in one object") from None


def _keyed_records(path: str, benchmark: str) -> dict[str, Any]:
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object keyed by sample id ({benchmark} layout); got a {type(data).__name__}"
        )
    return data


def _field(path: str, record_id: str, record: Any, name: str, kind: type | tuple[type, ...]):
    """record[name], checked to be of `kind`; a ValueError names the file, the record and the field."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: record {record_id!r}: expected an object, got {type(record).__name__}")
    if name not in record:
        raise ValueError(f"{path}: record {record_id!r}: missing field {name!r}")
    value = record[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is no number
        expected = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{path}: record {record_id!r}: field {name!r} should be {expected}, got {value!r:.80}")
    return value


def _image(image_dir: str, filename: str) -> str:
    return os.path.join(os.fspath(image_dir), filename)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# --------------------------------------------------------------------------------------------------------------
# Image-caption-foil benchmarks
# --------------------------------------------------------------------------------------------------------------

VALSE_FIELDS = ("image_file", "caption", "foil")


def read_valse(
    path: str, image_dir: str, only_valid: bool = True, require_images: bool = True, phenomenon: str | None = None
) -> ReadResult:
    """VALSE piece `path` (e.g. data/existence.json) as FoilItems with one foil each.

    `only_valid` keeps the validated samples (`mturk["caption"] >= 2`, the VALSE README's valid set) and reports
    the others as skipped (FAILED_VALIDATION); False keeps all. `phenomenon` defaults to the piece name (the file
    name without extension, e.g. "counting-hard"); the record's `linguistic_phenomena` and every other field of the
    record stay in `meta`, with `meta["piece"]`. `require_images=False` reads the text without checking images.
    """
    piece = _stem(path)
    result = ReadResult(path=path)
    for record_id, record in _keyed_records(path, "VALSE").items():
        image_file, caption, foil = (_field(path, record_id, record, name, str) for name in VALSE_FIELDS)
        if only_valid:
            votes = _field(path, record_id, _field(path, record_id, record, "mturk", dict), "caption", int)
            if votes < 2:
                result.skipped.append(Skipped(record_id, f"{FAILED_VALIDATION}: mturk caption votes {votes} < 2"))
                continue
        image_path = _image(image_dir, image_file)
        if require_images and not os.path.isfile(image_path):
            result.skipped.append(Skipped(record_id, f"{MISSING_IMAGE}: {image_path}"))
            continue
        meta = {"piece": piece, **{k: v for k, v in record.items() if k not in VALSE_FIELDS}}
        result.items.append(FoilItem(record_id, image_path, caption, [foil], phenomenon or piece, "valse", meta))
    return result


def read_sugarcrepe(
    path: str, image_dir: str, require_images: bool = True, phenomenon: str | None = None
) -> ReadResult:
    """SugarCrepe subset `path` (e.g. data/swap_att.json) as FoilItems; `negative_caption` is the one foil.

    `phenomenon` defaults to the subset name (add_att, replace_rel, swap_obj, ...). The images are COCO val2017.
    """
    subset = _stem(path)
    result = ReadResult(path=path)
    for record_id, record in _keyed_records(path, "SugarCrepe").items():
        filename, caption, negative = (
            _field(path, record_id, record, name, str) for name in ("filename", "caption", "negative_caption")
        )
        image_path = _image(image_dir, filename)
        if require_images and not os.path.isfile(image_path):
            result.skipped.append(Skipped(record_id, f"{MISSING_IMAGE}: {image_path}"))
            continue
        extra = {k: v for k, v in record.items() if k not in ("filename", "caption", "negative_caption")}
        result.items.append(
            FoilItem(
                record_id,
                image_path,
                caption,
                [negative],
                phenomenon or subset,
                "sugarcrepe",
                {"subset": subset, **extra},
            )
        )
    return result


ARO_BOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
ARO_FIELDS = ("image_path", "true_caption", "false_caption", *ARO_BOX)


def read_aro(path: str, image_dir: str, require_images: bool = True) -> ReadResult:
    """ARO VG-Relation or VG-Attribution file `path` as FoilItems, told apart by each record's fields.

    A record with `relation_name` is a VG-Relation item (phenomenon "vg_relation", `meta["relation_name"]`); one
    with `attributes` (a list of two words) a VG-Attribution item (phenomenon "vg_attribution",
    `meta["attributes"]`). Records have no id: the id is the record's position in the list ("0", "1", ...).
    `meta["bbox"]` is (x, y, w, h) in pixels; ARO scores the image cropped to that box.
    """
    data = _load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of ARO records; got a {type(data).__name__}")
    result = ReadResult(path=path)
    for index, record in enumerate(data):
        record_id = str(index)
        image_file, caption, foil = (
            _field(path, record_id, record, name, str) for name in ("image_path", "true_caption", "false_caption")
        )
        box = tuple(float(_field(path, record_id, record, name, (int, float))) for name in ARO_BOX)
        if "relation_name" in record:
            phenomenon = "vg_relation"
            detail = {"relation_name": _field(path, record_id, record, "relation_name", str)}
        elif "attributes" in record:
            attributes = _field(path, record_id, record, "attributes", list)
            if len(attributes) != 2 or not all(isinstance(a, str) for a in attributes):
                raise ValueError(
                    f"{path}: record {record_id!r}: field 'attributes' should be two strings, got {attributes!r:.80}"
                )
            phenomenon, detail = "vg_attribution", {"attributes": list(attributes)}
        else:
            raise ValueError(
                f"{path}: record {record_id!r}: missing field 'relation_name' (VG-Relation) or "
                f"'attributes' (VG-Attribution)"
            )
        image_path = _image(image_dir, image_file)
        if require_images and not os.path.isfile(image_path):
            result.skipped.append(Skipped(record_id, f"{MISSING_IMAGE}: {image_path}"))
            continue
        extra = {k: v for k, v in record.items() if k not in ARO_FIELDS and k not in detail}
        result.items.append(
            FoilItem(record_id, image_path, caption, [foil], phenomenon, "aro", {"bbox": box, **detail, **extra})
        )
    return result


# --------------------------------------------------------------------------------------------------------------
# Winoground
# --------------------------------------------------------------------------------------------------------------

WINOGROUND_TEXT_FIELDS = ("image_0", "image_1", "caption_0", "caption_1", "tag", "secondary_tag", "collapsed_tag")


def read_winoground(path: str, image_dir: str, require_images: bool = True) -> ReadResult:
    """Winoground `examples.jsonl` as WinogroundItems; images are `<image_dir>/<image_x>.png`.

    An item is skipped (and reported) when either of its two images is missing. Blank lines are ignored; a line
    that is not a JSON object with every field raises ValueError naming the file and the line.
    """
    result = ReadResult(path=path)
    _require_file(path)
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: {where}: not valid JSON ({error.msg})") from None
            record_id = str(_field(path, where, record, "id", (int, str)))
            label = f"{record_id} ({where})"
            values = {name: _field(path, label, record, name, str) for name in WINOGROUND_TEXT_FIELDS}
            num_main_preds = _field(path, label, record, "num_main_preds", int)
            image_paths = [_image(image_dir, values[f"image_{k}"] + ".png") for k in (0, 1)]
            missing = [p for p in image_paths if not os.path.isfile(p)] if require_images else []
            if missing:
                result.skipped.append(Skipped(record_id, f"{MISSING_IMAGE}: {', '.join(missing)}"))
                continue
            extra = {k: v for k, v in record.items() if k not in (*WINOGROUND_TEXT_FIELDS, "id", "num_main_preds")}
            result.items.append(
                WinogroundItem(
                    record_id,
                    image_paths,
                    [values["caption_0"], values["caption_1"]],
                    values["tag"],
                    values["secondary_tag"],
                    num_main_preds,
                    values["collapsed_tag"],
                    "winoground",
                    {"line": number, **extra},
                )
            )
    return result


# --------------------------------------------------------------------------------------------------------------
# Salin et al. probing csv files
# --------------------------------------------------------------------------------------------------------------

PROBING_HEADER = ["image_name", "comment_number", "comment", "original", "target"]
PROBING_TASKS = {
    "flickr_3000_colors": "color",
    "flickr_3000_size": "size",
    "flickr_3000_pos": "position",
    "flickr_3000_bshift": "bigram_shift",
    "coco_uniter": "object_count",
}


def probing_task(path: str) -> str:
    """The probing task of a Salin et al. csv from its file name ("altered_caption" for coco_altercap_*)."""
    stem = _stem(path)
    if stem.startswith("coco_altercap"):
        return "altered_caption"
    return PROBING_TASKS.get(stem, stem)


def _probing_image(image_dir: str, name: str) -> tuple[str, bool]:
    """(path, exists). The COCO csv files write `coco_val2014_...jpg`; COCO names it `COCO_val2014_...jpg`, so
    that spelling is tried when the written one is not there."""
    path = _image(image_dir, name)
    if os.path.isfile(path):
        return path, True
    if name.startswith("coco_"):
        upper = _image(image_dir, "COCO_" + name[len("coco_") :])
        if os.path.isfile(upper):
            return upper, True
    return path, False


def read_probing_csv(
    path: str, image_dir: str, task: str | None = None, require_images: bool = True, unquote: bool = True
) -> ReadResult:
    """A probing csv of Salin et al. (2022) as ProbeItems; `text` is the `comment` column (what the model reads).

    The files are `|`-separated with CRLF line ends and are read with the csv module (delimiter "|", standard
    double-quote quoting). This differs from a naive `line.split("|")` on the rows where a field *begins* with a
    double quote: such a field is a quoted CSV field, so its enclosing quotes are dropped and each doubled quote
    inside becomes one. In flickr_3000_colors.csv the comment written as
    `" Older woman in [MASK] jacket , holds sign saying "" DOWN AND OUT "" in urban area ."` reads as
    ` Older woman in [MASK] jacket , holds sign saying " DOWN AND OUT " in urban area .` (coco_uniter.csv has
    such a row too). Some rows were quoted more than once (flickr_3000_pos.csv, flickr_3000_size.csv: the field
    opens with three quotes and holds runs of four and seven); one level is decoded, as any CSV reader (pandas
    included) does, and the text keeps the rest (it opens with one quote and holds doubled quotes). A doubled
    quote inside a field that does not begin with a quote (flickr_3000_bshift.csv: `hold up "" I Love You ""
    cards`) is kept verbatim by both. `unquote=False` reads every field verbatim, as a naive split does (and as
    the authors' own preprocessing did, with quotechar="|").

    Ids are the data row numbers, from "1"; `meta` holds `comment_number` and the file `line`. `target` stays text
    (a colour word, "0"/"1", or a count). `task` defaults to `probing_task(path)`.
    """
    task = task or probing_task(path)
    result = ReadResult(path=path)
    _require_file(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="|", quoting=csv.QUOTE_MINIMAL if unquote else csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            if header != PROBING_HEADER:
                raise ValueError(
                    f"{path}: line 1: expected the header {'|'.join(PROBING_HEADER)!r}, got "
                    f"{'|'.join(header) if header else 'an empty file'!r}"
                )
            row_number = 0
            for row in reader:
                if not row:
                    continue
                row_number += 1
                where = f"row {row_number} (line {reader.line_num})"
                if len(row) != len(PROBING_HEADER):
                    raise ValueError(
                        f"{path}: {where}: expected {len(PROBING_HEADER)} '|'-separated fields, got "
                        f"{len(row)}: {'|'.join(row)!r:.120}"
                    )
                image_name, comment_number, comment, original, target = row
                if not image_name.strip():
                    raise ValueError(f"{path}: {where}: empty image_name")
                image_path, exists = _probing_image(image_dir, image_name)
                if require_images and not exists:
                    result.skipped.append(Skipped(str(row_number), f"{MISSING_IMAGE}: {image_path}"))
                    continue
                result.items.append(
                    ProbeItem(
                        str(row_number),
                        image_path,
                        comment,
                        original,
                        target,
                        task,
                        "vlm-probing",
                        {"comment_number": comment_number, "line": reader.line_num},
                    )
                )
        except csv.Error as error:
            raise ValueError(f"{path}: line {reader.line_num}: not a valid '|'-separated row ({error})") from None
    return result
