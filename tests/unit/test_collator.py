"""Pretraining samples and batches: ITM negatives, determinism, unreadable images, and MLM masking."""

import io
import json
import math
from collections import Counter

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from vlp.processing.collator import IGNORE_INDEX, PretrainingCollator, whole_word_mask
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.pretraining_data import PretrainingDataset
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer

COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "captions": datasets.List(datasets.Value("string")),
        "scene": datasets.Value("string"),
        "index": datasets.Value("int64"),
    }
)


def png_bytes(color, size=(12, 10)):
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def scene_of(row):
    """Three objects; the captions name only the first two. The third is named by another row's captions,
    so a caption of a different row is often still true of this row's scene."""
    return [
        (COLORS[row % 4], SHAPES[row % 3]),
        (COLORS[(row + 1) % 4], SHAPES[(row + 2) % 3]),
        (COLORS[(row + 2) % 4], SHAPES[(row + 1) % 3]),
    ]


def holds(caption, scene_json):
    """Fake truth: 'there is a <color> <shape>' holds when the scene has such an object."""
    words = caption.split()
    color, shape = words[-2], words[-1]
    return any(obj["color"] == color and obj["shape"] == shape for obj in json.loads(scene_json)["objects"])


def make_rows(count, broken=None):
    broken = broken or {}
    rows = {"image": [], "captions": [], "scene": [], "index": []}
    for row in range(count):
        objects = scene_of(row)
        rows["image"].append(
            broken.get(row, {"bytes": png_bytes(objects[0][0], size=(12 + row % 3, 10)), "path": None})
        )
        rows["captions"].append([f"there is a {color} {shape}" for color, shape in objects[:2]])
        rows["scene"].append(json.dumps({"objects": [{"color": c, "shape": s} for c, s in objects]}))
        rows["index"].append(row)
    return datasets.Dataset.from_dict(rows, features=FEATURES)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"there is a {c} {s}" for c in COLORS for s in SHAPES] + ["a small thing"]
    return train_wordpiece_tokenizer(corpus, vocab_size=100)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return VLPProcessor(VLPImageProcessor(size=None), tokenizer)


@pytest.fixture(scope="module")
def rows():
    return make_rows(48)


def read_all(dataset, epoch):
    dataset.set_epoch(epoch)
    return [dataset[i] for i in range(len(dataset))]


def caption_of(tokenizer, item):
    """The caption the sample offers for image-text matching (a negative where itm_label is 0)."""
    return tokenizer.decode(item["itm_input_ids"], skip_special_tokens=True)


def own_caption_of(tokenizer, item):
    """The row's own caption, the one masked language modeling sees."""
    return tokenizer.decode(item["input_ids"], skip_special_tokens=True)


# ---------------------------------------------------------------- dataset


def test_sample_fields(rows, processor, tokenizer):
    dataset = PretrainingDataset(
        rows, processor, seed=0, max_length=16, itm_probability=0.0, concept_words={"Red", "triangle"}
    )
    item = dataset[0]
    assert item["index"] == 0 and item["epoch"] == 0 and item["itm_label"] == 1
    assert item["pixel_values"].shape == (3, 10, 12) and item["pixel_mask"].shape == (10, 12)
    length = len(item["input_ids"])
    for key in ("attention_mask", "token_type_ids", "word_ids", "concept_mask"):
        assert item[key].shape == (length,), key
    assert item["input_ids"][0] == tokenizer.cls_token_id and item["input_ids"][-1] == tokenizer.sep_token_id
    assert item["word_ids"].tolist() == [-1, 0, 1, 2, 3, 4, -1]
    tokens = tokenizer.convert_ids_to_tokens(item["input_ids"].tolist())
    assert caption_of(tokenizer, item) in rows[0]["captions"]
    # row 0 shows a red circle and a green triangle: either caption has exactly one concept word
    assert [token in ("red", "triangle") for token in tokens] == item["concept_mask"].tolist()
    assert int(item["concept_mask"].sum()) == 1


