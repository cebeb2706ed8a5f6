"""Grouped image-text matching data: grids, canvases, cell patches, composed texts, group targets against the world's
truth (caption_holds), dropped segments, determinism and batches."""

import datasets
import numpy as np
import pytest
import torch

from vlp.modeling_vlp.configuration_vlp import VLPConfig
from vlp.modeling_vlp.losses_vlp import patchify, pool_cells, pool_segments
from vlp.modeling_vlp.modeling_vlp import VLPImageEmbeddings, VLPModel
from vlp.processing.grouping import (
    EASY,
    HARD,
    NONE,
    OWN,
    GroupConfig,
    GroupedMatchingDataset,
    cell_id_map,
    cell_patch_indices,
    check_grid,
    collate_grouped,
    compose_canvas,
    compose_text,
    draw_group,
    fit_segments,
    working_grids,
)
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer
from vlp.processing.worlds import shapes as sw

PATCH = 16
LAYOUTS = [(1, 2, 32), (2, 2, 32), (3, 3, 48)]  # (rows, cols, image size that divides in resize mode)


@pytest.fixture(scope="module")
def world():
    return sw.build_dataset(sw.WorldConfig(num_scenes=48, seed=7, image_size=48, max_objects=3))


@pytest.fixture(scope="module")
def tokenizer(world):
    return train_wordpiece_tokenizer([c for cs in world["captions"] for c in cs], vocab_size=200)


def make_dataset(world, tokenizer, rows, cols, image_size, mode="resize", max_length=256, **group):
    return GroupedMatchingDataset(
        world,
        tokenizer=tokenizer,
        image_processor=VLPImageProcessor(size=image_size),
        config=GroupConfig(rows, cols, **group),
        mode=mode,
        patch_size=PATCH,
        max_length=max_length,
        seed=3,
    )


def truth(caption, scenes):
    """The cells a caption holds for, asked of the world directly."""
    return [cell for cell, scene in enumerate(scenes) if sw.caption_holds(caption, scene)]


# ------------------------------------------------------------------------------------------------------------- grids


