"""The pretraining loop end to end: outputs, exact resume after a crash, the non-finite guard, unreadable images,
and the same losses with one or two processes."""

import json
import math
import os
import shutil
import subprocess
import sys

import datasets
import pytest
import torch
from launch import run as launch_run
from safetensors.torch import load_file

from vlp.training.logging_utils import read_jsonl
from vlp.training.pretrain.checkpointing import list_checkpoints

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "vocab_size": 200,
    "num_scenes": 256,
    "val_scenes": 48,
    "per_device_batch_size": 8,
    "eval_batches": 2,
    "log_every": 1,
    "eval_every": 0,
    "save_every": 4,
    "warmup_steps": 2,
    "progress_bar": False,
    "tensorboard": False,
    "keep_checkpoints": 2,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world_cache"))


def run_pretrain(output_dir, cache_dir, env=None, launcher=None, check=True, **overrides):
    values = dict(TINY, output_dir=str(output_dir), cache_dir=cache_dir, **overrides)
    args = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    command = launcher or [sys.executable, "-m", "vlp.training.cli"]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    full_env.update(env or {})
    return launch_run(command + ["pretrain"] + args, env=full_env, timeout=600, check=check)


def train_losses(output_dir, names=("mlm", "itm")):
    return [
        (r["step"], *(r[f"{n}_loss"] for n in names))
        for r in read_jsonl(os.path.join(output_dir, "metrics.jsonl"))
        if r["split"] == "train"
    ]


