"""`vlp push`: the folder it publishes loads where VLP is not installed and gives the run's outputs; its model card
describes the run and its metadata validates with huggingface_hub; the upload goes through a (mocked) HfApi; bad
inputs stop with messages that say what is expected. Nothing here touches the network."""

import copy
import hashlib
import json
import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from remote_code import run_blocked
from safetensors.torch import load_file, save_file

import vlp.model_cards as cards
import vlp.modeling_vlp as modeling
import vlp.processing as processing
from vlp.modeling_vlp import VLP_AUTO_MAP, VLPConfig, VLPForPreTraining, VLPModel
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.training import cli
from vlp.training.config import parse_config, to_dict
from vlp.training.evaluation.results import load_schema, validate_json
from vlp.training.hub import publish

CODE_FILES = set(modeling.EXPORTED_FILES) | set(processing.EXPORTED_FILES)
MODEL_FILES = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}
RUN_FILES = {"run/run.yaml", "run/pretrain_config.yaml", "run/final_metrics.json", "run/metrics.jsonl"}
CAPTIONS = [
    "there is a red circle",
    "the blue square is left of the green star",
    "there are two yellow hearts",
    "a small red circle and a big blue square",
]


# -- a small run folder, written by hand in the layout `vlp pretrain` leaves ------------------------------------------


def write_run(folder, objectives="mlm,itm", **config_values):
    """A run folder with a tiny random model: run.yaml, model/ (model + processor + code), logs and final metrics."""
    model_dir = os.path.join(folder, "model")
    tokenizer = train_wordpiece_tokenizer(CAPTIONS * 5, vocab_size=80)
    processor = VLPProcessor(image_processor=VLPImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    torch.manual_seed(0)
    config = VLPConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=16,
    )
    VLPForPreTraining(config).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=16,
        objectives=objectives,
        max_steps=20,
        per_device_batch_size=8,
        output_dir=str(folder),
        cache_dir=os.path.join(str(folder), "cache"),
        num_scenes=100,
        val_scenes=20,
    )
    values.update(config_values)
    record = {
        "config": to_dict(parse_config(values=values)),
        "code_version": "0.1.0+test",
        "seed": 0,
        "num_processes": 1,
        "torch": str(torch.__version__),
    }
    with open(os.path.join(folder, "run.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(record, handle, sort_keys=False)
    log = [
        {"step": 10, "split": "train", "mlm_loss": 3.0, "samples_seen": 80, "step_time": 0.5},
        {"step": 20, "split": "train", "mlm_loss": 2.5, "samples_seen": 160, "step_time": 0.25},
        {"step": 20, "split": "val", "itm_accuracy": 0.75},
    ]
    with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in log)
    final = {
        "step": 20,
        "mlm_loss": 2.5,
        "itm_loss": 0.55,
        "itm_accuracy": 0.75,
        "itm_accuracy_ci_low": 0.6312,
        "itm_accuracy_ci_high": 0.8401,
        "itm_accuracy_n": 64,
        "colour_word_accuracy": float("nan"),
        "colour_word_accuracy_ci_low": float("nan"),
        "colour_word_accuracy_ci_high": float("nan"),
        "colour_word_accuracy_n": 0,
    }
    with open(os.path.join(folder, "final_metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(final, handle)
    return str(folder)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("small_run"))


@pytest.fixture
def run_copy(small_run, tmp_path):
    """A copy of the small run that a test may change."""
    return shutil.copytree(small_run, tmp_path / "run")


def _digests(folder):
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder).replace(os.sep, "/")] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _interval_in_name(name):
    low, high = re.search(r"95 % interval \[([-0-9.]+), ([-0-9.]+)\]", name).groups()
    return float(low), float(high)


def check_card_metadata(text):
    """The card's metadata parses with huggingface_hub (ModelCard, metadata_load, ModelCardData and the model-index
    parser; `ModelCard.validate` posts to the Hub and is not called) and round-trips unchanged; returns it."""
    card = ModelCard(text)
    metadata = metadata_load_text(text)
    assert card.data.to_dict() == ModelCardData(**copy.deepcopy(metadata)).to_dict()
    assert card.data.library_name == "transformers"
    assert {"vlp", "vision-language"} <= set(card.data.tags)
    if "model-index" in metadata:
        name, results = model_index_to_eval_results(metadata["model-index"])
        assert name == card.data.model_name and len(results) == len(card.data.eval_results) > 0
        # what huggingface_hub writes back from its parsed form is what the card holds
        assert card.data.to_dict()["model-index"] == metadata["model-index"]
    return metadata


