"""Finetuning through transformers' Trainer: collators, the three tasks' runs and results, the CLI, the
plain-Trainer example of docs/finetuning.md, and (slow) the issue's comparison on synthetic VQA."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch
from repo_paths import ROOT

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining, VLPForQuestionAnswering
from vlp.processing.finetune_collators import CaptionCollator, CaptionPairs, RetrievalCollator, VQACollator
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.readers.downstream import soft_target_vector, vqa_question_accuracy
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as shapes_world
from vlp.processing.worlds.synthetic_vqa import SyntheticVQAConfig, synthetic_vqa_rows
from vlp.training.config import ConfigError
from vlp.training.finetune import FinetuneSettings, finetune_caption, finetune_retrieval, finetune_vqa
from vlp.training.finetune.common import head_optimizer
from vlp.training.finetune.retrieval import world_rows
from vlp.training.finetune.vqa import question_only_logits, synthetic_vqa_splits

FINETUNING_DOC = os.path.join(ROOT, "docs", "finetuning.md")
EXAMPLE_MARKER = "<!-- finetune-example -->"
FAST = FinetuneSettings(epochs=1, batch_size=16, eval_batch_size=32, learning_rate=1e-3, logging_steps=1000)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the test machines are shared (intra-op threads then contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small untrained VLP checkpoint with its processor, laid out like `vlp pretrain`'s model/ folder."""
    folder = tmp_path_factory.mktemp("checkpoint")
    world = shapes_world.generate_examples(shapes_world.WorldConfig(num_scenes=200, seed=5))
    corpus = [caption for example in world for caption in example.captions]
    corpus += [row["question"] for row in synthetic_vqa_rows(SyntheticVQAConfig(num_pairs=60), render=False)]
    tokenizer = train_wordpiece_tokenizer(corpus, vocab_size=150)
    processor = VLPProcessor(image_processor=VLPImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    torch.manual_seed(0)
    config = VLPConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=32,
    )
    VLPForPreTraining(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def processor(checkpoint):
    return VLPProcessor.from_pretrained(checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# Collators
# ---------------------------------------------------------------------------------------------------------------------


def test_vqa_collator_gives_soft_scores_and_blanks_images(processor):
    rows = synthetic_vqa_rows(SyntheticVQAConfig(num_pairs=2, image_size=32))
    rows[0]["answers"] = ["yes"] * 2 + ["no"] * 8  # annotators disagree: 0.6 for yes, 1 for no
    label2id = {"yes": 0, "no": 1, "2": 2}
    batch = VQACollator(processor, label2id)(rows)
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape == (4, 3, 32, 32)
    expected = np.stack([soft_target_vector(row["answers"], label2id, 3) for row in rows])
    assert np.array_equal(batch["labels"].numpy(), expected)
    assert batch["labels"][0].tolist() == pytest.approx([0.6, 1.0, 0.0])
    assert batch["pixel_values"].abs().sum() > 0
    blank = VQACollator(processor, label2id, blank_image=True)(rows)
    assert not blank["pixel_values"].any() and torch.equal(blank["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match="remove_unused_columns"):
        VQACollator(processor, label2id)([{"question": "is there a star?", "answers": ["no"]}])
    with pytest.raises(ValueError, match="label2id"):
        VQACollator(processor, {"yes": 0, "no": 2})


def test_caption_pairs_retrieval_exclusions_and_caption_labels(processor):
    rows = shapes_world.build_dataset(shapes_world.WorldConfig(num_scenes=6, seed=3, image_size=32))
    pairs = CaptionPairs(rows, max_captions=2)
    assert len(pairs) == 12 and pairs.owners() == [r for r in range(6) for _ in range(2)]
    assert pairs[3]["caption"] == rows[1]["captions"][1] and pairs[3]["image_index"] == 1
    items = [pairs[i] for i in range(len(pairs))]
    exclude = RetrievalCollator(processor).exclude_matrix(items)
    for i, a in enumerate(items):
        for j, b in enumerate(items):
            expected = a["image_index"] == b["image_index"] or shapes_world.caption_holds(b["caption"], a["scene"])
            assert bool(exclude[i, j]) == expected
    batch = RetrievalCollator(processor)(items[:4])
    assert batch["return_loss"] is True and batch["itm_exclude"].shape == (4, 4)
    captions = CaptionCollator(processor)(items[:4])
    padded = captions["attention_mask"] == 0
    assert padded.any() and bool((captions["labels"][padded] == -100).all())
    assert torch.equal(captions["labels"][~padded], captions["input_ids"][~padded])
    assert "token_type_ids" not in captions


# ---------------------------------------------------------------------------------------------------------------------
# The three finetuning runs
# ---------------------------------------------------------------------------------------------------------------------


def test_vqa_finetune_writes_results_that_match_a_recomputation(checkpoint, tmp_path):
    results = finetune_vqa(
        checkpoint,
        str(tmp_path),
        num_train_pairs=40,
        num_eval_pairs=16,
        settings=dataclasses.replace(FAST, head_lr_multiplier=10.0),
    )
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["runs"].keys() == {"pretrained", "question_only", "random_init"}
    for run in written["runs"].values():
        assert 0 <= run["accuracy_low"] <= run["accuracy"] <= run["accuracy_high"] <= 1
        assert run["n_questions"] == 32 and run["n_pairs"] == 16 and 0 <= run["pair_accuracy"] <= 1
        assert set(run["per_question_type"]) <= {"count", "colour", "shape", "exists", "relation", "compare"}
        assert run["train_steps"] == 5
    for baseline in ("question_only", "random_init"):
        gain = written[f"gain_over_{baseline}"]
        assert gain == pytest.approx(written["runs"]["pretrained"]["accuracy"] - written["runs"][baseline]["accuracy"])
        assert written[f"gain_over_{baseline}_low"] <= gain <= written[f"gain_over_{baseline}_high"]
    # Floors on the same questions: the finetuned model shown blank images, and a bag of words on the question.
    assert written["floors"].keys() == {"blank_image", "text_only"}
    for name, floor in written["floors"].items():
        assert floor["n_questions"] == 32 and 0 <= floor["accuracy_low"] <= floor["accuracy"] <= floor["accuracy_high"]
        gain = written[f"gain_over_{name}"]
        assert gain == pytest.approx(written["runs"]["pretrained"]["accuracy"] - floor["accuracy"])
    # the saved model's answers, scored question by question with the official rule, give the same accuracy
    model = VLPForQuestionAnswering.from_pretrained(tmp_path / "model").eval()
    _, eval_rows = synthetic_vqa_splits(40, 16, image_size=32)
    batch = VQACollator(VLPProcessor.from_pretrained(tmp_path / "model"), model.config.label2id)(list(eval_rows))
    with torch.no_grad():
        predicted = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
    scores = [
        vqa_question_accuracy(model.config.id2label[int(p)], row["answers"]) for p, row in zip(predicted, eval_rows)
    ]
    assert results["runs"]["pretrained"]["accuracy"] == pytest.approx(np.mean(scores))


def test_the_question_only_floor_learns_what_the_question_alone_tells():
    """Answers fixed by the question's words: the text-only floor gets them all; answers that the question does not
    tell stay at the majority's share."""
    rows = [
        {"question": f"what colour is the {shape}?", "answers": [colour] * 10}
        for shape, colour in (("circle", "red"), ("square", "blue"), ("star", "green"))
        for _ in range(5)
    ]
    label2id = {"red": 0, "blue": 1, "green": 2}
    logits = question_only_logits(rows, rows, label2id)
    assert logits.argmax(1).tolist() == [label2id[row["answers"][0]] for row in rows]
    flat = [dict(row, question="what is it?") for row in rows]
    assert len(set(question_only_logits(flat, rows, label2id).argmax(1).tolist())) == 1


def test_head_optimizer_scales_the_heads_and_spares_biases_and_norms_from_decay(checkpoint):
    model = VLPForQuestionAnswering.from_pretrained(
        checkpoint, id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1}
    )
    settings = FinetuneSettings(learning_rate=1e-3, head_lr_multiplier=10.0, weight_decay=0.1)
    optimizer = head_optimizer(model, settings)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(groups) == sum(1 for _ in model.parameters())
    for name, parameter in model.named_parameters():
        group = groups[id(parameter)]
        assert group["lr"] == pytest.approx(1e-3 if name.startswith("vlp.") else 1e-2), name
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layernorm" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.1), name
    with pytest.raises(ConfigError, match="head_lr_multiplier"):
        FinetuneSettings(head_lr_multiplier=0)


def test_retrieval_finetune_smoke(checkpoint, tmp_path):
    results = finetune_retrieval(
        checkpoint,
        str(tmp_path),
        num_train_scenes=24,
        num_eval_scenes=12,
        top_k=4,
        image_size=48,
        variants=("pretrained",),
        settings=FAST,
    )
    run = json.loads((tmp_path / "results.json").read_text())["runs"]["pretrained"]
    assert results["n_eval_texts"] == 24 and run["n_images"] == 12
    for direction in ("i2t", "t2i"):
        assert 0 <= run[f"{direction}_r1"] <= run[f"{direction}_r5"] <= run[f"{direction}_r10"] <= 1
    assert run["rsum"] == pytest.approx(sum(run[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert os.path.isfile(tmp_path / "model" / "modeling_vlp_tasks.py")
    saved = VLPProcessor.from_pretrained(tmp_path / "model")
    assert saved.image_processor.size == {"height": 48, "width": 48}  # finetuned at 48 px, saved so


def test_caption_finetune_smoke(checkpoint, tmp_path):
    results = finetune_caption(
        checkpoint,
        str(tmp_path),
        num_train_scenes=24,
        num_eval_scenes=6,
        tokenize=False,
        meteor=False,
        max_new_tokens=8,
        variants=("pretrained", "blank_image"),
        settings=FAST,
    )
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert runs.keys() == {"most_frequent", "pretrained", "blank_image"}
    for run in runs.values():
        assert 0 <= run["bleu_4"] <= 1 and run["cider_d"] >= 0 and run["n_images"] == 6
    assert all(isinstance(c, str) for c in runs["pretrained"]["examples"])
    assert results["runs"]["most_frequent"]["caption"] in {c for row in world_rows(24, 32) for c in row["captions"]}


def test_cli_runs_and_refuses_bad_values(checkpoint, tmp_path):
    from vlp.training.cli import main

    code = main(
        [
            "finetune",
            "vqa",
            checkpoint,
            "--output_dir",
            str(tmp_path),
            "--num_train",
            "10",
            "--num_eval",
            "5",
            "--max_steps",
            "2",
            "--variants",
            "pretrained",
            "--batch_size",
            "8",
        ]
    )
    assert code == 0 and json.loads((tmp_path / "results.json").read_text())["runs"]["pretrained"]["train_steps"] == 2
    assert main(["finetune", "vqa", checkpoint, "--output_dir", str(tmp_path), "--data", "karpathy"]) == 2
    assert main(["finetune", "vqa", checkpoint, "--output_dir", str(tmp_path), "--learning_rate", "-1"]) == 2
    assert main(["finetune", "caption", checkpoint, "--output_dir", str(tmp_path), "--data", "karpathy"]) == 2
    assert main(["finetune", "vqa", str(tmp_path / "nothing"), "--output_dir", str(tmp_path)]) == 2
    assert main(["finetune", "vqa", checkpoint, "--output_dir", str(tmp_path), "--image_size", "36"]) == 2
    assert main(["finetune", "vqa", checkpoint, "--output_dir", str(tmp_path), "--families", "colour,size"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# The plain-Trainer example of docs/finetuning.md
# ---------------------------------------------------------------------------------------------------------------------


def readme_example(path):
    """The first ```python block after the finetune-example marker, or None when the marker is missing."""
    text = open(path, encoding="utf-8").read()
    if EXAMPLE_MARKER not in text:
        return None
    match = re.search(r"```python\n(.*?)```", text[text.index(EXAMPLE_MARKER) :], flags=re.DOTALL)
    assert match, f"{path}: no ```python block after {EXAMPLE_MARKER}"
    return match.group(1)


def run_readme_example(code, checkpoint, workdir):
    """Runs the example with the test checkpoint in place of runs/demo/model, from `workdir`."""
    assert '"runs/demo/model"' in code, "the example should load the `make demo` checkpoint runs/demo/model"
    code = code.replace('"runs/demo/model"', repr(checkpoint))
    namespace = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        exec(compile(code, "docs/finetuning.md (finetune example)", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def test_readme_finetune_example_runs(checkpoint, tmp_path, capsys):
    code = readme_example(FINETUNING_DOC)
    assert code is not None, f"docs/finetuning.md has no {EXAMPLE_MARKER} marker"
    namespace = run_readme_example(code, checkpoint, tmp_path)
    printed = capsys.readouterr().out
    assert "eval_accuracy" in printed and "trainer" in namespace
    assert namespace["trainer"].state.global_step > 0