def weights(output_dir):
    return load_file(os.path.join(output_dir, "model", "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    output = tmp_path_factory.mktemp("uninterrupted")
    run_pretrain(output, cache_dir, max_steps=10, tensorboard=True, eval_every=5)
    return str(output)


def test_run_writes_model_processor_logs_and_checkpoints(uninterrupted):
    files = set(os.listdir(uninterrupted))
    assert {
        "model",
        "processor",
        "metrics.jsonl",
        "run.yaml",
        "final_metrics.json",
        "checkpoints",
        "tensorboard",
    } <= files
    assert [step for step, _ in list_checkpoints(uninterrupted)] == [8, 10]
    records = read_jsonl(os.path.join(uninterrupted, "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 11))
    assert [r["step"] for r in records if r["split"] == "val"] == [0, 5, 10]
    final = json.load(open(os.path.join(uninterrupted, "final_metrics.json")))
    for key in (
        "mlm_loss",
        "itm_loss",
        "itm_accuracy",
        "mlm_accuracy",
        "mlm_concept_accuracy",
        "colour_word_accuracy",
        "itm_accuracy_ci_low",
    ):
        assert key in final
    import yaml

    record = yaml.safe_load(open(os.path.join(uninterrupted, "run.yaml")))
    assert record["seed"] == 0 and record["config"]["max_steps"] == 10 and record["code_version"]
    assert not os.path.exists(os.path.join(uninterrupted, "skipped_samples.jsonl"))


def test_crash_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path, cache_dir):
    crashed = run_pretrain(
        tmp_path, cache_dir, max_steps=10, tensorboard=True, eval_every=5, check=False, env={"VLP_FAULT_AT_STEP": "6"}
    )
    assert crashed.returncode != 0 and "fault injected at step 6" in crashed.stderr
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]
    run_pretrain(tmp_path, cache_dir, max_steps=10, tensorboard=True, eval_every=5)
    expected, resumed = weights(uninterrupted), weights(tmp_path)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert train_losses(tmp_path) == train_losses(uninterrupted)


def test_nonfinite_loss_skips_the_step_and_is_counted(tmp_path, cache_dir):
    run_pretrain(tmp_path, cache_dir, max_steps=6, env={"VLP_NONFINITE_AT_STEPS": "2"})
    records = [r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if r["split"] == "train"]
    # Step indices count completed steps: the step with index 2 is logged when 3 steps are done.
    assert records[2]["mlm_loss"] == "nan" and records[2]["nonfinite_steps"] == 1
    assert records[1]["nonfinite_steps"] == 0
    assert records[-1]["nonfinite_steps"] == 1 and isinstance(records[-1]["mlm_loss"], float)


def test_repeated_nonfinite_losses_stop_the_run_and_keep_the_checkpoint(tmp_path, cache_dir):
    result = run_pretrain(
        tmp_path, cache_dir, max_steps=10, max_nonfinite_steps=2, check=False, env={"VLP_NONFINITE_AT_STEPS": "5,6,7"}
    )
    assert result.returncode != 0
    assert "2 consecutive steps with a non-finite loss" in result.stderr
    assert "checkpoint-4" in result.stderr
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]
    state = load_file(os.path.join(tmp_path, "checkpoints", "checkpoint-4", "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())


def _corrupt_copy(source, destination, bad_rows):
    rows = datasets.load_from_disk(source).cast_column("image", datasets.Image(decode=False))

    def corrupt(row, index):
        if index in bad_rows:
            row["image"] = {"bytes": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "path": None}
        return row

    rows.map(corrupt, with_indices=True).save_to_disk(destination)


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, cache_dir):
    source = tmp_path / "world"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vlp.training.cli",
            "data",
            "shapes",
            "--out",
            str(source),
            "--num-scenes",
            "64",
            "--image-size",
            "32",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    bad = {3, 17, 40}
    _corrupt_copy(str(source), str(tmp_path / "corrupt"), bad)
    output = tmp_path / "run"
    run_pretrain(output, cache_dir, max_steps=8, dataset=str(tmp_path / "corrupt"), val_scenes=16)
    listed = read_jsonl(os.path.join(output, "skipped_samples.jsonl"))
    assert {r["index"] for r in listed} == bad
    assert all(r["reason"] for r in listed)
    last = [r for r in read_jsonl(os.path.join(output, "metrics.jsonl")) if r["split"] == "train"][-1]
    assert last["skipped_samples"] == len(listed)

    strict = run_pretrain(
        tmp_path / "strict",
        cache_dir,
        max_steps=8,
        dataset=str(tmp_path / "corrupt"),
        val_scenes=16,
        strict=True,
        check=False,
    )
    assert strict.returncode != 0
    assert any(f"row {i}" in strict.stderr or f"index {i}" in strict.stderr for i in bad), strict.stderr[-2000:]


@pytest.mark.distributed
def test_two_processes_give_the_same_losses_as_one(tmp_path, cache_dir):
    """Includes ITC, whose features are gathered over processes, MIM, whose masks come from sample indices, and
    grouped matching, whose groups are drawn from them."""
    names = ("gitm", "itc", "itm", "mim", "mlm", "wra")
    steps = dict(max_steps=20, save_every=0, warmup_steps=5, objectives=",".join(names))
    run_pretrain(tmp_path / "one", cache_dir, per_device_batch_size=8, **steps)
    # --standalone: the launcher binds its own free rendezvous port (no race on a port chosen beforehand).
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "vlp.training.cli",
    ]
    run_pretrain(tmp_path / "two", cache_dir, per_device_batch_size=4, launcher=torchrun, **steps)
    one, two = train_losses(tmp_path / "one", names), train_losses(tmp_path / "two", names)
    assert len(one) == len(two) == 20
    for first, second in zip(one, two):
        assert first[0] == second[0]
        for name, a, b in zip(names, first[1:], second[1:]):
            assert abs(a - b) <= 1e-4 * abs(a), (first[0], name, a, b)
    record = __import__("yaml").safe_load(open(tmp_path / "two" / "run.yaml"))
    assert record["num_processes"] == 2
    shutil.rmtree(tmp_path / "two" / "checkpoints", ignore_errors=True)


def test_the_loop_clamps_the_learnt_temperature_into_its_range_after_every_step(tmp_path, cache_dir):
    """A range of one value: AdamW moves the ITC temperature at every step, the clamp after the step puts it back."""
    run_pretrain(
        tmp_path,
        cache_dir,
        max_steps=3,
        save_every=0,
        objectives="itc",
        learning_rate=0.05,
        contrastive_temperature=0.07,
        contrastive_min_temperature=0.07,
        contrastive_max_temperature=0.07,
    )
    saved = weights(tmp_path)["contrastive.log_scale"]
    assert saved.item() == torch.tensor(math.log(1 / 0.07), dtype=saved.dtype).item()


def test_gradient_accumulation_gives_the_same_losses_as_one_big_batch(tmp_path, cache_dir):
    steps = dict(max_steps=6, save_every=0)
    run_pretrain(tmp_path / "big", cache_dir, per_device_batch_size=8, **steps)
    run_pretrain(tmp_path / "accumulated", cache_dir, per_device_batch_size=4, gradient_accumulation_steps=2, **steps)
    for (s1, mlm1, itm1), (s2, mlm2, itm2) in zip(
        train_losses(tmp_path / "big"), train_losses(tmp_path / "accumulated")
    ):
        assert s1 == s2
        assert abs(mlm1 - mlm2) <= 1e-4 * abs(mlm1) and abs(itm1 - itm2) <= 1e-4 * abs(itm1), (s1, mlm1, mlm2)


def test_bf16_mixed_precision_computes_in_bf16_and_stays_near_fp32(tmp_path, cache_dir):
    run_pretrain(tmp_path / "bf16", cache_dir, max_steps=3, save_every=0, mixed_precision="bf16")
    run_pretrain(tmp_path / "fp32", cache_dir, max_steps=3, save_every=0)
    bf16, fp32 = train_losses(tmp_path / "bf16"), train_losses(tmp_path / "fp32")
    assert [step for step, *_ in bf16] == [step for step, *_ in fp32] == [1, 2, 3]
    low, full = [v for _, *values in bf16 for v in values], [v for _, *values in fp32 for v in values]
    assert low != full, "bf16 gave the fp32 losses to the last bit: autocast did not take effect"
    # bf16 keeps 8 bits of mantissa: its losses stay within a few per cent of fp32's over a few steps
    assert low == pytest.approx(full, rel=3e-2), (low, full)


EVERY_OBJECTIVE_STEPS = {"sum": 400, "sample": 1200}


@pytest.fixture(scope="module")
def every_objective_runs(tmp_path_factory):
    """Every objective trained under both mixing modes, the two runs side by side (one thread each, so that they
    take the two cores), each with its own world cache: {mixing: run folder}."""
    from concurrent.futures import ThreadPoolExecutor

    names = ("mlm", "itm", "mim", "itc", "wra", "gitm")
    folders = {mixing: tmp_path_factory.mktemp(f"every_objective_{mixing}") for mixing in EVERY_OBJECTIVE_STEPS}

    def train(mixing):
        steps = EVERY_OBJECTIVE_STEPS[mixing]
        run_pretrain(
            folders[mixing] / "run",
            str(folders[mixing] / "cache"),
            max_steps=steps,
            save_every=0,
            eval_every=steps,
            learning_rate=0.003,
            warmup_steps=5,
            objectives=",".join(names),
            mixing=mixing,
            num_scenes=1024,
            hidden_size=64,
            num_hidden_layers=2,
            intermediate_size=128,
            per_device_batch_size=32,
            eval_batches=8,
            max_objects=1,
            mim_probability=0.75,
        )

    with ThreadPoolExecutor(len(folders)) as pool:
        for done in [pool.submit(train, mixing) for mixing in folders]:
            done.result()
    return {mixing: folder / "run" for mixing, folder in folders.items()}


@pytest.mark.parametrize("mixing", ["sum", "sample"])
def test_every_objective_lowers_its_validation_loss(every_objective_runs, mixing):
    """Each objective's validation loss at the end is below its step-0 value by more than its step-to-step spread."""
    names = ("mlm", "itm", "mim", "itc", "wra", "gitm")
    steps = EVERY_OBJECTIVE_STEPS[mixing]
    tmp_path = every_objective_runs[mixing]
    records = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    val = {r["step"]: r for r in records if r["split"] == "val"}
    assert set(val) == {0, steps}
    train = [r for r in records if r["split"] == "train"]
    for name in names:
        seen = [r[f"{name}_loss"] for r in train if f"{name}_loss" in r]
        assert len(seen) >= 5, (name, len(seen))
        spread = float(torch.tensor(seen[-10:]).std())
        start, end = val[0][f"{name}_loss"], val[steps][f"{name}_loss"]
        assert end < start - spread, (name, start, end, spread)
    if mixing == "sample":
        assert all(sum(key.endswith("_loss") for key in r) == 1 for r in train)
