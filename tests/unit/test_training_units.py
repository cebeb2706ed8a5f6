"""Pieces of the pretraining loop that need no model: config parsing and checks, the batch sampler,
the learning-rate schedule, objective mixing, log truncation and checkpoint rotation."""

import json
import os

import pytest
import torch

from vlp.training.config import ConfigError, parse_config
from vlp.training.logging_utils import MetricLogger, read_jsonl
from vlp.training.objectives import step_objectives
from vlp.training.pretrain.factory import learning_rate_at, make_optimizer
from vlp.training.pretrain.sampler import GlobalBatchSampler


def test_yaml_then_values_then_cli_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  hidden_size: 64\ntraining:\n  max_steps: 7\n  learning_rate: 0.002\nseed: 3\n")
    model, data, train = parse_config(str(path), ["--max_steps", "9"], values={"num_scenes": 50})
    assert model.hidden_size == 64 and train.max_steps == 9 and train.learning_rate == 0.002
    assert train.seed == 3 and data.num_scenes == 50


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("hidden_sise: 64\n")
    with pytest.raises(ConfigError, match="hidden_sise"):
        parse_config(str(path))
    with pytest.raises(ConfigError, match="--lerning_rate"):
        parse_config(None, ["--lerning_rate", "1"])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": -0.1}, r"learning_rate=-0.1 is out of range: expected \(0, inf\)"),
        ({"mlm_probability": 1.5}, r"mlm_probability=1.5 is out of range: expected \(0, 1\]"),
        ({"image_size": 60, "patch_size": 8}, "image_size=60 .* a multiple of patch_size=8"),
        ({"mixing": "mean"}, "mixing='mean'"),
        ({"objectives": "mlm,xyz"}, "objectives='xyz'"),
        ({"itm_probability": -0.5}, r"itm_probability=-0.5 is out of range: expected \[0, 1\]"),
        ({"optim": "sgd"}, "optim='sgd'"),
    ],
)
def test_out_of_range_values_are_refused_before_work(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(None, values=values)


def test_objective_weights_parse():
    *_, train = parse_config(None, values={"objectives": "mlm, itm:0.5"})
    assert train.objective_weights() == {"mlm": 1.0, "itm": 0.5}


def _union_of_step(num_samples, per_device, world, accumulation, step, seed=4):
    seen = []
    for rank in range(world):
        sampler = GlobalBatchSampler(num_samples, per_device, seed, rank, world, accumulation)
        for micro in sampler.step_batches(step):
            seen.extend(micro)
    return seen


@pytest.mark.parametrize("step", [0, 3, 11])
def test_global_batch_is_the_same_for_any_split(step):
    single = _union_of_step(100, 8, 1, 1, step)
    assert sorted(_union_of_step(100, 4, 2, 1, step)) == sorted(single)
    assert sorted(_union_of_step(100, 2, 2, 2, step)) == sorted(single)
    assert len(set(single)) == 8


def test_epoch_covers_each_sample_at_most_once_and_drops_the_remainder():
    sampler = GlobalBatchSampler(50, 4, seed=1, world_size=2, rank=0)
    other = GlobalBatchSampler(50, 4, seed=1, world_size=2, rank=1)
    steps = sampler.steps_per_epoch
    assert steps == 6
    epoch0 = [i for s in range(steps) for b in sampler.step_batches(s) + other.step_batches(s) for (e, i) in b]
    assert len(epoch0) == len(set(epoch0)) == 48
    epoch1 = [e for b in sampler.step_batches(steps) for (e, _) in b]
    assert set(epoch1) == {1}
    assert sampler.step_batches(steps) != sampler.step_batches(0)


def test_sampler_resumes_at_a_step():
    full = list(GlobalBatchSampler(40, 4, seed=2, max_steps=12))
    resumed = list(GlobalBatchSampler(40, 4, seed=2, start_step=5, max_steps=12))
    assert resumed == full[5:]


def test_sampler_refuses_a_global_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="global batch 64 .* larger than the dataset \\(10 samples\\)"):
        GlobalBatchSampler(10, 32, seed=0, world_size=2)


