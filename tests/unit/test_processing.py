"""Image processor, WordPiece tokenizer and VLPProcessor: conversions, values, padding, save/load and Hub loading."""

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from remote_code import run_blocked
from repo_paths import ROOT

from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import SPECIAL_TOKENS, train_wordpiece_tokenizer

CAPTIONS = [
    "there is a red circle",
    "a small blue square left of a green triangle",
    "two yellow stars above the purple hexagon",
    "the large orange diamond is right of a red circle",
    "no green circle",
]


def normalized(value_0_255, mean=0.5, std=0.5):
    return (value_0_255 / 255.0 - mean) / std


def keep_size():
    return VLPImageProcessor(size=None)


# ---------------------------------------------------------------- image processor


def test_default_output_shapes_dtypes_and_names():
    processor = VLPImageProcessor()
    out = processor([PIL.Image.new("RGB", (30, 20)), np.zeros((7, 9, 3), np.uint8)], return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 64, 64) and out["pixel_values"].dtype == torch.float32
    assert out["pixel_mask"].shape == (2, 64, 64) and out["pixel_mask"].dtype == torch.int64
    assert bool((out["pixel_mask"] == 1).all())
    assert VLPImageProcessor.model_input_names == ["pixel_values", "pixel_mask"]


def test_pixel_value_after_resize_rescale_normalize_by_hand():
    image = PIL.Image.new("RGB", (5, 3), (51, 102, 204))
    out = VLPImageProcessor(size={"height": 8, "width": 6})(image, return_tensors="pt")["pixel_values"][0]
    assert out.shape == (3, 8, 6)
    # (51/255 - 0.5) / 0.5 = -0.6, (102/255 - 0.5) / 0.5 = -0.2, (204/255 - 0.5) / 0.5 = 0.6
    assert torch.allclose(out[:, 4, 3], torch.tensor([-0.6, -0.2, 0.6]), atol=1e-4)

    custom = VLPImageProcessor(size=None, image_mean=[0.1, 0.2, 0.3], image_std=[0.2, 0.3, 0.4])
    pixel = custom(image, return_tensors="pt")["pixel_values"][0, :, 1, 2]
    expected = torch.tensor([(0.2 - 0.1) / 0.2, (0.4 - 0.2) / 0.3, (0.8 - 0.3) / 0.4])
    assert torch.allclose(pixel, expected, atol=1e-5)


def test_resize_interpolates_instead_of_copying_pixels():
    left_black_right_white = np.zeros((4, 4, 3), np.uint8)
    left_black_right_white[:, 2:] = 255
    out = VLPImageProcessor(size={"height": 4, "width": 8}, resample="bilinear")(left_black_right_white)[
        "pixel_values"
    ][0, 0, 0]
    assert out[0] == pytest.approx(-1.0, abs=1e-4) and out[-1] == pytest.approx(1.0, abs=1e-4)
    assert np.all(np.diff(out) >= -1e-6), "a horizontal ramp stays monotone"
    assert np.any((out > -0.99) & (out < 0.99)), "bilinear resampling produces in-between values"


def test_grayscale_modes_become_three_equal_channels():
    for image in (PIL.Image.new("L", (3, 2), 100), np.full((2, 3), 100, np.uint8), np.full((2, 3, 1), 100, np.uint8)):
        out = keep_size()(image)["pixel_values"][0]
        assert out.shape == (3, 2, 3)
        assert np.allclose(out, normalized(100), atol=1e-6)
    bilevel = PIL.Image.new("1", (2, 2), 1)
    assert np.allclose(keep_size()(bilevel)["pixel_values"], 1.0)


def test_alpha_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 0, 0, 51)  # 20 % black over white -> 204
    for image in (PIL.Image.fromarray(rgba, mode="RGBA"), rgba):
        out = keep_size()(image)["pixel_values"][0]
        assert np.allclose(out[:, 0, 0], 1.0, atol=1e-6)
        assert np.allclose(out[:, 0, 1], [1.0, -1.0, -1.0], atol=1e-6)
        assert np.allclose(out[:, 0, 2], normalized(204.0), atol=1e-5)

    la = PIL.Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), mode="LA")
    out = keep_size()(la)["pixel_values"][0]
    assert np.allclose(out[:, 0, 0], 1.0, atol=1e-6) and np.allclose(out[:, 0, 1], -1.0, atol=1e-6)

    black_background = VLPImageProcessor(size=None, background_color=(0, 0, 0))
    assert np.allclose(black_background(la)["pixel_values"][0][:, 0, 0], -1.0, atol=1e-6)


