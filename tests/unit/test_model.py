"""The VLP encoder and its MLM/ITM heads: shapes, attention paths, masking, losses, configuration checks."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining, VLPModel


def tiny_config(**overrides):
    values = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=16,
    )
    values.update(overrides)
    return VLPConfig(**values)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VLPForPreTraining(tiny_config()).eval()


def batch(size=3, length=7, image=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (size, length), generator=gen)
    ids[:, 0] = 2
    return ids, torch.randn(size, 3, image, image, generator=gen)


def test_joint_text_only_and_image_only_shapes(model):
    ids, pixels = batch()
    joint = model.vlp(input_ids=ids, pixel_values=pixels)
    assert joint.last_hidden_state.shape == (3, 7 + 1 + 16, 32)
    assert joint.text_length == 7 and joint.patch_grid == (4, 4)
    assert model.vlp(input_ids=ids).last_hidden_state.shape == (3, 7, 32)
    wide = model.vlp(pixel_values=torch.randn(2, 3, 32, 64))
    assert wide.last_hidden_state.shape == (2, 1 + 4 * 8, 32) and wide.patch_grid == (4, 8)
    with pytest.raises(ValueError, match="input_ids, pixel_values"):
        model.vlp()


def test_image_only_pass_ignores_text_and_text_only_pass_ignores_images(model):
    """The two unimodal passes are the unimodal halves of the model, not a joint pass with empty context."""
    ids, pixels = batch()
    text = model.vlp(input_ids=ids).last_hidden_state
    joint = model.vlp(input_ids=ids, pixel_values=pixels).last_hidden_state[:, :7]
    assert not torch.allclose(text, joint, atol=1e-4)


class _RecordShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.shapes = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.shapes.append(tuple(tensor.shape))
        return out


@pytest.mark.parametrize("padded", [False, True])
def test_default_path_builds_no_attention_matrix(model, padded):
    ids, pixels = batch(size=2, length=9)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
    seq = 9 + 17
    with _RecordShapes() as recorder:
        model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert any("scaled_dot_product" in op for op in recorder.ops), recorder.ops
    square = [s for s in recorder.shapes if len(s) >= 2 and s[-2:] == (seq, seq)]
    assert not square, f"an attention matrix was built: {square}"
    with _RecordShapes() as recorder:
        model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_attentions=True)
    assert any(s[-2:] == (seq, seq) for s in recorder.shapes if len(s) >= 2)


def test_eager_path_matches_sdpa_and_returns_chosen_layers(model):
    ids, pixels = batch()
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    fused = model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    eager = model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_attentions=True)
    torch.testing.assert_close(eager.last_hidden_state, fused.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert len(eager.attentions) == 2 and eager.attentions[0].shape == (3, 4, 24, 24)
    probs = eager.attentions[-1]
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, 24))
    assert probs[0, :, :, 4:7].abs().max() == 0, "padded keys must get no attention"
    last = model.vlp(input_ids=ids, pixel_values=pixels, output_attentions=True, attention_layers=[-1])
    assert len(last.attentions) == 1


def test_attention_probs_equal_a_direct_computation(model):
    """The eager map of layer 0 equals softmax(QK^T/sqrt(d)) computed here from the layer's own weights."""
    ids, pixels = batch(size=1)
    out = model.vlp(input_ids=ids, pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    layer = model.vlp.encoder.layer[0]
    x = layer.layernorm_before(out.hidden_states[0])
    q, k, _ = layer.attention.qkv(x).split(32, dim=-1)
    q = q.view(1, -1, 4, 8).transpose(1, 2)
    k = k.view(1, -1, 4, 8).transpose(1, 2)
    expected = (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1)
    torch.testing.assert_close(out.attentions[0], expected, atol=1e-6, rtol=1e-5)


def test_padded_image_equals_unpadded_image(model):
    """Zero-padding an image into a larger canvas with its pixel_mask leaves the real tokens' outputs unchanged."""
    ids, pixels = batch(size=1)
    plain = model.vlp(input_ids=ids, pixel_values=pixels).last_hidden_state
    canvas = torch.zeros(1, 3, 48, 40)
    canvas[..., :32, :32] = pixels
    mask = torch.zeros(1, 48, 40, dtype=torch.long)
    mask[:, :32, :32] = 1
    padded = model.vlp(input_ids=ids, pixel_values=canvas, pixel_mask=mask)
    grid = padded.patch_grid
    assert grid == (6, 5)
    states = padded.last_hidden_state[0, 8:].view(6, 5, -1)[:4, :4].reshape(16, -1)
    torch.testing.assert_close(padded.last_hidden_state[0, :8], plain[0, :8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states, plain[0, 8:], atol=1e-5, rtol=1e-5)
    assert padded.attention_mask.sum().item() == 7 + 1 + 16


def test_position_grid_is_interpolated_for_other_sizes(model):
    emb = model.vlp.embeddings.image
    torch.testing.assert_close(emb.position_grid(4, 4), emb.position_embeddings[0, 1:])
    grid = emb.position_grid(7, 4).view(7, 4, -1)
    stored = emb.position_embeddings[0, 1:].view(4, 4, -1)
    # align_corners=True keeps the corners of the learned grid at the corners of any grid
    torch.testing.assert_close(grid[0, 0], stored[0, 0])
    torch.testing.assert_close(grid[-1, -1], stored[-1, -1])
    torch.testing.assert_close(grid[3, 0], (stored[1, 0] + stored[2, 0]) / 2)


def test_patch_projection_equals_the_strided_convolution(model):
    """The projection runs as one matrix multiply over the projection's Conv2d weights; it must equal that convolution
    (square and non-square images, values and gradients)."""
    emb = model.vlp.embeddings.image
    for height, width in ((32, 32), (16, 40)):
        pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height))
        projected, rows, cols = emb.project_patches(pixels)
        reference = F.conv2d(pixels, emb.projection.weight, emb.projection.bias, stride=emb.patch_size)
        assert (rows, cols) == reference.shape[-2:]
        torch.testing.assert_close(projected, reference.flatten(2).transpose(1, 2))
    weight = emb.projection.weight.detach().clone().requires_grad_(True)
    grad = torch.randn(2, rows * cols, weight.shape[0])
    (F.conv2d(pixels, weight, None, stride=emb.patch_size).flatten(2).transpose(1, 2) * grad).sum().backward()
    emb.zero_grad()
    (emb.project_patches(pixels)[0] * grad).sum().backward()
    torch.testing.assert_close(emb.projection.weight.grad, weight.grad)
    emb.zero_grad(set_to_none=True)


