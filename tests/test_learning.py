"""The demo pretraining run learns: ITM and masked colour words well above chance (about 15 minutes on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest

CONFIG = os.path.join(os.path.dirname(__file__), "..", "training", "configs", "demo.yaml")


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_demo_pretraining_learns_matching_and_colour_words(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, "-m", "vlp.training.cli", "pretrain", "--config", CONFIG, "--output_dir",
                    str(tmp_path), "--cache_dir", str(tmp_path / "cache"), "--progress_bar", "false"],
                   check=True, env=env, timeout=3600)
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
    subprocess.run([sys.executable, "-m", "vlp.training.cli", "pretrain", "--config", CONFIG, "--output_dir",
                    str(tmp_path), "--cache_dir", str(tmp_path / "cache"), "--progress_bar", "false",
                    "--max_steps", "600", "--eval_every", "0", "--save_every", "0", "--tensorboard", "false"],
                   check=True, env=env, timeout=3600)
    out = tmp_path / "masks"
    subprocess.run([sys.executable, "-m", "vlp.training.cli", "masks", str(tmp_path), "--out", str(out),
                    "--num-samples", "512", "--scoring", "lift", "--policies", "random,high"],
                   check=True, env=env, timeout=1200)
    high = json.load(open(out / "mask_shares.json"))["policies"]["high"]
    assert high["concept_word_share_minus_random_low"] > 0, high
    assert high["object_patch_share_minus_random_low"] > 0, high