@pytest.mark.parametrize(
    "rows, cols, size, mode, cell, canvas",
    [
        (1, 2, 64, "resize", (64, 32), (64, 64)),
        (2, 2, 64, "resize", (32, 32), (64, 64)),
        (3, 3, 48, "resize", (16, 16), (48, 48)),
        (1, 2, 64, "full", (64, 64), (64, 128)),
        (3, 3, 64, "full", (64, 64), (192, 192)),
    ],
)
def test_check_grid_sizes(rows, cols, size, mode, cell, canvas):
    spec = check_grid(rows, cols, size, PATCH, mode)
    assert (spec.cell_height, spec.cell_width) == cell
    assert (spec.canvas_height, spec.canvas_width) == canvas
    assert spec.patch_grid == (canvas[0] // PATCH, canvas[1] // PATCH)


def test_grid_that_does_not_divide_is_refused_naming_what_works():
    with pytest.raises(ValueError) as error:
        check_grid(3, 3, 64, PATCH, "resize")
    message = str(error.value)
    assert "3x3" in message and "21.3333 px" in message
    assert "48, 96" in message  # image sizes that work for 3x3
    assert "1x2" in message and "2x2" in message and "4x4" in message and "3x3" not in message.split("image_size=64")[1]
    for rows, cols in working_grids(64, PATCH, "resize"):
        check_grid(rows, cols, 64, PATCH, "resize")  # every grid the message names works
    with pytest.raises(ValueError, match="not a multiple of patch_size=16.*32, 48, 64"):
        check_grid(2, 2, 60, PATCH, "full")
    with pytest.raises(ValueError, match="mode"):
        check_grid(2, 2, 64, PATCH, "tiled")
    with pytest.raises(ValueError, match="rows"):
        check_grid(0, 2, 64, PATCH)


# ----------------------------------------------------------------------------------------------- canvas and patches


@pytest.mark.parametrize(
    "rows, cols, size, mode",
    [
        (1, 2, 64, "resize"),
        (2, 2, 64, "resize"),
        (3, 3, 48, "resize"),
        (1, 2, 32, "full"),
        (3, 3, 32, "full"),
    ],
)
def test_cell_pooling_takes_exactly_each_cells_patches(rows, cols, size, mode):
    spec = check_grid(rows, cols, size, PATCH, mode)
    # constant images of the model resolution; resize mode shrinks them into the cells
    images = [torch.full((3, size, size), float(cell + 1)) for cell in range(spec.num_cells)]
    canvas = compose_canvas(images, spec)
    assert canvas.shape == (3, spec.canvas_height, spec.canvas_width)
    patches = patchify(canvas[None], PATCH)  # (1, P, p*p*3), the model's row-major patch order
    ids = spec.cell_ids()
    assert ids.shape == (patches.shape[1],)
    pooled = pool_cells(patches, ids[None], spec.num_cells)[0]
    for cell in range(spec.num_cells):
        torch.testing.assert_close(pooled[cell], torch.full_like(pooled[cell], cell + 1.0))
    indices = cell_patch_indices(rows, cols, spec.canvas_height, spec.canvas_width, PATCH)
    assert sorted(torch.cat(indices).tolist()) == list(range(patches.shape[1]))  # a partition of the patches
    for cell, index in enumerate(indices):
        assert index.numel() == patches.shape[1] // spec.num_cells
        assert bool(((patches[0, index] - (cell + 1)).abs() < 1e-5).all())  # every pixel of every patch of the cell


def test_cell_ids_follow_the_models_patch_embedding_order():
    """A patch projection that averages each patch, on a non-square full-resolution canvas, through the model's
    image embeddings: patch i's output is the constant of cell cell_ids[i]."""
    config = VLPConfig(hidden_size=8, num_attention_heads=2, intermediate_size=16, image_size=32, patch_size=PATCH)
    embeddings = VLPImageEmbeddings(config).eval()
    with torch.no_grad():
        embeddings.projection.weight.fill_(1.0 / (3 * PATCH * PATCH))
        embeddings.projection.bias.zero_()
        embeddings.position_embeddings.zero_()
    spec = check_grid(2, 3, 32, PATCH, "full")
    canvas = compose_canvas([torch.full((3, 32, 32), 10.0 * c) for c in range(6)], spec)
    out, _mask, grid = embeddings(canvas[None], torch.ones(1, *canvas.shape[-2:], dtype=torch.long))
    assert grid == spec.patch_grid == (4, 6)
    torch.testing.assert_close(out[0, 1:, 0], 10.0 * spec.cell_ids().float(), rtol=0, atol=1e-3)


def test_compose_canvas_places_images_row_major_and_refuses_a_wrong_count():
    spec = check_grid(2, 2, 32, PATCH, "full")
    images = [torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    canvas = compose_canvas(images, spec)
    assert torch.equal(canvas[:, :32, 32:], images[1]) and torch.equal(canvas[:, 32:, :32], images[2])
    with pytest.raises(ValueError, match="needs 4 images, got 3"):
        compose_canvas(images[:3], spec)
    with pytest.raises(ValueError, match="split into 3x3"):
        cell_id_map(3, 3, 64, 64, PATCH)


# -------------------------------------------------------------------------------------------------------------- text


def test_fit_segments_keeps_whole_leading_segments():
    assert fit_segments([3, 4, 5], 10) == 2  # [CLS] 3 [SEP] 4 [SEP] = 10
    assert fit_segments([3, 4, 5], 9) == 1
    assert fit_segments([3, 4, 5], 15) == 2
    assert fit_segments([3, 4, 5], 16) == 3
    assert fit_segments([9], 10) == 0


def test_compose_text_segments_and_their_ids(tokenizer):
    segments = ["a red circle", "the blue square is left of the red circle", "there are two stars"]
    text = compose_text(segments, tokenizer, max_length=64)
    ids, seg = text.input_ids.tolist(), text.segment_ids.tolist()
    assert ids[0] == tokenizer.cls_token_id and seg[0] == 0
    assert text.kept == (0, 1, 2) and text.dropped == ()
    for j, caption in enumerate(segments, start=1):
        tokens = [i for i, s in zip(ids, seg) if s == j]
        assert tokens[-1] == tokenizer.sep_token_id  # each segment ends with its [SEP]
        assert tokens[:-1] == tokenizer(caption, add_special_tokens=False)["input_ids"]
    assert text.token_type_ids.tolist() == [0] * len(ids)
    # too long: whole trailing segments go, never a part of one
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in segments]
    fits_two = 1 + lengths[0] + 1 + lengths[1] + 1
    short = compose_text(segments, tokenizer, max_length=fits_two + lengths[2])  # one token short of three
    assert short.kept == (0, 1) and short.dropped == (2,)
    assert len(short.input_ids) == fits_two and set(short.segment_ids.tolist()) == {0, 1, 2}


# ------------------------------------------------------------------------------------------------------------ groups


def check_group(dataset, index, group):
    """Every target agrees with caption_holds on the cell scenes; kinds, cells and per-cell targets are coherent."""
    world = dataset.rows
    scenes = [sw.Scene.from_dict(world[row]["scene"]) for row in group.cells]
    assert index in group.cells and len(set(group.cells)) == len(group.cells) == dataset.config.num_cells
    assert len(set(group.segments)) == len(group.segments)
    for caption, target, cell, kind in zip(
        group.segments, group.segment_targets, group.segment_cells, group.segment_kinds
    ):
        holds = truth(caption, scenes)
        assert holds == ([] if target == NONE else [target])  # the single cell it holds for, else none
        if kind == OWN:
            assert target == cell
        else:
            assert target == NONE
        if kind == EASY:  # a caption of an image outside the grid
            assert any(caption in world[row]["captions"] for row in range(len(world)) if row not in group.cells)
    for cell, position in enumerate(group.cell_targets):
        assert position == NONE or group.segment_targets[position] == cell
        assert (position == NONE) == (cell not in group.segment_targets)


@pytest.mark.parametrize("rows, cols, size", LAYOUTS)
@pytest.mark.parametrize("distractors", ["easy", "hard", "mixed"])
def test_targets_agree_with_caption_holds_for_every_layout(world, tokenizer, rows, cols, size, distractors):
    dataset = make_dataset(world, tokenizer, rows, cols, size, own_probability=0.5, distractors=distractors)
    kinds, orders = set(), set()
    for index in range(12):
        group = dataset.draw(index)
        check_group(dataset, index, group)
        kinds.update(group.segment_kinds)
        orders.add(group.segment_cells == tuple(sorted(group.segment_cells)))
    assert OWN in kinds
    assert {"easy": EASY, "hard": HARD, "mixed": HARD}[distractors] in kinds
    if distractors == "mixed":
        assert EASY in kinds
    assert False in orders  # segments are shuffled, not in cell order


def test_hard_distractor_is_a_one_edit_foil_of_the_cells_own_caption():
    """Hand-made rows: the only true caption of row 0 is 'a red circle'; its hard distractor changes one word."""
    red = sw.Scene((sw.ShapeObject("circle", "red", "small", 0.3, 0.3),))
    blue = sw.Scene((sw.ShapeObject("square", "blue", "large", 0.5, 0.5),))
    scenes = [red, blue, red, blue]
    config = GroupConfig(1, 2, own_probability=0.0, distractors="hard", foil_kinds=("colour", "shape"))
    captions = {0: ["a red circle"], 1: ["a blue square"], 2: ["a red circle"], 3: ["a blue square"]}
    group = draw_group(1, 4, captions.__getitem__, scenes.__getitem__, config, np.random.default_rng(0))
    for caption, cell in zip(group.segments, group.segment_cells):
        own = "a red circle" if group.cells[cell] in (0, 2) else "a blue square"
        words, foil = own.split(), caption.split()
        assert len(words) == len(foil) and sum(a != b for a, b in zip(words, foil)) == 1
        assert truth(caption, [scenes[row] for row in group.cells]) == []
    assert len(group.segments) == 2 and set(group.segment_kinds) == {HARD}


def test_dropped_segments_update_targets(world, tokenizer):
    dataset = make_dataset(world, tokenizer, 3, 3, 48, max_length=40, own_probability=1.0)
    dropped = dropped_cells = 0
    for index in range(8):
        sample = dataset[index]
        full, group = dataset.draw(index), sample["group"]
        assert len(sample["input_ids"]) <= 40
        m = len(group.segments)
        assert group.segments == full.segments[:m]  # whole segments, the trailing ones dropped
        assert [t for _, t in group.dropped] == list(full.segment_targets[m:])
        dropped += len(group.dropped)
        assert sample["segment_ids"].max().item() == m and sample["gitm_segment_targets"].tolist() == list(
            group.segment_targets
        )
        check_group(dataset, index, group)
        for _, target in group.dropped:  # a dropped segment's cell is now described by none
            if target != NONE:
                assert sample["gitm_cell_targets"][target].item() == NONE
                dropped_cells += 1
    assert dropped > 0 and dropped_cells > 0


def test_groups_are_deterministic_per_seed_epoch_index(world, tokenizer):
    a = make_dataset(world, tokenizer, 2, 2, 32, distractors="mixed")
    b = make_dataset(world, tokenizer, 2, 2, 32, distractors="mixed")
    first = {i: a[i] for i in (5, 1, 9)}
    second = {i: b[i] for i in (9, 5, 1)}  # another access order
    for i, x in first.items():
        y = second[i]
        for key in ("pixel_values", "input_ids", "segment_ids", "gitm_segment_targets", "gitm_cell_targets"):
            assert torch.equal(x[key], y[key])
        assert x["group"] == y["group"]
    b.set_epoch(1)
    assert any(a.draw(i) != b.draw(i) for i in range(5))


def test_bad_settings_are_refused(world, tokenizer):
    with pytest.raises(ValueError, match="distractors"):
        GroupConfig(distractors="medium")
    with pytest.raises(ValueError, match="own_probability"):
        GroupConfig(own_probability=1.5)
    with pytest.raises(ValueError, match="3x3 grid in 'resize' mode"):
        make_dataset(world, tokenizer, 3, 3, 32)
    with pytest.raises(ValueError, match="hard distractors need holds_fn"):
        draw_group(0, 10, None, None, GroupConfig(distractors="hard"), np.random.default_rng(0), holds_fn=None)


# ----------------------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("mode", ["resize", "full"])
def test_collated_batch_runs_through_the_model_and_pools_cells(world, tokenizer, mode):
    dataset = make_dataset(world, tokenizer, 1, 2, 32, mode=mode, distractors="mixed")
    batch = collate_grouped(
        [dataset[i] for i in range(4)] + [{"index": 99, "skipped": "broken"}], pad_token_id=tokenizer.pad_token_id
    )
    spec = dataset.spec
    assert batch["pixel_values"].shape == (4, 3, spec.canvas_height, spec.canvas_width)
    assert batch["gitm_cell_ids"].shape == (4, spec.patch_grid[0] * spec.patch_grid[1])
    assert batch["skipped"] == [(99, "broken")] and batch["gitm_num_cells"] == 2
    targets = batch["gitm_segment_targets"]
    assert targets.shape[1] == 2 and bool(((targets >= -1) & (targets < 2) | (targets == -100)).all())
    lengths = (batch["segment_ids"] > 0).any(dim=1)
    assert bool(lengths.all())
    for row, sample in enumerate(batch["groups"]):
        assert (targets[row] != -100).sum().item() == len(sample.segments)
    config = VLPConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=PATCH,
        max_position_embeddings=64,
        num_text_segments=9,
    )
    model = VLPModel(config).eval()
    keys = ("input_ids", "attention_mask", "token_type_ids", "segment_ids", "pixel_values", "pixel_mask")
    out = model(**{key: batch[key] for key in keys})
    assert out.patch_grid == spec.patch_grid
    patches = out.last_hidden_state[:, out.text_length + 1 :]
    cells = pool_cells(patches, batch["gitm_cell_ids"], batch["gitm_num_cells"])
    segments = pool_segments(out.last_hidden_state[:, : out.text_length], batch["segment_ids"], targets.shape[1])
    assert cells.shape == (4, 2, 16) and segments.shape == (4, 2, 16)
    if mode == "full":  # 1x2 full canvas 32x64: cell 0 is patch columns 0-1 of each of the two patch rows
        torch.testing.assert_close(cells[:, 0], patches[:, [0, 1, 4, 5]].mean(dim=1))
    else:  # 1x2 resize canvas 32x32 (2x2 patches): cell 1 is the right patch column
        torch.testing.assert_close(cells[:, 1], patches[:, [1, 3]].mean(dim=1))