def test_mim_mask_token_replaces_patches_before_positions(model):
    emb = model.vlp.embeddings.image
    pixels = torch.randn(2, 3, 32, 32)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, 3] = True
    x, _, _ = emb(pixels, bool_masked_pos=masked)
    torch.testing.assert_close(x[0, 1 + 3], emb.mask_token[0, 0] + emb.position_embeddings[0, 1 + 3])
    plain, _, _ = emb(pixels)
    torch.testing.assert_close(x[1], plain[1])


def test_mlm_logits_only_at_masked_positions_and_loss_matches_reference(model):
    ids, pixels = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 1] = ids[0, 2], ids[1, 5], ids[2, 1]
    out = model(input_ids=ids, pixel_values=pixels, mlm_labels=labels)
    assert out.mlm_logits.shape == (3, 60)
    full = model.mlm_head(out.last_hidden_state[:, :7])
    torch.testing.assert_close(out.mlm_logits, full[labels != -100])
    reference = F.cross_entropy(full.reshape(-1, 60), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.mlm_loss, reference)
    assert out.itm_loss is None and torch.equal(out.loss, out.mlm_loss)


def test_losses_use_given_normalizers_and_weights(model):
    ids, pixels = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    itm = torch.tensor([1, 0, 1])
    mean = model(input_ids=ids, pixel_values=pixels, mlm_labels=labels, itm_labels=itm)
    scaled = model(
        input_ids=ids,
        pixel_values=pixels,
        mlm_labels=labels,
        itm_labels=itm,
        loss_normalizers={"mlm": 6.0, "itm": 12.0},
        loss_weights={"itm": 0.5},
    )
    torch.testing.assert_close(scaled.mlm_loss, mean.mlm_loss * 3 / 6)
    torch.testing.assert_close(scaled.itm_loss, mean.itm_loss * 3 / 12)
    torch.testing.assert_close(scaled.loss, scaled.mlm_loss + 0.5 * scaled.itm_loss)
    reference = F.cross_entropy(model.itm_head(mean.pooler_output), itm)
    torch.testing.assert_close(mean.itm_loss, reference)


def test_mlm_decoder_is_tied_to_word_embeddings(model):
    assert model.mlm_head.decoder.weight is model.vlp.embeddings.text.word_embeddings.weight
    untied = VLPForPreTraining(tiny_config(tie_word_embeddings=False))
    assert untied.mlm_head.decoder.weight is not untied.vlp.embeddings.text.word_embeddings.weight