def metadata_load_text(text):
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"card-{os.getpid()}.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    try:
        return metadata_load(path)
    finally:
        os.remove(path)


# -- the dry-run folder of the shared pretrained run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(pretrained_run, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("published") / "upload")
    assert cli.main(["push", pretrained_run, "--repo-id", "user/vlp-test", "--dry-run", folder]) == 0
    return folder


def test_dry_run_of_a_pretrained_run_loads_without_the_package_and_gives_the_runs_outputs(
    pretrained_run, published, tmp_path
):
    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    work.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(work / f"image{i}.png")
    texts = CAPTIONS[:3]
    (work / "texts.json").write_text(json.dumps(texts))
    run_model = os.path.join(pretrained_run, "model")
    processor = VLPProcessor.from_pretrained(run_model)
    model = VLPForPreTraining.from_pretrained(run_model).eval()
    base = VLPModel.from_pretrained(run_model).eval()
    images = [Image.open(work / f"image{i}.png") for i in range(3)]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    save_file({"labels": labels}, str(work / "labels.safetensors"))
    with torch.no_grad():
        out = model(**inputs, mlm_labels=labels, itm_labels=torch.tensor([1, 0, 1]))
        hidden = base(**inputs).last_hidden_state
    code = f"""
    import json, sys, torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor
    folder, work = {published!r}, {str(work)!r}
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    images = [Image.open(f"{{work}}/image{{i}}.png") for i in range(3)]
    inputs = processor(images=images, text=json.load(open(work + "/texts.json")), padding=True, return_tensors="pt")
    labels = load_file(work + "/labels.safetensors")["labels"]
    with torch.no_grad():
        out = model(**inputs, mlm_labels=labels, itm_labels=torch.tensor([1, 0, 1]))
        hidden = base(**inputs).last_hidden_state
    result = {{f"input_{{k}}": v for k, v in inputs.items()}}
    result.update(mlm_logits=out.mlm_logits, itm_logits=out.itm_logits, hidden=out.last_hidden_state, base=hidden)
    save_file({{k: v.contiguous() for k, v in result.items()}}, work + "/remote.safetensors")
    print("vlp" in sys.modules, type(model).__name__, type(base).__name__, type(processor).__name__)
    """
    printed = run_blocked(code, str(work / "blocked"))
    assert printed.split()[:4] == ["False", "VLPForPreTraining", "VLPModel", "VLPProcessor"]
    remote = load_file(str(work / "remote.safetensors"))
    for key, value in inputs.items():
        assert torch.equal(remote[f"input_{key}"], value), key
    for key, value in (
        ("mlm_logits", out.mlm_logits),
        ("itm_logits", out.itm_logits),
        ("hidden", out.last_hidden_state),
        ("base", hidden),
    ):
        torch.testing.assert_close(remote[key], value, rtol=0, atol=1e-6)


def test_card_of_a_pretrained_run_validates_and_reports_its_objectives_and_figures(pretrained_run, published):
    text = open(os.path.join(published, "README.md"), encoding="utf-8").read()
    metadata = check_card_metadata(text)
    record = yaml.safe_load(open(os.path.join(pretrained_run, "run.yaml"), encoding="utf-8"))
    final = json.load(open(os.path.join(pretrained_run, "final_metrics.json"), encoding="utf-8"))
    for name in record["config"]["objectives"].split(","):
        assert f"| `{name}` | 1 |" in text
    assert f"| optimizer steps | {record['config']['max_steps']} |" in text
    row = f"| {final['itm_accuracy']:.3f} | [{final['itm_accuracy_ci_low']:.3f}, {final['itm_accuracy_ci_high']:.3f}] |"
    assert row in text
    _, results = model_index_to_eval_results(metadata["model-index"])
    itm = next(r for r in results if r.metric_name.startswith("ITM accuracy"))
    assert itm.metric_value == pytest.approx(final["itm_accuracy"], abs=1e-6)
    assert _interval_in_name(itm.metric_name) == pytest.approx(
        (final["itm_accuracy_ci_low"], final["itm_accuracy_ci_high"]), abs=1e-4
    )
    # the published weights are the run's, byte for byte
    assert (
        _digests(published)["model.safetensors"] == _digests(os.path.join(pretrained_run, "model"))["model.safetensors"]
    )


# -- the folder, from the small run -----------------------------------------------------------------------------------