def test_palette_images_with_and_without_transparency():
    palette = PIL.Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    opaque = keep_size()(palette)["pixel_values"][0]
    assert np.allclose(opaque[:, 0, 0], normalized(np.array([10, 20, 30])), atol=1e-6)
    assert np.allclose(opaque[:, 0, 1], normalized(np.array([200, 100, 50])), atol=1e-6)

    palette.info["transparency"] = 0  # palette entry 0 is transparent
    transparent = keep_size()(palette)["pixel_values"][0]
    assert np.allclose(transparent[:, 0, 0], 1.0, atol=1e-6), "transparent palette pixel shows the white background"
    assert np.allclose(transparent[:, 0, 1], normalized(np.array([200, 100, 50])), atol=1e-6)


def test_sixteen_bit_images_are_scaled_not_clipped():
    values = np.array([[0, 65535, 128 * 257]], np.uint16)
    image = PIL.Image.fromarray(values)
    assert image.mode == "I;16"
    # PIL's own convert("RGB") clips 16-bit values at 255; the processor scales by 255/65535.
    expected = normalized(np.array([0.0, 255.0, 128.0]))
    for source in (image, values, np.stack([values] * 3, axis=-1)):
        out = keep_size()(source)["pixel_values"][0]
        assert np.allclose(out[0, 0], expected, atol=1e-5), source.__class__
        assert np.allclose(out[0], out[2])
    int32_image = PIL.Image.fromarray(values.astype(np.int32))
    assert int32_image.mode == "I"
    assert np.allclose(keep_size()(int32_image)["pixel_values"][0, 0, 0], expected, atol=1e-5)


def test_float_arrays_and_tensors():
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    reference = keep_size()(uint8)["pixel_values"]
    from_float = keep_size()(uint8.astype(np.float32) / 255.0)["pixel_values"]
    assert np.allclose(from_float, reference, atol=1e-5)
    from_chw_tensor = keep_size()(torch.from_numpy(uint8).permute(2, 0, 1))["pixel_values"]
    assert np.allclose(from_chw_tensor, reference)
    from_hwc_tensor = keep_size()(torch.from_numpy(uint8), input_data_format="channels_last")["pixel_values"]
    assert np.allclose(from_hwc_tensor, reference)
    batch = keep_size()(np.stack([uint8, uint8]))["pixel_values"]
    assert batch.shape == (2, 3, 4, 5)


def test_clear_errors_name_the_bad_value():
    processor = keep_size()
    with pytest.raises(ValueError, match=r"\[0, 1\].*2\.5"):
        processor(np.full((2, 2, 3), 2.5, np.float32))
    with pytest.raises(ValueError, match=r"\(5, 5, 7\)"):
        processor(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2, 2, 2\)"):
        processor([np.zeros((2, 2, 2, 2, 2), np.uint8)])
    with pytest.raises(ValueError, match="'La'"):
        processor(PIL.Image.new("LA", (2, 2)).convert("La"))
    with pytest.raises(ValueError, match=r"int64.*\[0, 300\]"):
        processor(np.array([[0, 300]], np.int64))
    with pytest.raises(TypeError, match="str"):
        processor(["not an image"])
    with pytest.raises(ValueError, match="size"):
        VLPImageProcessor(size={"shortest_edge": 3})
    with pytest.raises(ValueError, match="resample 'cubic'"):
        VLPImageProcessor(resample="cubic")