def test_concept_mask_covers_every_piece_of_a_split_word(rows, tokenizer):
    dataset = PretrainingDataset(
        rows, tokenizer=tokenizer, image_processor=VLPImageProcessor(), concept_words={"greenish"}
    )
    encoded = dataset.encode_caption("a greenish thing")
    pieces = tokenizer.tokenize("greenish")  # not in the training corpus, so it splits
    assert len(pieces) > 1
    assert encoded["concept_mask"].tolist() == [False, False] + [True] * len(pieces) + [False, False]


def test_negatives_never_hold_for_the_scene(rows, processor, tokenizer):
    dataset = PretrainingDataset(rows, processor, seed=1, itm_probability=0.5, holds_fn=holds)
    negatives = 0
    for epoch in range(4):
        for item in read_all(dataset, epoch):
            caption = caption_of(tokenizer, item)
            truth = holds(caption, rows[item["index"]]["scene"])
            assert truth == bool(item["itm_label"]), (item["index"], caption)
            assert holds(own_caption_of(tokenizer, item), rows[item["index"]]["scene"])
            negatives += item["itm_label"] == 0
    assert negatives > 50

    # The same rows without holds_fn do produce "negatives" that are true of the scene: the check above has teeth.
    naive = PretrainingDataset(rows, processor, seed=1, itm_probability=0.5)
    false_negatives = sum(
        holds(caption_of(tokenizer, item), rows[item["index"]]["scene"])
        for epoch in range(4)
        for item in read_all(naive, epoch)
        if item["itm_label"] == 0
    )
    assert false_negatives > 0


@pytest.mark.parametrize("probability", [0.5, 0.2])
def test_negative_share_matches_itm_probability(rows, processor, probability):
    dataset = PretrainingDataset(rows, processor, seed=5, itm_probability=probability, holds_fn=holds)
    labels = [item["itm_label"] for epoch in range(6) for item in read_all(dataset, epoch)]
    share = labels.count(0) / len(labels)
    sd = math.sqrt(probability * (1 - probability) / len(labels))
    assert abs(share - probability) < 4 * sd, (share, probability)


def test_samples_are_a_function_of_seed_epoch_and_index(rows, processor):
    def signature(item):
        return item["itm_label"], tuple(item["input_ids"].tolist())

    first = PretrainingDataset(rows, processor, seed=7, holds_fn=holds)
    second = PretrainingDataset(rows, processor, seed=7, holds_fn=holds)
    epoch0 = [signature(item) for item in read_all(first, 0)]
    second.set_epoch(0)
    backwards = {i: signature(second[i]) for i in reversed(range(len(rows)))}
    assert [backwards[i] for i in range(len(rows))] == epoch0, "order of access does not matter"
    epoch1 = [signature(item) for item in read_all(first, 1)]
    assert epoch1 != epoch0
    assert [signature(item) for item in read_all(first, 0)] == epoch0, "going back to epoch 0 repeats it"
    other_seed = PretrainingDataset(rows, processor, seed=8, holds_fn=holds)
    assert [signature(item) for item in read_all(other_seed, 0)] != epoch0


def test_negative_captions_come_from_the_whole_dataset(rows, processor, tokenizer):
    dataset = PretrainingDataset(rows, processor, seed=2, itm_probability=1.0)
    sources = Counter()
    for epoch in range(4):
        for index, item in enumerate(read_all(dataset, epoch)):
            negative = caption_of(tokenizer, item)
            assert item["itm_label"] == 0 and negative not in rows[index]["captions"], (epoch, index, negative)
            sources[negative] += 1
    # Every caption of the dataset is drawn as some row's negative: the draw reaches all rows, not a batch of them
    # (a batch-local draw from 4 rows could give at most 8 of the 12 distinct captions).
    assert set(sources) == {caption for captions in rows["captions"] for caption in captions}


