"""Evaluation sets from the shapes world: truth of captions and foils, minimal edits, Winoground pairs, probe labels,
controls, grounding boxes and patches, frequency buckets, held-out pairs, determinism and the JSON round trip."""

import ast
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from vlp.processing.worlds import eval_sets as es
from vlp.processing.worlds import shapes as sw
from vlp.processing.worlds.shapes import COLOURS, SHAPES, Scene, ShapeObject, WorldConfig, caption_holds

HELD = ("red circle", "blue star")
WORLD = WorldConfig(seed=3, max_objects=4, held_out_pairs=HELD)
SIZES = {"foils": 10, "winoground": 8, "probes": 10, "grounding": 12, "frequency": 1, "held_out": 5}
SINGULAR = {plural: shape for shape, plural in sw.SHAPE_PLURALS.items()}


@pytest.fixture(scope="module")
def sets():
    return es.build_eval_sets(WORLD, SIZES)


def _by(items, field):
    groups = {}
    for item in items:
        groups.setdefault(getattr(item, field), []).append(item)
    return groups


def _pairs_of_scene(scene):
    return {(o.colour, o.shape) for o in scene.objects}


def _words_a(text):
    """Words with the article normalised: "a"/"an" agree with the next word, so swaps may change them."""
    return ["a" if w == "an" else w for w in text.split()]


def _desc_match(words, scene):
    """Indices of the objects a description's words ([size] [colour] noun, noun maybe plural) match."""
    *mods, noun = words
    shape = None if noun in ("object", "objects") else SINGULAR.get(noun, noun)
    size = next((w for w in mods if w in sw.SIZES), None)
    colour = next((w for w in mods if w in COLOURS), None)
    assert len(mods) == (size is not None) + (colour is not None), words
    return [
        k
        for k, o in enumerate(scene.objects)
        if (shape is None or o.shape == shape)
        and (colour is None or o.colour == colour)
        and (size is None or o.size == size)
    ]


# ---------------------------------------------------------------------------------------------
# foils
# ---------------------------------------------------------------------------------------------


def test_every_set_is_balanced_and_skips_are_counted(sets):
    foils = _by(sets["foils"], "phenomenon")
    assert set(foils) == set(es.FOIL_PHENOMENA) and {len(v) for v in foils.values()} == {SIZES["foils"]}
    wino = _by(sets["winoground"], "phenomenon")
    assert set(wino) == set(es.WINOGROUND_PHENOMENA) and {len(v) for v in wino.values()} == {SIZES["winoground"]}
    probes = Counter((p.task, p.control) for p in sets["probes"])
    expected = {(t, c): SIZES["probes"] for t in es.PROBE_TASKS for c in (False, True)}
    expected.update({(t, False): SIZES["probes"] for t in es.UNIMODAL_PROBE_TASKS})
    assert probes == expected
    assert len(sets["grounding"]) == SIZES["grounding"]
    # item k of a block is the k-th candidate that gave one: candidates tried = items + skips = last index + 1
    for key, items in [(f"foils/{p}", v) for p, v in foils.items()] + [(f"winoground/{p}", v) for p, v in wino.items()]:
        indices = [item.index for item in items]
        assert indices == sorted(set(indices))
        assert indices[-1] + 1 == len(items) + sets.skipped[key]
    # one-object scenes give no relation or binding: those are skipped, and counted
    assert sets.skipped["foils/relation"] > 0 and sets.skipped["foils/binding_swap"] > 0


@pytest.mark.parametrize("name", ["foils", "frequency", "held_out"])
def test_every_caption_holds_and_every_foil_does_not(sets, name):
    assert sets[name]
    for item in sets[name]:
        assert caption_holds(item.caption, item.scene), item
        assert not caption_holds(item.foil, item.scene), item
        assert item.foil != item.caption