def test_padding_to_largest_image_with_pixel_mask():
    tall = PIL.Image.new("RGB", (6, 10), (255, 255, 255))  # width 6, height 10
    wide = PIL.Image.new("RGB", (8, 4), (255, 255, 255))
    out = keep_size()([tall, wide], return_tensors="pt")
    values, mask = out["pixel_values"], out["pixel_mask"]
    assert values.shape == (2, 3, 10, 8) and mask.shape == (2, 10, 8)
    assert int(mask[0].sum()) == 60 and int(mask[1].sum()) == 32
    assert bool((mask[0, :, :6] == 1).all()) and bool((mask[0, :, 6:] == 0).all())
    assert bool((mask[1, :4, :] == 1).all()) and bool((mask[1, 4:, :] == 0).all())
    assert bool((values[1, :, :4, :] == 1).all()) and bool((values[1, :, 4:, :] == 0).all())

    unpadded = VLPImageProcessor(size=None, do_pad=False)
    listed = unpadded([tall, wide])
    assert [tuple(v.shape) for v in listed["pixel_values"]] == [(3, 10, 6), (3, 4, 8)]
    with pytest.raises(ValueError, match="different sizes"):
        unpadded([tall, wide], return_tensors="pt")
    # a per-call do_resize=False also keeps sizes
    assert VLPImageProcessor()([tall], do_resize=False)["pixel_values"].shape == (1, 3, 10, 6)


def test_image_processor_save_load_keeps_settings(tmp_path):
    processor = VLPImageProcessor(
        size=None, resample="bilinear", image_mean=[0.1, 0.2, 0.3], background_color=(0, 0, 0)
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] is None
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_vlp.VLPImageProcessor"
    assert (tmp_path / "image_processing_vlp.py").exists()
    loaded = VLPImageProcessor.from_pretrained(tmp_path)
    assert loaded.size is None and loaded.resample == int(PIL.Image.Resampling.BILINEAR)
    assert loaded.image_mean == pytest.approx([0.1, 0.2, 0.3]) and loaded.background_color == [0, 0, 0]


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(CAPTIONS * 3, vocab_size=120)


def test_tokenizer_special_tokens_and_encoding(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (0, 1, 4)
    encoding = tokenizer("There is a RED circle")
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    assert tokens == ["[CLS]", "there", "is", "a", "red", "circle", "[SEP]"]
    assert encoding.word_ids() == [None, 0, 1, 2, 3, 4, None]
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red @")["input_ids"])[-2] == "[UNK]"
    assert tokenizer.decode(encoding["input_ids"], skip_special_tokens=True) == "there is a red circle"


def test_tokenizer_splits_unseen_words_into_pieces(tokenizer):
    tokens = tokenizer.tokenize("circles")
    assert len(tokens) > 1 and tokens[0] == "circle" and all(t.startswith("##") for t in tokens[1:])


def test_tokenizer_save_load_offline(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    for caption in CAPTIONS + ["unseen Words, with punctuation!"]:
        assert loaded(caption)["input_ids"] == tokenizer(caption)["input_ids"]


TOKENIZATION_FILE = os.path.join(ROOT, "processing", "tokenization.py")
LEARN_IN_SUBPROCESS = textwrap.dedent(
    """
    import importlib.util, json, random, sys
    # Load the module file alone: learning a vocabulary needs only `tokenizers`, which keeps each process fast.
    spec = importlib.util.spec_from_file_location("tokenization", sys.argv[1])
    tokenization = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tokenization)
    r = random.Random(1)
    words = ["".join(r.choice("abcdefghij") for _ in range(r.randint(2, 7))) for _ in range(200)]
    texts = [" ".join(r.choice(words) for _ in range(6)) for _ in range(400)]
    print(json.dumps(sorted(tokenization.learn_wordpiece_vocab(texts, vocab_size=300).items())))
    """
)


def test_tokenizer_training_is_deterministic_across_processes():
    # This corpus has many equally frequent merges; plain tokenizers training breaks those ties in hash-map
    # order and gives a different vocabulary in most fresh processes.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", LEARN_IN_SUBPROCESS, TOKENIZATION_FILE],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
        outputs.append(stdout)
    assert len(set(outputs)) == 1
    vocab = dict(json.loads(outputs[0]))
    assert len(vocab) == 300

    r = random.Random(1)
    words = ["".join(r.choice("abcdefghij") for _ in range(r.randint(2, 7))) for _ in range(200)]
    texts = [" ".join(r.choice(words) for _ in range(6)) for _ in range(400)]
    assert train_wordpiece_tokenizer(texts, vocab_size=300).get_vocab() == vocab


def test_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece_tokenizer(CAPTIONS, vocab_size=5)
    with pytest.raises(ValueError, match="empty"):
        train_wordpiece_tokenizer([])


# ---------------------------------------------------------------- processor


@pytest.fixture(scope="module")
def processor(tokenizer):
    image_processor = VLPImageProcessor(
        size={"height": 24, "width": 40}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]
    )
    return VLPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def sample_image():
    rng = np.random.default_rng(3)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8))