def test_dry_run_writes_exactly_the_model_processor_code_card_and_run_files(small_run, tmp_path):
    out = tmp_path / "upload"
    summary = publish.push(small_run, "user/small", dry_run=str(out))
    assert set(summary["files"]) == MODEL_FILES | CODE_FILES | RUN_FILES | {"README.md"}
    assert set(_digests(out)) == set(summary["files"]) and summary["uploaded"] is False
    source = _digests(os.path.join(small_run, "model"))
    for name in CODE_FILES | {"model.safetensors", "tokenizer.json"}:
        assert _digests(out)[name] == source[name], name
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == VLP_AUTO_MAP
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_vlp.VLPProcessor"
    # no file tells where the run was: output and cache folders are dropped from the published config
    for name in summary["files"]:
        if not name.endswith(".safetensors"):
            assert small_run not in (out / name).read_text(encoding="utf-8"), name
    published_config = yaml.safe_load((out / "run" / "pretrain_config.yaml").read_text())
    assert "output_dir" not in published_config and "cache_dir" not in published_config
    # the published config reproduces the run: it parses to the same settings, paths aside
    arguments = to_dict(parse_config(str(out / "run" / "pretrain_config.yaml")))
    original = yaml.safe_load(open(os.path.join(small_run, "run.yaml"), encoding="utf-8"))["config"]
    assert {k: v for k, v in arguments.items() if k not in ("output_dir", "cache_dir")} == {
        k: v for k, v in original.items() if k not in ("output_dir", "cache_dir")
    }


def test_card_of_the_small_run_has_sections_figures_and_budget(small_run, tmp_path):
    out = tmp_path / "upload"
    publish.push(small_run, "user/small", dry_run=str(out), license="apache-2.0", datasets=("user/shapes",))
    text = (out / "README.md").read_text()
    metadata = check_card_metadata(text)
    assert metadata["license"] == "apache-2.0" and metadata["datasets"] == ["user/shapes"]
    assert "pipeline_tag" not in metadata  # no Hub pipeline fits the pretraining model
    for section in (
        "Model description",
        "Pretraining objectives",
        "Data",
        "Training budget",
        "Evaluation",
        "How to use",
        "Intended use and limitations",
    ):
        assert f"\n## {section}\n" in text
    assert 'AutoModelForPreTraining.from_pretrained("user/small", trust_remote_code=True)' in text
    assert 'AutoProcessor.from_pretrained("user/small", trust_remote_code=True)' in text
    assert "| `mlm` | 1 |" in text and "| `itm` | 1 |" in text and "| `mim`" not in text
    assert "0.15 of the words masked" in text
    # budget: 20 steps of 8; 10 steps at 0.5 s and 10 at 0.25 s = 7.5 s
    assert "| optimizer steps | 20 |" in text and "| samples seen | 160 |" in text
    assert "0.375 s per step" in text
    parameters = sum(t.numel() for t in load_file(str(out / "model.safetensors")).values())
    assert f"| parameters | {parameters:,} |" in text
    # the model-index holds the figures that have an interval (ITM), not the NaN one nor the losses
    _, results = model_index_to_eval_results(metadata["model-index"])
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in results] == [("accuracy", 0.75, "validation")]
    assert _interval_in_name(results[0].metric_name) == (0.6312, 0.8401)
    assert "| ITM accuracy (captions as written, half of them negatives) | 0.750 | [0.631, 0.840] | 64 |" in text
    assert "| MLM loss | 2.500 | — |" in text


def test_public_config_drops_machine_paths_and_keeps_names():
    config = {
        "output_dir": "/home/a/runs/x",
        "cache_dir": "/home/a/.cache",
        "init_from": "/home/a/ckpt/",
        "dataset": "captions:/data/cc/train.json@/data/cc/images,/data/more.json",
        "seed": 3,
    }
    assert publish.public_config(config) == {
        "init_from": "ckpt",
        "dataset": "captions:train.json@images,more.json",
        "seed": 3,
    }
    assert publish.public_config({"dataset": "shapes", "init_from": None}) == {"dataset": "shapes", "init_from": None}


def test_training_budget_against_hand_computed_values():
    config = {"per_device_batch_size": 8, "gradient_accumulation_steps": 2, "max_steps": 30}
    log = [
        {"step": 10, "split": "train", "samples_seen": 160, "step_time": 0.5},
        {"step": 10, "split": "val", "step_time": 99.0},
        {"step": 30, "split": "train", "samples_seen": 480, "step_time": 0.2},
    ]
    budget = cards.training_budget(config, {"num_processes": 2}, log)
    assert budget["global_batch"] == 32 and budget["steps"] == 30 and budget["samples_seen"] == 480
    assert budget["train_seconds"] == pytest.approx(10 * 0.5 + 20 * 0.2)
    assert budget["step_time"] == pytest.approx(9.0 / 30)
    empty = cards.training_budget(config, {}, [])
    assert empty["samples_seen"] == 30 * 16 and empty["train_seconds"] is None