def test_learning_rate_schedule():
    *_, train = parse_config(
        None, values={"learning_rate": 1.0, "warmup_steps": 10, "max_steps": 110, "min_lr_ratio": 0.1}
    )
    assert learning_rate_at(0, train) == pytest.approx(0.1)
    assert learning_rate_at(9, train) == pytest.approx(1.0)
    assert learning_rate_at(10, train) == pytest.approx(1.0)
    assert learning_rate_at(60, train) == pytest.approx(0.55)
    assert learning_rate_at(110, train) == pytest.approx(0.1)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dense = torch.nn.Linear(4, 3)
        self.LayerNorm = torch.nn.LayerNorm(3)


def _adamw_reference(model, grads, lr, betas, weight_decay, eps=1e-8):
    """AdamW (Loshchilov and Hutter) written out: decoupled decay on matrices only, bias-corrected moments."""
    params = {name: p.detach().clone().double() for name, p in model.named_parameters()}
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in params.items()}
    for step, grad in enumerate(grads, start=1):
        for name, p in params.items():
            g = grad[name].double()
            m, v = moments[name]
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            moments[name] = (m, v)
            decay = weight_decay if name == "dense.weight" else 0.0
            p.mul_(1 - lr * decay)
            p.sub_(lr * (m / (1 - betas[0] ** step)) / ((v / (1 - betas[1] ** step)).sqrt() + eps))
    return params


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch"])
def test_both_adamw_implementations_follow_the_written_out_update(optim):
    *_, train = parse_config(None, values={"optim": optim, "learning_rate": 0.01, "weight_decay": 0.1})
    model = _Tiny()
    optimizer = make_optimizer(model, train)
    assert bool(optimizer.defaults.get("fused")) == (optim == "adamw_torch_fused")
    generator = torch.Generator().manual_seed(1)
    grads = [
        {name: torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()} for _ in range(3)
    ]
    for grad in grads:
        for name, p in model.named_parameters():
            p.grad = grad[name].clone()
        optimizer.step()
    expected = _adamw_reference(_Tiny(), grads, 0.01, (train.adam_beta1, train.adam_beta2), 0.1)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), expected[name], rtol=1e-5, atol=1e-6)


def test_fused_adamw_falls_back_where_there_is_no_kernel(monkeypatch):
    built, messages = [], []

    class NoFused(torch.optim.AdamW):
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of supported devices"
                )
            built.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", NoFused)
    *_, train = parse_config(None)
    optimizer = make_optimizer(_Tiny(), train, messages.append)
    assert isinstance(optimizer, NoFused) and not optimizer.defaults.get("fused") and len(built) == 1
    assert "adamw_torch_fused" in messages[0] and "supported devices" in messages[0]


def test_sample_mixing_draws_by_weight_and_is_a_function_of_step():
    weights = {"mlm": 3.0, "itm": 1.0}
    draws = [next(iter(step_objectives(weights, "sample", 0, s))) for s in range(4000)]
    assert draws == [next(iter(step_objectives(weights, "sample", 0, s))) for s in range(4000)]
    share = draws.count("mlm") / len(draws)
    assert abs(share - 0.75) < 4 * (0.75 * 0.25 / 4000) ** 0.5
    assert step_objectives(weights, "sum", 0, 5) == weights


def test_logs_are_cut_back_to_the_resumed_step(tmp_path):
    logger = MetricLogger(str(tmp_path), tensorboard=False)
    for step in (10, 20, 30):
        logger.log(step, "train", {"loss": 1.0 / step})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 40, "spl')  # a line cut short by a crash
    resumed = MetricLogger(str(tmp_path), tensorboard=False, resume_step=20)
    resumed.log(30, "train", {"loss": 0.5})
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [10, 20, 30]
    assert read_jsonl(str(tmp_path / "metrics.jsonl"))[-1]["loss"] == 0.5


def test_nonfinite_values_are_logged_as_strings(tmp_path):
    logger = MetricLogger(str(tmp_path), tensorboard=False)
    logger.log(1, "train", {"loss": float("nan")})
    assert json.loads(open(os.path.join(tmp_path, "metrics.jsonl")).read())["loss"] == "nan"