def truncated_png():
    data = png_bytes("red", size=(40, 40))
    return data[: len(data) // 2]


BROKEN = {
    3: {"bytes": truncated_png(), "path": None},
    5: {"bytes": np.random.default_rng(0).bytes(300), "path": None},
    7: {"bytes": None, "path": "/nonexistent/folder/missing.png"},
}


def test_unreadable_images_are_skipped_with_a_reason(processor, tokenizer):
    rows = make_rows(10, broken=BROKEN)
    dataset = PretrainingDataset(rows, processor, seed=0)
    items = read_all(dataset, 0)
    skipped = {item["index"]: item["skipped"] for item in items if "skipped" in item}
    assert set(skipped) == {3, 5, 7}
    assert "cannot decode image" in skipped[3] and "cannot decode image" in skipped[5]
    assert "not found" in skipped[7] and "/nonexistent/folder/missing.png" in skipped[7]

    batch = PretrainingCollator(tokenizer, seed=0)(items[2:8])
    assert batch["index"].tolist() == [2, 4, 6]
    assert batch["skipped"] == [(3, skipped[3]), (5, skipped[5]), (7, skipped[7])]
    assert batch["input_ids"].shape[0] == batch["pixel_values"].shape[0] == 3

    empty = PretrainingCollator(tokenizer)([items[3], items[5]])
    assert empty["input_ids"].shape == (0, 0) and len(empty["skipped"]) == 2


def test_cached_rows_give_the_samples_an_uncached_read_gives(rows, processor, tokenizer):
    """`__getitem__` reads images, rows and tokenizations through the dataset's caches; over two epochs every
    sample equals what `sample_from_row` builds from the raw row, and the cache holds each image once."""
    dataset = PretrainingDataset(rows, processor, seed=3, max_length=16, itm_probability=0.5, holds_fn=holds)
    fresh = PretrainingDataset(rows, processor, seed=3, max_length=16, itm_probability=0.5, holds_fn=holds)
    for epoch in (0, 1):
        for i, item in enumerate(read_all(dataset, epoch)):
            expected = fresh.sample_from_row(rows[i], i, epoch=epoch)
            assert item.keys() == expected.keys()
            for key, value in expected.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(item[key], value), (epoch, i, key)
                else:
                    assert item[key] == value, (epoch, i, key)
    assert len(dataset._pixels) == len(rows)


def test_cached_tokenization_returns_fresh_tensors(rows, processor):
    dataset = PretrainingDataset(rows, processor, max_length=16)
    first = dataset.encode_caption("there is a red circle")
    first["input_ids"][1] = 0
    first["concept_mask"][:] = True
    again = dataset.encode_caption("there is a red circle")
    assert again["input_ids"][1] != 0 and not again["concept_mask"].all()


def test_an_unreadable_image_is_reported_at_every_read(processor):
    dataset = PretrainingDataset(make_rows(10, broken=BROKEN), processor, seed=0)
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        assert "cannot decode image" in dataset[3]["skipped"]
    assert 3 not in dataset._pixels.values


@pytest.mark.parametrize(
    "row, message", [(3, r"row 3: cannot decode"), (5, r"row 5: cannot decode"), (7, r"row 7: .*missing\.png")]
)
def test_strict_mode_raises_naming_the_row(processor, row, message):
    dataset = PretrainingDataset(make_rows(10, broken=BROKEN), processor, strict=True)
    assert dataset[row - 1]["index"] == row - 1
    with pytest.raises(ValueError, match=message):
        dataset[row]


def test_dataset_argument_errors(rows, processor):
    with pytest.raises(ValueError, match="scene"):
        PretrainingDataset(rows.remove_columns("scene"), processor, holds_fn=holds)
    with pytest.raises(ValueError, match="itm_probability"):
        PretrainingDataset(rows, processor, itm_probability=1.5)
    with pytest.raises(ValueError, match="processor"):
        PretrainingDataset(rows)


# ---------------------------------------------------------------- masking


def make_sample(tokenizer, caption, index, epoch=0, itm_label=1, image_size=(4, 4)):
    encoding = tokenizer(caption)
    ids = torch.tensor(encoding["input_ids"])
    return {
        "index": index,
        "epoch": epoch,
        "pixel_values": torch.ones((3, *image_size)),
        "pixel_mask": torch.ones(image_size, dtype=torch.long),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "word_ids": torch.tensor([-1 if w is None else w for w in encoding.word_ids()]),
        "concept_mask": torch.zeros(len(ids), dtype=torch.bool),
        "itm_label": itm_label,
    }


@pytest.fixture(scope="module")
def piece_tokenizer():
    """A small vocabulary, so most words split into several pieces."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), size=rng.integers(3, 9))) for _ in range(300)]
    corpus = [" ".join(rng.choice(words, size=8)) for _ in range(200)]
    tok = train_wordpiece_tokenizer(corpus, vocab_size=80)
    tok.test_words = words
    return tok


def random_caption(tokenizer, rng, low=7, high=40):
    return " ".join(rng.choice(tokenizer.test_words, size=rng.integers(low, high)))


def test_whole_word_mask_function():
    word_ids = np.array([-1, 0, 0, 1, 2, 2, 2, 3, -1, -1])
    special = word_ids < 0
    for seed in range(50):
        mask = whole_word_mask(word_ids, special, 0.5, np.random.default_rng(seed))
        assert not mask[special].any()
        chosen = set(word_ids[mask])
        assert len(chosen) == 2  # round(0.5 * 4)
        assert all(mask[word_ids == word].all() for word in chosen), "a chosen word is masked whole"
    one_word = whole_word_mask(np.array([-1, 0, -1]), np.array([True, False, True]), 0.15, np.random.default_rng(0))
    assert one_word.tolist() == [False, True, False], "at least one word per caption"
    nothing = whole_word_mask(np.array([-1, -1]), np.array([True, True]), 0.15, np.random.default_rng(0))
    assert not nothing.any()


def test_mlm_masks_whole_words_never_specials_and_labels_original_ids(piece_tokenizer):
    rng = np.random.default_rng(1)
    samples = [make_sample(piece_tokenizer, random_caption(piece_tokenizer, rng), index=i) for i in range(200)]
    batch = PretrainingCollator(piece_tokenizer, seed=3)(samples)
    labels, word_ids = batch["mlm_labels"], batch["word_ids"]
    selected = labels != IGNORE_INDEX
    special_ids = torch.tensor(piece_tokenizer.all_special_ids)
    multi_piece_words_masked = 0
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        original = sample["input_ids"]
        assert not selected[row, n:].any(), "padding is never masked"
        assert not selected[row, :n][sample["word_ids"] < 0].any(), "[CLS]/[SEP] are never masked"
        assert torch.equal(labels[row, :n][selected[row, :n]], original[selected[row, :n]]), (
            "labels are the original ids"
        )
        assert torch.equal(batch["input_ids"][row, :n][~selected[row, :n]], original[~selected[row, :n]])
        for word in word_ids[row][selected[row]].unique().tolist():
            pieces = word_ids[row] == word
            assert selected[row][pieces].all(), "all pieces of a selected word are selected"
            multi_piece_words_masked += int(pieces.sum()) > 1
        changed = (
            selected[row, :n]
            & (batch["input_ids"][row, :n] != original)
            & (batch["input_ids"][row, :n] != piece_tokenizer.mask_token_id)
        )
        assert not torch.isin(batch["input_ids"][row, :n][changed], special_ids).any(), "random tokens are not special"
    assert multi_piece_words_masked > 50


def test_mlm_selects_fifteen_percent_of_words(piece_tokenizer):
    rng = np.random.default_rng(2)
    samples = [make_sample(piece_tokenizer, random_caption(piece_tokenizer, rng, 20, 41), index=i) for i in range(300)]
    batch = PretrainingCollator(piece_tokenizer, seed=0)(samples)
    selected_words = total_words = 0
    for row in range(len(samples)):
        words = batch["word_ids"][row][batch["word_ids"][row] >= 0].unique()
        chosen = batch["word_ids"][row][batch["mlm_labels"][row] != IGNORE_INDEX].unique()
        total_words += len(words)
        selected_words += len(chosen)
        assert len(chosen) == max(1, round(0.15 * len(words)))
    assert abs(selected_words / total_words - 0.15) < 0.01

    token_level = PretrainingCollator(piece_tokenizer, seed=0, whole_word_mask=False)(samples)
    for row, sample in enumerate(samples):
        maskable = int((sample["word_ids"] >= 0).sum())
        assert int((token_level["mlm_labels"][row] != IGNORE_INDEX).sum()) == max(1, round(0.15 * maskable))


def test_eighty_ten_ten_proportions(piece_tokenizer):
    rng = np.random.default_rng(4)
    samples = [make_sample(piece_tokenizer, random_caption(piece_tokenizer, rng, 30, 40), index=i) for i in range(600)]
    batch = PretrainingCollator(piece_tokenizer, mlm_probability=0.5, seed=9)(samples)
    selected = batch["mlm_labels"] != IGNORE_INDEX
    inputs, originals = batch["input_ids"][selected], batch["mlm_labels"][selected]
    n = len(inputs)
    assert n > 10000
    as_mask = (inputs == piece_tokenizer.mask_token_id).float().mean().item()
    replaced = ((inputs != piece_tokenizer.mask_token_id) & (inputs != originals)).float().mean().item()
    kept = (inputs == originals).float().mean().item()
    replacements = len(piece_tokenizer) - len(set(piece_tokenizer.all_special_ids))
    # a random replacement equals the original token 1/replacements of the time
    for share, expected in (
        (as_mask, 0.8),
        (replaced, 0.1 * (1 - 1 / replacements)),
        (kept, 0.1 + 0.1 / replacements),
    ):
        sd = math.sqrt(expected * (1 - expected) / n)
        assert abs(share - expected) < 4 * sd, (share, expected)


def test_mlm_view_is_matched_and_itm_view_is_unmasked(piece_tokenizer):
    """MLM masks the rows' own captions (every sample is a matched pair); the ITM captions stay unmasked."""
    rng = np.random.default_rng(5)
    samples = []
    for i in range(40):
        sample = make_sample(piece_tokenizer, random_caption(piece_tokenizer, rng), index=i, itm_label=i % 2)
        other = make_sample(piece_tokenizer, random_caption(piece_tokenizer, rng), index=i)
        sample["itm_input_ids"] = other["input_ids"] if i % 2 == 0 else sample["input_ids"]
        sample["itm_attention_mask"] = torch.ones_like(sample["itm_input_ids"])
        sample["itm_token_type_ids"] = torch.zeros_like(sample["itm_input_ids"])
        samples.append(sample)
    batch = PretrainingCollator(piece_tokenizer, seed=0)(samples)
    assert batch["itm_labels"].tolist() == [i % 2 for i in range(40)]
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        assert (batch["mlm_labels"][row] != IGNORE_INDEX).any()
        assert torch.equal(batch["plain_input_ids"][row, :n], sample["input_ids"])
        m = len(sample["itm_input_ids"])
        assert torch.equal(batch["itm_input_ids"][row, :m], sample["itm_input_ids"])
        assert int(batch["itm_attention_mask"][row].sum()) == m
        assert not (batch["itm_input_ids"][row] == piece_tokenizer.mask_token_id).any()


def test_mask_depends_only_on_seed_epoch_and_index(piece_tokenizer):
    rng = np.random.default_rng(6)
    captions = [random_caption(piece_tokenizer, rng) for _ in range(5)]
    target = make_sample(piece_tokenizer, captions[0], index=17, epoch=2)
    others = [make_sample(piece_tokenizer, c, index=i) for i, c in enumerate(captions[1:])]

    def masked_target(batch_samples, seed=11):
        batch = PretrainingCollator(piece_tokenizer, seed=seed)(batch_samples)
        row = batch["index"].tolist().index(17)
        n = len(target["input_ids"])
        return batch["input_ids"][row, :n].tolist(), batch["mlm_labels"][row, :n].tolist()

    alone = masked_target([target])
    assert masked_target([others[0], target, others[1]]) == alone
    assert masked_target(list(reversed(others)) + [target]) == alone
    draws = {str(masked_target([dict(target, epoch=epoch)])) for epoch in range(6)}
    assert len(draws) > 1, "another epoch draws another mask"
    assert any(masked_target([target], seed=seed) != alone for seed in range(12, 16))


def test_padding_and_image_stacking(piece_tokenizer):
    rng = np.random.default_rng(7)
    samples = [
        make_sample(piece_tokenizer, random_caption(piece_tokenizer, rng, 3, 4), index=0, image_size=(6, 4)),
        make_sample(piece_tokenizer, random_caption(piece_tokenizer, rng, 9, 10), index=1, image_size=(3, 8)),
    ]
    samples[1]["concept_mask"][1] = True
    batch = PretrainingCollator(piece_tokenizer, seed=0, pad_to_multiple_of=8)(samples)
    length = batch["input_ids"].shape[1]
    assert length % 8 == 0 and length >= len(samples[1]["input_ids"])
    n = len(samples[0]["input_ids"])
    assert (batch["input_ids"][0, n:] == piece_tokenizer.pad_token_id).all()
    assert (batch["attention_mask"][0, n:] == 0).all() and (batch["attention_mask"][0, :n] == 1).all()
    assert (batch["word_ids"][0, n:] == -1).all() and not batch["concept_mask"][0, n:].any()
    assert batch["concept_mask"][1].tolist().count(True) == 1
    assert batch["pixel_values"].shape == (2, 3, 6, 8) and batch["pixel_mask"].shape == (2, 6, 8)
    assert int(batch["pixel_mask"][0].sum()) == 24 and int(batch["pixel_mask"][1].sum()) == 24
    assert (batch["pixel_values"][0, :, :, 4:] == 0).all() and (batch["pixel_values"][1, :, 3:, :] == 0).all()
    expected_keys = {
        "input_ids",
        "plain_input_ids",
        "attention_mask",
        "token_type_ids",
        "word_ids",
        "pixel_values",
        "pixel_mask",
        "mlm_labels",
        "itm_labels",
        "itm_input_ids",
        "itm_attention_mask",
        "itm_token_type_ids",
        "concept_mask",
        "index",
        "epoch",
        "skipped",
    }
    assert set(batch) == expected_keys
    assert batch["epoch"].tolist() == [int(s.get("epoch", 0)) for s in samples]


def test_dataset_and_collator_together(rows, processor, tokenizer):
    dataset = PretrainingDataset(rows, processor, seed=3, holds_fn=holds, concept_words={"red"})
    collator = PretrainingCollator(tokenizer, seed=3)
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collator))
    assert sum(len(batch["index"]) for batch in batches) == len(rows)

    # Two worker processes and another batch size give the same samples and the same masks.
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=collator, num_workers=2)
    by_index = {}
    for batch in loader:
        for row, index in enumerate(batch["index"].tolist()):
            n = int(batch["attention_mask"][row].sum())
            by_index[index] = (batch["input_ids"][row, :n].tolist(), batch["mlm_labels"][row, :n].tolist())
    for batch in batches:
        for row, index in enumerate(batch["index"].tolist()):
            n = int(batch["attention_mask"][row].sum())
            assert by_index[index] == (batch["input_ids"][row, :n].tolist(), batch["mlm_labels"][row, :n].tolist())
    for batch in batches:
        assert batch["pixel_values"].shape[-2:] == (10, 14)  # widths 12-14 padded to 14
        assert ((batch["mlm_labels"] != IGNORE_INDEX).sum(dim=1) >= 1).all()
        negatives = batch["itm_labels"] == 0
        assert not torch.equal(batch["itm_input_ids"][negatives], batch["plain_input_ids"][negatives])