def test_model_index_keeps_only_finite_figures_with_intervals_and_groups_them():
    figures = [
        cards.Figure("a", "accuracy", 0.5, 0.4, 0.6, n=10, task="fill-mask"),
        cards.Figure("b", "accuracy", 0.7, 0.6, 0.8, task="image-text-matching"),
        cards.Figure("c", "loss", 1.2),
        cards.Figure("d", "accuracy", float("nan"), 0.1, 0.2),
        cards.Figure("e", "accuracy", 0.9, 0.8, 0.95, task="fill-mask"),
    ]
    index = cards.model_index("m", figures)
    assert [r["task"]["type"] for r in index[0]["results"]] == ["fill-mask", "image-text-matching"]
    assert [m["value"] for m in index[0]["results"][0]["metrics"]] == [0.5, 0.9]
    assert index[0]["results"][0]["metrics"][0]["name"] == "a; 95 % interval [0.4000, 0.6000], n = 10"
    assert cards.model_index("m", [figures[2]]) == []


def test_primary_metric_patterns_match_dotted_parts_in_order():
    assert cards.is_primary("eval.foils.colour.acc_r", ["foils.acc_r"])
    assert not cards.is_primary("eval.acc_r.foils", ["foils.acc_r"])
    assert not cards.is_primary("val.itm_accuracy", ["foils.acc_r", "itm"])
    assert cards.is_primary("val.itm_accuracy", ["val.itm_accuracy"])


# -- results files ----------------------------------------------------------------------------------------------------


def _figure(value, low, high):
    return {"value": value, "low": low, "high": high}


def evaluation_results():
    """A small `vlp evaluate` results.json (checked against training/evaluation/results_schema.json)."""
    block = {
        "n_items": 200,
        "headline": "acc_r",
        "score": {"acc_r": _figure(0.71, 0.65, 0.77), "auroc": _figure(0.8, 0.75, 0.85)},
        "floors": {"blank_image": {"acc_r": _figure(0.52, 0.45, 0.59)}},
        "differences": {
            "blank_image": {
                "of": "acc_r",
                "value": 0.19,
                "low": 0.11,
                "high": 0.27,
                "p_value": 0.001,
                "resampled": "items",
            }
        },
    }
    return {
        "format": "vlp-evaluation-results",
        "format_version": 1,
        "model_dir": "/x",
        "model_path": "/x/model",
        "code_version": "0.1.0",
        "created": "2025-01-01T00:00:00Z",
        "device": "cpu",
        "config": None,
        "settings": {
            "seed": 0,
            "batch_size": 8,
            "n_resamples": 100,
            "confidence": 0.95,
            "occlusion": "mask",
            "relevance_layers": [1],
            "mim_probability": 0.4,
            "probe_C": 1.0,
        },
        "seeds": {"evaluation": 0},
        "world_config": None,
        "eval_world_config": None,
        "item_counts": {"foils": 200},
        "skipped": {},
        "benchmark": None,
        "suites": {"foils": {"phenomena": {"all": block}}},
        "seconds": 1.0,
    }


def study_results():
    """A `vlp study` results.json of two mixes: per metric mean and interval, differences to the baseline."""

    def entry(mean, low, high):
        return {"per_seed": [mean], "mean": mean, "low": low, "high": high, "interval_over": "items"}

    metrics = {
        "base": {"eval.foils.all.acc_r": entry(0.61, 0.55, 0.67), "val.itm_accuracy": entry(0.7, 0.6, 0.8)},
        "agmm": {"eval.foils.all.acc_r": entry(0.68, 0.62, 0.74), "val.itm_accuracy": entry(0.72, 0.6, 0.8)},
    }
    return {
        "format": "vlp-study-results",
        "format_version": 1,
        "study": "quick",
        "baseline": "base",
        "seeds": [0],
        "primary_metrics": ["foils.acc_r"],
        "mixes": {name: {"runs": 1, "overrides": {}, "step_flops": 1e9, "metrics": m} for name, m in metrics.items()},
        "differences": {
            "agmm": {
                "eval.foils.all.acc_r": {
                    "difference": 0.07,
                    "low": 0.01,
                    "high": 0.13,
                    "p_value": 0.02,
                    "interval_over": "items",
                    "p_holm": 0.02,
                    "significant": True,
                }
            }
        },
    }


