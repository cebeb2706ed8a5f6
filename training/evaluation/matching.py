"""Image-text matching (ITM) and grouped matching (GITM) on fresh items, each with its text-only floor."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ...processing.worlds import shapes as sw
from ..objectives.gitm import SEGMENT_KINDS
from .figures import cluster_difference, cluster_mean_figure, comparison, difference, mean_figure
from .foils import text_floor_world
from .runner import ImageBank, Runner, match_scores, row_batches
from .settings import BLANK, Settings

GITM_GROUPS_PER_ITEM = 4  # groups of the gitm suite per --items-per-phenomenon
GITM_KEYS = ("gitm_rows", "gitm_cols", "gitm_mode", "gitm_own_probability", "gitm_distractors", "gitm_max_length")


def gitm_settings(config: Mapping | None) -> dict:
    """The grid a run's grouped-matching head was trained on (its config's gitm_* keys, defaults otherwise)."""
    from ..config import DataArguments

    defaults = DataArguments()
    return {key: (config or {}).get(key, getattr(defaults, key)) for key in GITM_KEYS}


def matching_pairs(world: sw.WorldConfig, n: int, runner: Runner, seed: int) -> tuple[list, list[str], np.ndarray]:
    """(scenes, captions, labels) of ``n`` image-text matching pairs drawn as pretraining draws them
    (`PretrainingDataset`: half negatives, each false for its scene; positives balanced to match)."""
    from ...processing.pretraining_data import PretrainingDataset
    from ..pretrain.data import holds_for_scene

    rows = sw.build_dataset(dataclasses.replace(world, num_scenes=n))
    dataset = PretrainingDataset(rows, runner.processor, seed=seed, holds_fn=holds_for_scene)
    samples = [dataset.sample_from_row(dataset.rows[i], i) for i in range(len(rows))]
    samples = [sample for sample in samples if "skipped" not in sample]
    scenes = [sw.Scene.from_dict(sample["scene"]) for sample in samples]
    return scenes, [s["itm_caption"] for s in samples], np.asarray([s["itm_label"] for s in samples])


def run_matching(
    runner: Runner, world: sw.WorldConfig, n_pairs: int, settings: Settings, objectives: Sequence[str] | None = None
) -> dict:
    """Zero-shot image-text matching with the run's ITM head on ``n_pairs`` pairs of the evaluation world
    (`matching_pairs`): accuracy of P(match) > 0.5 against its floors: the same captions with a blank image, a
    classifier that never sees an image (a bag of words trained on pairs of `text_floor_world`), and always
    answering the training majority."""
    from .shortcuts import BagOfWords

    if objectives is not None and "itm" not in objectives:
        return {"skipped": f"the model was not pretrained with image-text matching (objectives {','.join(objectives)})"}
    scenes, captions, labels = matching_pairs(world, n_pairs, runner, settings.seed)
    if not captions:
        return {"skipped": "no readable pair"}
    bank = ImageBank(scenes=scenes, image_size=runner.image_size)
    ids = np.arange(len(captions))
    correct = ((match_scores(runner, bank, ids, captions) > 0.5) == labels).astype(float)
    blank = ((match_scores(runner, bank, np.full_like(ids, BLANK), captions) > 0.5) == labels).astype(float)
    _, train_captions, train_labels = matching_pairs(text_floor_world(world), n_pairs, runner, settings.seed)
    text_model = BagOfWords().fit(train_captions, train_labels.tolist())
    text_only = (np.asarray(text_model.predict(captions)) == labels).astype(float)
    majority = (labels == Counter(train_labels.tolist()).most_common(1)[0][0]).astype(float)
    floor_values = {"blank": blank, "text_only": text_only, "chance_majority": majority}
    floors = {name: {"accuracy": mean_figure(values, settings)} for name, values in floor_values.items()}
    differences = {name: difference(values, correct, settings, "accuracy") for name, values in floor_values.items()}
    return comparison(
        len(captions),
        "accuracy",
        {"accuracy": mean_figure(correct, settings)},
        floors,
        differences,
        {"accuracy": correct},
        positives=int(labels.sum()),
    )


def _gitm_text_only(texts, targets, cells, world, n_groups, runner, config, grid, settings) -> np.ndarray:
    """Per scored segment, the expected accuracy of a classifier that never sees the canvas: a bag of words trained
    on the segments of ``n_groups`` groups of `text_floor_world` to tell a cell's caption from a distractor. Saying
    'none' is right for a distractor; saying 'a cell's' is right for a caption with chance 1 / cells (which cell,
    the text cannot say)."""
    from ...processing.grouping import GroupedMatchingDataset
    from .shortcuts import BagOfWords, gitm_segment_items

    rows = sw.build_dataset(dataclasses.replace(text_floor_world(world), num_scenes=n_groups))
    train = GroupedMatchingDataset(
        rows,
        runner.processor,
        config,
        mode=grid["gitm_mode"],
        patch_size=runner.patch_size,
        image_size=runner.image_size,
        seed=settings.seed,
        max_length=grid["gitm_max_length"],
    )
    model = BagOfWords().fit(*gitm_segment_items(train, range(len(train))))
    if len(texts) != len(targets):
        raise RuntimeError(f"grouped matching: {len(texts)} segment texts for {len(targets)} scored segments")
    says_none = np.asarray([label == "none" for label in model.predict(texts)])
    is_none = np.asarray(targets) == cells  # gitm_classes puts 'none' after the cells
    return np.where(says_none, is_none.astype(float), np.where(is_none, 0.0, 1.0 / cells))


def run_grouped_matching(
    runner: Runner,
    world: sw.WorldConfig,
    n_groups: int,
    grid: Mapping,
    settings: Settings,
    objectives: Sequence[str] | None = None,
) -> dict:
    """Zero-shot grouped matching with the run's trained head on ``n_groups`` groups drawn from the evaluation world
    (one group per scene, the grid and distractors of ``grid``): segment accuracy overall and per kind (own caption,
    easy and hard distractor), against its floors: two chance levels (uniform over the cells and 'none'; always the
    most frequent target), the same texts on a blank canvas, and a classifier that never sees the canvas
    (`_gitm_text_only`); hard minus easy, and whole-group exact match. Items are segments (their per-item values are
    kept), but the segments of one group are not independent: every interval here resamples groups."""
    if objectives is not None and "gitm" not in objectives:
        return {"skipped": f"the model was not pretrained with grouped matching (objectives {','.join(objectives)})"}
    if not getattr(runner.model.config, "num_text_segments", 0):
        return {"skipped": "the model has no grouped-matching head (num_text_segments=0)"}
    groups = _grouped_dataset(runner, world, n_groups, grid, settings)
    scored = _score_groups(runner, groups)
    if scored["correct"].size == 0:
        return {"skipped": "no readable group"}
    cells = groups.spec.num_cells
    text_only = _gitm_text_only(
        scored["texts"], scored["targets"], cells, world, n_groups, runner, groups.config, grid, settings
    )
    return _grouped_figures(scored, cells, text_only, grid, settings)


def _grouped_dataset(runner, world, n_groups, grid, settings):
    """The evaluation groups (epoch 0): one per scene of an `n_groups`-scene evaluation world, the run's grid."""
    from ...processing.grouping import GroupConfig, GroupedMatchingDataset

    rows = sw.build_dataset(dataclasses.replace(world, num_scenes=n_groups))
    config = GroupConfig(
        rows=grid["gitm_rows"],
        cols=grid["gitm_cols"],
        own_probability=grid["gitm_own_probability"],
        distractors=grid["gitm_distractors"],
    )
    groups = GroupedMatchingDataset(
        rows,
        runner.processor,
        config,
        mode=grid["gitm_mode"],
        patch_size=runner.patch_size,
        image_size=runner.image_size,
        seed=settings.seed,
        max_length=grid["gitm_max_length"],
    )
    groups.set_epoch(0)
    return groups