def test_unreadable_cell_image_skips_the_sample(world, tokenizer):
    broken = world.cast_column("image", datasets.Image(decode=False))
    images = list(broken["image"])
    images[0] = {"bytes": b"not a png", "path": None}
    broken = broken.remove_columns("image").add_column("image", images, feature=datasets.Image(decode=False))
    dataset = make_dataset(broken, tokenizer, 1, 2, 32)
    sample = dataset[0]
    assert sample["index"] == 0 and "cannot decode image" in sample["skipped"]
    empty = collate_grouped([sample])
    assert empty["input_ids"].shape == (0, 0) and empty["skipped"] == [(0, sample["skipped"])]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_own_probability_and_counted_fallbacks(world, tokenizer, p):
    dataset = make_dataset(world, tokenizer, 2, 2, 32, own_probability=p, distractors="easy")
    own = other = own_fallbacks = 0
    for index in range(16):
        group = dataset.draw(index)
        own += sum(kind == OWN for kind in group.segment_kinds)
        other += sum(kind != OWN for kind in group.segment_kinds)
        own_fallbacks += sum("no own caption" in note for note in group.fallbacks)
    if p == 0.0:
        assert own == 0 and other == 64
    else:  # every cell asks for its own caption; each one that could not be found is a counted fallback
        assert own > 0 and other == own_fallbacks and own + other == 64


def test_without_holds_fn_targets_follow_construction(world, tokenizer):
    rows = world.remove_columns("scene")
    dataset = GroupedMatchingDataset(
        rows,
        tokenizer=tokenizer,
        image_processor=VLPImageProcessor(size=32),
        config=GroupConfig(1, 2, own_probability=0.5),
        patch_size=PATCH,
        holds_fn=None,
    )
    for index in range(6):
        group = dataset.draw(index)
        for caption, target, cell, kind in zip(
            group.segments, group.segment_targets, group.segment_cells, group.segment_kinds
        ):
            assert target == (cell if kind == OWN else NONE)
            assert kind == EASY or caption in world[group.cells[cell]]["captions"]