def test_card_with_evaluation_results_lists_headline_figures_and_floor_differences(small_run, tmp_path):
    results = evaluation_results()
    assert validate_json(results, load_schema()) == []
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "upload"
    summary = publish.push(small_run, "user/small", dry_run=str(out), results_path=str(path))
    assert "results.json" in summary["files"]
    assert json.loads((out / "results.json").read_text()) == results
    text = (out / "README.md").read_text()
    assert "| foils: all (acc_r) | 0.710 | [0.650, 0.770] | 200 | minus blank_image +0.190 [+0.110, +0.270] |" in text
    metadata = check_card_metadata(text)
    _, evals = model_index_to_eval_results(metadata["model-index"])
    foils = [r for r in evals if r.metric_type == "acc_r"]
    assert len(foils) == 1 and foils[0].metric_value == 0.71 and foils[0].dataset_split == "test"
    assert _interval_in_name(foils[0].metric_name) == (0.65, 0.77)


def test_card_from_a_study_shows_the_runs_mix_and_its_difference_to_the_baseline(small_run, tmp_path):
    study = tmp_path / "study"
    run = shutil.copytree(small_run, study / "runs" / "agmm" / "seed0")
    (study / "results.json").write_text(json.dumps(study_results()))
    out = tmp_path / "upload"
    publish.push(str(run), "user/agmm", dry_run=str(out), results_path=str(study / "results.json"))
    text = (out / "README.md").read_text()
    assert "mix `agmm` (baseline `base`" in text
    assert (
        "| eval.foils.all.acc_r | 0.680 | [0.620, 0.740] | — | minus baseline `base` +0.070 [+0.010, +0.130], "
        "Holm-adjusted p 0.020 |"
    ) in text
    assert "val.itm_accuracy |" not in text  # primary metrics are declared: only they are shown
    _, evals = model_index_to_eval_results(check_card_metadata(text)["model-index"])
    assert [(r.metric_type, r.metric_value) for r in evals if r.dataset_type == "vlp-study"] == [("acc_r", 0.68)]
    with pytest.raises(publish.PublishError, match=r"mixes \['agmm', 'base'\].*'elsewhere'.*--mix"):
        publish.push(
            str(run),
            "user/agmm",
            dry_run=str(tmp_path / "other"),
            results_path=str(study / "results.json"),
            mix="elsewhere",
        )


def test_generic_results_are_read_by_their_value_low_high_figures():
    figures = cards.results_figures(
        {"retrieval": {"r@1": _figure(0.4, 0.3, 0.5), "note": "x"}, "loss": _figure(1.0, None, None)}
    )
    assert [(f.label, f.value, f.low, f.high) for f in figures] == [
        ("retrieval.r@1", 0.4, 0.3, 0.5),
        ("loss", 1.0, None, None),
    ]


# -- completing what a run lacks --------------------------------------------------------------------------------------


def test_incomplete_auto_map_is_completed_and_missing_code_comes_from_the_package(run_copy, tmp_path):
    config_path = run_copy / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoConfig": "configuration_vlp.VLPConfig"}
    config_path.write_text(json.dumps(config))
    os.remove(run_copy / "model" / "modeling_vlp_tasks.py")
    (run_copy / "model" / "generation_config.json").write_text("{}")  # other save_pretrained files go along
    shutil.copy(run_copy / "model" / "model.safetensors", run_copy / "model" / "pytorch_model.bin")  # pickles do not
    out = tmp_path / "upload"
    files = publish.push(str(run_copy), "user/small", dry_run=str(out))["files"]
    assert "generation_config.json" in files and "pytorch_model.bin" not in files
    assert json.loads((out / "config.json").read_text())["auto_map"] == VLP_AUTO_MAP
    assert CODE_FILES <= set(files)
    for package, names in ((modeling, modeling.EXPORTED_FILES), (processing, processing.EXPORTED_FILES)):
        for name in names:
            expected = open(os.path.join(os.path.dirname(package.__file__), name), "rb").read()
            assert (out / name).read_bytes() == expected, name


# -- the upload, through a recording HfApi ----------------------------------------------------------------------------


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the uploaded folder's files; no network."""

    calls = []

    def __init__(self, token=None):
        RecordingApi.calls.append(("init", {"token": token}))

    def create_repo(self, **kwargs):
        RecordingApi.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        RecordingApi.calls.append(("upload_folder", dict(kwargs, files=_digests(kwargs["folder_path"]))))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")