def test_foils_differ_from_the_caption_in_exactly_the_intended_way(sets):
    for item in sets["foils"]:
        p, caption, foil = item.phenomenon, item.caption, item.foil
        a, b = sw.parse_caption(caption), sw.parse_caption(foil)
        cw, fw = caption.split(), foil.split()
        if p in ("colour", "shape", "size"):
            category = {"colour": "colour", "shape": "shape", "size": "size"}[p]
            diff = [(x, y) for x, y in zip(_words_a(caption), _words_a(foil)) if x != y]
            assert len(cw) == len(fw) and len(diff) == 1, item
            assert {sw.concept_category(w) for w in diff[0]} == {category}, item
        elif p == "count":
            assert a.op == b.op == "count" and a.descs == b.descs and a.arg != b.arg, item
        elif p == "relation":
            assert a.op == b.op == "relation" and a.descs == b.descs and a.arg != b.arg, item
        elif p == "binding_swap":
            assert a.op == b.op == "binding" and Counter(_words_a(caption)) == Counter(_words_a(foil)), item
        elif p == "existence":
            diff = [(x, y) for x, y in zip(cw, fw) if x != y]
            assert len(cw) == len(fw) and len(diff) == 1 and "no" in diff[0] and set(diff[0]) - {"no"} <= {"a", "an"}
            assert {a.op, b.op} == {"exists", "absent"} and a.descs == b.descs, item
    existence = _by(sets["foils"], "phenomenon")["existence"]
    assert Counter(sw.parse_caption(i.caption).op for i in existence) == {"absent": 5, "exists": 5}


def test_in_distribution_sets_never_show_or_name_held_out_pairs(sets):
    held = set(WORLD.held_out_pairs)
    for name in ("foils", "winoground", "probes", "grounding", "frequency"):
        for item in sets[name]:
            scenes = getattr(item, "scenes", None) or (item.scene, getattr(item, "source_scene", item.scene))
            assert not any(_pairs_of_scene(s) & held for s in scenes), item
            for text in [getattr(item, "caption", ""), getattr(item, "foil", ""), *getattr(item, "captions", ())]:
                try:
                    named = set(es.caption_pairs(text))
                except ValueError:  # masked or shuffled probe texts are outside the grammar
                    named = {(c, s) for c in COLOURS for s in SHAPES if f"{c} {s}" in text}
                assert not named & held, item


def test_make_foils_lists_every_false_edit():
    s = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("square", "blue", "small", 0.7, 0.5)))
    assert sw.make_foils("a red circle and a blue square", s, "binding_swap") == [
        "a blue circle and a red square",
        "a red square and a blue circle",
    ]
    assert sw.make_foils("a red circle", s, "colour") == [
        f"{'an' if c == 'orange' else 'a'} {c} circle" for c in COLOURS if c != "red"
    ]
    # "a red circle" holds, so it is no colour foil of "a blue circle"
    assert sw.make_foils("a blue circle", s, "colour") == [
        f"{'an' if c == 'orange' else 'a'} {c} circle" for c in COLOURS if c not in ("red", "blue")
    ]
    assert sw.make_foils("a red circle", s, "size") == []
    for _ in range(5):
        assert sw.make_foil("the red circle is left of the blue square", s, "relation", _) in sw.make_foils(
            "the red circle is left of the blue square", s, "relation"
        )


# ---------------------------------------------------------------------------------------------
# Winoground-style pairs
# ---------------------------------------------------------------------------------------------


def test_winoground_pairs_hold_exactly_once_in_all_four_combinations(sets):
    for item in sets["winoground"]:
        (s0, s1), (c0, c1) = item.scenes, item.captions
        assert caption_holds(c0, s0) and caption_holds(c1, s1), item
        assert not caption_holds(c0, s1) and not caption_holds(c1, s0), item
        assert c0 != c1 and s0 != s1
        assert Counter(_words_a(c0)) == Counter(_words_a(c1)), item
        if item.phenomenon == "binding":  # the second scene swaps two objects' colours
            assert sw.parse_caption(c0).op == "binding"
            changed = [k for k, (a, b) in enumerate(zip(s0.objects, s1.objects)) if a != b]
            assert len(changed) == 2
            a, b = changed
            assert (s1.objects[a].colour, s1.objects[b].colour) == (s0.objects[b].colour, s0.objects[a].colour)
        else:  # the second scene mirrors the positions
            clause = sw.parse_caption(c0)
            axis = "x" if clause.arg in ("left of", "right of") else "y"
            for a, b in zip(s0.objects, s1.objects):
                assert getattr(b, axis) == pytest.approx(1 - getattr(a, axis), abs=1e-9)
            assert sw.parse_caption(c1).descs == clause.descs[::-1]
    assert es.exactly_one_holds(
        ("a red circle", "a blue circle"),
        (
            Scene((ShapeObject("circle", "red", "small", 0.5, 0.5),)),
            Scene((ShapeObject("circle", "blue", "small", 0.5, 0.5),)),
        ),
    )
    assert not es.exactly_one_holds(
        ("a circle", "a red circle"),
        (
            Scene((ShapeObject("circle", "red", "small", 0.5, 0.5),)),
            Scene((ShapeObject("circle", "blue", "small", 0.5, 0.5),)),
        ),
    )


