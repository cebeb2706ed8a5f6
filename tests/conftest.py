"""Shared pytest set-up: offline hubs, a --runslow switch, seeded determinism."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

BENCHMARK_SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchmark-samples")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# One small model pretrained on the synthetic world, shared by every test that needs a trained model (the masking
# policies' shares, the evaluation suite, finetuning). MLM + ITM + MIM, a few hundred steps: enough for attention
# to single out objects and for masked words to be predicted, not for a strong model.
PRETRAINED_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "image_size": 32,
    "patch_size": 8,
    "vocab_size": 200,
    "num_scenes": 2000,
    "val_scenes": 200,
    "per_device_batch_size": 32,
    "max_steps": 300,
    "learning_rate": 2e-3,
    "warmup_steps": 30,
    "objectives": "mlm,itm,mim",
    "eval_every": 0,
    "save_every": 0,
    "eval_batches": 4,
    "log_every": 50,
    "progress_bar": False,
    "tensorboard": False,
}


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """A `vlp pretrain` run folder (run.yaml, model/, processor/, metrics.jsonl) of PRETRAINED_CONFIG."""
    import subprocess
    import sys

    output = tmp_path_factory.mktemp("pretrained_run")
    values = dict(PRETRAINED_CONFIG, output_dir=str(output), cache_dir=str(tmp_path_factory.mktemp("world")))
    args = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-m", "vlp.training.cli", "pretrain", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pretraining the shared test model failed:\n{result.stderr[-4000:]}")
    return str(output)
