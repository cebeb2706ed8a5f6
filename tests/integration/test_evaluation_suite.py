"""`vlp evaluate`: every suite's mechanics on a tiny random model, hand-checkable pieces (pointing, occlusion on a
stand-in model, splits, slopes, derangements), real-benchmark files with missing and broken images, the results.json
schema, the CLI in a subprocess, and (slow) the acceptance figures of a pretrained model against its floors."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import repo_paths
import torch
import yaml
from PIL import Image

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import eval_sets as es
from vlp.processing.worlds import shapes as sw
from vlp.training.config import ConfigError
from vlp.training.evaluation import figures
from vlp.training.evaluation.crossmodal import masked_concept_items, random_patch_masks, run_crossmodal
from vlp.training.evaluation.figures import slope_figure, unpaired_difference
from vlp.training.evaluation.grounding import occlusion_block, occlusion_masks, pointing_hits
from vlp.training.evaluation.loading import load_model, load_world_file, resolve_model_dir, world_from_run_config
from vlp.training.evaluation.matching import GITM_GROUPS_PER_ITEM, run_grouped_matching, run_matching
from vlp.training.evaluation.probes import probe_task, probe_test_mask
from vlp.training.evaluation.results import load_schema, summary_table, validate_json
from vlp.training.evaluation.runner import (
    ImageBank,
    Runner,
    blank_patches,
    derangement,
    match_scores,
    phrase_relevance,
    read_image,
    representations,
)
from vlp.training.evaluation.settings import BLANK, RESULTS_FORMAT, SUITES, Settings
from vlp.training.evaluation.suite import evaluate, run_objectives

FIXTURES = os.path.join(repo_paths.FIXTURES, "evaluation_suite")
WORLD = sw.WorldConfig(num_scenes=200, seed=5, image_size=32, max_objects=3, held_out_pairs=("red circle",))
RUN_CONFIG = {
    "dataset": "shapes",
    "num_scenes": 200,
    "val_scenes": 20,
    "world_seed": 5,
    "max_objects": 3,
    "zipf_exponent": 1.0,
    "noise_rate": 0.0,
    "background_noise": 0.0,
    "held_out_pairs": "red circle",
    "image_size": 32,
    "patch_size": 8,
    "objectives": "mlm,itm,mim",
}
FAST = Settings(n_resamples=100)
N = 8  # items per phenomenon in the mechanics tests


def _tiny_model_and_processor():
    captions = [c for e in sw.generate_examples(WORLD, 0, 200) for c in e.captions]
    tokenizer = train_wordpiece_tokenizer(captions, vocab_size=200)
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
        max_position_embeddings=40,
        pad_token_id=tokenizer.pad_token_id,
    )
    return VLPForPreTraining(config).eval(), processor


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder (run.yaml, model/) holding a tiny randomly initialised model and its processor."""
    run = tmp_path_factory.mktemp("tiny_run")
    model, processor = _tiny_model_and_processor()
    model.save_pretrained(run / "model")
    processor.save_pretrained(run / "model")
    with open(run / "run.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump({"config": RUN_CONFIG, "code_version": "test", "seed": 0}, handle)
    return str(run)


@pytest.fixture(scope="module")
def runner(tiny_run):
    model, processor = load_model(os.path.join(tiny_run, "model"))
    return Runner(model, processor, "cpu", batch_size=16)


@pytest.fixture(scope="module")
def results_all(tiny_run):
    return evaluate(tiny_run, ("all",), None, N, FAST, log=lambda message: None)


# ------------------------------------------------------------------------------------------------------------------
# Every suite on the tiny model: counts, shapes, the schema
# ------------------------------------------------------------------------------------------------------------------


def test_every_suite_runs_with_the_expected_counts(results_all):
    suites = results_all["suites"]
    assert set(suites) == set(SUITES)
    foils = suites["foils"]["phenomena"]
    assert set(foils) == {"all", *es.FOIL_PHENOMENA}
    assert all(foils[p]["n_items"] == N for p in es.FOIL_PHENOMENA) and foils["all"]["n_items"] == 7 * N
    for block in foils.values():
        assert set(block["floors"]) == set(block["differences"]) == {"blank", "mismatched", "text_only"}
        assert set(block["score"]) == {"acc_r", "p_c", "p_f", "acc", "min_pc_pf", "auroc"}
        difference = block["differences"]["blank"]
        score, floor = block["score"]["acc_r"]["value"], block["floors"]["blank"]["acc_r"]["value"]
        assert difference["value"] == pytest.approx(score - floor)
        assert difference["low"] <= difference["value"] <= difference["high"]
    assert suites["winoground"]["phenomena"]["all"]["n_items"] == 2 * N
    assert suites["winoground"]["phenomena"]["all"]["floors"]["blank"]["group_score"]["value"] == 0.0  # ties lose

    tasks = suites["probes"]["tasks"]
    assert set(tasks) == set(es.PROBE_TASKS + es.UNIMODAL_PROBE_TASKS)
    layers = {"0", "1"}  # embeddings and the one block
    for task in es.PROBE_TASKS:
        assert set(tasks[task]["representations"]) == {"cls", "text_mean", "image_mean"}
        block = tasks[task]["representations"]["text_mean"]["1"]
        assert set(tasks[task]["representations"]["cls"]) == layers
        assert block["n_items"] == N // 2 and block["n_train"] == N // 2
        assert set(block["floors"]) == {"mismatched", "blank"}
        assert tasks[task]["headline"]["representation"] == "text_mean" and tasks[task]["headline"]["layer"] == 1
    assert set(tasks["visual_count"]["representations"]) == {"cls", "image_mean"}
    assert set(tasks["word_order"]["representations"]) == {"cls", "text_mean"}
    assert tasks["visual_colours"]["headline"]["floors"] == {}

    crossmodal = suites["crossmodal"]
    assert crossmodal["masked_word"]["all"]["n_items"] + crossmodal["skipped"] == N
    assert crossmodal["mim"]["n_items"] == N
    grounding = suites["grounding"]
    assert grounding["pointing"]["n_items"] + grounding["skipped"] == N
    chance = grounding["pointing"]["floors"]["chance"]["accuracy"]["value"]
    assert 0 < chance < 1
    frequency = suites["frequency"]
    pairs = [p for p in sw.pair_ranking(WORLD.ranking_seed) if p not in WORLD.held_out_pairs]
    assert frequency["n_items"] == len(pairs)  # one item per seen pair at N < 64
    assert sum(bucket["n_items"] for bucket in frequency["buckets"]) == frequency["n_items"]
    assert frequency["held_out"]["n_items"] == N and frequency["held_out_pairs"] == [["red", "circle"]]
    itm = suites["itm"]
    assert set(itm["floors"]) == set(itm["differences"]) == {"blank", "text_only", "chance_majority"}
    assert itm["n_items"] == GITM_GROUPS_PER_ITEM * N and 0 < itm["positives"] < itm["n_items"]
    # The evaluation's foils and ITM pairs are balanced so that the text alone says nothing
    # (tests/unit/test_shortcuts.py)
    assert abs(foils["all"]["floors"]["text_only"]["acc_r"]["value"] - 0.5) < 0.15
    assert results_all["item_counts"]["held_out"] == N


def test_results_record_the_run_and_follow_the_schema(results_all, tiny_run):
    assert results_all["format"] == RESULTS_FORMAT and results_all["config"] == RUN_CONFIG
    assert results_all["model_path"] == os.path.abspath(os.path.join(tiny_run, "model"))
    assert results_all["world_config"]["seed"] == 5 and results_all["world_config"]["held_out_pairs"] == [
        ["red", "circle"]
    ]
    assert results_all["seeds"] == {
        "evaluation": 0,
        "world": 5,
        "eval_world": 5 + es.EVAL_SEED_OFFSET,
        "eval_seed_offset": es.EVAL_SEED_OFFSET,
    }
    assert validate_json(results_all, load_schema()) == []
    json.dumps(results_all, allow_nan=False)  # strict JSON: undefined figures are null, not NaN


def _blocks(tree, path=""):
    """Every comparison block of a results tree, with its path."""
    if isinstance(tree, dict):
        if "score" in tree and "headline" in tree:
            yield path, tree
        for key, value in tree.items():
            yield from _blocks(value, f"{path}.{key}" if path else key)


def test_per_item_values_average_to_their_figures_and_reach_the_study(results_all, tmp_path):
    """Each comparison block keeps its items in item order; their mean is the score figure, so that a study can
    compare two runs item by item. The study reads them under the figure's own name."""
    from vlp.training.studies.runner import run_figures

    blocks = dict(_blocks(results_all["suites"]))
    with_items = {path: block for path, block in blocks.items() if "items" in block}
    for path in (
        "foils.phenomena.all",
        "foils.phenomena.colour",
        "winoground.phenomena.all",
        "probes.tasks.colour.headline",
        "crossmodal.masked_word.all",
        "grounding.pointing",
        "grounding.occlusion",
        "frequency.held_out",
    ):
        assert path in with_items, path
    for path, block in with_items.items():
        for name, values in block["items"].items():
            assert len(values) == block["n_items"], (path, name)
            assert np.mean(values) == pytest.approx(block["score"][name]["value"], abs=1e-6), (path, name)
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluation.json").write_text(json.dumps(results_all))
    figures, items = run_figures(str(run))
    name = "eval.suites.foils.phenomena.colour.score.acc_r"
    assert list(items[name]) == with_items["foils.phenomena.colour"]["items"]["acc_r"]
    assert figures[name] == with_items["foils.phenomena.colour"]["score"]["acc_r"]["value"]


def test_the_validator_rejects_what_the_schema_forbids(results_all):
    schema = load_schema()
    broken = json.loads(json.dumps(results_all))
    del broken["code_version"]
    broken["suites"]["foils"]["phenomena"]["colour"]["score"]["acc_r"]["value"] = "high"
    broken["suites"]["grounding"]["occlusion"]["occlusion"] = "paint"
    broken["suites"]["probes"]["tasks"]["colour"]["headline"]["layer"] = -1
    broken["suites"]["unknown_suite"] = {}
    errors = "\n".join(validate_json(broken, schema))
    for expected in (
        "$: 'code_version' is a required property",
        "$.suites.foils.phenomena.colour.score.acc_r.value: 'high' is not of type",
        "$.suites.grounding.occlusion.occlusion: 'paint' is not one of",
        "$.suites.probes.tasks.colour.headline.layer: -1 is less than the minimum of 0",
        "('unknown_suite' was unexpected)",
    ):
        assert expected in errors


def test_summary_table_lists_each_headline_with_its_floors(results_all):
    table = summary_table(results_all)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["suite", "item", "figure"]
    colour = next(line for line in lines if line.startswith("foils") and " colour " in line)
    value = results_all["suites"]["foils"]["phenomena"]["colour"]["score"]["acc_r"]["value"]
    assert f"{value:.3f}" in colour and "blank" in colour
    assert any("mismatched" in line for line in lines) and any(line.startswith("grounding") for line in lines)


# ------------------------------------------------------------------------------------------------------------------
# Batched model calls against single, unbatched ones
# ------------------------------------------------------------------------------------------------------------------


def _bank(n=6):
    return ImageBank(scenes=[sw.sample_scene(WORLD, i) for i in range(n)], image_size=32)


def test_match_scores_equal_the_models_own_itm_probability(runner):
    bank = _bank()
    texts = [
        "there is a red circle",
        "the small blue star is left of the green heart",
        "a red square",
        "there are two stars",
        "there is no yellow heart",
        "the cross is white",
    ]
    scores = match_scores(runner, bank, np.arange(6), texts)
    for k in (0, 1, 5):  # one at a time, unpadded, through VLPForPreTraining.forward without labels
        inputs = runner.processor(images=bank.get([k]), text=[texts[k]], return_tensors="pt")
        with torch.no_grad():
            logits = runner.model(**inputs).itm_logits
        assert scores[k] == pytest.approx(float(logits.softmax(-1)[0, 1]), abs=1e-5)
    blank = match_scores(runner, bank, np.full(6, BLANK), texts)
    alone = runner.processor(images=[bank.blank()], text=[texts[2]], return_tensors="pt")
    with torch.no_grad():
        assert blank[2] == pytest.approx(float(runner.model(**alone).itm_logits.softmax(-1)[0, 1]), abs=1e-5)


def test_representations_ignore_padding_and_have_one_row_per_layer(runner):
    bank = _bank()
    texts = ["a red circle", "the small blue star is left of the green heart"]
    joint = representations(runner, bank, [0, 1], texts)
    assert {k: v.shape for k, v in joint.items()} == {k: (2, 2, 32) for k in ("cls", "text_mean", "image_mean")}
    inputs = runner.processor(images=bank.get([0]), text=[texts[0]], return_tensors="pt")
    with torch.no_grad():
        states = runner.model.vlp(**inputs, output_hidden_states=True).hidden_states
    length = inputs["input_ids"].shape[1]
    for layer in range(2):  # item 0 was padded in the batch; alone it is not
        np.testing.assert_allclose(joint["text_mean"][0, layer], states[layer][0, :length].mean(0), atol=1e-5)
        np.testing.assert_allclose(joint["image_mean"][0, layer], states[layer][0, length + 1 :].mean(0), atol=1e-5)
        np.testing.assert_allclose(joint["cls"][0, layer], states[layer][0, 0], atol=1e-5)
    assert set(representations(runner, bank, [0, 1], None)) == {"cls", "image_mean"}
    assert set(representations(runner, None, None, texts)) == {"cls", "text_mean"}


def test_phrase_relevance_is_the_attention_patches_receive_from_the_phrase_tokens(runner):
    bank = _bank()
    texts = ["the small blue star is left of the green heart", "there is a red circle"]
    spans = [(1, 4), (3, 5)]
    relevance = phrase_relevance(runner, bank, [0, 1], texts, spans)
    assert relevance.shape == (2, 16)
    for k in range(2):
        words = texts[k].split()
        encoding = runner.processor.tokenizer([words], is_split_into_words=True, return_tensors="pt")
        inputs = runner.processor(images=bank.get([k]), text=[texts[k]], return_tensors="pt")
        with torch.no_grad():
            maps = runner.model.vlp(**inputs, output_attentions=True, attention_layers=[-1]).attentions[-1]
        rows = [p for p, w in enumerate(encoding.word_ids(0)) if w is not None and spans[k][0] <= w < spans[k][1]]
        expected = maps[0].mean(0)[rows].mean(0)[encoding["input_ids"].shape[1] + 1 :]
        np.testing.assert_allclose(relevance[k], expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Hand-checkable pieces
# ------------------------------------------------------------------------------------------------------------------


def test_pointing_hits_on_a_constructed_relevance():
    relevance = np.array(
        [
            [0.1, 0.7, 0.2, 0.0],  # top patch 1, in {1, 2}: hit
            [0.5, 0.1, 0.4, 0.0],  # top patch 0, not in {2, 3}: miss
            [0.3, 0.3, 0.1, 0.3],  # tie between 0, 1, 3: the first (0) counts, in {0}: hit
            [np.nan] * 4,
        ]
    )  # phrase truncated away: miss
    hits = pointing_hits(relevance, [(1, 2), (2, 3), (0,), (0, 1, 2, 3)])
    assert hits.tolist() == [True, False, True, False]


def test_occlusion_masks_hide_as_many_other_patches_and_are_seeded():
    patches = [(0, 1, 4, 5), (15,), tuple(range(9))]  # the last covers more than half of the 16 patches
    objects, randoms, usable = occlusion_masks(patches, 16, np.random.default_rng(3))
    assert usable.tolist() == [True, True, False]
    assert objects[0].nonzero()[0].tolist() == [0, 1, 4, 5] and randoms[0].sum() == 4 and randoms[1].sum() == 1
    assert not (objects & randoms).any() and not randoms[2].any()
    again = occlusion_masks(patches, 16, np.random.default_rng(3))[1]
    assert (again == randoms).all()


class PatchScorer(torch.nn.Module):
    """A stand-in model whose match logit depends only on the brightness of patches `watched`: 10 * (mean red of
    those patches) - 5. A patch hidden by the mask embedding counts as 0."""

    def __init__(self, watched, patch_size=8, image_size=32):
        super().__init__()
        self.watched = list(watched)
        self.config = types.SimpleNamespace(patch_size=patch_size, image_size=image_size, max_position_embeddings=40)
        self.vlp = self._encode
        self.itm_head = lambda pooled: torch.stack([torch.zeros_like(pooled[:, 0]), pooled[:, 0]], dim=1)

    def _encode(self, pixel_values=None, bool_masked_pos=None, **ignored):
        p = self.config.patch_size
        red = pixel_values[:, 0].unfold(1, p, p).unfold(2, p, p).mean(dim=(-1, -2)).flatten(1)  # (B, P)
        if bool_masked_pos is not None:
            red = torch.where(bool_masked_pos, torch.zeros_like(red), red)
        return types.SimpleNamespace(pooler_output=(10 * red[:, self.watched].mean(1) - 5)[:, None])


class ArrayBank:
    def __init__(self, images):
        self.images = images

    def get(self, ids):
        return [self.images[i] for i in ids]


def test_occlusion_on_a_model_that_looks_only_at_the_objects_patches(runner):
    watched = [5, 6, 9, 10]  # the "object": the four centre patches of a 4 x 4 grid
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8:24, 8:24, 0] = 255  # the object is bright red: processed red = +1 there, -1 elsewhere
    fake = Runner(PatchScorer(watched), runner.processor, "cpu", batch_size=4)
    bank = ArrayBank([image] * 3)
    objects, randoms, usable = occlusion_masks([watched] * 3, 16, np.random.default_rng(0))
    assert usable.all()
    texts = ["there is a red square"] * 3
    base = match_scores(fake, bank, [0, 1, 2], texts)
    hidden = match_scores(fake, bank, [0, 1, 2], texts, objects)
    other = match_scores(fake, bank, [0, 1, 2], texts, randoms)

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    np.testing.assert_allclose(base, sigmoid(10 * 1.0 - 5), rtol=1e-5)  # the watched patches are all red (+1)
    np.testing.assert_allclose(hidden, sigmoid(-5.0), rtol=1e-5)  # hidden by the mask embedding: 0
    np.testing.assert_allclose(other, base, rtol=1e-6)  # other patches do not matter to this model
    block = occlusion_block(base, hidden, other, FAST, "mask")
    drop = sigmoid(5.0) - sigmoid(-5.0)
    assert block["score"]["object_drop"]["value"] == pytest.approx(drop)
    assert block["floors"]["random_patches"]["object_drop"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert block["differences"]["random_patches"]["value"] == pytest.approx(drop)
    assert block["score"]["object_drop_larger"]["value"] == 1.0
    # Blanking pixels paints the patches background grey: processed red (128 / 255 - 0.5) / 0.5.
    painted = match_scores(fake, bank, [0, 1, 2], texts, objects, occlusion="blank")
    np.testing.assert_allclose(painted, sigmoid(10 * (128 / 255 - 0.5) / 0.5 - 5), rtol=1e-4)


def test_blank_patches_paint_exactly_the_masked_patches():
    pixels = torch.ones(1, 3, 16, 16)
    mask = torch.tensor([[False, True, False, False]])  # 2 x 2 grid of 8 px patches: the top-right one
    out = blank_patches(pixels, mask, 8, torch.tensor([0.0, -1.0, 2.0]))
    assert (out[0, :, :8, 8:] == torch.tensor([0.0, -1.0, 2.0]).view(3, 1, 1)).all()
    assert (out[0, :, 8:, :] == 1).all() and (out[0, :, :8, :8] == 1).all()


def test_derangement_moves_every_item():
    for n in (2, 3, 10, 101):
        perm = derangement(n, np.random.default_rng(n))
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == np.arange(n)).any()
    with pytest.raises(ValueError, match="at least two"):
        derangement(1, np.random.default_rng(0))


def test_probe_split_is_half_and_balanced_for_alternating_labels():
    assert probe_test_mask(8).tolist() == [False, False, True, True, False, False, True, True]
    labels = np.arange(40) % 2
    test = probe_test_mask(40)
    assert test.sum() == 20 and labels[test].mean() == 0.5 and labels[~test].mean() == 0.5


def test_probe_task_on_separable_features_and_on_a_single_training_class():
    labels = np.asarray(["red", "blue"] * 20)
    rng = np.random.default_rng(0)
    signal = np.where(labels == "red", 3.0, -3.0)[:, None, None] + 0.1 * rng.normal(size=(40, 2, 4))
    noise = rng.normal(size=(40, 2, 4))  # the control: nothing about the label
    task = probe_task({"cls": signal}, labels, {"mismatched": {"cls": noise}}, "cls", FAST)
    block = task["headline"]
    assert (block["representation"], block["layer"], block["n_items"], block["n_train"]) == ("cls", 1, 20, 20)
    assert block["score"]["accuracy"]["value"] == 1.0 and block["score"]["majority_baseline"]["value"] == 0.5
    gap = block["differences"]["mismatched"]
    control = block["floors"]["mismatched"]["accuracy"]["value"]
    assert gap["value"] == pytest.approx(1.0 - control) and gap["low"] > 0
    assert set(task["representations"]["cls"]) == {"0", "1"}
    one_class = np.asarray(["a", "a", "b", "b"] * 2)  # the training items (0, 1, 4, 5) are all "a"
    block = probe_task({"cls": signal[:8]}, one_class, {}, "cls", FAST)["headline"]
    assert block["score"]["accuracy"]["value"] is None and "one class" in block["note"]


def test_slope_and_differences_match_direct_computations():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, 200)
    y = (rng.random(200) < 0.2 + 0.2 * x).astype(float)
    fig = slope_figure(x, y, FAST)
    assert fig["value"] == pytest.approx(np.polyfit(x, y, 1)[0])
    assert fig["low"] < fig["value"] < fig["high"]
    assert slope_figure(np.ones(5), y[:5], FAST)["value"] is None  # x does not vary: undefined
    a, b = rng.random(50), rng.random(80) + 0.3
    unpaired = unpaired_difference(a, b, FAST, "x")
    assert unpaired["value"] == pytest.approx(b.mean() - a.mean()) and unpaired["low"] > 0
    paired = figures.difference(a, a + 0.25, FAST, "x")
    assert paired["value"] == pytest.approx(0.25) and paired["low"] == pytest.approx(0.25)


