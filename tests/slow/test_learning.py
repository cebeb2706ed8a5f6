"""Slow learning checks: the demo pretraining run learns ITM and masked colour words well above chance (about 15
minutes on 2 cores); attention-guided masking hides concept words and object patches; grouped matching learns."""

import json
import os
import subprocess
import sys

import pytest
from repo_paths import ROOT

CONFIG = os.path.join(ROOT, "training", "configs", "demo.yaml")


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_demo_pretraining_learns_matching_and_colour_words(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vlp.training.cli",
            "pretrain",
            "--config",
            CONFIG,
            "--output_dir",
            str(tmp_path),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--progress_bar",
            "false",
        ],
        check=True,
        env=env,
        timeout=3600,
    )
    final = json.load(open(tmp_path / "final_metrics.json"))
    assert final["itm_accuracy_ci_low"] >= 0.75, final
    assert final["colour_word_accuracy_ci_low"] >= 0.5, final  # chance: 1/8


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_high_masks_more_concept_words_and_object_patches_than_random(tmp_path):
    """Guided by the demo model after 600 steps, 'high' hides a larger share of concept words and of object patches
    than 'random' (lower ends of the paired bootstrap intervals above zero) when words and patches are ranked by the
    lift of the attention they receive from the other modality (`--scoring lift`; about 6 minutes on 2 cores)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vlp.training.cli",
            "pretrain",
            "--config",
            CONFIG,
            "--output_dir",
            str(tmp_path),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--progress_bar",
            "false",
            "--max_steps",
            "600",
            "--eval_every",
            "0",
            "--save_every",
            "0",
            "--tensorboard",
            "false",
        ],
        check=True,
        env=env,
        timeout=3600,
    )
    out = tmp_path / "masks"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vlp.training.cli",
            "masks",
            str(tmp_path),
            "--out",
            str(out),
            "--num-samples",
            "512",
            "--scoring",
            "lift",
            "--policies",
            "random,high",
        ],
        check=True,
        env=env,
        timeout=1200,
    )
    high = json.load(open(out / "mask_shares.json"))["policies"]["high"]
    assert high["concept_word_share_minus_random_low"] > 0, high
    assert high["object_patch_share_minus_random_low"] > 0, high


GITM_RUN = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "image_size": 64,
    "patch_size": 16,
    "vocab_size": 400,
    "num_scenes": 3000,
    "val_scenes": 2048,
    "objectives": "gitm",
    "gitm_rows": 1,
    "gitm_cols": 2,
    "gitm_mode": "full",
    "gitm_own_probability": 0.75,
    "gitm_distractors": "mixed",
    "max_steps": 1600,
    "per_device_batch_size": 32,
    "learning_rate": 0.001,
    "warmup_steps": 30,
    "eval_every": 0,
    "eval_batches": 64,
    "save_every": 0,
    "log_every": 100,
    "progress_bar": "false",
    "tensorboard": "false",
}


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_grouped_matching_learns_and_hard_distractors_are_harder(tmp_path):
    """Grouped matching alone on a 1 x 2 grid at full resolution (own caption with p = 0.75, half the distractors
    one-word foils of the cell's caption), 1,600 steps, 2,048 validation groups: segment accuracy above twice the
    uniform chance over the cells and 'none' (lower end of the Wilson interval), and hard distractors are called
    'none' less often than easy ones (Newcombe interval of the difference below zero)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [item for key, value in GITM_RUN.items() for item in (f"--{key}", str(value))]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vlp.training.cli",
            "pretrain",
            *args,
            "--output_dir",
            str(tmp_path),
            "--cache_dir",
            str(tmp_path / "cache"),
        ],
        check=True,
        env=env,
        timeout=3600,
    )
    final = json.load(open(tmp_path / "final_metrics.json"))
    figures = {k: v for k, v in final.items() if k.startswith("gitm_")}
    assert final["gitm_accuracy_ci_low"] > 2 * final["gitm_chance_uniform"], figures
    assert final["gitm_hard_minus_easy_ci_high"] < 0, figures
