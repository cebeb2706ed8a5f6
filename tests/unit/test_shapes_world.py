"""The synthetic shapes world: vocabulary, scenes, rendering, caption truth, foils, frequencies, noise, datasets."""

import hashlib
import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vlp.processing.worlds import shapes as sw
from vlp.processing.worlds.shapes import Scene, ShapeObject, WorldConfig, caption_holds
from vlp.processing.worlds.shapes import dataset as shapes_dataset


def obj(shape, colour, size="small", x=0.5, y=0.5):
    return ShapeObject(shape, colour, size, x, y)


def scene(*objects, noise=0.0, seed=0):
    return Scene(tuple(objects), seed, noise)


@pytest.fixture(scope="module")
def examples():
    """A few hundred examples from several worlds (crowded ones included)."""
    out = sw.generate_examples(WorldConfig(num_scenes=300, seed=11))
    out += sw.generate_examples(WorldConfig(num_scenes=150, seed=12, min_objects=3, max_objects=6, zipf_exponent=2.0))
    out += sw.generate_examples(WorldConfig(num_scenes=100, seed=13, min_objects=2, max_objects=4, zipf_exponent=0.0))
    return out


# ---------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------


def test_vocabulary_sizes_and_concept_words():
    assert len(sw.SHAPES) >= 8 and len(set(sw.SHAPES)) == len(sw.SHAPES)
    assert len(sw.COLOURS) == 8 and sw.SIZES == ("small", "large")
    assert sw.RELATIONS == ("left of", "right of", "above", "below")
    assert sw.NUMBER_WORDS[:3] == ("one", "two", "three") and len(sw.NUMBER_WORDS) == sw.MAX_OBJECTS
    words = sw.concept_words()
    assert {"red", "circle", "circles", "crosses", "small", "two", "left", "right", "above", "below"} <= words
    assert not words & {"the", "a", "an", "is", "of", "there", "and", "no", "object", "objects"}
    assert sw.concept_category("crosses") == "shape" and sw.concept_category("Purple") == "colour"
    assert sw.concept_category("large") == "size" and sw.concept_category("three") == "number"
    assert sw.concept_category("above") == "relation" and sw.concept_category("of") is None
    assert {sw.concept_category(w) for w in words} == {"colour", "shape", "size", "number", "relation"}
    assert all(" " not in c and c.islower() for c in sw.COLOURS)


def test_colours_are_far_apart_and_from_the_background():
    rgb = np.array([sw.COLOUR_RGB[c] for c in sw.COLOURS] + [sw.BACKGROUND_RGB], dtype=float)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(distances) > 90


# ---------------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------------


def test_scene_dict_round_trip_is_exact_through_json(examples):
    for example in examples[:100]:
        data = json.loads(json.dumps(example.scene.to_dict()))
        assert Scene.from_dict(data) == example.scene
        assert Scene.from_dict(json.dumps(data)) == example.scene


def test_object_box_in_pixels_and_validation():
    o = obj("circle", "red", "large", 0.5, 0.25)
    x0, y0, x1, y1 = o.box(100)
    assert (x0, x1) == pytest.approx((50 - 16, 50 + 16)) and (y0, y1) == pytest.approx((25 - 16, 25 + 16))
    with pytest.raises(ValueError, match="unknown concept"):
        obj("elephant", "red")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        obj("circle", "red", x=1.5)


def test_objects_never_overlap_and_stay_inside(examples):
    counts = Counter(len(e.scene.objects) for e in examples)
    assert set(counts) == {1, 2, 3, 4, 5, 6}
    for e in examples:
        for a, b in itertools.combinations(e.scene.objects, 2):
            ax0, ay0, ax1, ay1 = a.box(1)
            bx0, by0, bx1, by1 = b.box(1)
            gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)
            assert gap >= sw.PLACEMENT_MARGIN - 1e-9
        for o in e.scene.objects:
            x0, y0, x1, y1 = o.box(1)
            assert min(x0, y0) >= sw.EDGE_MARGIN - 1e-9 and max(x1, y1) <= 1 - sw.EDGE_MARGIN + 1e-9


def test_object_counts_and_sizes_follow_the_config():
    scenes = sw.generate_scenes(WorldConfig(num_scenes=400, seed=4, min_objects=2, max_objects=4))
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {2, 3, 4} and min(counts.values()) > 100
    sizes = Counter(o.size for s in scenes for o in s.objects)
    assert 0.4 < sizes["large"] / sum(sizes.values()) < 0.6


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------


def _digest(config):
    examples = sw.generate_examples(config)
    pixels = sw.render_batch([e.scene for e in examples], config.image_size)
    text = json.dumps([[e.scene.to_dict(), e.captions, [c.refs for c in e.clean], e.noise_kinds] for e in examples])
    return hashlib.sha256(text.encode() + pixels.tobytes()).hexdigest()