def test_masked_concept_words_come_from_the_phrase_and_cycle_over_candidates(runner):
    scene = sw.Scene(
        (sw.ShapeObject("circle", "red", "small", 0.3, 0.3), sw.ShapeObject("star", "blue", "large", 0.7, 0.7))
    )

    def item(caption, span, index):
        return es.GroundingItem(
            scene,
            caption,
            " ".join(caption.split()[span[0] : span[1]]),
            span,
            0,
            (0.0, 0.0, 1.0, 1.0),
            32,
            8,
            (0,),
            index,
        )

    items = [
        item("the small red circle is left of the blue star", (0, 4), 0),  # small, red, circle
        item("the small red circle is left of the blue star", (0, 4), 1),
        item("the red circle is above the red star", (0, 3), 2),  # "red" twice: only circle
        item("the red circle", (0, 1), 3),
    ]  # "the" alone: no candidate
    chosen, skipped = masked_concept_items(items, runner.processor.tokenizer)
    assert chosen == [(0, 1, "size"), (1, 2, "colour"), (2, 2, "shape")] and skipped == 1


def test_random_patch_masks_hide_the_share_in_every_row():
    masks = random_patch_masks(50, 16, 0.4, np.random.default_rng(0))
    assert (masks.sum(axis=1) == 6).all() and masks.any(axis=0).all()