def test_objective_inputs_pick_the_right_view():
    """MLM sees the masked own captions, ITM and WRA the ITM captions, MIM and ITC the unmasked own captions."""
    import torch

    from vlp.training.objectives import hard_negative_inputs, objective_inputs

    ids = torch.tensor([[2, 7, 8, 3], [2, 9, 4, 3]])
    batch = {
        "input_ids": ids,
        "plain_input_ids": torch.tensor([[2, 7, 8, 3], [2, 9, 10, 3]]),
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "mlm_labels": torch.tensor([[-100] * 4, [-100, -100, 10, -100]]),
        "itm_input_ids": torch.tensor([[2, 11, 3], [2, 9, 3]]),
        "itm_attention_mask": torch.ones(2, 3).long(),
        "itm_token_type_ids": torch.zeros(2, 3).long(),
        "itm_labels": torch.tensor([0, 1]),
        "mim_mask": torch.tensor([[True, False], [False, True]]),
        "pixel_values": torch.randn(2, 3, 8, 16),
        "pixel_mask": torch.ones(2, 8, 16).long(),
        "holds_matrix": torch.tensor([[True, True], [False, True]]),
    }
    mlm = objective_inputs("mlm", batch, {})
    assert torch.equal(mlm["input_ids"], ids) and torch.equal(mlm["mlm_labels"], batch["mlm_labels"])
    itm = objective_inputs("itm", batch, {})
    assert torch.equal(itm["input_ids"], batch["itm_input_ids"]) and torch.equal(itm["itm_labels"], batch["itm_labels"])
    assert torch.equal(objective_inputs("wra", batch, {})["wra_labels"], batch["itm_labels"])
    mim = objective_inputs("mim", batch, {})
    assert torch.equal(mim["input_ids"], batch["plain_input_ids"]) and torch.equal(mim["mim_mask"], batch["mim_mask"])
    assert torch.equal(objective_inputs("itc", batch, {})["itc_input_ids"], batch["plain_input_ids"])
    # holds_matrix is (images, texts): text 1 holds for image 0; ITC reads matches as (texts, images).
    itc = objective_inputs("itc", batch, {})
    assert itc["itc_matches"].tolist() == [[True, False], [True, True]]
    # Hard negatives: text 1 holds for image 0 too, so image 0 has no negative text and text 1 no negative image;
    # image 1 is paired with text 0, and text 0 with image 1. Never a caption that holds.
    hard = hard_negative_inputs(batch, torch.zeros(2, 2), torch.Generator().manual_seed(0))
    assert hard["itm_labels"].tolist() == [1, 1, 0, 0]
    assert torch.equal(hard["input_ids"][2], batch["plain_input_ids"][0])
    assert torch.equal(hard["pixel_values"][2], batch["pixel_values"][1])
    assert torch.equal(hard["input_ids"][3], batch["plain_input_ids"][0])
    assert torch.equal(hard["pixel_values"][3], batch["pixel_values"][1])
    batch["holds_matrix"] = torch.eye(2, dtype=torch.bool)
    hard = hard_negative_inputs(batch, torch.zeros(2, 2), torch.Generator().manual_seed(0))
    assert hard["itm_labels"].tolist() == [1, 1, 0, 0, 0, 0]
    assert torch.equal(hard["input_ids"][2:4], batch["plain_input_ids"][[1, 0]])
    assert torch.equal(hard["pixel_values"][4:6], batch["pixel_values"][[1, 0]])


def test_hard_negatives_read_the_similarity_as_texts_by_images():
    """Text t matches only image t + 1 (mod B): image i's hardest negative text is t = i - 1, text t's hardest
    negative image is t + 1; with one dominant candidate per row, every draw is that one."""
    import torch

    from vlp.training.objectives import hard_negative_inputs

    size = 5
    text_image = torch.zeros(size, size)
    text_image[torch.arange(size), (torch.arange(size) + 1) % size] = 60.0
    ids = torch.arange(size)[:, None].repeat(1, 3)  # row r's text is [r, r, r]
    pixels = torch.arange(size, dtype=torch.float32)[:, None, None, None].repeat(1, 3, 8, 8)  # image r is all r
    batch = {
        "plain_input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "pixel_values": pixels,
        "itm_labels": torch.ones(size, dtype=torch.long),
    }
    for seed in range(5):
        hard = hard_negative_inputs(batch, text_image, torch.Generator().manual_seed(seed))
        text_of, image_of = hard["input_ids"][:, 0], hard["pixel_values"][:, 0, 0, 0].long()
        assert hard["itm_labels"].tolist() == [1] * size + [0] * (2 * size)
        images, texts = image_of[size : 2 * size], text_of[size : 2 * size]  # each image with a drawn text
        assert images.tolist() == list(range(size)) and texts.tolist() == [(i - 1) % size for i in range(size)]
        texts, images = text_of[2 * size :], image_of[2 * size :]  # each text with a drawn image
        assert texts.tolist() == list(range(size)) and images.tolist() == [(t + 1) % size for t in range(size)]
        # Every negative pair is one the similarity scores high: text t with image t + 1.
        assert all(text_image[t, i] == 60.0 for t, i in zip(text_of[size:].tolist(), image_of[size:].tolist()))
    with pytest.raises(ValueError, match=r"\(5, 5\) texts x images"):
        hard_negative_inputs(batch, torch.zeros(size, size + 1), torch.Generator())


