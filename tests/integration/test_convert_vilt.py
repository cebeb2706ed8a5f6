"""`vlp convert-vilt`: a randomly initialised ViltForMaskedLM, saved and converted, gives the same MLM logits (and
pooled output) as the converted VLPForPreTraining."""

import subprocess
import sys

import pytest
import torch
from transformers import ViltConfig, ViltForMaskedLM

from vlp.modeling_vlp import VLPForPreTraining
from vlp.training.hub.convert_vilt import convert_state_dict, vlp_config_from_vilt


@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ViltConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        image_size=32,
        patch_size=8,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViltForMaskedLM(config).eval()
    with torch.no_grad():  # make every parameter matter (fresh LayerNorms and biases are 1 and 0)
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("vilt")
    model.save_pretrained(path)
    from transformers import BertTokenizerFast, ViltImageProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "is", "there"]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(words)}).save_pretrained(path)
    ViltImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(path)
    return path


def inputs(seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (3, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    pixels = torch.randn(3, 3, 32, 32, generator=generator)
    return ids, mask, pixels


def test_converted_model_gives_vilts_mlm_logits(vilt_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vlp.training.cli", "convert-vilt", str(vilt_dir), str(tmp_path / "vlp")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    vilt = ViltForMaskedLM.from_pretrained(vilt_dir).eval()
    vlp = VLPForPreTraining.from_pretrained(tmp_path / "vlp").eval()
    ids, mask, pixels = inputs()
    with torch.no_grad():
        expected = vilt(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=torch.ones(3, 32, 32, dtype=torch.long)
        )
        out = vlp.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        logits = vlp.mlm_head(out.last_hidden_state[:, : ids.shape[1]])
    difference = (logits - expected.logits).abs().max().item()
    assert difference <= 1e-4, difference
    assert torch.equal(vlp.mlm_head.decoder.weight, vlp.vlp.embeddings.text.word_embeddings.weight)
    from PIL import Image

    from vlp.processing import VLPProcessor

    processor = VLPProcessor.from_pretrained(tmp_path / "vlp")
    encoded = processor(images=Image.new("RGB", (50, 40), "red"), text="there is a red circle", return_tensors="pt")
    assert encoded["pixel_values"].shape[-2:] == (32, 32)
    assert processor.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())[:3] == ["[CLS]", "there", "is"]


def test_pooled_output_matches_and_unknown_settings_are_refused(vilt_dir):
    from transformers import ViltModel

    vilt = ViltModel.from_pretrained(vilt_dir).eval()
    config = vlp_config_from_vilt(vilt.config)
    model = VLPForPreTraining(config).eval()
    state, ignored = convert_state_dict(vilt.state_dict(), config.num_hidden_layers)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not ignored
    # Only what ViLT has no counterpart for stays fresh: the MIM mask embedding (and no encoder weight).
    assert [key for key in missing if key.startswith("vlp.")] == ["vlp.embeddings.image.mask_token"], missing
    ids, mask, pixels = inputs(2)
    with torch.no_grad():
        expected = vilt(input_ids=ids, attention_mask=mask, pixel_values=pixels).pooler_output
        pooled = model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels).pooler_output
    assert (pooled - expected).abs().max().item() <= 1e-4
    vilt.config.max_image_length = 100
    with pytest.raises(ValueError, match="max_image_length=100"):
        vlp_config_from_vilt(vilt.config)