# ------------------------------------------------------------------------------------------------------------------
# Where the model and the world come from; argument errors
# ------------------------------------------------------------------------------------------------------------------


def test_mim_is_skipped_for_a_model_not_pretrained_with_it(runner):
    sets = es.build_eval_sets(WORLD, {"grounding": 3}, image_size=32, patch_size=8)
    skipped = run_crossmodal(runner, sets, FAST, objectives=["mlm", "itm"])["mim"]
    assert skipped == {"skipped": "the model was not pretrained with MIM (objectives mlm,itm)"}
    assert run_objectives({"config": {"objectives": "mlm, itm:0.5,mim"}}) == ["mlm", "itm", "mim"]
    assert run_objectives(None) is None


def test_model_dir_and_world_resolution(tiny_run, tmp_path):
    assert resolve_model_dir(tiny_run) == (os.path.join(tiny_run, "model"), tiny_run)
    model_path = os.path.join(tiny_run, "model")
    assert resolve_model_dir(model_path) == (model_path, tiny_run)  # run.yaml beside the model folder
    with pytest.raises(ConfigError, match="MODEL_DIR"):
        resolve_model_dir(str(tmp_path))
    world = world_from_run_config(RUN_CONFIG, "run.yaml")
    assert world.config == WORLD and world.training_scenes == (0, 200)
    (tmp_path / "world.json").write_text(json.dumps(WORLD.to_dict()))
    assert load_world_file(str(tmp_path / "world.json")).config == WORLD
    (tmp_path / "bad.yaml").write_text("colours: 3\nsides: 4\n")
    with pytest.raises(ConfigError, match="--world-config"):
        load_world_file(str(tmp_path / "bad.yaml"))
    counts = world.pair_counts()
    assert sum(counts.values()) == sum(len(s.objects) for s in sw.generate_scenes(WORLD))
    assert counts[("red", "circle")] == 0  # held out of the training world