def test_processor_joins_text_and_images(processor):
    out = processor(images=[sample_image(), sample_image()], text=CAPTIONS[:2], padding=True, return_tensors="pt")
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask"}
    assert out["input_ids"].shape == out["attention_mask"].shape == out["token_type_ids"].shape
    assert out["input_ids"].shape[0] == 2 and out["pixel_values"].shape == (2, 3, 24, 40)
    assert processor.batch_decode(out["input_ids"], skip_special_tokens=True) == CAPTIONS[:2]
    assert processor.decode(out["input_ids"][0], skip_special_tokens=True) == CAPTIONS[0]
    truncated = processor(text=CAPTIONS[1], max_length=4, return_tensors="pt")
    assert truncated["input_ids"].shape == (1, 4) and int(truncated["input_ids"][0, -1]) == 3
    assert set(processor(images=sample_image())) == {"pixel_values", "pixel_mask"}
    kept = processor(images=sample_image(), size=None, return_tensors="pt")
    assert kept["pixel_values"].shape == (1, 3, 30, 50)
    with pytest.raises(ValueError, match="neither"):
        processor()
    assert processor.model_input_names == [
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "pixel_values",
        "pixel_mask",
    ]


LOAD_WITHOUT_VLP = """
import sys

import numpy as np, PIL.Image, torch
from transformers import AutoImageProcessor, AutoProcessor

folder, image_file, output_file, texts = {arguments!r}
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__name__ == "VLPProcessor", type(processor)
assert not type(processor).__module__.startswith("vlp"), type(processor).__module__
assert type(processor.image_processor).__name__ == "VLPImageProcessor"
standalone = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
assert standalone.to_dict() == processor.image_processor.to_dict()
out = processor(images=PIL.Image.open(image_file), text=texts, padding=True, return_tensors="pt")
torch.save({{key: value for key, value in out.items()}}, output_file)
assert not any(name == "vlp" or name.startswith("vlp.") for name in sys.modules)
"""


def test_processor_round_trip_loads_from_hub_files_without_vlp(processor, tmp_path, capfd):
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    for name in ("processing_vlp.py", "image_processing_vlp.py", "processor_config.json", "tokenizer.json"):
        assert (folder / name).exists(), name
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_vlp.VLPProcessor"
    # transformers 5 nests the image processor's config (with its own auto_map) in processor_config.json
    assert config["image_processor"]["auto_map"]["AutoImageProcessor"] == "image_processing_vlp.VLPImageProcessor"

    image_file = tmp_path / "image.png"
    sample_image().save(image_file)
    texts = CAPTIONS[:2]
    expected = processor(images=PIL.Image.open(image_file), text=texts, padding=True, return_tensors="pt")

    # With the package installed, the class itself loads the folder without asking for remote code.
    local = VLPProcessor.from_pretrained(folder)
    assert type(local.image_processor) is VLPImageProcessor
    assert local.image_processor.to_dict() == processor.image_processor.to_dict()
    reloaded = local(images=PIL.Image.open(image_file), text=texts, padding=True, return_tensors="pt")
    assert all(torch.equal(reloaded[key], expected[key]) for key in expected)
    assert "custom code" not in "".join(capfd.readouterr()), "loading asked about remote code"

    output_file = tmp_path / "remote.pt"
    arguments = (str(folder), str(image_file), str(output_file), list(texts))
    printed = run_blocked(LOAD_WITHOUT_VLP.format(arguments=arguments), str(tmp_path / "elsewhere"))
    assert "custom code" not in printed, "loading asked about remote code"
    remote = torch.load(output_file)
    assert set(remote) == set(expected)
    for key in expected:
        assert torch.equal(remote[key], expected[key]), key