def all_objective_inputs(ids, pixels):
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    mim_mask = torch.zeros(len(ids), 16, dtype=torch.bool)
    mim_mask[:, [1, 5, 9]] = True
    return dict(
        input_ids=ids,
        pixel_values=pixels,
        mlm_labels=labels,
        itm_labels=torch.tensor([1, 0, 1]),
        wra_labels=torch.tensor([1, 0, 1]),
        mim_mask=mim_mask,
        itc_input_ids=ids,
        itc_pixel_values=pixels,
    )


def test_gradients_reach_every_parameter_with_all_objectives():
    torch.manual_seed(1)
    model = VLPForPreTraining(tiny_config())
    ids, pixels = batch()
    out = model(**all_objective_inputs(ids, pixels))
    for name in ("mlm", "itm", "wra", "mim", "itc"):
        assert torch.isfinite(getattr(out, f"{name}_loss")), name
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_mim_loss_covers_masked_patches_only(model):
    from vlp.modeling_vlp.losses_vlp import mim_pixel_targets

    ids, pixels = batch()
    inputs = all_objective_inputs(ids, pixels)
    out = model(input_ids=ids, pixel_values=pixels, mim_mask=inputs["mim_mask"])
    assert out.mim_predictions.shape == (9, 8 * 8 * 3)
    targets = mim_pixel_targets(pixels, 8)[inputs["mim_mask"]]
    torch.testing.assert_close(out.mim_loss, ((out.mim_predictions - targets) ** 2).mean(-1).mean())
    # Pixels of unmasked patches change the input but not the targets of the loss: perturb only the
    # unmasked patch 0 of image 0 and the predictions move while the targets of masked patches stay.
    changed = pixels.clone()
    changed[0, :, :8, :8] += 5.0
    torch.testing.assert_close(mim_pixel_targets(changed, 8)[inputs["mim_mask"]], targets)


def test_teacher_targets_are_required_for_teacher_mim():
    model = VLPForPreTraining(tiny_config(mim_target="teacher"))
    ids, pixels = batch()
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, 0] = True
    with pytest.raises(ValueError, match="mim_targets"):
        model(input_ids=ids, pixel_values=pixels, mim_mask=mask)
    teacher = torch.randn(3, 16, 32)
    out = model(input_ids=ids, pixel_values=pixels, mim_mask=mask, mim_targets=teacher)
    assert out.mim_predictions.shape == (3, 32)


def test_itc_equals_a_direct_computation(model):
    ids, pixels = batch()
    out = model(itc_input_ids=ids, itc_pixel_values=pixels)
    text = model.vlp(input_ids=ids).last_hidden_state.mean(1)  # no padding here: a plain mean
    image = model.vlp(pixel_values=pixels).last_hidden_state.mean(1)
    text = F.normalize(model.contrastive.text_projection(text), dim=-1)
    image = F.normalize(model.contrastive.image_projection(image), dim=-1)
    logits = text @ image.T / model.config.contrastive_temperature
    expected = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3))) / 2
    torch.testing.assert_close(out.itc_loss, expected)
    torch.testing.assert_close(out.itc_similarity, logits)


def test_wra_pulls_matched_and_pushes_mismatched_rows(model):
    ids, pixels = batch()
    matched = model(input_ids=ids, pixel_values=pixels, wra_labels=torch.tensor([1, 1, 1])).wra_loss
    mismatched = model(input_ids=ids, pixel_values=pixels, wra_labels=torch.tensor([0, 0, 0])).wra_loss
    assert matched > 0 and torch.isclose(mismatched, -matched)
    ignored = model(input_ids=ids, pixel_values=pixels, wra_labels=torch.tensor([1, -100, -100])).wra_loss
    alone = model(input_ids=ids[:1], pixel_values=pixels[:1], wra_labels=torch.tensor([1])).wra_loss
    torch.testing.assert_close(ignored, alone)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(image_size=30, patch_size=8), "image_size=30"),
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size=30"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob=1.5"),
        (dict(num_hidden_layers=0), "num_hidden_layers=0"),
        (dict(mim_target="pixels"), "mim_target='pixels'"),
    ],
)
def test_config_refuses_bad_values_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        tiny_config(**overrides)


def test_text_longer_than_position_table_is_refused(model):
    ids = torch.randint(5, 60, (1, 20))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model.vlp(input_ids=ids)


