"""Caption readers (ALBEF/BLIP captions files, COCO captions) and the weighted mixture of sources.

Fixtures are written into tmp_path in the real layouts, with tiny images made by Pillow.
"""

import json
import os
from collections import Counter

import datasets
import numpy as np
import PIL.Image
import pytest

from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.readers import captions as cr
from vlp.processing.tokenization import train_wordpiece_tokenizer


def make_image(path, size=(4, 4), colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.new("RGB", size, colour).save(path)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    for name in ("train2014/a.jpg", "train2014/b.jpg", "val2014/c.png"):
        make_image(str(root / name))
    return root


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_caption_file_groups_records_of_one_image(tmp_path, image_root):
    # BLIP's coco_karpathy_train.json layout: image relative to the root, one caption per record, image_id.
    records = [
        {"caption": "a red square.", "image": "train2014/a.jpg", "image_id": "coco_1"},
        {"caption": "a dog on a sofa.", "image": "train2014/b.jpg", "image_id": "coco_2"},
        {"caption": "a square that is red.", "image": "train2014/a.jpg", "image_id": "coco_1"},
        {"caption": ["two cats.", "cats on a bed."], "image": "val2014/c.png", "image_id": "coco_3"},
    ]
    path = write_json(tmp_path / "coco_karpathy_train.json", records)
    rows, report = cr.read_caption_file(path, image_root)

    assert rows.features["image"] == datasets.Image(decode=False)
    assert rows["captions"] == [
        ["a red square.", "a square that is red."],
        ["a dog on a sofa."],
        ["two cats.", "cats on a bed."],
    ]
    assert rows["index"] == [0, 1, 2]
    assert rows["source"] == ["coco_karpathy_train.json"] * 3
    assert rows[0]["image"] == {"bytes": None, "path": str(image_root / "train2014" / "a.jpg")}
    assert json.loads(rows[2]["annotations"]) == {"image_id": "coco_3"}
    assert report.entries == [] and report.read["coco_karpathy_train.json"] == 4
    assert report.kept["coco_karpathy_train.json"] == 3

    ungrouped, _ = cr.read_caption_file(path, image_root, source="blip", group_by_image=False)
    assert ungrouped["captions"] == [
        ["a red square."],
        ["a dog on a sofa."],
        ["a square that is red."],
        ["two cats.", "cats on a bed."],
    ]
    assert ungrouped["source"] == ["blip"] * 4


def test_caption_file_jsonl_skips_bad_captions_and_missing_images(tmp_path, image_root):
    lines = [
        json.dumps({"image": "train2014/a.jpg", "caption": "a red square."}).encode(),
        b'{"image": "train2014/b.jpg", "caption": "caf\xe9 latte"}',  # Latin-1 byte: not UTF-8
        json.dumps({"image": "train2014/b.jpg", "caption": "   "}).encode(),  # empty after stripping
        b"",  # blank lines are allowed in JSON Lines
        json.dumps({"image": "train2014/missing.jpg", "caption": "a ghost."}).encode(),
        json.dumps({"image": "val2014/c.png", "caption": ["", "two cats."]}).encode(),
        b'{"image": "val2014/c.png", "caption": "lone \\udc80 surrogate"}',  # JSON escape of an undecodable byte
    ]
    path = tmp_path / "cc3m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows, report = cr.read_caption_file(path, image_root, source="cc3m")

    assert rows["captions"] == [["a red square."], ["two cats."]]
    assert [os.path.basename(row["path"]) for row in rows["image"]] == ["a.jpg", "c.png"]
    assert report.counts() == {"cc3m": {cr.NON_UTF8_CAPTION: 2, cr.EMPTY_CAPTION: 2, cr.MISSING_IMAGE: 1}}
    listed = {(entry["where"].rsplit(":", 1)[1], entry["reason"]) for entry in report.entries}
    assert listed == {
        ("line 2", cr.NON_UTF8_CAPTION),
        ("line 3", cr.EMPTY_CAPTION),
        ("line 5", cr.MISSING_IMAGE),
        ("line 6", cr.EMPTY_CAPTION),
        ("line 7", cr.NON_UTF8_CAPTION),
    }
    assert report.read["cc3m"] == 6 and report.kept["cc3m"] == 2


@pytest.mark.parametrize(
    "record, message",
    [
        ("not an object", "expected an object"),
        ({"caption": "no image"}, "'image' must be a non-empty string"),
    ],
)
def test_caption_file_malformed_record_raises_naming_file_and_record(tmp_path, image_root, record, message):
    path = write_json(tmp_path / "pairs.json", [{"image": "train2014/a.jpg", "caption": "fine."}, record])
    with pytest.raises(ValueError, match=rf"pairs\.json: record 1: {message}"):
        cr.read_caption_file(path, image_root)


def test_caption_file_records_without_usable_captions_are_skipped_counted_and_listed(tmp_path, image_root):
    records = [
        {"image": "train2014/a.jpg", "caption": "fine."},
        {"image": "train2014/b.jpg"},  # no 'caption' key
        {"image": "train2014/b.jpg", "caption": None},
        {"image": "train2014/b.jpg", "caption": []},
        {"image": "val2014/c.png", "caption": 3},
        {"image": "val2014/c.png", "caption": ["two cats.", None, {"text": "x"}]},
    ]
    rows, report = cr.read_caption_file(write_json(tmp_path / "pairs.json", records), image_root, source="p")
    assert rows["captions"] == [["fine."], ["two cats."]]  # b.jpg has no usable caption: no row
    assert report.counts() == {"p": {cr.MISSING_CAPTION: 4, cr.NOT_TEXT_CAPTION: 2}}
    listed = [(entry["where"].rsplit(":", 1)[1], entry["reason"]) for entry in report.entries]
    assert listed == [
        ("record 1", cr.MISSING_CAPTION),
        ("record 2", cr.MISSING_CAPTION),
        ("record 3", cr.MISSING_CAPTION),
        ("record 4", cr.NOT_TEXT_CAPTION),
        ("record 5", cr.MISSING_CAPTION),
        ("record 5", cr.NOT_TEXT_CAPTION),
    ]
    assert "no 'caption' key" in report.entries[0]["detail"] and "int: 3" in report.entries[3]["detail"]
    assert report.read["p"] == 6 and report.kept["p"] == 2

    annotations = [
        {"image_id": 1, "id": 5, "caption": "a red square."},
        {"image_id": 1, "id": 6},
        {"image_id": 1, "id": 7, "caption": None},
        {"image_id": 1, "id": 8, "caption": 4.5},
    ]
    rows, report = cr.read_coco_captions(
        coco_file(tmp_path, [coco_image(1, "train2014/a.jpg")], annotations), image_root, source="coco"
    )
    assert rows["captions"] == [["a red square."]]
    assert report.counts() == {"coco": {cr.MISSING_CAPTION: 2, cr.NOT_TEXT_CAPTION: 1}}
    assert [entry["where"].rsplit(":", 1)[1] for entry in report.entries] == [
        "annotation 6",
        "annotation 7",
        "annotation 8",
    ]


def test_caption_file_broken_json_raises(tmp_path, image_root):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "train2014/a.jpg", "caption": "ok"}\n{"image": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs\.jsonl: line 2: not valid JSON"):
        cr.read_caption_file(path, image_root)
    whole = tmp_path / "pairs.json"
    whole.write_text('{"image": "a.jpg", "caption": "an object, not a list"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs\.json: expected a JSON list"):
        cr.read_caption_file(whole, image_root)


def coco_file(tmp_path, images, annotations):
    data = {
        "info": {"description": "invented", "version": "1.0", "year": 2014},
        "images": images,
        "licenses": [{"url": "http://example.invalid", "id": 1, "name": "invented"}],
        "type": "captions",
        "annotations": annotations,
    }
    return write_json(tmp_path / "captions_train2014.json", data)


def coco_image(image_id, file_name):
    return {
        "license": 1,
        "file_name": file_name,
        "coco_url": "http://example.invalid/" + file_name,
        "height": 4,
        "width": 4,
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": "http://example.invalid/f",
        "id": image_id,
    }


def test_coco_captions_groups_annotations_and_lists_skips(tmp_path, image_root):
    images = [
        coco_image(57870, "train2014/a.jpg"),
        coco_image(384029, "train2014/b.jpg"),
        coco_image(222016, "val2014/c.png"),
        coco_image(520950, "train2014/gone.jpg"),
    ]
    annotations = [
        {"image_id": 384029, "id": 9, "caption": "A dog sleeps."},
        {"image_id": 57870, "id": 787980, "caption": "A restaurant has modern wooden tables and chairs."},
        {"image_id": 57870, "id": 789366, "caption": ""},
        {"image_id": 57870, "id": 789888, "caption": "A long restaurant table with rattan rounded back chairs."},
        {"image_id": 520950, "id": 11, "caption": "A picture of nothing."},
        {"image_id": 384029, "id": 12, "caption": "A puppy on a couch."},
    ]
    rows, report = cr.read_coco_captions(coco_file(tmp_path, images, annotations), image_root, source="coco")

    assert rows["captions"] == [
        [
            "A restaurant has modern wooden tables and chairs.",
            "A long restaurant table with rattan rounded back chairs.",
        ],
        ["A dog sleeps.", "A puppy on a couch."],
    ]
    assert json.loads(rows[0]["annotations"]) == {
        "image_id": 57870,
        "file_name": "train2014/a.jpg",
        "caption_ids": [787980, 789888],
        "width": 4,
        "height": 4,
    }
    assert rows[1]["image"]["path"] == str(image_root / "train2014" / "b.jpg")
    assert report.counts() == {"coco": {cr.EMPTY_CAPTION: 1, cr.NO_CAPTIONS: 1, cr.MISSING_IMAGE: 1}}
    assert {entry["where"].rsplit(":", 1)[1] for entry in report.entries} == {
        "annotation 789366",
        "image 222016",
        "annotation 11",
    }

    per_record, _ = cr.read_coco_captions(coco_file(tmp_path, images, annotations), image_root, group_by_image=False)
    assert sorted(len(c) for c in per_record["captions"]) == [1, 1, 1, 1]
    assert json.loads(per_record[0]["annotations"])["caption_ids"] == [787980]


@pytest.mark.parametrize(
    "images, annotations, message",
    [
        (
            [coco_image(1, "train2014/a.jpg")],
            [{"image_id": 2, "id": 5, "caption": "x"}],
            r"annotations\[0\]: image_id 2 is not in 'images'",
        ),
        ([coco_image(1, "train2014/a.jpg"), coco_image(1, "train2014/b.jpg")], [], r"images\[1\]: duplicate image id"),
        ([{"id": 1}], [], r"images\[0\]: expected an object with 'id' and 'file_name'"),
        (
            [coco_image(1, "train2014/a.jpg")],
            ["not an object"],
            r"annotations\[0\]: expected an object with 'image_id' and 'caption'",
        ),
    ],
)
def test_coco_malformed_raises_naming_file_and_record(tmp_path, image_root, images, annotations, message):
    with pytest.raises(ValueError, match=rf"captions_train2014\.json: {message}"):
        cr.read_coco_captions(coco_file(tmp_path, images, annotations), image_root)
    with pytest.raises(ValueError, match="expected a COCO captions object"):
        cr.read_coco_captions(write_json(tmp_path / "list.json", []), image_root)


def test_max_pixels_skips_huge_and_non_images(tmp_path, image_root):
    make_image(str(image_root / "big.png"), size=(40, 30))
    (image_root / "garbage.jpg").write_bytes(b"this is not a jpeg")
    records = [
        {"image": "train2014/a.jpg", "caption": "small."},
        {"image": "big.png", "caption": "big."},
        {"image": "garbage.jpg", "caption": "garbage."},
    ]
    path = write_json(tmp_path / "pairs.json", records)
    rows, report = cr.read_caption_file(path, image_root, max_pixels=1000)
    assert rows["captions"] == [["small."]]
    assert report.counts() == {"pairs.json": {cr.HUGE_IMAGE: 1, cr.CORRUPT_IMAGE: 1}}
    assert next(e["detail"] for e in report.entries if e["reason"] == cr.HUGE_IMAGE) == "40x30 pixels > max_pixels=1000"
    # Without the header check only existence is tested: both rows are kept (decoding will skip the garbage later).
    rows, report = cr.read_caption_file(path, image_root)
    assert len(rows) == 3 and report.entries == []


def test_reader_rows_feed_pretraining_dataset(tmp_path, image_root):
    records = [
        {"image": "train2014/a.jpg", "caption": "a red square"},
        {"image": "train2014/b.jpg", "caption": "a blue circle"},
        {"image": "val2014/c.png", "caption": "a green star"},
    ]
    rows, _ = cr.read_caption_file(write_json(tmp_path / "pairs.json", records), image_root)
    os.remove(image_root / "train2014" / "b.jpg")  # vanishes after reading: skipped when decoded, not a crash
    tokenizer = train_wordpiece_tokenizer([c for cs in rows["captions"] for c in cs], vocab_size=60)
    dataset = PretrainingDataset(
        rows,
        tokenizer=tokenizer,
        image_processor=VLPImageProcessor(size={"height": 8, "width": 8}),
        itm_probability=0.0,
        max_length=8,
    )
    sample = dataset[2]
    assert sample["caption"] == "a green star"
    assert tuple(sample["pixel_values"].shape) == (3, 8, 8)
    assert dataset[1]["skipped"].startswith("image file not found")


def test_mixture_quotas_largest_remainder():
    assert cr.mixture_quotas(10, [1, 1, 1]).tolist() == [4, 3, 3]
    # 3.5, 1.75, 1.75: floors 3, 1, 1 leave 2 units, given to the largest remainders (.75, .75)
    assert cr.mixture_quotas(7, [0.5, 0.25, 0.25]).tolist() == [3, 2, 2]
    assert cr.mixture_quotas(12, [3, 1]).tolist() == [9, 3]


def test_mixture_indices_weights_determinism_and_upsampling():
    sizes, weights = [5, 3], [3, 1]
    order = cr.mixture_indices(sizes, weights, seed=7, epoch=0, length=12)
    counts = Counter(order.tolist())
    from_first = [i for i in order.tolist() if i < 5]
    assert len(from_first) == 9 and len(order) == 12  # quota 12 * 3/4 of source 0, 3 of source 1
    assert set(from_first) == set(range(5)) and max(counts[i] for i in range(5)) == 2  # one full pass, then 4 more
    assert sorted(i for i in order.tolist() if i >= 5) == [5, 6, 7]  # source 1: each row once
    assert np.array_equal(order, cr.mixture_indices(sizes, weights, seed=7, epoch=0, length=12))
    assert not np.array_equal(order, cr.mixture_indices(sizes, weights, seed=7, epoch=1, length=12))
    assert not np.array_equal(order, cr.mixture_indices(sizes, weights, seed=8, epoch=0, length=12))
    # Default length: all rows; equal weights over equal sizes read every row exactly once.
    assert sorted(cr.mixture_indices([4, 4], [1, 1], 0, 3).tolist()) == list(range(8))
    with pytest.raises(ValueError, match="one weight per source"):
        cr.mixture_indices([4, 4], [1], 0, 0)
    with pytest.raises(ValueError, match="finite and > 0"):
        cr.mixture_indices([4, 4], [1, 0], 0, 0)


class _Rows:
    """A stand-in for PretrainingDataset: returns (epoch, row)."""

    def __init__(self, size):
        self.size, self.epoch = size, 0

    def __len__(self):
        return self.size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, row):
        return self.epoch, row


def test_concatenated_sources_mixed_through_the_global_batch_sampler(tmp_path, image_root):
    from vlp.processing.worlds import shapes as shapes_world
    from vlp.training.pretrain.data import EpochIndexed
    from vlp.training.pretrain.sampler import GlobalBatchSampler

    pairs, _ = cr.read_caption_file(
        write_json(
            tmp_path / "pairs.json",
            [{"image": "train2014/a.jpg", "caption": "one."}, {"image": "train2014/b.jpg", "caption": "two."}],
        ),
        image_root,
    )
    world = shapes_world.build_dataset(shapes_world.WorldConfig(num_scenes=6, seed=0, image_size=16))
    rows, ranges = cr.concatenate_sources({"pairs": pairs, "shapes": world})
    assert ranges == {"pairs": range(2), "shapes": range(2, 8)}
    assert rows.column_names == list(cr.ROW_COLUMNS)  # `scene` only when every source has it
    assert rows["source"] == ["pairs.json"] * 2 + ["shapes"] * 6
    assert rows[3]["captions"] == world[1]["captions"] and rows[3]["index"] == 1
    both_worlds, _ = cr.concatenate_sources({"a": world, "b": world})
    assert "scene" in both_worlds.column_names

    mixed = cr.MixedEpochDataset(_Rows(8), sizes=[2, 6], weights=[1, 1], seed=3, length=8)
    sampler = GlobalBatchSampler(len(mixed), per_device_batch_size=2, seed=3, max_steps=8)
    seen = [EpochIndexed(mixed)[key] for batch in sampler for key in batch]
    for epoch in (0, 1):
        rows_read = [row for e, row in seen if e == epoch]
        assert sorted(rows_read) == sorted(cr.mixture_indices([2, 6], [1, 1], 3, epoch, 8).tolist())
        assert sum(row < 2 for row in rows_read) == 4  # half of the epoch from the 2-row source: upsampled x2