def test_checkpoints_store_the_tied_decoder_once_without_a_warning_and_restore_the_tie(tmp_path, caplog):
    import logging

    from accelerate import Accelerator
    from safetensors.torch import load_file

    from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
    from vlp.training.pretrain import checkpointing

    torch.manual_seed(0)
    config = VLPConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        max_position_embeddings=8,
    )
    accelerator = Accelerator(cpu=True)
    accelerator.register_save_state_pre_hook(checkpointing.drop_tied_copies)
    model = accelerator.prepare(VLPForPreTraining(config))
    embedding = model.vlp.embeddings.text.word_embeddings.weight
    assert model.mlm_head.decoder.weight is embedding  # the tie this test is about
    with caplog.at_level(logging.WARNING):
        path = checkpointing.save_checkpoint(accelerator, str(tmp_path), step=1, keep=1)
    assert not [r for r in caplog.records if "shared tensor" in r.getMessage()], caplog.text
    stored = load_file(os.path.join(path, "model.safetensors"))
    assert "mlm_head.decoder.weight" not in stored
    assert torch.equal(stored["vlp.embeddings.text.word_embeddings.weight"], embedding.detach())

    saved = embedding.detach().clone()
    with torch.no_grad():
        embedding.add_(1.0)
    accelerator.load_state(path)
    assert model.mlm_head.decoder.weight is model.vlp.embeddings.text.word_embeddings.weight
    assert torch.equal(model.mlm_head.decoder.weight.detach(), saved)