def test_argument_errors_name_the_argument(tiny_run, tmp_path, capsys):
    from vlp.training.cli import main

    assert main(["evaluate", tiny_run, "--suite", "foilz", "--output", str(tmp_path / "r.json")]) == 2
    assert "--suite='foilz'" in capsys.readouterr().err
    assert main(["evaluate", tiny_run, "--benchmark", "valse", "--output", str(tmp_path / "r.json")]) == 2
    assert "--benchmark-file" in capsys.readouterr().err
    model_only = tmp_path / "alone"
    os.symlink(os.path.join(tiny_run, "model"), model_only)
    with pytest.raises(ConfigError, match="--world-config"):
        evaluate(str(model_only), ("foils",), None, N, FAST, log=lambda m: None)
    with pytest.raises(ConfigError, match="--items-per-phenomenon"):
        evaluate(tiny_run, ("foils",), None, 2, FAST)
    with pytest.raises(ConfigError, match="--occlusion"):
        Settings(occlusion="paint")
    with pytest.raises(ConfigError, match="--image-dir"):
        evaluate(
            tiny_run,
            ("all",),
            None,
            N,
            FAST,
            benchmark="valse",
            benchmark_file=os.path.join(FIXTURES, "valse", "existence.json"),
            image_dir=str(tmp_path / "no"),
        )
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"x": {"image_file": "a.jpg", "caption": "a cat"}}))
    with pytest.raises(ConfigError, match="record 'x': missing field 'foil'"):
        evaluate(
            tiny_run, ("all",), None, N, FAST, benchmark="valse", benchmark_file=str(broken), image_dir=str(tmp_path)
        )


