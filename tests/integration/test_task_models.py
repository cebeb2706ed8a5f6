"""The task models: VQA classifier, ITC + ITM retrieval, prefix-LM captioning with generate(), checkpoint loading."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from remote_code import run_blocked
from safetensors.torch import load_file, save_file

from vlp.modeling_vlp import (
    VLP_AUTO_MAP,
    VLPConfig,
    VLPForConditionalGeneration,
    VLPForImageTextRetrieval,
    VLPForPreTraining,
    VLPForQuestionAnswering,
    VLPModel,
)
from vlp.modeling_vlp.modeling_vlp_tasks import draw_negatives, next_token_loss, prefix_lm_mask, vqa_loss

ANSWERS = ["yes", "no", "2", "red"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the test machines are shared (intra-op threads then contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides):
    values = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
        max_position_embeddings=16,
        bos_token_id=2,
        eos_token_id=3,
    )
    values.update(overrides)
    return VLPConfig(**values)


def inputs(batch=3, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (batch, length), generator=generator)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one padded row
    ids = ids.masked_fill(mask == 0, 0)
    pixels = torch.randn(batch, 3, 16, 16, generator=generator)
    return ids, mask, pixels


def vqa_config():
    return tiny_config(id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)})


# ---------------------------------------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------------------------------------


def test_vqa_logits_and_loss_against_a_direct_computation():
    torch.manual_seed(0)
    model = VLPForQuestionAnswering(vqa_config()).eval()
    assert model.config.num_labels == len(ANSWERS)
    ids, mask, pixels = inputs()
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0.3, 0.6, 0], [0, 0, 0, 0]])
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
    assert out.logits.shape == (3, len(ANSWERS))
    pooled = model.vlp(input_ids=ids, attention_mask=mask, pixel_values=pixels).pooler_output
    head = model.vqa_head
    hidden = F.gelu(
        F.layer_norm(
            pooled @ head.dense.weight.T + head.dense.bias, (64,), head.LayerNorm.weight, head.LayerNorm.bias, eps=1e-12
        )
    )
    torch.testing.assert_close(out.logits, hidden @ head.classifier.weight.T + head.classifier.bias)
    x, y = out.logits.double(), labels.double()
    elementwise = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))
    torch.testing.assert_close(out.loss.double(), elementwise.sum() / 3, rtol=1e-5, atol=1e-6)


def test_vqa_loss_refuses_labels_of_the_wrong_shape():
    with pytest.raises(ValueError, match="soft scores"):
        vqa_loss(torch.zeros(2, 4), torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------------


def _features(model, ids, mask, pixels):
    """ITC features computed directly from the encoder passes, mean-pooled over valid positions."""
    text = model.vlp(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    text = F.normalize(model.contrastive.text_projection((text * weights).sum(1) / weights.sum(1)), dim=-1)
    image = model.vlp(pixel_values=pixels).last_hidden_state.mean(1)
    return text, F.normalize(model.contrastive.image_projection(image), dim=-1)


def test_retrieval_loss_is_itc_plus_itm_on_the_determined_negatives_of_a_pair_batch():
    torch.manual_seed(0)
    model = VLPForImageTextRetrieval(tiny_config()).eval()
    ids, mask, pixels = inputs(batch=2)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    text, image = _features(model, ids, mask, pixels)
    scale = model.contrastive.logit_scale()
    sim = scale * text @ image.T
    torch.testing.assert_close(out.logits_per_text, sim)
    targets = torch.arange(2)
    itc = (F.cross_entropy(sim, targets) + F.cross_entropy(sim.T, targets)) / 2
    torch.testing.assert_close(out.itc_loss, itc)
    # With two pairs, each image's only negative text is the other one, and each text's only negative image too.
    pairs = [(0, 0), (1, 1), (1, 0), (0, 1), (0, 1), (1, 0)]  # (text, image): positives, per image, per text
    t, i = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    logits = model.itm_head(model.vlp(input_ids=ids[t], attention_mask=mask[t], pixel_values=pixels[i]).pooler_output)
    torch.testing.assert_close(out.itm_logits, logits)
    assert out.itm_labels.tolist() == [1, 1, 0, 0, 0, 0]
    itm = F.cross_entropy(logits, torch.tensor([1, 1, 0, 0, 0, 0]))
    torch.testing.assert_close(out.itm_loss, itm)
    torch.testing.assert_close(out.loss, itc + itm)


def test_retrieval_negatives_respect_exclusions_and_skip_rows_without_candidates():
    torch.manual_seed(0)
    model = VLPForImageTextRetrieval(tiny_config()).eval()
    ids, mask, pixels = inputs(batch=3)
    exclude = torch.tensor([[False, True, True], [False, False, False], [False, False, False]])
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, itm_exclude=exclude, return_loss=True)
    # image 0 has no candidate negative text (texts 1 and 2 excluded, text 0 is its own); every text keeps an image
    assert out.itm_logits.shape == (3 + 2 + 3, 2)
    similarity = torch.randn(4, 4)
    blocked = torch.eye(4, dtype=torch.bool)
    blocked[2] = True
    blocked[0, 3] = True
    for hard in (True, False):
        for _ in range(50):
            rows, columns = draw_negatives(similarity, blocked, hard=hard)
            assert rows.tolist() == [0, 1, 3]
            assert not blocked[rows, columns].any()


def test_random_negatives_are_uniform_and_hard_ones_follow_the_softmax():
    torch.manual_seed(0)
    similarity = torch.tensor([[0.0, 2.0, 0.0, 1.0]])
    exclude = torch.tensor([[True, False, False, False]])
    draws = {
        hard: torch.stack([draw_negatives(similarity, exclude, hard)[1] for _ in range(3000)]).flatten()
        for hard in (True, False)
    }
    uniform = torch.bincount(draws[False], minlength=4).float() / 3000
    assert torch.allclose(uniform[1:], torch.full((3,), 1 / 3), atol=0.04) and uniform[0] == 0
    softmax = torch.softmax(torch.tensor([2.0, 0.0, 1.0]), dim=0)
    hard = torch.bincount(draws[True], minlength=4).float() / 3000
    assert torch.allclose(hard[1:], softmax, atol=0.04)


def test_retrieval_without_loss_returns_clip_style_logits_for_unpaired_batches():
    model = VLPForImageTextRetrieval(tiny_config()).eval()
    ids, mask, pixels = inputs(batch=3)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels[:2])
    assert out.logits_per_image.shape == (2, 3) and out.loss is None
    torch.testing.assert_close(out.logits_per_image, out.logits_per_text.T)
    with pytest.raises(ValueError, match="matched pairs"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels[:2], return_loss=True)


def test_similarity_reranks_the_top_k_with_itm_and_keeps_itc_order_below():
    torch.manual_seed(0)
    model = VLPForImageTextRetrieval(tiny_config()).eval()
    ids, mask, pixels = inputs(batch=5, seed=1)
    images = pixels[:4]
    scores = model.similarity(ids, images, attention_mask=mask, top_k=2, batch_size=3)
    text, image = _features(model, ids, mask, images)
    itc = model.contrastive.logit_scale() * image @ text.T
    torch.testing.assert_close(scores.itc, itc)
    with torch.no_grad():
        t, i = torch.arange(5).repeat(4), torch.arange(4).repeat_interleave(5)
        logits = model.itm_scores(ids[t], mask[t], images[i]).view(4, 5, 2)
    itm = logits[..., 1] - logits[..., 0]
    for matrix, by_rows in ((scores.i2t, True), (scores.t2i.T, False)):
        reference = itc if by_rows else itc.T
        full = itm if by_rows else itm.T
        for q in range(reference.shape[0]):
            top = reference[q].topk(2).indices
            rest = torch.tensor([c for c in range(reference.shape[1]) if c not in top.tolist()])
            torch.testing.assert_close(matrix[q, top], full[q, top])
            assert matrix[q, rest].max() < matrix[q, top].min()
            assert torch.equal(matrix[q, rest].argsort(), reference[q, rest].argsort())
    everything = model.similarity(ids, images, attention_mask=mask, top_k=10)
    torch.testing.assert_close(everything.i2t, itm)
    torch.testing.assert_close(everything.t2i, itm)


# ---------------------------------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------------------------------


def test_prefix_lm_mask_by_hand():
    mask = prefix_lm_mask(text_length=3, sequence_length=5, prefix_length=1).int()
    expected = torch.tensor(
        [
            # keys: t0 t1 t2 img img
            [1, 0, 0, 1, 1],  # t0 (prefix)
            [1, 1, 0, 1, 1],  # t1
            [1, 1, 1, 1, 1],  # t2
            [1, 0, 0, 1, 1],  # image CLS: image and prefix only
            [1, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)
    assert prefix_lm_mask(3, 5, prefix_length=2).int()[3].tolist() == [1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="text_length"):
        prefix_lm_mask(6, 5)


def test_changing_a_later_caption_token_leaves_earlier_logits_unchanged():
    torch.manual_seed(0)
    model = VLPForConditionalGeneration(tiny_config()).eval()
    ids, _, pixels = inputs(batch=2, length=7)
    changed = ids.clone()
    changed[:, 4] = (ids[:, 4] + 7) % 35 + 5
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=pixels).logits
        after = model(input_ids=changed, pixel_values=pixels).logits
        other_image = model(input_ids=ids, pixel_values=pixels.flip(0)).logits
    torch.testing.assert_close(before[:, :4], after[:, :4], rtol=0, atol=1e-6)
    assert (before[:, 4:] - after[:, 4:]).abs().max() > 1e-3
    assert (before[:, :4] - other_image[:, :4]).abs().max() > 1e-3  # the image is seen from the first position


def test_caption_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = VLPForConditionalGeneration(tiny_config()).eval()
    ids, mask, pixels = inputs(batch=3, length=6)
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
    assert out.logits.shape == (3, 6, 40)
    log_probs = out.logits.double().log_softmax(-1)
    terms = [-log_probs[b, t, labels[b, t + 1]] for b in range(3) for t in range(5) if labels[b, t + 1] != -100]
    torch.testing.assert_close(out.loss.double(), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
    assert next_token_loss(out.logits, torch.full_like(labels, -100)).item() == 0.0


def test_lm_head_is_tied_to_the_word_embeddings():
    model = VLPForConditionalGeneration(tiny_config())
    assert model.mlm_head.decoder.weight is model.vlp.embeddings.text.word_embeddings.weight


def _greedy(model, pixels, steps, bos=2, eos=3, pad=0):
    """Greedy decoding by hand: re-encode, take the argmax of the last position, stop rows at [SEP]."""
    ids = torch.full((pixels.shape[0], 1), bos)
    done = torch.zeros(pixels.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            mask = torch.ones_like(ids)
            following = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, -1].argmax(-1)
            following = torch.where(done, torch.full_like(following, pad), following)
            ids = torch.cat([ids, following[:, None]], dim=1)
            done |= following == eos
            if done.all():
                break
    return ids


def test_generate_with_one_beam_equals_greedy_decoding_and_beam_search_runs():
    torch.manual_seed(0)
    model = VLPForConditionalGeneration(tiny_config(pad_token_id=0)).eval()
    _, _, pixels = inputs(batch=3, seed=2)
    manual = _greedy(model, pixels, steps=6)
    generated = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=1, do_sample=False)
    assert torch.equal(generated, manual)
    # make [SEP] the second generated token of row 0, so early stopping and padding are exercised too
    model.generation_config.eos_token_id = int(manual[0, 2])
    manual = _greedy(model, pixels, steps=6, eos=int(manual[0, 2]))
    generated = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=1, do_sample=False)
    assert torch.equal(generated, manual)
    beams = model.generate(pixel_values=pixels, max_new_tokens=5, num_beams=3, do_sample=False)
    assert beams.shape[0] == 3 and beams.shape[1] <= 6 and bool((beams[:, 0] == 2).all())


# ---------------------------------------------------------------------------------------------------------------------
# Encoder: the custom attention mask
# ---------------------------------------------------------------------------------------------------------------------


def test_self_attention_mask_all_true_changes_nothing_and_bad_shapes_are_refused():
    torch.manual_seed(0)
    model = VLPModel(tiny_config()).eval()
    ids, mask, pixels = inputs()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).last_hidden_state
        full = torch.ones(3, 6 + 5, 6 + 5, dtype=torch.bool)
        masked = model(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, self_attention_mask=full
        ).last_hidden_state
    torch.testing.assert_close(plain, masked)
    with pytest.raises(ValueError, match="self_attention_mask has shape"):
        model(input_ids=ids, pixel_values=pixels, self_attention_mask=full[:, :5, :5])
    with pytest.raises(ValueError, match="relevance_weights"):
        model(input_ids=ids, pixel_values=pixels, self_attention_mask=full, relevance_weights=torch.ones(3, 11))


def test_task_config_keys_are_range_checked():
    with pytest.raises(ValueError, match="retrieval_top_k"):
        tiny_config(retrieval_top_k=0)
    with pytest.raises(ValueError, match="retrieval_negatives"):
        tiny_config(retrieval_negatives="semi")
    with pytest.raises(ValueError, match="caption_prefix_length"):
        tiny_config(caption_prefix_length=-1)
    assert VLP_AUTO_MAP["AutoModelForVisualQuestionAnswering"] == "modeling_vlp_tasks.VLPForQuestionAnswering"
    assert VLP_AUTO_MAP["AutoModelForImageTextToText"] == "modeling_vlp_tasks.VLPForConditionalGeneration"


# ---------------------------------------------------------------------------------------------------------------------
# Loading a pretraining checkpoint; the Hub without the package
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretraining")
    torch.manual_seed(0)
    model = VLPForPreTraining(tiny_config())
    with torch.no_grad():  # heads away from their initial values, so "loaded" and "initialised" differ
        for parameter in model.parameters():
            parameter.add_(0.5)
    model.save_pretrained(folder)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "model_class, new_prefix, kept_heads",
    [
        (VLPForQuestionAnswering, "vqa_head.", ()),
        (VLPForImageTextRetrieval, None, ("itm_head.", "contrastive.")),
        (VLPForConditionalGeneration, None, ("mlm_head.",)),
    ],
)
def test_pretraining_checkpoint_loads_with_the_encoder_kept_and_only_new_heads_initialised(
    pretraining_checkpoint, model_class, new_prefix, kept_heads
):
    folder, state = pretraining_checkpoint
    extra = (
        dict(id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)})
        if model_class is VLPForQuestionAnswering
        else {}
    )
    model, info = model_class.from_pretrained(folder, output_loading_info=True, **extra)
    loaded = model.state_dict()
    encoder = [key for key in loaded if key.startswith("vlp.")]
    assert len(encoder) > 20 and all(torch.equal(loaded[key], state[key]) for key in encoder)
    for prefix in kept_heads:
        keys = [key for key in loaded if key.startswith(prefix)]
        assert keys and all(torch.equal(loaded[key], state[key]) for key in keys), prefix
    missing = set(info["missing_keys"])
    if new_prefix is None:
        assert not missing
    else:
        assert missing == {key for key in loaded if key.startswith(new_prefix)}
        head = model.vqa_head
        assert head.classifier.weight.shape == (len(ANSWERS), 64)
        assert (
            0.01 < float(head.classifier.weight.detach().std()) < 0.03
        )  # initializer_range, not the checkpoint's +0.5
        assert torch.equal(head.LayerNorm.weight, torch.ones(64)) and not head.classifier.bias.any()
    if model_class is VLPForConditionalGeneration:
        assert model.mlm_head.decoder.weight is model.vlp.embeddings.text.word_embeddings.weight


def test_task_models_load_from_the_hub_without_the_package(pretraining_checkpoint, tmp_path):
    pretraining, _ = pretraining_checkpoint
    torch.manual_seed(1)
    ids, mask, pixels = inputs(batch=2)
    reference = {"ids": ids, "mask": mask, "pixels": pixels}
    vqa = VLPForQuestionAnswering(vqa_config()).eval()
    retrieval = VLPForImageTextRetrieval(tiny_config()).eval()
    caption = VLPForConditionalGeneration(tiny_config(pad_token_id=0)).eval()
    for name, model in (("vqa", vqa), ("retrieval", retrieval), ("caption", caption)):
        model.save_pretrained(tmp_path / name)
    with torch.no_grad():
        reference["vqa"] = vqa(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        reference["retrieval"] = retrieval(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image
        reference["caption"] = caption(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        reference["generated"] = caption.generate(pixel_values=pixels, max_new_tokens=4, num_beams=2)
    save_file({k: v.contiguous() for k, v in reference.items()}, str(tmp_path / "reference.safetensors"))
    auto_map = json.loads((tmp_path / "vqa" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForVisualQuestionAnswering"] == "modeling_vlp_tasks.VLPForQuestionAnswering"
    code = f"""
    import sys, torch
    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file
    from transformers import (AutoModelForImageTextToText, AutoModelForPreTraining,
                              AutoModelForVisualQuestionAnswering, AutoModelForZeroShotImageClassification)
    folder = {str(tmp_path)!r}
    ref = load_file(folder + "/reference.safetensors")
    kw = dict(trust_remote_code=True)
    vqa = AutoModelForVisualQuestionAnswering.from_pretrained(folder + "/vqa", **kw).eval()
    retrieval = AutoModelForZeroShotImageClassification.from_pretrained(folder + "/retrieval", **kw).eval()
    caption = AutoModelForImageTextToText.from_pretrained(folder + "/caption", **kw).eval()
    # a pretraining checkpoint (saved by VLPForPreTraining) loads as each task too
    from_pretraining = AutoModelForVisualQuestionAnswering.from_pretrained({str(pretraining)!r}, **kw)
    captioner = AutoModelForImageTextToText.from_pretrained({str(pretraining)!r}, **kw)
    pretrained = AutoModelForPreTraining.from_pretrained({str(pretraining)!r}, **kw)
    names = [type(m).__name__ for m in (vqa, retrieval, caption, from_pretraining, captioner, pretrained)]
    same = torch.equal(from_pretraining.vlp.encoder.layer[0].fc1.weight, pretrained.vlp.encoder.layer[0].fc1.weight)
    inputs = dict(input_ids=ref["ids"], attention_mask=ref["mask"], pixel_values=ref["pixels"])
    with torch.no_grad():
        out = dict(vqa=vqa(**inputs).logits, retrieval=retrieval(**inputs).logits_per_image,
                   caption=caption(**inputs).logits,
                   generated=caption.generate(pixel_values=ref["pixels"], max_new_tokens=4, num_beams=2))
    save_file({{k: v.contiguous() for k, v in out.items()}}, folder + "/remote.safetensors")
    print(" ".join(names), same, "vlp" in sys.modules)
    """
    printed = run_blocked(code, str(tmp_path / "work")).split()
    assert printed[:6] == [
        "VLPForQuestionAnswering",
        "VLPForImageTextRetrieval",
        "VLPForConditionalGeneration",
        "VLPForQuestionAnswering",
        "VLPForConditionalGeneration",
        "VLPForPreTraining",
    ]
    assert printed[6:8] == ["True", "False"]
    remote = load_file(str(tmp_path / "remote.safetensors"))
    for key in ("vqa", "retrieval", "caption", "generated"):
        assert torch.equal(remote[key], reference[key]), key
    assert np.all(remote["generated"][:, 0].numpy() == 2)
