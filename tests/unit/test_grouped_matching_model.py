"""Grouped matching inside the model and the loop: the head's loss against an independent computation on a real
collated batch (both canvas modes), refusals, and the validation figures."""

import pytest
import torch
import torch.nn.functional as F

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
from vlp.processing.grouping import GroupConfig, GroupedMatchingDataset
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as sw
from vlp.training.objectives import objective_counts, objective_inputs
from vlp.training.objectives.gitm import validation_figures
from vlp.training.statistics import newcombe_difference


@pytest.fixture(scope="module")
def world():
    return sw.build_dataset(sw.WorldConfig(num_scenes=32, seed=5, image_size=32, max_objects=3))


@pytest.fixture(scope="module")
def tokenizer(world):
    return train_wordpiece_tokenizer([c for cs in world["captions"] for c in cs], vocab_size=200)


def grouped_batch(world, tokenizer, mode):
    dataset = GroupedMatchingDataset(
        world,
        tokenizer=tokenizer,
        image_processor=VLPImageProcessor(size=32),
        config=GroupConfig(2, 2, distractors="mixed"),
        mode=mode,
        patch_size=8,
        max_length=64,
        seed=1,
    )
    return {"gitm": dataset.collate_fn([dataset[i] for i in range(6)])}


def model_for(tokenizer, segments=4):
    torch.manual_seed(0)
    return VLPForPreTraining(
        VLPConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            max_position_embeddings=64,
            num_text_segments=segments,
        )
    ).eval()


@pytest.mark.parametrize("mode", ["resize", "full"])
def test_gitm_loss_equals_an_independent_computation(world, tokenizer, mode):
    batch = grouped_batch(world, tokenizer, mode)
    model = model_for(tokenizer)
    inputs = objective_inputs("gitm", batch, {})
    out = model(**inputs)
    assert out.itm_logits is None and out.gitm_logits.shape[-1] == 5
    # By hand: mean of each segment's token states and of each cell's patch states, projected, scaled dot product,
    # the 'none' score last; cross-entropy over cells + none, mean over segments with a target.
    hidden = model.vlp(
        **{
            k: inputs[k]
            for k in ("input_ids", "attention_mask", "token_type_ids", "segment_ids", "pixel_values", "pixel_mask")
        }
    )
    text = hidden.last_hidden_state[:, : hidden.text_length]
    patches = hidden.last_hidden_state[:, hidden.text_length + 1 :]
    targets = inputs["gitm_segment_targets"]
    losses = []
    for b in range(len(targets)):
        for m in range(targets.shape[1]):
            if targets[b, m] == -100:
                continue
            segment = text[b][inputs["segment_ids"][b] == m + 1].mean(0)
            cells = torch.stack([patches[b][inputs["gitm_cell_ids"][b] == k].mean(0) for k in range(4)])
            scores = model.gitm_cell_projection(cells) @ model.gitm_text_projection(segment) / 32**0.5
            logits = torch.cat([scores, model.gitm_none_head(segment)])
            target = 4 if targets[b, m] == -1 else int(targets[b, m])
            losses.append(F.cross_entropy(logits[None], torch.tensor([target])))
    torch.testing.assert_close(out.gitm_loss, torch.stack(losses).mean(), atol=1e-5, rtol=1e-5)
    count = objective_counts([batch], {"gitm": 1.0}, "cpu")
    assert int(count[0]) == len(losses)


def test_gitm_needs_segments_in_the_model(world, tokenizer):
    batch = grouped_batch(world, tokenizer, "resize")
    with pytest.raises(ValueError, match="num_text_segments"):
        model_for(tokenizer, segments=0)(**objective_inputs("gitm", batch, {}))


def test_validation_figures_from_counts():
    # 10 segments, 7 right; none: 4 predicted, 5 actual, 3 right; per kind own 4/5, easy 2/3, hard 1/2; 3 groups,
    # 1 exact; targets: cell 0 twice, cell 1 three times, none five times (a 1 x 2 grid)
    sums = [10, 7, 4, 5, 3, 3, 1, 5, 4, 3, 2, 2, 1, 2, 3, 5]
    figures = validation_figures(sums)
    assert figures["gitm_chance_uniform"] == pytest.approx(1 / 3) and figures["gitm_chance_majority"] == 0.5
    assert figures["gitm_hard_minus_easy"] == pytest.approx(0.5 - 2 / 3)
    assert figures["gitm_hard_minus_easy_ci_low"] < 0.5 - 2 / 3 < figures["gitm_hard_minus_easy_ci_high"]
    assert figures["gitm_accuracy"] == 0.7 and figures["gitm_accuracy_n"] == 10
    assert figures["gitm_none_precision"] == 0.75 and figures["gitm_none_recall"] == 0.6
    assert figures["gitm_accuracy_own"] == 0.8 and figures["gitm_accuracy_hard"] == 0.5
    assert abs(figures["gitm_exact_match"] - 1 / 3) < 1e-12
    assert figures["gitm_accuracy_ci_low"] < 0.7 < figures["gitm_accuracy_ci_high"]


def test_newcombe_interval_matches_the_published_example():
    """Newcombe (1998), Stat. Med. 17:873, example (a): 56/70 - 48/80 = 0.2000, hybrid score interval
    0.0524 to 0.3339 (method 10)."""
    difference, low, high = newcombe_difference(56, 70, 48, 80)
    assert difference == pytest.approx(0.2)
    assert low == pytest.approx(0.0524, abs=5e-5) and high == pytest.approx(0.3339, abs=5e-5)
    assert all(v != v for v in newcombe_difference(1, 2, 0, 0))  # nan without items on one side