def test_saved_eval_sets_are_evaluated_as_they_are(tiny_run, tmp_path):
    sets = es.build_eval_sets(WORLD, {"winoground": 3}, image_size=32, patch_size=8)
    es.save_eval_sets(sets, tmp_path / "sets.json")
    results = evaluate(
        tiny_run, ("winoground",), None, N, FAST, eval_sets_file=str(tmp_path / "sets.json"), log=lambda m: None
    )
    assert results["suites"]["winoground"]["phenomena"]["all"]["n_items"] == 6 and results["item_counts"]["foils"] == 0
    with pytest.raises(ConfigError, match="holds no 'grounding' items"):
        evaluate(tiny_run, ("grounding",), None, N, FAST, eval_sets_file=str(tmp_path / "sets.json"))
    wrong = es.build_eval_sets(WORLD, {"grounding": 2}, image_size=64, patch_size=8)
    es.save_eval_sets(wrong, tmp_path / "wrong.json")
    with pytest.raises(ConfigError, match="64 px images"):
        evaluate(tiny_run, ("grounding",), None, N, FAST, eval_sets_file=str(tmp_path / "wrong.json"))


# ------------------------------------------------------------------------------------------------------------------
# Real benchmarks through the same code
# ------------------------------------------------------------------------------------------------------------------


