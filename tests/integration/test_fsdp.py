"""The pretraining loop under `accelerate launch` with the shipped configs: FSDP (FSDP2, one unit per VLPLayer)
gives the losses and weights of DDP, two CPU processes over gloo; bf16 with activation checkpointing runs, saves a
sharded checkpoint, resumes from it after a crash and writes a complete model."""

import os
import socket
import sys

import pytest
import torch
from launch import run as launch_run
from repo_paths import ROOT
from safetensors.torch import load_file

from vlp.modeling_vlp import VLPForPreTraining
from vlp.training.logging_utils import read_jsonl
from vlp.training.pretrain.checkpointing import list_checkpoints

CONFIGS = os.path.join(ROOT, "training", "configs", "accelerate")
NAMES = ("itc", "itm", "mim", "mlm")
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "vocab_size": 200,
    "num_scenes": 256,
    "val_scenes": 48,
    "per_device_batch_size": 4,
    "eval_batches": 2,
    "log_every": 1,
    "eval_every": 0,
    "save_every": 4,
    "warmup_steps": 2,
    "progress_bar": False,
    "tensorboard": False,
    "max_steps": 6,
    "objectives": ",".join(NAMES),
}

pytestmark = pytest.mark.distributed


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(config, output_dir, cache_dir, mixed_precision="no", launcher_args=(), env=None, check=True, **overrides):
    """`accelerate launch --config_file training/configs/accelerate/<config>` with two processes (CPU, gloo)."""
    values = dict(TINY, output_dir=str(output_dir), cache_dir=cache_dir, mixed_precision=mixed_precision, **overrides)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(CONFIGS, config),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        mixed_precision,
        *launcher_args,
        "-m",
        "vlp.training.cli",
        "pretrain",
    ]
    command += [item for key, value in values.items() for item in (f"--{key}", str(value))]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    full_env.update(env or {})
    return launch_run(command, env=full_env, timeout=300, check=check)


def losses(output_dir):
    return [
        (r["step"], *(r[f"{n}_loss"] for n in NAMES))
        for r in read_jsonl(os.path.join(output_dir, "metrics.jsonl"))
        if r["split"] == "train"
    ]


def close(first, second, tolerance):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a[0] == b[0]
        for name, x, y in zip(NAMES, a[1:], b[1:]):
            assert abs(x - y) <= tolerance * abs(x), (a[0], name, x, y)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world_cache"))


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, cache_dir):
    output = tmp_path_factory.mktemp("ddp")
    launch("ddp.yaml", output, cache_dir)
    return output


def test_fsdp_gives_the_losses_and_weights_of_ddp(ddp, tmp_path, cache_dir):
    launch("fsdp.yaml", tmp_path, cache_dir)
    close(losses(ddp), losses(tmp_path), 1e-4)
    # Sharded checkpoints (one model and optimizer shard per process); the final model gathered into one file.
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert {"pytorch_model_fsdp_0", "optimizer_0"} <= set(os.listdir(tmp_path / "checkpoints" / "checkpoint-6"))
    expected, sharded = (
        load_file(ddp / "model" / "model.safetensors"),
        load_file(tmp_path / "model" / "model.safetensors"),
    )
    assert expected.keys() == sharded.keys()
    for name in expected:
        assert expected[name].shape == sharded[name].shape, name
        assert torch.allclose(expected[name], sharded[name], rtol=1e-4, atol=1e-5), name
    model = VLPForPreTraining.from_pretrained(tmp_path / "model")
    assert model.contrastive.log_scale.ndim == 0  # sharded as a 1-element vector, saved as the scalar it is


def test_fsdp_bf16_activation_checkpointing_resumes_after_a_crash(ddp, tmp_path, cache_dir):
    options = dict(mixed_precision="bf16", launcher_args=("--fsdp_activation_checkpointing", "true"))
    crashed = launch("fsdp.yaml", tmp_path, cache_dir, check=False, env={"VLP_FAULT_AT_STEP": "5"}, **options)
    assert crashed.returncode != 0 and "fault injected at step 5" in crashed.stderr
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]
    resumed = launch("fsdp.yaml", tmp_path, cache_dir, **options)
    assert "(step 4)" in resumed.stdout  # "resumed from .../checkpoint-4 (step 4)"
    close(losses(ddp), losses(tmp_path), 2e-2)  # bf16 compute against fp32
    expected, saved = (
        load_file(ddp / "model" / "model.safetensors"),
        load_file(tmp_path / "model" / "model.safetensors"),
    )
    assert expected.keys() == saved.keys()  # checkpoint-wrapped blocks are saved under their own names
    for name in expected:
        assert torch.allclose(expected[name], saved[name].float(), rtol=0.05, atol=0.02), name
