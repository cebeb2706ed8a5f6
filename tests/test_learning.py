"""The demo pretraining run learns: ITM and masked colour words well above chance (about 15 minutes on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest

CONFIG = os.path.join(os.path.dirname(__file__), "..", "training", "configs", "demo.yaml")


@pytest.mark.slow
def test_demo_pretraining_learns_matching_and_colour_words(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, "-m", "vlp.training.cli", "pretrain", "--config", CONFIG, "--output_dir",
                    str(tmp_path), "--cache_dir", str(tmp_path / "cache"), "--progress_bar", "false"],
                   check=True, env=env, timeout=3600)
    final = json.load(open(tmp_path / "final_metrics.json"))
    assert final["itm_accuracy_ci_low"] >= 0.75, final
    assert final["colour_word_accuracy_ci_low"] >= 0.5, final  # chance: 1/8