def _image(path, colour=(200, 30, 30), size=(40, 30)):
    Image.new("RGB", size, colour).save(path)


def test_valse_with_missing_and_unreadable_images(tiny_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k in (1, 2, 6):
        _image(images / f"v7w_{8100000 + k}.jpg", (40 * k, 100, 50))
    (images / "v7w_8100005.jpg").write_bytes(b"not a jpeg at all")  # 8100004's image is missing
    out = tmp_path / "valse.json"
    results = evaluate(
        tiny_run,
        ("all",),
        str(out),
        N,
        FAST,
        benchmark="valse",
        benchmark_file=os.path.join(FIXTURES, "valse", "existence.json"),
        image_dir=str(images),
        log=lambda m: None,
    )
    bench = results["benchmark"]
    assert (bench["n_records"], bench["n_items"], bench["n_skipped"]) == (6, 3, 3)
    assert bench["skipped_by_reason"] == {"failed validation": 1, "missing image": 1, "unreadable image": 1}
    assert {s["id"] for s in bench["skipped"]} == {
        "existence_visual7w_8100003",
        "existence_visual7w_8100004",
        "existence_visual7w_8100005",
    }
    phenomena = results["suites"]["foils"]["phenomena"]
    assert set(phenomena) == {"all", "existence"} and phenomena["all"]["n_items"] == 3
    assert set(results["suites"]) == {"foils"} and results["world_config"] is None
    assert validate_json(json.loads(out.read_text()), load_schema()) == []


def test_winoground_probing_sugarcrepe_and_aro_files(tiny_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(4):
        for side in (0, 1):
            if (k, side) != (3, 1):  # item 3 misses one image
                _image(images / f"ex_{k}_img_{side}.png", (60 * k, 90 * side, 20))
    for k in range(9):
        if k != 8:
            _image(images / f"probe_{k}.jpg", ((255, 0, 0), (0, 0, 255))[k % 2])
    for k in (1, 2, 3):
        _image(images / f"00000010000{k}.jpg", (30 * k, 30, 30))
        _image(images / f"910000{k}.jpg", (30, 30 * k, 30), size=(40, 40))

    def quiet(message):
        return None

    wino = evaluate(
        tiny_run,
        ("all",),
        None,
        N,
        FAST,
        benchmark="winoground",
        benchmark_file=os.path.join(FIXTURES, "winoground", "examples.jsonl"),
        image_dir=str(images),
        log=quiet,
    )
    assert wino["benchmark"]["n_items"] == 3 and wino["benchmark"]["skipped_by_reason"] == {"missing image": 1}
    assert set(wino["suites"]["winoground"]["phenomena"]) == {"all", "Object", "Relation"}
    probing = evaluate(
        tiny_run,
        ("probes",),
        None,
        N,
        FAST,
        benchmark="probing",
        benchmark_file=os.path.join(FIXTURES, "vlm-probing", "flickr_3000_colors.csv"),
        image_dir=str(images),
        log=quiet,
    )
    assert probing["benchmark"]["n_items"] == 8 and probing["benchmark"]["n_skipped"] == 1
    colour = probing["suites"]["probes"]["tasks"]["color"]
    assert colour["headline"]["n_items"] == 4 and colour["headline"]["n_train"] == 4
    assert set(colour["headline"]["floors"]) == {"mismatched", "blank"}
    for name, file in (("sugarcrepe", "sugarcrepe/swap_att.json"), ("aro", "aro/visual_genome_relation.json")):
        result = evaluate(
            tiny_run,
            ("all",),
            None,
            N,
            FAST,
            benchmark=name,
            benchmark_file=os.path.join(FIXTURES, file),
            image_dir=str(images),
            log=quiet,
        )
        assert result["benchmark"]["n_items"] == 3 and result["suites"]["foils"]["phenomena"]["all"]["n_items"] == 3
        assert validate_json(result, load_schema()) == []
    with pytest.raises(ConfigError, match="--suite"):
        evaluate(
            tiny_run,
            ("grounding",),
            None,
            N,
            FAST,
            benchmark="aro",
            benchmark_file=os.path.join(FIXTURES, "aro/visual_genome_relation.json"),
            image_dir=str(images),
        )


def test_aro_images_are_cropped_to_their_box(tmp_path):
    picture = np.zeros((40, 40, 3), dtype=np.uint8)
    picture[8:20, 4:20] = (0, 255, 0)  # the box (x 4, y 8, w 16, h 12) is green, the rest black
    Image.fromarray(picture).save(tmp_path / "box.png")
    crop = read_image(str(tmp_path / "box.png"), (4, 8, 16, 12))
    assert crop.shape == (12, 16, 3) and (crop == (0, 255, 0)).all()


# ------------------------------------------------------------------------------------------------------------------
# The command line, end to end
# ------------------------------------------------------------------------------------------------------------------


def test_cli_writes_valid_results_and_prints_the_summary(tiny_run, tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # The grounding suite alone: it needs no `evaluate` metric module, so the process starts quickly.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlp.training.cli",
            "evaluate",
            tiny_run,
            "--suite",
            "grounding",
            "--items-per-phenomenon",
            "6",
            "--n-resamples",
            "50",
            "--occlusion",
            "blank",
            "--output",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert validate_json(results, load_schema()) == []
    assert set(results["suites"]) == {"grounding"} and results["settings"]["items_per_phenomenon"] == 6
    grounding = results["suites"]["grounding"]
    assert grounding["pointing"]["n_items"] + grounding["skipped"] == 6
    assert grounding["occlusion"]["occlusion"] == "blank"
    assert results["item_counts"]["grounding"] == 6 and results["item_counts"]["foils"] == 0
    assert "score - floor [95% CI]" in done.stdout and "pointing" in done.stdout and f"wrote {out}" in done.stdout


# ------------------------------------------------------------------------------------------------------------------
# Grouped matching (the gitm suite)
# ------------------------------------------------------------------------------------------------------------------


def _gitm_runner():
    _, processor = _tiny_model_and_processor()
    torch.manual_seed(0)
    config = VLPConfig(
        vocab_size=len(processor.tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=64,
        pad_token_id=processor.tokenizer.pad_token_id,
        num_text_segments=4,
    )
    return Runner(VLPForPreTraining(config).eval(), processor, "cpu", batch_size=16)


GRID = {
    "gitm_rows": 1,
    "gitm_cols": 2,
    "gitm_mode": "resize",
    "gitm_own_probability": 0.5,
    "gitm_distractors": "mixed",
    "gitm_max_length": 48,
}


def test_grouped_matching_suite_figures_are_consistent():
    runner = _gitm_runner()
    result = run_grouped_matching(runner, WORLD, 40, GRID, FAST)
    kinds = result["segments_per_kind"]
    assert result["n_groups"] == 40 and sum(kinds.values()) == result["n_items"] > 40  # two segments per group
    score = result["score"]
    weighted = sum(score[f"accuracy_{k}"]["value"] * n for k, n in kinds.items() if n) / result["n_items"]
    assert score["accuracy"]["value"] == pytest.approx(weighted)
    assert np.mean(result["items"]["accuracy"]) == pytest.approx(score["accuracy"]["value"])
    assert result["floors"]["chance_uniform"]["accuracy"]["value"] == pytest.approx(1 / 3)
    assert 1 / 3 <= result["floors"]["chance_majority"]["accuracy"]["value"] <= 1
    assert (
        set(result["floors"])
        == set(result["differences"])
        == {"chance_uniform", "chance_majority", "blank_canvas", "text_only"}
    )
    # A text-only answer is right for a distractor it calls 'none', and 1 / cells of the time for a caption.
    text_only = result["floors"]["text_only"]["accuracy"]["value"]
    assert 0 < text_only <= result["floors"]["chance_majority"]["accuracy"]["value"] + 0.1
    hard_minus_easy = result["hard_minus_easy"]
    assert hard_minus_easy["value"] == pytest.approx(score["accuracy_hard"]["value"] - score["accuracy_easy"]["value"])
    # The segments of one group are not independent: intervals resample whole groups.
    assert {d["resampled"] for d in (hard_minus_easy, *result["differences"].values())} == {"groups"}
    for figure in score.values():
        assert figure["low"] <= figure["value"] <= figure["high"]
    schema = load_schema()
    assert validate_json({"gitm": result}, schema["properties"]["suites"], schema) == []
    assert validate_json({"gitm": {"n_items": 3}}, schema["properties"]["suites"], schema) != []


def test_a_head_that_always_says_none_scores_the_share_of_none_targets():
    runner = _gitm_runner()
    with torch.no_grad():
        runner.model.gitm_none_head.bias.fill_(1e4)
    result = run_grouped_matching(runner, WORLD, 40, GRID, FAST)
    score = result["score"]
    assert score["accuracy_own"]["value"] == 0.0
    assert score["accuracy_easy"]["value"] == score["accuracy_hard"]["value"] == 1.0
    none_share = (result["segments_per_kind"]["easy"] + result["segments_per_kind"]["hard"]) / result["n_items"]
    assert score["accuracy"]["value"] == pytest.approx(none_share)


def test_the_blank_canvas_floor_is_the_model_on_a_background_grey_canvas():
    """A head that reads only the canvas (the 'none' logit set by its mean pixel) says 'none' for every segment on
    the grey canvas; its blank-canvas floor is then the share of 'none' targets."""
    runner = _gitm_runner()
    grey = runner.background_pixel.view(1, -1, 1, 1)
    with torch.no_grad():
        runner.model.gitm_none_head.bias.fill_(0.0)
    real = run_grouped_matching(runner, WORLD, 40, GRID, FAST)

    original = runner.model.forward

    def grey_says_none(*args, **kwargs):
        out = original(*args, **kwargs)
        on_grey = (kwargs["pixel_values"] - grey).abs().amax(dim=(1, 2, 3)) < 1e-6
        out.gitm_logits[on_grey, :, -1] = 1e4
        return out

    runner.model.forward = grey_says_none
    result = run_grouped_matching(runner, WORLD, 40, GRID, FAST)
    kinds = result["segments_per_kind"]
    none_share = (kinds["easy"] + kinds["hard"]) / result["n_items"]
    assert result["floors"]["blank_canvas"]["accuracy"]["value"] == pytest.approx(none_share)
    assert result["score"]["accuracy"]["value"] == pytest.approx(real["score"]["accuracy"]["value"])


def test_the_itm_suite_scores_matching_against_a_blank_image_and_the_text_alone(runner):
    result = run_matching(runner, WORLD, 60, FAST)
    assert result["n_items"] == 60 and result["headline"] == "accuracy"
    labels_share = result["positives"] / result["n_items"]
    majority = result["floors"]["chance_majority"]["accuracy"]["value"]
    assert majority == pytest.approx(labels_share) or majority == pytest.approx(1 - labels_share)
    assert np.mean(result["items"]["accuracy"]) == pytest.approx(result["score"]["accuracy"]["value"])
    for name, difference in result["differences"].items():
        assert difference["value"] == pytest.approx(
            result["score"]["accuracy"]["value"] - result["floors"][name]["accuracy"]["value"]
        )
    schema = load_schema()
    assert validate_json({"itm": result}, schema["properties"]["suites"], schema) == []
    assert "skipped" in run_matching(runner, WORLD, 8, FAST, objectives=["mlm"])


def test_grouped_matching_is_skipped_without_a_trained_head(runner):
    assert "skipped" in run_grouped_matching(runner, WORLD, 8, GRID, FAST, objectives=["mlm", "itm"])
    assert "num_text_segments" in run_grouped_matching(runner, WORLD, 8, GRID, FAST)["skipped"]