def test_same_seed_same_world_different_seed_different_world():
    config = WorldConfig(num_scenes=60, seed=5, noise_rate=0.3, background_noise=0.05)
    assert _digest(config) == _digest(WorldConfig(**config.to_dict()))
    a = sw.generate_examples(config)
    b = sw.generate_examples(WorldConfig(**{**config.to_dict(), "seed": 6}))
    assert sum(x.scene != y.scene for x, y in zip(a, b)) >= 55
    assert sum(x.captions != y.captions for x, y in zip(a, b)) >= 55
    assert not np.array_equal(sw.render_batch([e.scene for e in a]), sw.render_batch([e.scene for e in b]))


def test_world_does_not_depend_on_batching_or_on_caption_settings():
    config = WorldConfig(num_scenes=40, seed=8)
    whole = sw.generate_examples(config)
    assert sw.generate_examples(config, 25, 40) == whole[25:]
    assert [sw.sample_scene(config, i) for i in (3, 17)] == [whole[3].scene, whole[17].scene]
    fewer = WorldConfig(num_scenes=40, seed=8, captions_per_scene=1, caption_kinds=("count",), noise_rate=0.5)
    assert sw.generate_scenes(fewer) == [e.scene for e in whole]
    scenes = [e.scene for e in whole]
    batch = sw.render_batch(scenes)
    assert np.array_equal(batch[7:9], sw.render_batch(scenes[7:9]))
    assert np.array_equal(batch[30], sw.render_scene(scenes[30]))