def test_base_model_loads_from_pretraining_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path)
    base = VLPModel.from_pretrained(tmp_path).eval()
    ids, pixels = batch()
    torch.testing.assert_close(
        base(input_ids=ids, pixel_values=pixels).last_hidden_state,
        model.vlp(input_ids=ids, pixel_values=pixels).last_hidden_state,
    )


def test_relevance_equals_rows_of_the_attention_map(model):
    """Relevance from chosen query rows equals the weighted mean of those rows of the eager maps, heads averaged,
    and it is computed beside the fused attention without changing the outputs."""
    ids, pixels = batch()
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    weights = torch.zeros(3, 7 + 17)
    weights[:, 1:4] = 1.0  # three text tokens ask
    weights[0, 0] = 3.0
    eager = model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_attentions=True)
    fused = model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels, relevance_weights=weights)
    torch.testing.assert_close(fused.last_hidden_state, eager.last_hidden_state, atol=1e-5, rtol=1e-5)
    rows = eager.attentions[-1].mean(dim=1)  # (B, S, S), heads averaged
    expected = (weights[:, :, None] * rows).sum(1) / weights.sum(1, keepdim=True)
    torch.testing.assert_close(fused.relevance, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused.relevance.sum(-1), torch.ones(3))
    both = model.vlp(
        input_ids=ids, attention_mask=mask, pixel_values=pixels, relevance_weights=weights, relevance_layers=(0, 1)
    )
    mean = (weights[:, :, None] * (eager.attentions[0].mean(1) + rows) / 2).sum(1) / weights.sum(1, keepdim=True)
    torch.testing.assert_close(both.relevance, mean, atol=1e-6, rtol=1e-5)
    assert fused.relevance[2, 5:7].abs().max() == 0, "padded keys receive no attention"


def test_relevance_of_several_query_sets_at_once(model):
    """(B, R, S) weights: each set's relevance equals its own (B, S) call and the weighted rows of the eager map;
    the pretraining model passes relevance through, also beside a loss."""
    ids, pixels = batch()
    seq = ids.shape[1] + 17
    weights = torch.zeros(3, 3, seq)
    weights[:, 0, ids.shape[1] + 1 :] = 1.0  # the patches ask (word relevance)
    weights[:, 1, 1:5] = torch.tensor([1.0, 2.0, 0.5, 1.0])  # some text tokens ask (patch relevance)
    weights[:, 2, 3] = 1.0  # one token alone: its row of the map
    out = model.vlp(input_ids=ids, pixel_values=pixels, relevance_weights=weights)
    assert out.relevance.shape == (3, 3, seq)
    rows = model.vlp(input_ids=ids, pixel_values=pixels, output_attentions=True).attentions[-1].mean(dim=1)
    for r in range(3):
        alone = model.vlp(input_ids=ids, pixel_values=pixels, relevance_weights=weights[:, r]).relevance
        torch.testing.assert_close(out.relevance[:, r], alone, atol=1e-6, rtol=1e-5)
        expected = (weights[:, r, :, None] * rows).sum(1) / weights[:, r].sum(1, keepdim=True)
        torch.testing.assert_close(out.relevance[:, r], expected, atol=1e-6, rtol=1e-5)
    labels = torch.ones(3, dtype=torch.long)
    pre = model(input_ids=ids, pixel_values=pixels, itm_labels=labels, relevance_weights=weights)
    assert pre.itm_loss is not None and pre.text_length == ids.shape[1]
    torch.testing.assert_close(pre.relevance, out.relevance)


def test_relevance_builds_no_full_attention_map(model):
    ids, pixels = batch(size=2, length=9)
    weights = torch.zeros(2, 9 + 17)
    weights[:, 0] = 1.0  # [CLS] only: one row per sample
    seq = 9 + 17
    with _RecordShapes() as recorder:
        model.vlp(input_ids=ids, pixel_values=pixels, relevance_weights=weights)
    assert not [s for s in recorder.shapes if len(s) >= 2 and s[-2:] == (seq, seq)]
    assert any(len(s) == 4 and s[-2:] == (1, seq) for s in recorder.shapes)


def test_call_without_labels_returns_matching_scores(model):
    ids, pixels = batch()
    out = model(input_ids=ids, pixel_values=pixels)
    assert out.loss is None and out.itm_logits.shape == (3, 2)
    torch.testing.assert_close(out.itm_logits, model.itm_head(out.pooler_output))
    assert model(input_ids=ids, pixel_values=pixels, mlm_labels=torch.full_like(ids, -100)).itm_logits is None