# ---------------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------------


def _holds(text, scene):
    """caption_holds, False for text outside the grammar."""
    try:
        return caption_holds(text, scene)
    except ValueError:
        return False


def _one_word_edit_is_true(words, scene, vocabulary):
    """Whether replacing one word of ``words`` by another word of ``vocabulary`` gives a true caption."""
    for j, w in enumerate(words):
        for v in vocabulary:
            if w in vocabulary and v != w and _holds(" ".join(words[:j] + [v] + words[j + 1 :]), scene):
                return True
    return False


def test_probe_labels_are_right_by_recomputation_from_the_source_scene(sets):
    for item in sets["probes"]:
        scene, words, label = item.source_scene, item.caption.split(), item.label
        if item.task == "colour":  # "the <desc> is [MASK]"
            assert words[0] == "the" and words[-2:] == ["is", es.MASK_WORD]
            (k,) = _desc_match(words[1:-2], scene)
            assert label == COLOURS.index(scene.objects[k].colour)
        elif item.task == "count":  # "there are [MASK] <plural desc>"
            assert words[:3] == ["there", "are", es.MASK_WORD]
            assert label == len(_desc_match(words[3:], scene)) >= 1
        elif item.task in ("size", "noun", "position"):
            assert caption_holds(item.caption, scene) == (label == 0), item
            if label == 1:
                vocabulary = {"size": sw.SIZES, "noun": SHAPES, "position": ("left", "right", "above", "below")}
                fixed = [
                    w.replace("left", "RIGHT")
                    .replace("right", "left")
                    .replace("RIGHT", "right")
                    .replace("above", "BELOW")
                    .replace("below", "above")
                    .replace("BELOW", "below")
                    for w in words
                ]
                if item.task == "position":
                    assert caption_holds(" ".join(fixed), scene), item
                else:
                    assert _one_word_edit_is_true(words, scene, vocabulary[item.task]), item
        elif item.task == "visual_count":
            assert item.caption == "" and label == len(scene.objects)
        elif item.task == "visual_colours":
            assert label == tuple(int(any(o.colour == c for o in scene.objects)) for c in COLOURS)
        elif item.task == "word_order":
            if label == 0:
                assert caption_holds(item.caption, scene)
            else:
                restored = [
                    " ".join(words[:j] + [words[j + 1], words[j]] + words[j + 2 :]) for j in range(len(words) - 1)
                ]
                assert any(r != item.caption and _holds(r, scene) for r in restored), item
    for task in ("size", "noun", "position", "word_order"):
        labels = [p.label for p in sets["probes"] if p.task == task and not p.control]
        assert Counter(labels) == {0: SIZES["probes"] // 2, 1: SIZES["probes"] // 2}


def test_controls_show_another_scene_with_the_same_text_and_label(sets):
    groups = {}
    for p in sets["probes"]:
        groups.setdefault((p.task, p.index), []).append(p)
    for (task, _), group in groups.items():
        if task in es.UNIMODAL_PROBE_TASKS:
            assert len(group) == 1 and not group[0].control and group[0].scene == group[0].source_scene
            continue
        real, control = sorted(group, key=lambda p: p.control)
        assert not real.control and control.control and real.scene == real.source_scene
        assert control.scene != control.source_scene and control.source_scene == real.source_scene
        assert (control.caption, control.label) == (real.caption, real.label)


# ---------------------------------------------------------------------------------------------
# grounding
# ---------------------------------------------------------------------------------------------


def test_grounding_phrase_refers_to_its_object_and_the_box_and_patches_match(sets):
    for item in sets["grounding"]:
        start, stop = item.word_span
        words = item.caption.split()
        assert caption_holds(item.caption, item.scene)
        assert " ".join(words[start:stop]) == item.phrase
        assert _desc_match(item.phrase.split(), item.scene) == [item.object_index]
        o = item.scene.objects[item.object_index]
        r, size = sw.SIZE_RADIUS[o.size], item.image_size
        assert item.box == pytest.approx(((o.x - r) * size, (o.y - r) * size, (o.x + r) * size, (o.y + r) * size))
        # patches, recomputed with loops from the exact coverage masks
        mask, p = sw.object_masks(item.scene, size)[item.object_index], item.patch_size
        grid = size // p
        expected = [
            row * grid + col
            for row in range(grid)
            for col in range(grid)
            if mask[row * p : (row + 1) * p, col * p : (col + 1) * p].max() >= 0.5
        ]
        assert list(item.patch_indices) == expected and expected
        x0, y0, x1, y1 = item.box
        for idx in item.patch_indices:  # every patch overlaps the box
            row, col = divmod(idx, grid)
            assert col * p < x1 and (col + 1) * p > x0 and row * p < y1 and (row + 1) * p > y0
        assert int(o.y * size) // p * grid + int(o.x * size) // p in item.patch_indices


def test_object_patch_mask_by_hand():
    # a large square at the centre of a 64-pixel image fills pixels 24..39 (half side 0.8 * 0.16 * 64 = 8.19 px);
    # pixels 23 and 40 are covered 0.19 only, so 8-pixel patches 3 and 4 on each axis hold it
    scene = Scene((ShapeObject("square", "red", "large", 0.5, 0.5),))
    mask = es.object_patch_mask(scene, 0, 64, 8)
    assert mask.shape == (8, 8) and set(np.flatnonzero(mask)) == {27, 28, 35, 36}
    assert set(np.flatnonzero(es.object_patch_mask(scene, 0, 64, 16))) == {5, 6, 9, 10}
    with pytest.raises(ValueError, match="multiple of patch_size"):
        es.object_patch_mask(scene, 0, 64, 10)


# ---------------------------------------------------------------------------------------------
# concept frequency and held-out pairs
# ---------------------------------------------------------------------------------------------


def _foil_item(caption):
    return es.FoilItem(Scene(()), caption, caption, "colour", 0)


def test_bucket_assignment_on_hand_made_counts():
    counts = Counter(
        {
            ("red", "circle"): 1,
            ("blue", "star"): 10,
            ("green", "heart"): 100,
            ("white", "cross"): 1000,
            ("black", "square"): 0,
        }
    )
    buckets = es.log_buckets(counts, num_buckets=3)
    assert buckets.edges == pytest.approx((1, 10, 100, 1000)) and buckets.num_buckets == 3
    assert [buckets.bucket(c) for c in (0, 0.5, 1, 9, 10, 99, 100, 999, 1000, 10**6)] == [0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    items = [
        _foil_item("a red circle and a blue star"),
        _foil_item("there is a green heart"),
        _foil_item("a white object"),
        _foil_item("the heart is green"),
        _foil_item("there is no black square"),
        _foil_item("the white cross is left of the small blue star"),
    ]
    assert es.item_frequencies(items, counts) == [1, 100, None, 100, 0, 10]
    assert es.assign_buckets(items, counts, buckets) == [1, 3, None, 3, 0, 2]
    words = es.concept_word_counts(counts)
    assert words["red"] == 1 and words["star"] == 10 and words["cross"] == 1000 and words["black"] == 0
    masked = es.ProbeItem("colour", Scene(()), "the heart is [MASK]", COLOURS.index("green"), False, Scene(()), 0)
    assert es.item_pairs(masked) == (("green", "heart"),)
    with pytest.raises(ValueError, match="positive counts"):
        es.log_buckets({("red", "circle"): 0})


def test_frequency_items_cover_every_seen_pair_and_held_out_items_only_held_out_pairs(sets):
    held = set(WORLD.held_out_pairs)
    seen = [p for p in sw.pair_ranking(WORLD.ranking_seed) if p not in held]
    named = [es.caption_pairs(i.caption) for i in sets["frequency"]]
    assert all(len(n) == 1 for n in named)
    assert Counter(n[0] for n in named) == {p: SIZES["frequency"] for p in seen}
    named = [es.caption_pairs(i.caption) for i in sets["held_out"]]
    assert all(n and set(n) <= held for n in named)
    assert Counter(n[0] for n in named) == {p: SIZES["held_out"] for p in held}
    for item in sets["held_out"]:
        assert _pairs_of_scene(item.scene) & held
        # only the described object shows a held-out pair; the rest of the scene is in-distribution
        assert sum((o.colour, o.shape) in held for o in item.scene.objects) == 1
    assert {i.phenomenon for i in sets["held_out"]} == {"colour", "shape"}
    counts = sw.concept_counts(sw.generate_scenes(dataclasses_replace(WORLD, num_scenes=200)))
    assert es.assign_buckets(sets["held_out"], counts, es.log_buckets(counts)) == [0] * len(sets["held_out"])


def dataclasses_replace(config, **changes):
    return WorldConfig(**{**config.to_dict(), **changes})


# ---------------------------------------------------------------------------------------------
# determinism, seeds, files
# ---------------------------------------------------------------------------------------------

_SMALL = {"foils": 3, "winoground": 2, "probes": 2, "grounding": 3, "frequency": 1, "held_out": 1}


def _digest(sets):
    return hashlib.sha256(json.dumps(es.eval_sets_to_dict(sets), sort_keys=True).encode()).hexdigest()


def test_sets_are_deterministic_prefixes_and_move_with_the_seed(sets):
    assert _digest(es.build_eval_sets(WORLD, SIZES)) == _digest(sets)
    small = es.build_eval_sets(WORLD, _SMALL)
    for name in ("foils", "winoground"):
        for phenomenon, items in _by(small[name], "phenomenon").items():
            assert items == _by(sets[name], "phenomenon")[phenomenon][: len(items)]
    other = es.build_eval_sets(WORLD, _SMALL, seed=4)
    assert sum(a != b for a, b in zip(other["foils"], small["foils"])) >= len(small["foils"]) - 2
    assert small.meta["world_config"]["seed"] == WORLD.seed + es.EVAL_SEED_OFFSET
    assert other.meta["world_config"]["seed"] == 4 + es.EVAL_SEED_OFFSET


def test_sets_are_identical_in_another_process_with_another_hash_seed():
    # processing/ is loaded as a bare package, skipping vlp.processing's __init__ (which imports transformers)
    folder = os.path.dirname(os.path.dirname(es.__file__))
    code = (
        "import hashlib, json, sys, types; pkg = types.ModuleType('bare'); "
        f"pkg.__path__ = [{folder!r}]; sys.modules['bare'] = pkg;"
        "from bare.worlds import eval_sets as es, shapes as sw;"
        f"s = es.build_eval_sets(sw.WorldConfig(seed=3, max_objects=4, held_out_pairs={HELD!r}), {_SMALL!r});"
        "print(hashlib.sha256(json.dumps(es.eval_sets_to_dict(s), sort_keys=True).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(es.build_eval_sets(WORLD, _SMALL))


def test_eval_offset_differs_from_the_pretraining_offsets():
    path = importlib.util.find_spec("vlp.training").submodule_search_locations[0]
    with open(os.path.join(path, "pretrain", "data.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    values = {
        t.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    assert values["VALIDATION_SEED_OFFSET"] in es.TRAINING_SEED_OFFSETS and 0 in es.TRAINING_SEED_OFFSETS
    assert es.EVAL_SEED_OFFSET not in es.TRAINING_SEED_OFFSETS
    for offset in es.TRAINING_SEED_OFFSETS:
        with pytest.raises(ValueError, match="seed_offset"):
            es.eval_world(WORLD, seed_offset=offset)
    world = es.eval_world(WORLD)
    assert world.seed == WORLD.seed + es.EVAL_SEED_OFFSET and world.held_out_policy == "exclude"
    assert world.held_out_pairs == WORLD.held_out_pairs and world.zipf_exponent == WORLD.zipf_exponent


def test_json_round_trip_and_malformed_files(sets, tmp_path):
    path = tmp_path / "eval.json"
    es.save_eval_sets(sets, path)
    loaded = es.load_eval_sets(path)
    assert dict(loaded) == dict(sets) and loaded.skipped == sets.skipped
    assert loaded.meta == json.loads(json.dumps(sets.meta))
    assert _digest(loaded) == _digest(sets)
    data = json.loads(path.read_text())
    del data["sets"]["probes"][3]["label"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"eval\.json.*probes.*\[3\]"):
        es.load_eval_sets(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="eval.json"):
        es.load_eval_sets(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        es.load_eval_sets(path)


def test_bad_requests_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown set 'foil'"):
        es.build_eval_sets(WORLD, {"foil": 3})
    with pytest.raises(ValueError, match="non-negative"):
        es.build_eval_sets(WORLD, {"foils": -1})
    # One object per scene: every count foil names a number no true caption uses, and is turned down.
    with pytest.raises(ValueError, match="foils/count: only 0 of 2 .*count foils"):
        es.build_eval_sets(WorldConfig(max_objects=1), {"foils": 2})
    with pytest.raises(ValueError, match="foils/relation"):
        es.foil_items(es.eval_world(WorldConfig(max_objects=1)), "relation", 2)
    with pytest.raises(ValueError, match="held_out_pairs"):
        es.build_eval_sets(WorldConfig(), {"held_out": 2})
    with pytest.raises(ValueError, match="phenomenon"):
        es.foil_items(es.eval_world(WORLD), "texture", 2)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        es.build_eval_sets(WORLD, {"grounding": 2}, patch_size=7)
    assert es.default_sizes(128, WorldConfig())["held_out"] == 0
    assert set(es.default_sizes(128, WORLD)) == set(es.SET_NAMES)