def test_world_is_identical_in_another_process_with_another_hash_seed():
    config = WorldConfig(num_scenes=30, seed=9, noise_rate=0.5)
    code = (
        "from vlp.processing.worlds import shapes as sw; import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_shapes_world import _digest; print(_digest(sw.WorldConfig(num_scenes=30, seed=9, noise_rate=0.5)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    command = [sys.executable, "-c", code, os.path.dirname(__file__)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == _digest(config)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def test_render_shape_dtype_and_centre_colour():
    for shape, colour, size in zip(sw.SHAPES, sw.COLOURS, itertools.cycle(sw.SIZES)):
        for image_size in (32, 64, 96):
            image = sw.render_scene(scene(obj(shape, colour, size, 0.43, 0.61)), image_size)
            assert image.dtype == np.uint8 and image.shape == (image_size, image_size, 3)
            centre = image[int(0.61 * image_size), int(0.43 * image_size)]
            assert np.abs(centre.astype(int) - sw.COLOUR_RGB[colour]).max() <= 2, (shape, colour, image_size)


def test_edges_are_antialiased_and_background_elsewhere(examples):
    scenes = [e.scene for e in examples[:80]]
    images = sw.render_batch(scenes)
    background = np.array(sw.BACKGROUND_RGB)
    for image, s in zip(images, scenes):
        outside = np.ones((64, 64), dtype=bool)
        for o in s.objects:
            x0, y0, x1, y1 = o.box(64)
            outside[max(int(y0) - 1, 0) : int(y1) + 2, max(int(x0) - 1, 0) : int(x1) + 2] = False
        assert (image[outside] == background).all()
        for o in s.objects:
            x0, y0, x1, y1 = (int(v) for v in o.box(64))
            patch = image[y0 : y1 + 1, x0 : x1 + 1].astype(float)
            colour = np.array(sw.COLOUR_RGB[o.colour], dtype=float)
            # fraction of the way from background to the object colour, per pixel
            alpha = ((patch - background) @ (colour - background)) / ((colour - background) @ (colour - background))
            assert ((alpha > 0.1) & (alpha < 0.9)).sum() >= 4, o  # soft edge pixels
            assert (alpha > 0.98).sum() >= 4, o  # solid interior


def test_pixels_are_the_masks_blended_over_the_background(examples):
    for e in examples[:40]:
        image = sw.render_scene(e.scene).astype(float)
        masks = sw.object_masks(e.scene)
        assert masks.shape == (len(e.scene.objects), 64, 64) and masks.min() >= 0 and masks.max() <= 1
        expected = np.broadcast_to(np.array(sw.BACKGROUND_RGB, dtype=float), (64, 64, 3)).copy()
        for mask, o in zip(masks, e.scene.objects):
            expected += mask[..., None] * (np.array(sw.COLOUR_RGB[o.colour]) - expected)
            x0, y0, x1, y1 = o.box(64)
            ys, xs = np.nonzero(mask)
            assert xs.min() >= int(x0) - 1 and xs.max() <= x1 + 1 and ys.min() >= int(y0) - 1 and ys.max() <= y1 + 1
        assert np.abs(image - expected).max() <= 1.0


def test_shapes_fill_their_box_and_look_different():
    masks = {shape: sw.object_masks(scene(obj(shape, "red", "large", 0.5, 0.5)), 128)[0] for shape in sw.SHAPES}
    box_area = (2 * sw.SIZE_RADIUS["large"] * 128) ** 2
    for shape, mask in masks.items():
        assert 0.25 < mask.sum() / box_area < 0.9, shape
    assert abs(masks["circle"].sum() - np.pi * (sw.SIZE_RADIUS["large"] * 128) ** 2) < 0.01 * masks["circle"].sum()
    for a, b in itertools.combinations(sw.SHAPES, 2):
        overlap = np.minimum(masks[a], masks[b]).sum() / np.maximum(masks[a], masks[b]).sum()
        assert overlap < 0.85, (a, b, overlap)


def test_background_noise_is_deterministic_and_has_the_requested_strength():
    noisy = scene(obj("circle", "red", "large", 0.2, 0.2), noise=0.05, seed=1234)
    image = sw.render_scene(noisy).astype(float)
    assert np.array_equal(sw.render_scene(noisy), sw.render_scene(Scene.from_dict(noisy.to_dict())))
    corner = image[40:, 40:] - np.array(sw.BACKGROUND_RGB)
    assert abs(corner.mean()) < 1.5 and 0.04 * 255 < corner.std() < 0.06 * 255
    other = sw.render_scene(scene(obj("circle", "red", "large", 0.2, 0.2), noise=0.05, seed=99))
    assert not np.array_equal(image, other)
    assert np.abs(image[13, 13] - sw.COLOUR_RGB["red"]).max() <= 1  # objects are drawn over the noise


# ---------------------------------------------------------------------------------------------
# caption truth
# ---------------------------------------------------------------------------------------------


def test_every_generated_caption_holds_parses_back_and_has_its_refs(examples):
    kinds = Counter()
    for e in examples:
        assert len(e.clean) == 4 and e.captions == tuple(c.text for c in e.clean)
        for c in e.clean:
            assert caption_holds(c.text, e.scene), (c.text, e.scene)
            assert caption_holds(c.text, e.scene.to_dict())
            assert sw.caption_kind(c.text) == c.kind
            assert sw.clause_text(sw.parse_caption(c.text)) == c.text
            assert tuple(sw.caption_refs(c.text, e.scene)) == c.refs and len(c.refs) == len(c.text.split())
            kinds[c.kind] += 1
    assert set(kinds) == set(sw.CAPTION_KINDS) and min(kinds.values()) > 150


def test_refs_point_at_the_described_objects():
    s = scene(
        obj("circle", "red", "small", 0.2, 0.5),
        obj("square", "blue", "large", 0.7, 0.5),
        obj("square", "green", x=0.7, y=0.1),
    )
    assert sw.caption_refs("the red circle is left of the blue square", s) == [None, 0, 0, None, None, None, None, 1, 1]
    assert sw.caption_refs("there are two squares", s) == [None, None, None, None]  # two referents: no single index
    assert sw.caption_refs("there is one small square", s) == [None, None, 2, 2, 2]
    assert sw.caption_refs("the circle is small", s) == [None, 0, None, 0]
    assert sw.caption_refs("a red circle and a green square", s) == [None, 0, 0, None, None, 2, 2]
    assert sw.caption_refs("there is no yellow heart", s) == [None] * 5
    assert sw.caption_refs("a picture", s) == [None, None]


def test_generated_captions_cover_the_surface_forms(examples):
    texts = [c.text for e in examples for c in e.clean]
    patterns = {
        "bare": r"^an? ",
        "there is a": r"^there is an? ",
        "predicate": r"^the [a-z ]+ is (?!left|right|above|below)\w+$",
        "count one": r"^there is one ",
        "count many": r"^there are (two|three|four|five|six) ",
        "objects": r"objects?$",
        "negation": r"^there is no ",
        "plural negation": r"^there are no ",
        "binding": r"^(there is )?an? [a-z ]+ and an? ",
        "relation": r" is (left of|right of|above|below) the ",
    }
    for name, pattern in patterns.items():
        assert any(re.search(pattern, t) for t in texts), name


HAND_SCENE = scene(
    obj("circle", "red", "small", 0.20, 0.30),
    obj("square", "blue", "large", 0.70, 0.30),
    obj("star", "green", "small", 0.25, 0.75),
    obj("star", "green", "large", 0.75, 0.80),
)


@pytest.mark.parametrize(
    "caption, expected",
    [
        # attribute
        ("a small red circle", True),
        ("a red circle", True),
        ("a large red circle", False),
        ("a blue circle", False),
        ("there is a blue square", True),
        ("there is a green star", True),
        ("there is a small green star", True),
        ("there is a red object", True),
        ("a purple object", False),
        ("a large object", True),
        ("a object", True),
        ("the circle is red", True),
        ("the circle is small", True),
        ("the circle is large", False),
        ("the star is green", False),  # two stars: the definite description fails
        ("the large star is green", True),
        ("the small star is large", False),
        ("the heart is red", False),
        # count (exact)
        ("there is one red circle", True),
        ("there are two green stars", True),
        ("there are two stars", True),
        ("there is one star", False),
        ("there are three stars", False),
        ("there are four objects", True),
        ("there are three objects", False),
        ("there are two small objects", True),
        ("there is one large star", True),
        ("there are two red circles", False),
        ("there is one heart", False),
        # relation
        ("the red circle is left of the blue square", True),
        ("the blue square is right of the circle", True),
        ("the red circle is right of the blue square", False),
        ("the circle is above the small star", True),
        ("the small star is below the circle", True),
        ("the circle is above the square", False),  # same height
        ("the circle is left of the small star", False),  # 0.05 apart: inside the dead zone
        ("the circle is right of the small star", False),
        ("the square is above the star", False),  # "the star" is ambiguous
        ("the square is above the large star", True),
        ("the circle is left of the circle", False),
        ("the heart is left of the square", False),
        # binding
        ("a red circle and a blue square", True),
        ("a blue circle and a red square", False),
        ("there is a green star and a green star", True),
        ("a red circle and a red circle", False),
        ("a small green star and a large green star", True),
        ("a large green star and a large green star", False),
        ("a red circle and a blue square and a small star", True),
        ("a red object and a red circle", False),
        # existence / negation
        ("there is no yellow heart", True),
        ("there is no red circle", False),
        ("there are no hearts", True),
        ("there are no green stars", False),
        ("there is no large circle", True),
        ("there is no object", False),
        # uninformative web alt-text holds everywhere
        ("a picture", True),
        ("an image of some shapes", True),
        # normalisation
        ("There is a Red Circle.", True),
        ("  a   red circle ", True),
        ("an red circle", True),
    ],
)
def test_hand_built_scene_truth(caption, expected):
    assert caption_holds(caption, HAND_SCENE) is expected


def test_relation_margin_edges():
    def pair(dx, dy):
        second = obj("square", "blue", x=round(0.3 + dx, 4), y=round(0.3 + dy, 4))
        return scene(obj("circle", "red", x=0.3, y=0.3), second)

    assert caption_holds("the circle is left of the square", pair(0.1, 0.4))  # exactly the margin
    assert not caption_holds("the circle is left of the square", pair(0.099, 0.4))
    assert not caption_holds("the square is right of the circle", pair(0.099, 0.4))
    assert caption_holds("the circle is above the square", pair(0.099, 0.4))
    assert caption_holds("the square is below the circle", pair(0.099, 0.4))
    assert not caption_holds("the circle is below the square", pair(0.3, 0.3))
    for relation in sw.RELATIONS:
        assert caption_holds(f"the circle is {relation} the square", pair(0.0, 0.0)) is False


def test_count_and_negation_edge_cases():
    one = scene(obj("heart", "purple", x=0.2, y=0.2))
    assert caption_holds("there is one object", one) and caption_holds("there is one purple heart", one)
    assert not caption_holds("there are two objects", one)
    assert caption_holds("there are no purple hearts", scene(obj("heart", "orange")))
    assert caption_holds("there are no objects", scene()) and caption_holds("a picture of some objects", one)
    six = scene(*[obj("cross", "black", x=0.15 + 0.35 * (i % 3), y=0.2 + 0.5 * (i // 3)) for i in range(6)])
    assert caption_holds("there are six black crosses", six) and not caption_holds("there are five crosses", six)


@pytest.mark.parametrize(
    "text",
    [
        "a purple elephant",
        "there are one circle",
        "there is two circles",
        "the circle is near the square",
        "red circle",
        "",
        "a circles",
        "there are no circle",
        "the circle is left the square",
        "a red circle and",
        "a small small circle",
        "a red small circle",
        "there are seven circles",
        "the circle is left of",
        "circle is red",
        "there is no",
        "the is red",
        "a red circle or a blue square",
        "there are two",
        "the circle is red and blue",
    ],
)
def test_text_outside_the_grammar_raises_naming_the_caption(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        caption_holds(text, HAND_SCENE)


# Independent brute-force semantics (regular expressions and plain sets), to cross-check caption_holds.

_SIZE, _COL = "small|large", "|".join(sw.COLOURS)
_NOUN = "|".join(sw.SHAPES) + "|object"
_NOUNS = "|".join(sw.SHAPE_PLURALS.values()) + "|objects"
_D = rf"(?:({_SIZE}) )?(?:({_COL}) )?({_NOUN})"
_DP = rf"(?:({_SIZE}) )?(?:({_COL}) )?({_NOUNS})"
_NUMBERS = {w: i + 1 for i, w in enumerate(sw.NUMBER_WORDS)}


def _spec(size, colour, noun):
    shape = None if noun in ("object", "objects") else {v: k for k, v in sw.SHAPE_PLURALS.items()}.get(noun, noun)
    return {"size": size, "colour": colour, "shape": shape}


def _fits(spec, o):
    return all(value is None or getattr(o, key) == value for key, value in spec.items())


def _brute_force(text, objects):
    if text in sw.UNINFORMATIVE_CAPTIONS:
        return True
    m = re.fullmatch(rf"(?:there is )?an? {_D}", text)
    if m:
        return any(_fits(_spec(*m.groups()), o) for o in objects)
    m = re.fullmatch(rf"(?:there is )?an? {_D} and an? {_D}", text)
    if m:
        a, b = _spec(*m.groups()[:3]), _spec(*m.groups()[3:])
        return any(_fits(a, p) and _fits(b, q) for p, q in itertools.permutations(objects, 2))
    m = re.fullmatch(rf"there is one {_D}", text) or re.fullmatch(rf"there are (two|three|four|five|six) {_DP}", text)
    if m:
        n = 1 if len(m.groups()) == 3 else _NUMBERS[m.group(1)]
        return sum(_fits(_spec(*m.groups()[-3:]), o) for o in objects) == n
    m = re.fullmatch(rf"there is no {_D}", text) or re.fullmatch(rf"there are no {_DP}", text)
    if m:
        return not any(_fits(_spec(*m.groups()), o) for o in objects)
    m = re.fullmatch(rf"the {_D} is ({_SIZE}|{_COL})", text)
    if m:
        found = [o for o in objects if _fits(_spec(*m.groups()[:3]), o)]
        return len(found) == 1 and m.group(4) in (found[0].size, found[0].colour)
    m = re.fullmatch(rf"the {_D} is (left of|right of|above|below) the {_D}", text)
    if m:
        first = [o for o in objects if _fits(_spec(*m.groups()[:3]), o)]
        second = [o for o in objects if _fits(_spec(*m.groups()[4:]), o)]
        if len(first) != 1 or len(second) != 1 or first[0] is second[0]:
            return False
        (a,), (b,), gap = first, second, sw.RELATION_MARGIN
        offsets = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}
        return offsets[m.group(4)] >= gap
    raise AssertionError(f"the test grammar does not cover {text!r}")


def _random_caption(rng, objects):
    """A random caption of the grammar, half the time built from the scene's own attributes."""

    def desc(plural=False):
        o = rng.choice(objects) if objects and rng.random() < 0.6 else None
        size = (o.size if o else rng.choice(sw.SIZES)) if rng.random() < 0.3 else None
        colour = (o.colour if o else rng.choice(sw.COLOURS)) if rng.random() < 0.7 else None
        shape = (o.shape if o else rng.choice(sw.SHAPES)) if rng.random() < 0.85 else None
        noun = ("objects" if plural else "object") if shape is None else (sw.SHAPE_PLURALS[shape] if plural else shape)
        return " ".join(w for w in (size, colour, noun) if w)

    def art(d):
        return ("an " if d[0] in "aeiou" else "a ") + d

    form = rng.randrange(9)
    if form == 0:
        return art(desc())
    if form == 1:
        return "there is " + art(desc())
    if form == 2:
        return f"the {desc()} is {rng.choice(sw.COLOURS + sw.SIZES)}"
    if form == 3:
        return f"there is one {desc()}"
    if form == 4:
        return f"there are {rng.choice(sw.NUMBER_WORDS[1:4])} {desc(True)}"
    if form == 5:
        return f"the {desc()} is {rng.choice(sw.RELATIONS)} the {desc()}"
    if form == 6:
        return ("there is " if rng.random() < 0.5 else "") + f"{art(desc())} and {art(desc())}"
    if form == 7:
        return f"there is no {desc()}" if rng.random() < 0.5 else f"there are no {desc(True)}"
    return rng.choice(sw.UNINFORMATIVE_CAPTIONS)


def test_caption_holds_agrees_with_brute_force_on_random_pairs():
    rng = random.Random(2024)
    scenes = sw.generate_scenes(WorldConfig(num_scenes=150, seed=21, min_objects=1, max_objects=5, zipf_exponent=1.5))
    for _ in range(50):  # hand-made scenes: anywhere, overlapping, or empty
        objects = [
            obj(rng.choice(sw.SHAPES), rng.choice(sw.COLOURS), rng.choice(sw.SIZES), rng.random(), rng.random())
            for _ in range(rng.randrange(0, 5))
        ]
        scenes.append(scene(*objects))
    outcomes = Counter()
    for _ in range(6000):
        s = rng.choice(scenes)
        text = _random_caption(rng, s.objects)
        expected = _brute_force(text, s.objects)
        assert caption_holds(text, s) is expected, (text, s)
        outcomes[expected] += 1
    assert min(outcomes.values()) > 1500


# ---------------------------------------------------------------------------------------------
# foils
# ---------------------------------------------------------------------------------------------


def _concepts(text):
    """The concept words of a caption, plural shape nouns made singular."""
    singular = {v: k for k, v in sw.SHAPE_PLURALS.items()}
    return [singular.get(w, w) for w in text.split() if sw.concept_category(w)]


def test_foils_are_false_parseable_and_minimal(examples):
    rng = random.Random(7)
    made = Counter()
    for e in examples[:250]:
        for c in e.clean:
            for kind in sw.FOIL_KINDS:
                foil = sw.make_foil(c.text, e.scene, kind, rng)
                if foil is None:
                    continue
                made[kind] += 1
                assert not caption_holds(foil, e.scene), (c.text, foil)
                before, after = _concepts(c.text), _concepts(foil)
                if kind in ("colour", "shape", "size", "count"):
                    assert len(before) == len(after) and sum(x != y for x, y in zip(before, after)) == 1, (c.text, foil)
                if kind == "binding_swap":
                    assert Counter(before) == Counter(after) and before != after
    assert set(made) == set(sw.FOIL_KINDS) and min(made.values()) > 20


def test_foil_examples_and_impossible_foils():
    s = scene(obj("circle", "red", x=0.2, y=0.5), obj("square", "blue", x=0.7, y=0.5))
    assert sw.make_foil("a red circle and a blue square", s, "binding_swap") == "a blue circle and a red square"
    assert sw.make_foil("the red circle is left of the blue square", s, "relation", 3) in {
        "the red circle is right of the blue square",
        "the red circle is above the blue square",
        "the red circle is below the blue square",
        "the blue square is left of the red circle",
    }
    assert sw.make_foil("there is one red circle", s, "count", np.random.default_rng(0)).startswith("there are ")
    assert sw.make_foil("there is a red circle", s, "existence") == "there is no red circle"
    assert sw.make_foil("there is no green star", s, "existence") == "there is a green star"
    assert sw.make_foil("a red circle", s, "colour", 1) not in (None, "a red circle")
    assert sw.make_foil("a red circle", s, "size") is None  # no size word to change
    assert sw.make_foil("a red circle", s, "count") is None and sw.make_foil("a red circle", s, "relation") is None
    assert sw.make_foil("a red circle", s, "binding_swap") is None
    assert sw.make_foil("a red object", s, "shape") is None
    # swapping the colours of a red and a blue circle gives a caption that is still true: no foil
    both = scene(obj("circle", "red", x=0.2, y=0.5), obj("circle", "blue", x=0.7, y=0.5))
    assert sw.make_foil("a red circle and a blue circle", both, "binding_swap") is None
    with pytest.raises(ValueError, match="foil kind"):
        sw.make_foil("a red circle", s, "texture")


# ---------------------------------------------------------------------------------------------
# concept frequencies and held-out pairs
# ---------------------------------------------------------------------------------------------


def _chi_square(counts, probabilities):
    total = sum(counts.values())
    return sum((counts.get(p, 0) - total * q) ** 2 / (total * q) for p, q in probabilities.items())


def test_pair_frequencies_follow_the_zipf_exponent():
    config = WorldConfig(num_scenes=6000, seed=31, zipf_exponent=1.0)
    counts = sw.concept_counts(sw.generate_scenes(config))
    probabilities = sw.pair_probabilities(config)
    assert len(probabilities) == 64 and sum(probabilities.values()) == pytest.approx(1.0)
    ranking = sw.pair_ranking(config.ranking_seed)
    assert probabilities[ranking[0]] / probabilities[ranking[9]] == pytest.approx(10.0)
    # chi-square with 63 degrees of freedom: mean 63, sd 11.2; a wrong exponent is far outside
    assert _chi_square(counts, probabilities) < 63 + 5 * 11.2
    wrong = sw.pair_probabilities(WorldConfig(zipf_exponent=0.8))
    assert _chi_square(counts, wrong) > 63 + 10 * 11.2
    slope = np.polyfit(np.log(np.arange(1, 17)), np.log([counts[p] for p in ranking[:16]]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.12)


def test_zipf_exponent_zero_is_uniform_and_ranking_is_fixed_by_its_seed():
    counts = sw.concept_counts(sw.generate_scenes(WorldConfig(num_scenes=4000, seed=3, zipf_exponent=0.0)))
    uniform = {p: 1 / 64 for p in sw.pair_ranking(0)}
    assert _chi_square(counts, uniform) < 63 + 5 * 11.2
    assert sw.pair_ranking(0) == sw.pair_ranking(0) and sw.pair_ranking(0) != sw.pair_ranking(1)
    assert sorted(sw.pair_ranking(1)) == sorted((c, s) for c in sw.COLOURS for s in sw.SHAPES)
    top = [
        sw.concept_counts(sw.generate_scenes(WorldConfig(num_scenes=300, seed=s))).most_common(1)[0][0] for s in (1, 2)
    ]
    assert top == [sw.pair_ranking(0)[0]] * 2  # the ranking does not move with the world seed


def test_held_out_pairs_never_appear_in_training_scenes_but_can_be_required():
    ranking = sw.pair_ranking(0)
    held = [ranking[0], ranking[5], "purple heart"]
    train = WorldConfig(num_scenes=1500, seed=2, held_out_pairs=held, noise_rate=0.3)
    train_examples = sw.generate_examples(train)
    counts = sw.concept_counts(train_examples)
    named = {
        (d.colour, d.shape)
        for e in train_examples
        for text in e.captions + tuple(c.text for c in e.clean)
        for d in sw.parse_caption(text).descs
    }
    assert not named & set(train.held_out_pairs)  # not even "there is no <held-out pair>"
    unrestricted = sw.generate_examples(WorldConfig(num_scenes=300, seed=2))
    named = {(d.colour, d.shape) for e in unrestricted for c in e.clean for d in sw.parse_caption(c.text).descs}
    assert named & set(train.held_out_pairs)  # the check above can fail
    assert train.held_out_pairs == tuple(sorted({ranking[0], ranking[5], ("purple", "heart")}))
    assert not set(train.held_out_pairs) & set(counts) and len(counts) == 61
    assert not set(train.held_out_pairs) & set(sw.pair_probabilities(train))
    evaluation = WorldConfig(num_scenes=200, seed=99, held_out_pairs=held, held_out_policy="require")
    for s in sw.generate_scenes(evaluation):
        assert {(o.colour, o.shape) for o in s.objects} & set(train.held_out_pairs)
    include = WorldConfig(num_scenes=500, seed=2, held_out_pairs=held, held_out_policy="include")
    included = sw.concept_counts(sw.generate_scenes(include))
    assert set(train.held_out_pairs) <= included.keys() and included[ranking[0]] > 100


# ---------------------------------------------------------------------------------------------
# caption noise
# ---------------------------------------------------------------------------------------------


def test_noise_rate_is_respected_and_noisy_captions_are_false_or_uninformative():
    config = WorldConfig(num_scenes=500, seed=17, noise_rate=0.3)
    clean = sw.generate_examples(WorldConfig(**{**config.to_dict(), "noise_rate": 0.0}))
    noisy = sw.generate_examples(config)
    kinds = Counter()
    for e, ref in zip(noisy, clean):
        assert e.clean == ref.clean  # clean captions are kept, identical to the noise-free world
        for text, clean_caption, kind, refs in zip(e.captions, e.clean, e.noise_kinds, e.refs):
            kinds[kind] += 1
            assert len(refs) == len(text.split()) and list(refs) == sw.caption_refs(text, e.scene)
            if kind == "clean":
                assert text == clean_caption.text
            elif kind == "uninformative":
                assert sw.is_uninformative(text) and caption_holds(text, e.scene)
            else:
                assert not caption_holds(text, e.scene), (kind, text)
            if kind == "partial":
                assert sw.caption_kind(text) in (clean_caption.kind, "existence", "attribute")
    total = sum(kinds.values())
    noisy_share = 1 - kinds["clean"] / total
    assert abs(noisy_share - 0.3) < 4 * (0.3 * 0.7 / total) ** 0.5
    assert min(kinds[k] for k in ("wrong", "partial", "uninformative")) > 0.2 * (total - kinds["clean"])


def test_noise_mix_selects_the_kinds():
    config = WorldConfig(num_scenes=100, seed=1, noise_rate=1.0, noise_mix=(0, 0, 1))
    assert {k for e in sw.generate_examples(config) for k in e.noise_kinds} == {"uninformative"}
    assert all(kind == "clean" for e in sw.generate_examples(WorldConfig(num_scenes=50)) for kind in e.noise_kinds)


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_scenes", 0),
        ("seed", -1),
        ("image_size", 8),
        ("image_size", 64.0),
        ("min_objects", 0),
        ("max_objects", 7),
        ("captions_per_scene", 0),
        ("zipf_exponent", -0.5),
        ("noise_rate", 1.5),
        ("background_noise", 0.9),
        ("caption_kinds", ("colour",)),
        ("caption_kinds", ()),
        ("held_out_pairs", [("red", "elephant")]),
        ("held_out_policy", "sometimes"),
        ("noise_mix", (1, 1)),
        ("held_out_pairs", [(c, s) for c in sw.COLOURS for s in sw.SHAPES]),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        WorldConfig(**{field: value})


def test_config_cross_field_checks_and_cache_key():
    with pytest.raises(ValueError, match=r"max_objects.*\[3, 6\]"):
        WorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="held_out_pairs"):
        WorldConfig(held_out_policy="require")
    assert WorldConfig(seed=1).cache_key() == WorldConfig(seed=1).cache_key() != WorldConfig(seed=2).cache_key()
    assert WorldConfig(zipf_exponent=1).cache_key() == WorldConfig(zipf_exponent=1.0).cache_key()
    with pytest.raises(ValueError, match="held_out_pairs"):
        WorldConfig(held_out_pairs=["red"])
    held = WorldConfig(held_out_pairs=["red circle"])
    assert held.cache_key() == WorldConfig(held_out_pairs=[("red", "circle")]).cache_key()
    assert WorldConfig(**json.loads(json.dumps(held.to_dict()))) == held


def test_caption_kinds_restrict_generation_with_fallback():
    examples = sw.generate_examples(WorldConfig(num_scenes=60, seed=3, caption_kinds=("relation",)))
    for e in examples:
        kinds = {c.kind for c in e.clean}
        # only objects whose (size, colour, shape) is unique can be named in a relation
        nameable = [t for t, n in Counter((o.size, o.colour, o.shape) for o in e.scene.objects).items() if n == 1]
        assert kinds == ({"relation"} if len(nameable) >= 2 else {"attribute"}), (kinds, e.scene)


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------


def test_build_dataset_columns_and_cache(tmp_path, monkeypatch):
    config = WorldConfig(num_scenes=24, seed=5, noise_rate=0.25, image_size=48)
    dataset = sw.build_dataset(config, cache_dir=tmp_path)
    assert dataset.column_names == [
        "image",
        "captions",
        "clean_captions",
        "caption_kinds",
        "noise_kinds",
        "caption_refs",
        "clean_caption_refs",
        "scene",
        "index",
    ]
    assert type(dataset.features["image"]).__name__ == "Image" and len(dataset) == 24
    examples = sw.generate_examples(config)
    for row, e in zip(dataset, examples):
        assert row["index"] == e.index and Scene.from_dict(row["scene"]) == e.scene
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), sw.render_scene(e.scene, 48))
        assert row["captions"] == list(e.captions) and row["clean_captions"] == [c.text for c in e.clean]
        assert row["caption_kinds"] == [c.kind for c in e.clean] and row["noise_kinds"] == list(e.noise_kinds)
        refs = json.loads(row["caption_refs"])
        assert [len(r) for r in refs] == [len(t.split()) for t in row["captions"]]
        assert json.loads(row["clean_caption_refs"]) == [list(c.refs) for c in e.clean]
    cached = os.path.join(tmp_path, f"shapes-{config.cache_key()}")
    assert os.path.exists(os.path.join(cached, "world_config.json"))
    assert all(f["filename"].startswith(str(cached)) for f in dataset.cache_files)

    def no_rebuild(_config):
        raise AssertionError("the second build must load from the cache")

    monkeypatch.setattr(shapes_dataset, "_build_in_memory", no_rebuild)
    again = sw.build_dataset(config, cache_dir=tmp_path)
    assert again["scene"] == dataset["scene"] and again["captions"] == dataset["captions"]
    with pytest.raises(AssertionError, match="cache"):
        sw.build_dataset(WorldConfig(num_scenes=24, seed=6), cache_dir=tmp_path)


def test_concept_counts_and_write_shapes_dataset(tmp_path):
    import datasets

    dataset = sw.write_shapes_dataset(tmp_path / "shapes", num_scenes=30, seed=4)
    loaded = datasets.load_from_disk(str(tmp_path / "shapes"))
    assert loaded["scene"] == dataset["scene"] and len(loaded) == 30
    saved = json.loads((tmp_path / "shapes" / "world_config.json").read_text())
    assert saved["num_scenes"] == 30 and saved["seed"] == 4 and saved["world_version"] == sw.WORLD_VERSION
    scenes = sw.generate_scenes(WorldConfig(num_scenes=30, seed=4))
    expected = Counter((o.colour, o.shape) for s in scenes for o in s.objects)
    assert sw.concept_counts(loaded) == expected == sw.concept_counts(scenes)
    assert sw.concept_counts([s.to_dict() for s in scenes]) == expected
    image = Image.open(io.BytesIO(loaded.with_format("arrow")[0]["image"][0].as_py()["bytes"]))
    assert image.format == "PNG" and image.size == (64, 64)