@pytest.mark.parametrize(
    "text, where, problem",
    [
        ("model:\n  hidden_size: 64\n  layers: [1, 2\ntraining:\n  max_steps: 3\n", ":4:9:", "expected ',' or ']'"),
        ("max_steps: 3\nseed: 1: 2\n", ":2:8:", "mapping values are not allowed here"),
    ],
)
def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path, capsys, text, where, problem):
    from vlp.training.cli import main

    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert main(["pretrain", "--config", str(path), "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"vlp pretrain: config error: {path}{where} invalid YAML: {err.split('YAML: ')[1]}"]
    assert problem in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_gathered_matches_judge_the_pairs_across_processes_as_one_process_does():
    """Two processes' truth_pairs, gathered in rank order, give the (texts, images) matrix that the collator's
    holds_matrix (images, texts) gives one process holding the whole batch, transposed."""
    import torch

    from vlp.training.objectives import gathered_matches

    def holds(caption, scene):  # a caption holds for every scene that contains its word
        return caption.split()[-1] in scene

    pairs = [("a red", "red square"), ("a blue", "blue circle"), ("a square", "green square"), ("a circle", "red")]
    holds_matrix = torch.tensor([[holds(t, s) for t, _ in pairs] for _, s in pairs])  # (images, texts)
    parts = [pairs[:2], pairs[2:]]
    for rank in range(2):
        matches = gathered_matches({"truth_pairs": parts[rank]}, holds, lambda objects: parts)
        assert torch.equal(matches, holds_matrix.T | torch.eye(4, dtype=torch.bool))
    # 'a square' (rank 1's text 0) is true of rank 0's image 0, 'red square': across the processes
    assert matches[2, 0] and not matches[0, 2]
    # a process without truth makes it unknown everywhere (every process gets the same answer)
    assert gathered_matches({"truth_pairs": parts[0]}, holds, lambda objects: [parts[0], None]) is None
    assert gathered_matches({}, None, lambda objects: [None, None]) is None


def _tiny_pretraining_model(**config):
    from vlp.modeling_vlp import VLPConfig, VLPForPreTraining

    torch.manual_seed(0)
    return VLPForPreTraining(
        VLPConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=8,
            **config,
        )
    ).eval()


def test_joint_masking_is_one_pass_over_a_masked_caption_and_masked_patches():
    """The joint pass's MLM predicts words with the masked patches hidden: its MLM loss differs from the MLM pass's
    (whole image), its MIM loss from the MIM pass's (whole caption); both come from the one forward pass."""
    from vlp.training.objectives import JOINT_PASS, joint_passes, objective_inputs, pass_objectives

    model = _tiny_pretraining_model()
    plain = torch.tensor([[2, 7, 8, 9, 3], [2, 9, 10, 11, 3]])
    masked = plain.clone()
    masked[:, 2] = 4
    batch = {
        "input_ids": masked,
        "plain_input_ids": plain,
        "attention_mask": torch.ones_like(plain),
        "token_type_ids": torch.zeros_like(plain),
        "mlm_labels": torch.where(masked != plain, plain, torch.full_like(plain, -100)),
        "mim_mask": torch.tensor([[True, True, False, False], [False, True, True, False]]),
        "pixel_values": torch.randn(2, 3, 16, 16),
        "pixel_mask": torch.ones(2, 16, 16).long(),
    }
    joint = objective_inputs(JOINT_PASS, batch, {"model": model})
    assert torch.equal(joint["input_ids"], masked) and torch.equal(joint["mim_mask"], batch["mim_mask"])
    with torch.no_grad():
        both = model(**joint)
        mlm = model(**objective_inputs("mlm", batch, {"model": model}))
        mim = model(**objective_inputs("mim", batch, {"model": model}))
    assert both.mlm_loss is not None and both.mim_loss is not None
    assert not torch.allclose(both.mlm_loss, mlm.mlm_loss) and not torch.allclose(both.mim_loss, mim.mim_loss)
    passes = [(0, "itc"), (0, "mlm"), (0, "itm"), (0, "mim"), (1, "mlm"), (1, "mim")]
    assert joint_passes(passes) == [(0, "itc"), (0, JOINT_PASS), (0, "itm"), (1, JOINT_PASS)]
    assert pass_objectives(JOINT_PASS) == ["mlm", "mim"] and pass_objectives("itm") == ["itm"]
    with pytest.raises(ValueError, match="an MLM and an MIM pass per micro-batch"):
        joint_passes([(0, "mlm")])


def test_the_teacher_runs_only_when_mim_regresses_its_states():
    from vlp.training.objectives import objective_inputs

    calls = []

    class Teacher:
        def vlp(self, **inputs):
            calls.append(inputs)
            raise AssertionError("the teacher ran for pixel targets")

    batch = {
        "plain_input_ids": torch.tensor([[2, 7, 3]]),
        "attention_mask": torch.ones(1, 3).long(),
        "token_type_ids": torch.zeros(1, 3).long(),
        "mim_mask": torch.tensor([[True, False, False, False]]),
        "pixel_values": torch.randn(1, 3, 16, 16),
        "pixel_mask": torch.ones(1, 16, 16).long(),
    }
    inputs = objective_inputs("mim", batch, {"model": _tiny_pretraining_model(), "teacher": Teacher()})
    assert "mim_targets" not in inputs and not calls
    teacher = _tiny_pretraining_model(mim_target="teacher")
    inputs = objective_inputs("mim", batch, {"model": teacher, "teacher": teacher})
    assert inputs["mim_targets"].shape == (1, 4, 32)


def test_without_the_world_truth_two_rows_of_one_picture_are_no_hard_negatives():
    """Rows 0 and 2 show the same picture with different captions (a dataset with several captions per image):
    neither may be the other's negative, however similar; row 1 is the only negative left for both."""
    from vlp.training.objectives import hard_negative_exclusions, hard_negative_inputs

    pictures = torch.randn(2, 3, 8, 8)
    batch = {
        "itm_labels": torch.ones(3, dtype=torch.long),
        "plain_input_ids": torch.tensor([[2, 7, 3], [2, 8, 3], [2, 9, 3]]),
        "attention_mask": torch.ones(3, 3).long(),
        "token_type_ids": torch.zeros(3, 3).long(),
        "pixel_values": pictures[[0, 1, 0]],
        "pixel_mask": torch.ones(3, 8, 8).long(),
    }
    assert hard_negative_exclusions(batch).tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    text_image = torch.zeros(3, 3)
    text_image[0, 2] = text_image[2, 0] = 50.0  # the same picture looks like the best negative
    inputs = hard_negative_inputs(batch, text_image, torch.Generator().manual_seed(0))
    negatives = inputs["input_ids"][3:6, 1].tolist()  # the text drawn for images 0, 1, 2
    assert negatives[0] == 8 and negatives[2] == 8 and negatives[1] in (7, 9)