@pytest.fixture
def recording_api(monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(publish, "HfApi", RecordingApi)
    return RecordingApi


def test_push_creates_the_repo_then_uploads_the_dry_run_folder(small_run, tmp_path, recording_api, capsys):
    assert cli.main(["push", small_run, "--repo-id", "user/small", "--private", "--token", "hf_x"]) == 0
    assert [name for name, _ in recording_api.calls] == ["init", "create_repo", "upload_folder"]
    assert recording_api.calls[0][1] == {"token": "hf_x"}
    assert recording_api.calls[1][1] == {
        "repo_id": "user/small",
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
    }
    upload = recording_api.calls[2][1]
    assert upload["repo_id"] == "user/small" and upload["repo_type"] == "model"
    assert not os.path.exists(upload["folder_path"])  # the temporary folder is gone
    assert "uploaded" in capsys.readouterr().out
    # what went up is exactly what --dry-run writes
    publish.push(small_run, "user/small", dry_run=str(tmp_path / "dry"))
    assert upload["files"] == _digests(tmp_path / "dry")


def test_upload_offline_says_how_to_proceed(small_run):
    class OfflineApi(RecordingApi):
        def create_repo(self, **kwargs):
            raise OfflineModeIsEnabled("offline")

    with pytest.raises(publish.PublishError, match="HF_HUB_OFFLINE.*--dry-run"):
        publish.push(small_run, "user/small", api=OfflineApi())


# -- bad inputs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", ["a/b/c", "user/na me", "user/x--y", "user/-name", "user/name.git", "", "us er"])
def test_bad_repo_ids_are_refused_before_any_work(small_run, tmp_path, repo_id, recording_api):
    with pytest.raises(publish.PublishError, match=re.escape(repr(repo_id)) + ".*namespace/name"):
        publish.push(small_run, repo_id)
    assert recording_api.calls == [] and not os.path.exists(tmp_path / "upload")


@pytest.mark.parametrize("repo_id", ["user/small", "small", "Org-1/model_v1.2"])
def test_good_repo_ids_pass(repo_id):
    assert publish.check_repo_id(repo_id) == repo_id


def test_missing_model_folder_is_named_with_what_is_expected(run_copy, tmp_path, capsys):
    shutil.rmtree(run_copy / "model")
    assert cli.main(["push", str(run_copy), "--repo-id", "user/x", "--dry-run", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "has no model/ folder" in error and "config.json" in error and "model.safetensors" in error
    assert not os.path.exists(tmp_path / "out")


def test_missing_pieces_are_named(run_copy, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(publish.PublishError, match="does not exist: expected a `vlp pretrain` output folder"):
        publish.push(str(tmp_path / "nowhere"), "user/x", dry_run=out)
    weights = run_copy / "model" / "model.safetensors"
    torch.save(load_file(str(weights)), run_copy / "model" / "pytorch_model.bin")
    os.remove(weights)
    with pytest.raises(publish.PublishError, match=r"no model.safetensors.*pickled weights \['pytorch_model.bin'\]"):
        publish.push(str(run_copy), "user/x", dry_run=out)
    save_file(torch.load(run_copy / "model" / "pytorch_model.bin"), str(weights))
    os.remove(run_copy / "model" / "tokenizer.json")
    with pytest.raises(publish.PublishError, match="no complete processor: expected.*tokenizer.json"):
        publish.push(str(run_copy), "user/x", dry_run=out)
    os.remove(run_copy / "run.yaml")
    with pytest.raises(publish.PublishError, match="has no run.yaml"):
        publish.push(str(run_copy), "user/x", dry_run=out)
    assert not os.path.exists(out)


def test_dry_run_into_a_non_empty_folder_and_bad_results_are_refused(small_run, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "stale.txt").write_text("x")
    with pytest.raises(publish.PublishError, match="not an empty folder"):
        publish.push(small_run, "user/x", dry_run=str(busy))
    with pytest.raises(publish.PublishError, match="--results .* does not exist"):
        publish.push(small_run, "user/x", dry_run=str(tmp_path / "a"), results_path=str(tmp_path / "none.json"))
    (tmp_path / "empty.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(publish.PublishError, match="no figures found"):
        publish.push(small_run, "user/x", dry_run=str(tmp_path / "b"), results_path=str(tmp_path / "empty.json"))