def _score_groups(runner, groups) -> dict:
    """Per scored segment: hit (`correct`) with the true and with a blank canvas, kind, target and group; per group
    its exact match; the segments' texts."""
    from ...modeling_vlp.losses_vlp import gitm_classes
    from ...processing.grouping import collate_grouped
    from ..objectives import objective_inputs

    cells, pad = groups.spec.num_cells, runner.processor.tokenizer.pad_token_id
    out = {key: [] for key in ("correct", "blank_correct", "kinds", "targets", "group_of", "exact", "texts")}
    with torch.no_grad():
        for batch_rows in row_batches(len(groups), runner.batch_size):
            samples = [groups[i] for i in range(len(groups))[batch_rows]]
            batch = collate_grouped(samples, pad_token_id=pad)
            if len(batch["index"]) == 0:
                continue
            batch = {k: v.to(runner.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            wanted = gitm_classes(batch["gitm_segment_targets"], cells)
            scored = batch["gitm_segment_targets"] != -100
            logits = runner.model(**objective_inputs("gitm", {"gitm": batch}, {})).gitm_logits
            hits = (logits.argmax(dim=-1) == wanted) | ~scored
            # The blank-canvas floor: the same texts, every cell background grey.
            grey = runner.background_pixel.view(1, -1, 1, 1).to(batch["pixel_values"].dtype)
            blank = dict(batch, pixel_values=torch.ones_like(batch["pixel_values"]) * grey)
            blank_logits = runner.model(**objective_inputs("gitm", {"gitm": blank}, {})).gitm_logits
            out["blank_correct"] += (blank_logits.argmax(dim=-1) == wanted)[scored].float().cpu().tolist()
            first = len(out["exact"])
            rows_in_batch = torch.arange(first, first + hits.shape[0], device=hits.device)
            out["group_of"] += rows_in_batch[:, None].expand_as(hits)[scored].cpu().tolist()
            out["exact"] += hits.all(dim=1).float().cpu().tolist()
            out["correct"] += hits[scored].float().cpu().tolist()
            out["kinds"] += batch["gitm_segment_kinds"][scored].cpu().tolist()
            out["targets"] += wanted[scored].cpu().tolist()
            out["texts"] += [text for sample in samples if "group" in sample for text in sample["group"].segments]
    for key in ("correct", "blank_correct", "kinds", "targets", "group_of"):
        out[key] = np.asarray(out[key])
    return out


def _grouped_figures(scored, cells, text_only, grid, settings) -> dict:
    """The grouped-matching comparison block: scores, floors and differences, every interval over groups."""
    correct, kinds, targets, group_of = (scored[k] for k in ("correct", "kinds", "targets", "group_of"))
    exact = scored["exact"]

    def per_group(values, chosen=None):
        """(sum of `values` over each group's chosen segments, their number): the segments of one group are not
        independent, so every interval resamples groups."""
        weights = np.ones(correct.size) if chosen is None else chosen.astype(float)
        return (
            np.bincount(group_of, weights=values * weights, minlength=len(exact)),
            np.bincount(group_of, weights=weights, minlength=len(exact)),
        )

    of_kind = {kind: kinds == code for kind, code in SEGMENT_KINDS.items()}
    share = np.bincount(targets, minlength=cells + 1) / targets.size
    majority = (targets == share.argmax()).astype(float)  # what always answering the most frequent target scores
    uniform = np.full(correct.size, 1.0 / (cells + 1))
    score = {
        "accuracy": cluster_mean_figure(*per_group(correct), settings),
        **{
            f"accuracy_{kind}": cluster_mean_figure(*per_group(correct, chosen), settings)
            for kind, chosen in of_kind.items()
        },
        "exact_match": mean_figure(exact, settings),
    }
    floor_values = {
        "chance_uniform": uniform,
        "chance_majority": majority,
        "blank_canvas": scored["blank_correct"],
        "text_only": text_only,
    }
    floors = {
        name: {"accuracy": cluster_mean_figure(*per_group(values), settings)} for name, values in floor_values.items()
    }
    differences = {
        name: cluster_difference(per_group(values), per_group(correct), settings, "accuracy")
        for name, values in floor_values.items()
    }
    hard_minus_easy = cluster_difference(
        per_group(correct, of_kind["easy"]),
        per_group(correct, of_kind["hard"]),
        settings,
        "accuracy (hard - easy distractors)",
    )
    return comparison(
        correct.size,
        "accuracy",
        score,
        floors,
        differences,
        {"accuracy": correct},
        n_groups=len(exact),
        grid={**grid},
        hard_minus_easy=hard_minus_easy,
        segments_per_kind={kind: int(chosen.sum()) for kind, chosen in of_kind.items()},
    )
