"""The synthetic shapes world: VLP's embedded default dataset.

Seeded scenes of coloured shapes, rendered as small anti-aliased RGB images and captioned from a
small grammar. The world decides truth: :func:`caption_holds` parses any caption of the grammar
and evaluates it on a scene, so ITM negatives, foils, grouped-matching targets and evaluation items
never rely on "a different image is a mismatch".

Caption grammar (lowercase words, an optional trailing period)::

    caption    := uninformative                              kind
                | np                                         attribute   "a small red circle"
                | "there is" np                              attribute   "there is a blue square"
                | "the" desc "is" adjective                  attribute   "the circle is red"
                | "there is one" desc                        count       "there is one red star"
                | "there are" number desc-plural             count       "there are two green stars"
                | "the" desc "is" relation "the" desc        relation    "the red circle is left of the blue square"
                | ["there is"] np "and" np {"and" np}        binding     "a red circle and a blue square"
                | "there is no" desc | "there are no" desc-plural   existence   "there is no yellow heart"
    np         := ("a" | "an") desc
    desc       := [size] [colour] noun        noun: a shape, or "object" which matches any shape
    adjective  := colour | size
    relation   := "left of" | "right of" | "above" | "below"
    number     := "two" .. "six"

Truth (objects are matched by every attribute a description names):

- ``a D`` / ``there is a D``: at least one object matches D.
- ``the D is A``: exactly one object matches D, and it has attribute A.
- ``there is one D`` / ``there are N Ds``: exactly N objects match D.
- ``the D1 is R the D2``: D1 and D2 each match exactly one object, they are different objects and
  relation R holds between their centres (image coordinates, y grows downwards) by at least
  ``RELATION_MARGIN`` of the image side: left of ``x2 - x1 >= m``; right of ``x1 - x2 >= m``;
  above ``y2 - y1 >= m``; below ``y1 - y2 >= m``. Left/right (and above/below) are exclusive and
  both may be false; a definite description that does not pick out exactly one object makes the
  caption false.
- ``a D1 and a D2 ...``: distinct objects match the conjuncts (an injective assignment exists).
- ``there is no D`` / ``there are no Ds``: no object matches D.
- uninformative captions (``UNINFORMATIVE_CAPTIONS``, web alt-text like "a picture") hold for
  every scene: they say nothing false.

Caption refs: a description's words (with a count's number word and a predicated adjective) refer
to object i when the description matches exactly object i in the scene; every other word, and the
words of a description matching no or several objects, refer to nothing (None).

Scenes: 1..6 objects (``min_objects``/``max_objects``) at free positions with disjoint bounding
boxes; each object's (colour, shape) pair is drawn from a Zipf law over a fixed seeded ranking of
the 64 pairs, ``held_out_pairs`` excluded (or required, for evaluation). All randomness is a
function of (seed, scene index), so results do not depend on batching or workers. Rendering uses
analytic signed-distance coverage, vectorised over a batch (see ``tests/benchmarks/bench_data.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import os
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image

from .. import strict_json
from ..random_streams import WORLD_STREAMS

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond", "cross", "hexagon")
SHAPE_PLURALS = {shape: shape + ("es" if shape.endswith(("s", "x")) else "s") for shape in SHAPES}

#: Colour name -> RGB. Saturated, well apart from each other and from the grey background.
COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "yellow": (240, 220, 50),
    "purple": (150, 50, 200),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(COLOUR_RGB)
BACKGROUND_RGB = (128, 128, 128)

SIZES = ("small", "large")
#: Half side of an object's bounding box, as a fraction of the image side.
SIZE_RADIUS = {"small": 0.1, "large": 0.16}
_SIZE_OF_RADIUS = {r: size for size, r in SIZE_RADIUS.items()}

RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
MAX_OBJECTS = len(NUMBER_WORDS)

#: Minimum centre offset (fraction of the image side) for a spatial relation to hold.
RELATION_MARGIN = 0.1
#: Minimum gap between two objects' bounding boxes, and between a box and the image border.
PLACEMENT_MARGIN = 0.04
EDGE_MARGIN = 0.02

GENERIC_NOUN, GENERIC_PLURAL = "object", "objects"
UNINFORMATIVE_CAPTIONS = (
    "a picture",
    "an image",
    "a photo",
    "an illustration",
    "an image of some shapes",
    "a picture of some objects",
    "some shapes",
    "image",
)

CAPTION_KINDS = ("attribute", "count", "relation", "binding", "existence")
NOISE_KINDS = ("clean", "wrong", "partial", "uninformative")
FOIL_KINDS = ("colour", "shape", "size", "count", "relation", "binding_swap", "existence")
HELD_OUT_POLICIES = ("exclude", "include", "require")

#: Bumped whenever sampling, captions or rendering change, so on-disk caches are rebuilt.
WORLD_VERSION = 1

_SINGULAR_OF = {plural: shape for shape, plural in SHAPE_PLURALS.items()}
_RELATION_FIRST_WORDS = {rel.split()[0]: rel for rel in RELATIONS}
_NUMBER_VALUE = {word: i + 1 for i, word in enumerate(NUMBER_WORDS)}
_CATEGORY = {
    **{w: "colour" for w in COLOURS},
    **{w: "shape" for w in SHAPES},
    **{w: "shape" for w in SHAPE_PLURALS.values()},
    **{w: "size" for w in SIZES},
    **{w: "number" for w in NUMBER_WORDS},
    **{w: "relation" for rel in RELATIONS for w in rel.split() if w != "of"},
}


def concept_words() -> frozenset[str]:
    """All concept words (colours, shapes and their plurals, sizes, numbers, relation words)."""
    return frozenset(_CATEGORY)


def concept_category(word: str) -> str | None:
    """The concept category of a word ("colour", "shape", "size", "number", "relation") or None."""
    return _CATEGORY.get(word.lower())


def _article(word: str) -> str:
    """The indefinite article English puts before ``word``."""
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapeObject:
    """One object: its concepts and its centre (x, y) in [0, 1] image coordinates (y downwards)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self):
        if self.shape not in SHAPE_PLURALS or self.colour not in COLOUR_RGB or self.size not in SIZE_RADIUS:
            raise ValueError(f"unknown concept in {self!r}: shapes {SHAPES}, colours {COLOURS}, sizes {SIZES}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"object centre must lie in [0, 1]^2, got ({self.x}, {self.y})")

    @property
    def radius(self) -> float:
        """Half side of the bounding box as a fraction of the image side."""
        return SIZE_RADIUS[self.size]

    def box(self, image_size: int = 64) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) in pixels of an ``image_size`` image (floats, not rounded)."""
        r = self.radius
        x0, y0, x1, y1 = self.x - r, self.y - r, self.x + r, self.y + r
        return (x0 * image_size, y0 * image_size, x1 * image_size, y1 * image_size)


@dataclass(frozen=True, slots=True)
class Scene:
    """A scene: its objects, and the seed and strength of its background noise."""

    objects: tuple[ShapeObject, ...]
    background_seed: int = 0
    background_noise: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict; :meth:`from_dict` rebuilds an equal scene."""
        return {
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "x": o.x, "y": o.y} for o in self.objects
            ],
            "background_seed": self.background_seed,
            "background_noise": self.background_noise,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Rebuild a scene from :meth:`to_dict` output (or its JSON string)."""
        if isinstance(data, str):
            data = json.loads(data)
        objects = tuple(ShapeObject(**obj) for obj in data["objects"])
        return cls(objects, int(data.get("background_seed", 0)), float(data.get("background_noise", 0.0)))


def _as_scene(scene: Scene | dict | str) -> Scene:
    """Accept a Scene, its dict or its JSON string."""
    return scene if isinstance(scene, Scene) else Scene.from_dict(scene)


def boxes_overlap(a: ShapeObject, b: ShapeObject, margin: float = PLACEMENT_MARGIN) -> bool:
    """Whether the bounding boxes of two objects come closer than ``margin`` (image fraction)."""
    reach = a.radius + b.radius + margin
    return abs(a.x - b.x) < reach and abs(a.y - b.y) < reach


def relation_holds(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """Whether ``a`` is ``relation`` ``b``, on centres with the ``RELATION_MARGIN`` dead zone."""
    if relation == "left of":
        return b.x - a.x >= RELATION_MARGIN
    if relation == "right of":
        return a.x - b.x >= RELATION_MARGIN
    if relation == "above":
        return b.y - a.y >= RELATION_MARGIN
    if relation == "below":
        return a.y - b.y >= RELATION_MARGIN
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class WorldConfig:
    """Everything that determines a shapes-world dataset; equal configs give identical datasets."""

    num_scenes: int = 1000
    seed: int = 0
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    captions_per_scene: int = 4
    caption_kinds: tuple[str, ...] = CAPTION_KINDS
    zipf_exponent: float = 1.0
    ranking_seed: int = 0
    held_out_pairs: tuple = ()
    held_out_policy: str = "exclude"
    noise_rate: float = 0.0
    noise_mix: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background_noise: float = 0.0

    def __post_init__(self):
        self.caption_kinds = tuple(self.caption_kinds)
        self.held_out_pairs = _normalise_pairs(self.held_out_pairs)
        self.noise_mix = tuple(float(w) for w in self.noise_mix)
        _check_int("num_scenes", self.num_scenes, 1, 2**32 - 1)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("image_size", self.image_size, 16, 1024)
        _check_int("min_objects", self.min_objects, 1, MAX_OBJECTS)
        _check_int("max_objects", self.max_objects, self.min_objects, MAX_OBJECTS)
        _check_int("captions_per_scene", self.captions_per_scene, 1, 64)
        _check_int("ranking_seed", self.ranking_seed, 0, 2**63 - 1)
        _check_float("zipf_exponent", self.zipf_exponent, 0.0, 5.0)
        _check_float("noise_rate", self.noise_rate, 0.0, 1.0)
        _check_float("background_noise", self.background_noise, 0.0, 0.5)
        self._check_choices()
        # plain Python types, so that equal configs give equal cache keys
        for name in (
            "num_scenes",
            "seed",
            "image_size",
            "min_objects",
            "max_objects",
            "captions_per_scene",
            "ranking_seed",
        ):
            setattr(self, name, int(getattr(self, name)))
        for name in ("zipf_exponent", "noise_rate", "background_noise"):
            setattr(self, name, float(getattr(self, name)))

    def _check_choices(self):
        """Validate the fields that take words from a fixed set."""
        if not self.caption_kinds or any(k not in CAPTION_KINDS for k in self.caption_kinds):
            raise ValueError(
                f"WorldConfig.caption_kinds must be a non-empty subset of {CAPTION_KINDS}, got {self.caption_kinds}"
            )
        if self.held_out_policy not in HELD_OUT_POLICIES:
            raise ValueError(
                f"WorldConfig.held_out_policy must be one of {HELD_OUT_POLICIES}, got {self.held_out_policy!r}"
            )
        if len(self.held_out_pairs) >= len(COLOURS) * len(SHAPES):
            raise ValueError("WorldConfig.held_out_pairs must leave at least one colour-shape pair for training scenes")
        if self.held_out_policy == "require" and not self.held_out_pairs:
            raise ValueError("WorldConfig.held_out_pairs must be non-empty when held_out_policy='require'")
        if len(self.noise_mix) != 3 or min(self.noise_mix) < 0 or sum(self.noise_mix) <= 0:
            raise ValueError(
                "WorldConfig.noise_mix must be 3 non-negative weights (wrong, partial, uninformative) "
                f"with a positive sum, got {self.noise_mix}"
            )

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the fields."""
        data = dataclasses.asdict(self)
        data["held_out_pairs"] = [list(pair) for pair in self.held_out_pairs]
        return data

    def cache_key(self) -> str:
        """A short hash of the config and ``WORLD_VERSION``, naming its on-disk cache."""
        text = strict_json.dumps({"world_version": WORLD_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_int(name: str, value, low: int, high: int):
    """Raise a ValueError naming ``name`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"WorldConfig.{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_float(name: str, value, low: float, high: float):
    """Raise a ValueError naming ``name`` unless ``value`` is a number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not low <= value <= high:
        raise ValueError(f"WorldConfig.{name} must be a number in [{low}, {high}], got {value!r}")


def _normalise_pairs(pairs) -> tuple[tuple[str, str], ...]:
    """Held-out pairs as sorted (colour, shape) tuples; accepts "red circle" strings or 2-sequences."""
    result = set()
    for pair in pairs or ():
        words = tuple(pair.split() if isinstance(pair, str) else pair)
        if len(words) != 2 or words[0] not in COLOUR_RGB or words[1] not in SHAPE_PLURALS:
            raise ValueError(f"WorldConfig.held_out_pairs: {pair!r} is not a (colour, shape) pair")
        result.add(words)
    return tuple(sorted(result))


# --------------------------------------------------------------------------------------------
# Concept frequencies
# --------------------------------------------------------------------------------------------


@functools.cache
def pair_ranking(ranking_seed: int = 0) -> tuple[tuple[str, str], ...]:
    """The 64 (colour, shape) pairs, most frequent first, in a fixed order drawn from ``ranking_seed``."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return tuple(random.Random(ranking_seed).sample(pairs, len(pairs)))


def pair_probabilities(config: WorldConfig, held_out: bool = False) -> dict[tuple[str, str], float]:
    """Probability of each pair per object: Zipf over the ranking (held-out pairs excluded unless asked)."""
    excluded = () if held_out else config.held_out_pairs
    return dict(_zipf(config.zipf_exponent, config.ranking_seed, excluded))


@functools.lru_cache(maxsize=64)
def _zipf(exponent: float, ranking_seed: int, excluded: tuple) -> tuple[tuple[tuple[str, str], float], ...]:
    """(pair, probability) with probability proportional to 1 / rank**exponent over kept pairs."""
    ranking = pair_ranking(ranking_seed)
    weights = [(pair, 1.0 / (rank + 1) ** exponent) for rank, pair in enumerate(ranking) if pair not in excluded]
    total = sum(w for _, w in weights)
    return tuple((pair, w / total) for pair, w in weights)


@functools.lru_cache(maxsize=64)
def _pair_sampler(exponent: float, ranking_seed: int, excluded: tuple):
    """Pairs and cumulative weights for ``random.choices``."""
    table = _zipf(exponent, ranking_seed, excluded)
    return tuple(p for p, _ in table), tuple(itertools.accumulate(w for _, w in table))


def concept_counts(source) -> Counter:
    """Count objects per (colour, shape) pair in a dataset (its ``scene`` column) or scenes."""
    if hasattr(source, "column_names"):
        source = source["scene"]
    counts: Counter = Counter()
    for item in source:
        scene = item.scene if isinstance(item, WorldExample) else _as_scene(item)
        counts.update((o.colour, o.shape) for o in scene.objects)
    return counts


# --------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------

_SCENE_STREAM, _NOISE_STREAM = WORLD_STREAMS["scene"], WORLD_STREAMS["noise"]


def _stream(seed: int, index: int, purpose: int) -> random.Random:
    """An independent random stream per (seed, scene index, purpose), so nothing depends on batching."""
    return random.Random(((seed << 32) | index) << 2 | purpose)


def _pick(rng: random.Random, items: Sequence):
    """A uniform choice (``random.choice`` without its per-call overhead: this is the hot path)."""
    return items[int(rng.random() * len(items))]


def _pick_two(rng: random.Random, items: Sequence) -> tuple:
    """Two items at distinct positions, in random order."""
    i, j = int(rng.random() * len(items)), int(rng.random() * (len(items) - 1))
    return items[i], items[j + (j >= i)]


def _sample_pairs(rng: random.Random, config: WorldConfig, n: int) -> list[tuple[str, str]]:
    """Draw ``n`` (colour, shape) pairs under the config's Zipf law and held-out policy."""
    excluded = () if config.held_out_policy == "include" else config.held_out_pairs
    pairs, cum = _pair_sampler(config.zipf_exponent, config.ranking_seed, excluded)
    drawn = rng.choices(pairs, cum_weights=cum, k=n)
    if config.held_out_policy == "require":
        drawn[int(rng.random() * n)] = _pick(rng, config.held_out_pairs)
    return drawn


def _place(rng: random.Random, sizes: list[str]) -> list[tuple[float, float, str]]:
    """Free positions (x, y, size) whose boxes are disjoint with margin and inside the image.

    In crowded scenes a large object that finds no room is made small (at most four large
    objects fit); when even that fails the whole placement starts again.
    """
    for _ in range(1000):
        placed: list[tuple[float, float, float]] = []
        for size in sizes:
            spot = _free_spot(rng, SIZE_RADIUS[size], placed)
            if spot is None and size != "small":
                spot = _free_spot(rng, SIZE_RADIUS["small"], placed)
            if spot is None:
                break
            placed.append(spot)
        else:
            return [(x, y, _SIZE_OF_RADIUS[r]) for x, y, r in placed]
    raise RuntimeError(f"could not place {len(sizes)} objects without overlap")


def _free_spot(rng: random.Random, r: float, placed: list) -> tuple[float, float, float] | None:
    """Rejection-sample a centre for a box of half side ``r`` that keeps clear of ``placed``."""
    low, span = (r + EDGE_MARGIN) * 1e4, (1.0 - 2 * (r + EDGE_MARGIN)) * 1e4
    for _ in range(50):
        x, y = int(low + span * rng.random()) / 1e4, int(low + span * rng.random()) / 1e4  # 4 decimals
        for px, py, pr in placed:
            reach = r + pr + PLACEMENT_MARGIN
            if abs(x - px) < reach and abs(y - py) < reach:
                break
        else:
            return x, y, r
    return None


def _sample_objects(rng: random.Random, config: WorldConfig) -> tuple[ShapeObject, ...]:
    """Draw the objects of one scene: how many, their concepts, then non-overlapping positions."""
    n = config.min_objects + int(rng.random() * (config.max_objects - config.min_objects + 1))
    pairs = _sample_pairs(rng, config, n)
    spots = _place(rng, [SIZES[rng.random() < 0.5] for _ in range(n)])
    return tuple(ShapeObject(shape, colour, size, x, y) for (colour, shape), (x, y, size) in zip(pairs, spots))


def sample_scene(config: WorldConfig, index: int) -> Scene:
    """Scene number ``index`` of the world ``config`` (a pure function of seed and index)."""
    return _scene_and_stream(config, index)[0]


def _scene_and_stream(config: WorldConfig, index: int) -> tuple[Scene, random.Random]:
    """The scene and its random stream, which captions continue so that they never change the scene."""
    rng = _stream(config.seed, index, _SCENE_STREAM)
    objects = _sample_objects(rng, config)
    return Scene(objects, rng.getrandbits(31), float(config.background_noise)), rng


def generate_scenes(config: WorldConfig, start: int = 0, stop: int | None = None) -> list[Scene]:
    """Scenes ``start`` .. ``stop`` (default: all ``num_scenes``) of the world ``config``."""
    stop = config.num_scenes if stop is None else stop
    return [sample_scene(config, i) for i in range(start, stop)]


# --------------------------------------------------------------------------------------------
# Caption structure: parsing, text and truth
# --------------------------------------------------------------------------------------------


class Desc(NamedTuple):
    """A description: the attributes it names (None = unnamed; shape None is the noun "object")."""

    size: str | None
    colour: str | None
    shape: str | None


class Clause(NamedTuple):
    """A parsed caption.

    ``op`` is one of exists, predicate, count, relation, binding, absent, uninformative;
    ``arg`` the adjective, number, relation or uninformative text; ``variant`` the surface form.
    """

    op: str
    descs: tuple[Desc, ...]
    arg: object = None
    variant: str = ""


_KIND_OF_OP = {
    "exists": "attribute",
    "predicate": "attribute",
    "count": "count",
    "relation": "relation",
    "binding": "binding",
    "absent": "existence",
    "uninformative": "uninformative",
}


@dataclass(frozen=True, slots=True)
class Caption:
    """A caption: its text, kind, and per word the index of the object it refers to (or None)."""

    text: str
    kind: str
    refs: tuple[int | None, ...]


def _matches(desc: Desc, obj: ShapeObject) -> bool:
    """Whether ``obj`` has every attribute ``desc`` names."""
    return (
        (desc.shape is None or desc.shape == obj.shape)
        and (desc.colour is None or desc.colour == obj.colour)
        and (desc.size is None or desc.size == obj.size)
    )


def _matching(desc: Desc, objects: Sequence[ShapeObject]) -> list[int]:
    """Indices of the objects ``desc`` matches."""
    size, colour, shape = desc
    return [
        i
        for i, o in enumerate(objects)
        if (shape is None or shape == o.shape)
        and (colour is None or colour == o.colour)
        and (size is None or size == o.size)
    ]


def _unique(desc: Desc, objects: Sequence[ShapeObject]) -> int | None:
    """The index of the only object ``desc`` matches, or None when it matches none or several."""
    found = _matching(desc, objects)
    return found[0] if len(found) == 1 else None


def _has_injective_match(descs: Sequence[Desc], objects: Sequence[ShapeObject]) -> bool:
    """Whether distinct objects can be assigned to all descriptions (small sets: brute force)."""
    options = [_matching(d, objects) for d in descs]
    if any(not opt for opt in options):
        return False
    return any(len(set(choice)) == len(choice) for choice in itertools.product(*options))


def _evaluate(clause: Clause, objects: Sequence[ShapeObject]) -> bool:
    """The truth of a parsed caption in a scene (see the module docstring for the definitions)."""
    op, descs = clause.op, clause.descs
    if op == "exists":
        return any(_matches(descs[0], o) for o in objects)
    if op == "absent":
        return not any(_matches(descs[0], o) for o in objects)
    if op == "count":
        return len(_matching(descs[0], objects)) == clause.arg
    if op == "predicate":
        i = _unique(descs[0], objects)
        return i is not None and clause.arg in (objects[i].colour, objects[i].size)
    if op == "relation":
        a, b = _unique(descs[0], objects), _unique(descs[1], objects)
        return a is not None and b is not None and a != b and relation_holds(objects[a], clause.arg, objects[b])
    if op == "binding":
        return _has_injective_match(descs, objects)
    return op == "uninformative"


def _normalise_text(text: str) -> list[str]:
    """Lowercase words of a caption, without a trailing period."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a string, got {text!r}")
    return text.strip().lower().rstrip(".").split()


_UNINFORMATIVE = frozenset(UNINFORMATIVE_CAPTIONS)


@functools.lru_cache(maxsize=65536)
def parse_caption(text: str) -> Clause:
    """Parse a caption of the grammar; raise ValueError naming the caption when it is outside it."""
    words = _normalise_text(text)
    try:
        return _parse_words(words)
    except (ValueError, IndexError, KeyError) as error:
        raise ValueError(f"caption {text!r} is outside the shapes-world grammar ({error})") from None


def _parse_words(words: list[str]) -> Clause:
    """Dispatch on the opening words of a normalised caption."""
    joined = " ".join(words)
    if joined in _UNINFORMATIVE:
        return Clause("uninformative", (), joined)
    if words[:2] == ["there", "is"]:
        return _parse_there_is(words[2:])
    if words[:2] == ["there", "are"]:
        return _parse_there_are(words[2:])
    if words[0] == "the":
        return _parse_definite(words[1:])
    if words[0] in ("a", "an"):
        return _parse_noun_phrases(words, "bare")
    raise ValueError(f"unexpected opening word {words[0]!r}")


def _parse_there_is(words: list[str]) -> Clause:
    """``there is`` + (no desc | one desc | np [and np ...])."""
    if words[0] == "no":
        return Clause("absent", (_parse_desc(words[1:], plural=False),), None, "singular")
    if words[0] == "one":
        return Clause("count", (_parse_desc(words[1:], plural=False),), 1)
    return _parse_noun_phrases(words, "there is")


def _parse_there_are(words: list[str]) -> Clause:
    """``there are`` + (no | number >= 2) + plural desc."""
    if words[0] == "no":
        return Clause("absent", (_parse_desc(words[1:], plural=True),), None, "plural")
    n = _NUMBER_VALUE.get(words[0])
    if n is None or n < 2:
        raise ValueError(f"'there are' needs 'no' or a number from two to {NUMBER_WORDS[-1]}, got {words[0]!r}")
    return Clause("count", (_parse_desc(words[1:], plural=True),), n)


def _parse_definite(words: list[str]) -> Clause:
    """``the D is`` + (adjective | relation ``the`` D)."""
    verb = words.index("is")
    subject, rest = _parse_desc(words[:verb], plural=False), words[verb + 1 :]
    if len(rest) == 1 and (rest[0] in COLOUR_RGB or rest[0] in SIZE_RADIUS):
        return Clause("predicate", (subject,), rest[0])
    relation = _RELATION_FIRST_WORDS[rest[0]]
    width = len(relation.split())
    if " ".join(rest[:width]) != relation or rest[width] != "the":
        raise ValueError(f"expected '<relation> the <description>' after 'is', got {' '.join(rest)!r}")
    return Clause("relation", (subject, _parse_desc(rest[width + 1 :], plural=False)), relation)


def _parse_noun_phrases(words: list[str], variant: str) -> Clause:
    """One or more ``a D`` joined by ``and``: an existential or a binding caption."""
    descs, current = [], []
    for word in words + ["and"]:
        if word != "and":
            current.append(word)
            continue
        if not current or current[0] not in ("a", "an"):
            raise ValueError("each conjunct must start with 'a' or 'an'")
        descs.append(_parse_desc(current[1:], plural=False))
        current = []
    return Clause("exists" if len(descs) == 1 else "binding", tuple(descs), None, variant)


def _parse_desc(words: list[str], plural: bool) -> Desc:
    """``[size] [colour] noun`` with the noun in the required number."""
    if not words:
        raise ValueError("missing description")
    *modifiers, noun = words
    size = modifiers.pop(0) if modifiers and modifiers[0] in SIZE_RADIUS else None
    colour = modifiers.pop(0) if modifiers and modifiers[0] in COLOUR_RGB else None
    if modifiers:
        raise ValueError(f"unexpected words {' '.join(modifiers)!r} in a description")
    if plural:
        shape = None if noun == GENERIC_PLURAL else _SINGULAR_OF[noun]
    else:
        shape = None if noun == GENERIC_NOUN else _shape_word(noun)
    return Desc(size, colour, shape)


def _shape_word(noun: str) -> str:
    """A singular shape noun, or a KeyError naming the word."""
    if noun not in SHAPE_PLURALS:
        raise KeyError(f"{noun!r} is not a singular shape noun")
    return noun


def caption_holds(caption: str, scene: Scene | dict | str) -> bool:
    """Whether a caption of the grammar is true of a scene; ValueError for text outside the grammar."""
    return _evaluate(parse_caption(caption), _as_scene(scene).objects)


def caption_kind(caption: str) -> str:
    """The kind of a caption ("attribute", "count", "relation", "binding", "existence", "uninformative")."""
    return _KIND_OF_OP[parse_caption(caption).op]


def is_uninformative(caption: str) -> bool:
    """Whether a caption is one of the uninformative alt-text captions."""
    return " ".join(_normalise_text(caption)) in _UNINFORMATIVE


def _desc_words(desc: Desc, plural: bool = False) -> list[str]:
    """Words of a description."""
    if desc.shape is None:
        noun = GENERIC_PLURAL if plural else GENERIC_NOUN
    else:
        noun = SHAPE_PLURALS[desc.shape] if plural else desc.shape
    return [w for w in (desc.size, desc.colour) if w is not None] + [noun]


def _words_and_refs(clause: Clause, objects: Sequence[ShapeObject]) -> tuple[list[str], list[int | None]]:
    """Words of a caption and, per word, the object it refers to.

    A description's words (and a count's number word, and a predicated adjective) refer to object i
    when the description matches exactly object i; all other words refer to nothing (None).
    """
    op, descs, arg = clause.op, clause.descs, clause.arg
    if op in ("exists", "binding"):
        words, refs = (["there", "is"], [None, None]) if clause.variant == "there is" else ([], [])
        for k, desc in enumerate(descs):
            dw = _desc_words(desc)
            words += ["and", _article(dw[0]), *dw] if k else [_article(dw[0]), *dw]
            refs += [None] * (2 if k else 1) + [_unique(desc, objects)] * len(dw)
        return words, refs
    if op == "count":
        ref, dw = _unique(descs[0], objects), _desc_words(descs[0], arg > 1)
        head = ["there", "is"] if arg == 1 else ["there", "are"]
        return head + [NUMBER_WORDS[arg - 1], *dw], [None, None] + [ref] * (len(dw) + 1)
    if op == "absent":
        plural = clause.variant == "plural"
        words = ["there", "are", "no"] if plural else ["there", "is", "no"]
        words += _desc_words(descs[0], plural)
        return words, [None] * len(words)
    if op == "predicate":
        ref, dw = _unique(descs[0], objects), _desc_words(descs[0])
        return ["the", *dw, "is", arg], [None] + [ref] * len(dw) + [None, ref]
    if op == "relation":
        da, db, rel = _desc_words(descs[0]), _desc_words(descs[1]), arg.split()
        words = ["the", *da, "is", *rel, "the", *db]
        refs = [None] + [_unique(descs[0], objects)] * len(da) + [None] * (len(rel) + 2)
        return words, refs + [_unique(descs[1], objects)] * len(db)
    if op == "uninformative":
        words = arg.split()
        return words, [None] * len(words)
    raise ValueError(f"unknown clause op {op!r}")


def clause_text(clause: Clause) -> str:
    """The caption text of a parsed caption."""
    return " ".join(_words_and_refs(clause, ())[0])


def caption_refs(caption: str, scene: Scene | dict | str) -> list[int | None]:
    """Per word of ``caption``, the index of the scene object it refers to, or None."""
    return _words_and_refs(parse_caption(caption), _as_scene(scene).objects)[1]


def _make_caption(clause: Clause, objects: Sequence[ShapeObject]) -> Caption:
    """A Caption record (text, kind, refs) for a clause in a scene."""
    words, refs = _words_and_refs(clause, objects)
    return Caption(" ".join(words), _KIND_OF_OP[clause.op], tuple(refs))


# --------------------------------------------------------------------------------------------
# Caption generation
# --------------------------------------------------------------------------------------------


def _full_desc(obj: ShapeObject) -> Desc:
    """The description naming all three attributes of an object."""
    return Desc(obj.size, obj.colour, obj.shape)


def _shape_descs(obj: ShapeObject) -> list[Desc]:
    """Descriptions of an object built on its shape noun, shortest first."""
    s, c, z = obj.shape, obj.colour, obj.size
    return [Desc(None, None, s), Desc(None, c, s), Desc(z, None, s), Desc(z, c, s)]


def _unique_descs(objects: Sequence[ShapeObject]) -> list[list[Desc]]:
    """Per object, the shape-based descriptions that pick it out alone."""
    keyed = [_shape_descs(o) for o in objects]
    counts = Counter(d for descs in keyed for d in descs)
    return [[d for d in descs if counts[d] == 1] for descs in keyed]


def _gen_attribute(rng: random.Random, objects: Sequence[ShapeObject]) -> Clause | None:
    """ "a small red circle", "there is a blue square" or "the circle is red" about one object."""
    i = int(rng.random() * len(objects))
    obj = objects[i]
    if rng.random() < 0.2:
        adjective = obj.colour if rng.random() < 0.6 else obj.size
        subjects = [d for d in _unique_descs(objects)[i] if adjective not in (d.colour, d.size)]
        if subjects:
            return Clause("predicate", (_pick(rng, subjects),), adjective)
    colour = obj.colour if rng.random() < 0.85 else None
    shape = obj.shape if colour is None or rng.random() < 0.9 else None
    size = obj.size if rng.random() < 0.4 else None
    return Clause("exists", (Desc(size, colour, shape),), None, "bare" if rng.random() < 0.5 else "there is")


def _gen_count(rng: random.Random, objects: Sequence[ShapeObject]) -> Clause | None:
    """ "there are two green stars": the exact number of objects matching a description."""
    obj = _pick(rng, objects)
    s, c, z = obj.shape, obj.colour, obj.size
    desc = _pick(rng, (Desc(None, None, s), Desc(None, c, s), Desc(z, None, s), Desc(None, None, None)))
    return Clause("count", (desc,), len(_matching(desc, objects)))


def _gen_relation(rng: random.Random, objects: Sequence[ShapeObject]) -> Clause | None:
    """ "the red circle is left of the blue square", between two uniquely described objects."""
    describable = [(i, d) for i, d in enumerate(_unique_descs(objects)) if d]
    if len(describable) < 2:
        return None
    (a, descs_a), (b, descs_b) = _pick_two(rng, describable)
    relations = [r for r in RELATIONS if relation_holds(objects[a], r, objects[b])]
    if not relations:
        return None
    return Clause("relation", (_pick(rng, descs_a), _pick(rng, descs_b)), _pick(rng, relations))


def _gen_binding(rng: random.Random, objects: Sequence[ShapeObject]) -> Clause | None:
    """ "a red circle and a blue square": two different objects with colour bound to shape."""
    if len(objects) < 2:
        return None
    for _ in range(4):
        a, b = _pick_two(rng, objects)
        da, db = (Desc(o.size if rng.random() < 0.25 else None, o.colour, o.shape) for o in (a, b))
        if (a.colour, a.shape) != (b.colour, b.shape):
            return Clause("binding", (da, db), None, "bare" if rng.random() < 0.5 else "there is")
    return None


def _gen_existence(rng: random.Random, objects: Sequence[ShapeObject]) -> Clause | None:
    """ "there is no yellow heart": a colour-shape pair absent from the scene, often a near miss."""
    for _ in range(8):
        if rng.random() < 0.6:
            obj = _pick(rng, objects)
            colour, shape = obj.colour, obj.shape
            if rng.random() < 0.5:
                colour = _pick(rng, COLOURS)
            else:
                shape = _pick(rng, SHAPES)
        else:
            colour, shape = _pick(rng, COLOURS), _pick(rng, SHAPES)
        desc = Desc(_pick(rng, SIZES) if rng.random() < 0.2 else None, colour, shape)
        if not _matching(desc, objects):
            return Clause("absent", (desc,), None, "plural" if rng.random() < 0.3 else "singular")
    present = {(o.colour, o.shape) for o in objects}
    colour, shape = next(p for p in pair_ranking(0) if p not in present)
    return Clause("absent", (Desc(None, colour, shape),), None, "singular")


_GENERATORS = {
    "attribute": _gen_attribute,
    "count": _gen_count,
    "relation": _gen_relation,
    "binding": _gen_binding,
    "existence": _gen_existence,
}


def _mentions(clause: Clause, pairs: Sequence[tuple[str, str]]) -> bool:
    """Whether a caption names one of the (colour, shape) pairs."""
    return any((d.colour, d.shape) in pairs for d in clause.descs)


def _gen_clause(rng: random.Random, kinds: Sequence[str], objects: Sequence[ShapeObject], avoid: tuple = ()) -> Clause:
    """A true caption of a random kind that names no ``avoid`` pair; impossible kinds fall back to others."""
    first = _pick(rng, kinds)
    for kind in [first, *kinds, "attribute"]:
        clause = _GENERATORS[kind](rng, objects)
        if clause is not None and not (avoid and _mentions(clause, avoid)):
            return clause
    raise AssertionError("attribute captions about the scene's own objects are always possible")


def generate_captions(
    scene: Scene, rng: random.Random, count: int = 4, kinds: Sequence[str] = CAPTION_KINDS, avoid_pairs: tuple = ()
) -> list[Caption]:
    """``count`` true captions of the scene, avoiding repeats when the scene allows.

    Captions never name an ``avoid_pairs`` (colour, shape) pair, not even to deny it, so held-out
    pairs stay unseen in training text as well as in training images.
    """
    objects, seen, captions = scene.objects, set(), []
    for _ in range(count):
        for _attempt in range(4):
            caption = _make_caption(_gen_clause(rng, kinds, objects, avoid_pairs), objects)
            if caption.text not in seen:
                break
        seen.add(caption.text)
        captions.append(caption)
    return captions


# --------------------------------------------------------------------------------------------
# Foils and noise
# --------------------------------------------------------------------------------------------


def _replace_desc(clause: Clause, k: int, desc: Desc) -> Clause:
    """The clause with its ``k``-th description replaced."""
    descs = list(clause.descs)
    descs[k] = desc
    return clause._replace(descs=tuple(descs))


def _word_swaps(clause: Clause, attribute: str, vocabulary: Sequence[str]) -> list[Clause]:
    """Clauses with one ``attribute`` word (in a description or as the predicate) replaced."""
    out = [
        _replace_desc(clause, k, d._replace(**{attribute: word}))
        for k, d in enumerate(clause.descs)
        if getattr(d, attribute) is not None
        for word in vocabulary
        if word != getattr(d, attribute)
    ]
    if clause.op == "predicate" and clause.arg in vocabulary:
        out += [clause._replace(arg=word) for word in vocabulary if word != clause.arg]
    return out


def _count_swaps(clause: Clause) -> list[Clause]:
    """A count caption with every other number."""
    if clause.op != "count":
        return []
    return [clause._replace(arg=n) for n in range(1, MAX_OBJECTS + 1) if n != clause.arg]


def _relation_swaps(clause: Clause) -> list[Clause]:
    """A relation caption with each other relation, and with its two descriptions swapped."""
    if clause.op != "relation":
        return []
    others = [clause._replace(arg=r) for r in RELATIONS if r != clause.arg]
    return others + [clause._replace(descs=clause.descs[::-1])]


def _binding_swaps(clause: Clause) -> list[Clause]:
    """Swap one attribute (colour, shape or size) between two descriptions of the caption."""
    out = []
    for i, j in itertools.combinations(range(len(clause.descs)), 2):
        a, b = clause.descs[i], clause.descs[j]
        for attribute in ("colour", "shape", "size"):
            va, vb = getattr(a, attribute), getattr(b, attribute)
            if va is not None and vb is not None and va != vb:
                swapped = _replace_desc(clause, i, a._replace(**{attribute: vb}))
                out.append(_replace_desc(swapped, j, b._replace(**{attribute: va})))
    return out


def _existence_flips(clause: Clause) -> list[Clause]:
    """Existential <-> negated captions ("there is a D" <-> "there is no D"; counts -> "there are no")."""
    if clause.op == "exists":
        return [Clause("absent", clause.descs, None, "singular")]
    if clause.op == "absent":
        return [Clause("exists", clause.descs, None, "there is")]
    if clause.op == "count":
        return [Clause("absent", clause.descs, None, "plural")]
    return []


def _foil_candidates(clause: Clause, kind: str) -> list[Clause]:
    """Edited versions of a caption for one foil kind (not yet checked against a scene)."""
    if kind == "colour":
        return _word_swaps(clause, "colour", COLOURS)
    if kind == "shape":
        return _word_swaps(clause, "shape", SHAPES)
    if kind == "size":
        return _word_swaps(clause, "size", SIZES)
    if kind == "count":
        return _count_swaps(clause)
    if kind == "relation":
        return _relation_swaps(clause)
    if kind == "binding_swap":
        return _binding_swaps(clause)
    if kind == "existence":
        return _existence_flips(clause)
    raise ValueError(f"unknown foil kind {kind!r}; expected one of {FOIL_KINDS}")


def _as_random(rng) -> random.Random:
    """A ``random.Random`` from None, an int seed, a Random or a numpy Generator."""
    if isinstance(rng, random.Random):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return random.Random(0 if rng is None else int(rng))
    if hasattr(rng, "integers"):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    raise TypeError(f"rng must be None, an int, random.Random or numpy Generator, got {type(rng).__name__}")


def _foil_clause(clause: Clause, objects: Sequence[ShapeObject], kind: str, rng: random.Random) -> Clause | None:
    """A random edit of one kind that is false in the scene, or None when there is none."""
    candidates = _foil_candidates(clause, kind)
    rng.shuffle(candidates)
    return next((c for c in candidates if not _evaluate(c, objects)), None)


def make_foil(caption: str, scene: Scene | dict | str, kind: str, rng=None) -> str | None:
    """A minimally edited caption of one ``FOIL_KINDS`` kind that is false for the scene, or None."""
    clause = parse_caption(caption)
    return _maybe_text(_foil_clause(clause, _as_scene(scene).objects, kind, _as_random(rng)))


def make_foils(caption: str, scene: Scene | dict | str, kind: str) -> list[str]:
    """Every distinct minimal edit of one ``FOIL_KINDS`` kind that is false for the scene, in a fixed order.

    The candidates :func:`make_foil` draws from, for callers that filter them (evaluation sets).
    """
    clause, objects = parse_caption(caption), _as_scene(scene).objects
    texts = [clause_text(c) for c in _foil_candidates(clause, kind) if not _evaluate(c, objects)]
    return list(dict.fromkeys(texts))


def _maybe_text(clause: Clause | None) -> str | None:
    """Caption text of a clause, passing None through."""
    return None if clause is None else clause_text(clause)


_PARTIAL_KINDS = ("colour", "shape", "size", "count", "relation", "existence")


def _partial_caption(rng: random.Random, clause: Clause, objects: Sequence[ShapeObject], avoid: tuple) -> Clause | None:
    """The caption with one word (or relation phrase) changed so that it becomes false."""
    kinds = list(_PARTIAL_KINDS)
    rng.shuffle(kinds)
    for kind in kinds:
        candidates = _foil_candidates(clause, kind)
        rng.shuffle(candidates)
        for foil in candidates:
            if not _evaluate(foil, objects) and not (avoid and _mentions(foil, avoid)):
                return foil
    return None


def _wrong_caption(rng: random.Random, config: WorldConfig, objects: Sequence[ShapeObject], avoid: tuple) -> Clause:
    """A caption of another random scene of the world that is false for this one."""
    for _ in range(8):
        other = _sample_objects(rng, config)
        clause = _gen_clause(rng, config.caption_kinds, other, avoid)
        if not _evaluate(clause, objects):
            return clause
    return Clause("absent", (_full_desc(_pick(rng, objects)),), None, "singular")


def _noisy_caption(rng: random.Random, config: WorldConfig, clause: Clause, objects) -> tuple[str, str]:
    """Replace a clean caption by a wrong, partly wrong or uninformative one: (text, noise kind)."""
    kind = rng.choices(NOISE_KINDS[1:], weights=config.noise_mix)[0]
    if kind == "uninformative":
        return _pick(rng, UNINFORMATIVE_CAPTIONS), kind
    avoid = _avoided_pairs(config)
    noisy = _partial_caption(rng, clause, objects, avoid) if kind == "partial" else None
    if noisy is None:
        noisy, kind = _wrong_caption(rng, config, objects, avoid), "wrong"
    return clause_text(noisy), kind


def _avoided_pairs(config: WorldConfig) -> tuple:
    """Pairs that training text must not name: the held-out pairs, unless the world shows them."""
    return config.held_out_pairs if config.held_out_policy == "exclude" else ()


# --------------------------------------------------------------------------------------------
# Examples (scene + captions + noise)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorldExample:
    """One dataset row before rendering: the scene, clean captions and what training sees."""

    index: int
    scene: Scene
    clean: tuple[Caption, ...]
    captions: tuple[str, ...]
    noise_kinds: tuple[str, ...]
    refs: tuple[tuple[int | None, ...], ...] = field(repr=False)


def make_example(config: WorldConfig, index: int) -> WorldExample:
    """Example ``index`` of the world: its scene, clean captions and (possibly noisy) training captions."""
    scene, rng = _scene_and_stream(config, index)
    clean = generate_captions(scene, rng, config.captions_per_scene, config.caption_kinds, _avoided_pairs(config))
    texts, kinds, refs = [c.text for c in clean], ["clean"] * len(clean), [c.refs for c in clean]
    if config.noise_rate > 0:
        noise_rng = _stream(config.seed, index, _NOISE_STREAM)
        for k, caption in enumerate(clean):
            if noise_rng.random() < config.noise_rate:
                clause = parse_caption(caption.text)
                texts[k], kinds[k] = _noisy_caption(noise_rng, config, clause, scene.objects)
                refs[k] = tuple(caption_refs(texts[k], scene))
    return WorldExample(index, scene, tuple(clean), tuple(texts), tuple(kinds), tuple(refs))


def generate_examples(config: WorldConfig, start: int = 0, stop: int | None = None) -> list[WorldExample]:
    """Examples ``start`` .. ``stop`` (default: all ``num_scenes``) of the world."""
    stop = config.num_scenes if stop is None else stop
    return [make_example(config, i) for i in range(start, stop)]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
# Each shape is a signed distance function in unit coordinates (its bounding box is [-1, 1]^2,
# u_y grows downwards), after Inigo Quilez's 2D distance functions. Coverage of a pixel is
# clip(0.5 - distance_in_pixels, 0, 1): analytic anti-aliasing, one evaluation per pixel.

_SQRT3 = math.sqrt(3.0)


def _sdf_box(ux, uy, hx: float, hy: float):
    """Axis-aligned rectangle with half sides (hx, hy)."""
    qx, qy = np.abs(ux) - hx, np.abs(uy) - hy
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sdf_circle(ux, uy):
    """Circle filling its box."""
    return np.sqrt(ux * ux + uy * uy) - 1.0


def _sdf_square(ux, uy):
    """Square, a little inside its box so its area is close to the circle's."""
    return _sdf_box(ux, uy, 0.8, 0.8)


def _sdf_cross(ux, uy):
    """Plus-shaped cross: the union of two bars."""
    return np.minimum(_sdf_box(ux, uy, 0.95, 0.32), _sdf_box(ux, uy, 0.32, 0.95))


def _sdf_diamond(ux, uy, bx: float = 0.8, by: float = 1.0):
    """Rhombus, taller than wide (half diagonals bx, by), so it is not a turned square."""
    px, py = np.abs(ux), np.abs(uy)
    h = np.clip(((bx - 2 * px) * bx - (by - 2 * py) * by) / (bx * bx + by * by), -1.0, 1.0)
    dx, dy = px - 0.5 * bx * (1 - h), py - 0.5 * by * (1 + h)
    return np.sqrt(dx * dx + dy * dy) * np.sign(px * by + py * bx - bx * by)


def _sdf_triangle(ux, uy, r: float = 1.0):
    """Equilateral triangle, apex up, vertically centred in its box."""
    qx = np.abs(ux) - r
    qy = -uy + r / (2 * _SQRT3) + r / _SQRT3
    fold = qx + _SQRT3 * qy > 0
    nx = np.where(fold, (qx - _SQRT3 * qy) / 2, qx)
    ny = np.where(fold, (-_SQRT3 * qx - qy) / 2, qy)
    nx = nx - np.clip(nx, -2 * r, 0)
    return -np.sqrt(nx * nx + ny * ny) * np.sign(ny)


def _sdf_hexagon(ux, uy, r: float = 0.866):
    """Hexagon with flat top and bottom (apothem ``r``) and corners at u_x = +-1."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(ux), np.abs(uy)
    m = 2 * np.minimum(kx * px + ky * py, 0)
    px, py = px - m * kx, py - m * ky
    px = px - np.clip(px, -kz * r, kz * r)
    py = py - r
    return np.sqrt(px * px + py * py) * np.sign(py)


def _sdf_star(ux, uy, r: float = 1.0, inner: float = 0.45):
    """Five-pointed star, one point up, vertically centred in its box."""
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = np.abs(ux), -uy + (1.0 - 0.809016994375) / 2
    m = 2 * np.maximum(k1x * px + k1y * py, 0)
    px, py = px - m * k1x, py - m * k1y
    m = 2 * np.maximum(-k1x * px + k1y * py, 0)
    px, py = np.abs(px + m * k1x), py - m * k1y - r
    bax, bay = -inner * k1y, inner * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0.0, r)
    dx, dy = px - bax * h, py - bay * h
    return np.sqrt(dx * dx + dy * dy) * np.sign(py * bax - px * bay)


def _sdf_heart(ux, uy, s: float = 0.604):
    """Heart, tip down; ``s`` scales Quilez's unit heart (width 1.21) to the box."""
    px, py = np.abs(ux) * s, -uy * s + 0.552
    lobe = np.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - math.sqrt(2.0) / 4
    m = np.maximum(px + py, 0) * 0.5
    body = np.sqrt(np.minimum(px * px + (py - 1) ** 2, (px - m) ** 2 + (py - m) ** 2)) * np.sign(px - py)
    return np.where(py + px > 1, lobe, body) / s


_SDF = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "star": _sdf_star,
    "heart": _sdf_heart,
    "diamond": _sdf_diamond,
    "cross": _sdf_cross,
    "hexagon": _sdf_hexagon,
}
_COLOUR_TABLE = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)
_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}
_COLOUR_ID = {c: i for i, c in enumerate(COLOURS)}
_NOISE_BANK_SEED, _NOISE_BANK_SIZE = 20240601, 16
_PIXEL = np.dtype((np.void, 3))


def _patch_geometry(size: str, image_size: int) -> tuple[float, int]:
    """Radius in pixels and side of the square patch that holds every pixel an object touches."""
    rpx = SIZE_RADIUS[size] * image_size
    return rpx, math.ceil(2 * rpx + 3)


def _coverage(shape: str, lx: np.ndarray, ly: np.ndarray, rpx: float, patch: int) -> np.ndarray:
    """Coverage (n, patch, patch) of objects centred at patch-local (lx, ly), radius ``rpx`` px."""
    centres = np.arange(patch, dtype=np.float32) + 0.5
    ux = (centres[None, :] - lx[:, None].astype(np.float32)) / np.float32(rpx)
    uy = (centres[None, :] - ly[:, None].astype(np.float32)) / np.float32(rpx)
    distance = _SDF[shape](ux[:, None, :], uy[:, :, None])
    return np.clip(np.float32(0.5) - distance * np.float32(rpx), 0.0, 1.0)


class _ObjectTable(NamedTuple):
    """Columns of all objects of a batch of scenes."""

    scene: np.ndarray
    slot: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    x: np.ndarray
    y: np.ndarray


def _object_table(scenes: Sequence[Scene]) -> _ObjectTable:
    """Flatten the objects of a batch of scenes into numpy columns."""
    rows = [
        (b, k, _SHAPE_ID[o.shape], _COLOUR_ID[o.colour], o.size == "large", o.x, o.y)
        for b, scene in enumerate(scenes)
        for k, o in enumerate(scene.objects)
    ]
    cols = np.array(rows, dtype=np.float64).reshape(-1, 7).T
    ints = cols[:5].astype(np.int64)
    return _ObjectTable(*ints, cols[5], cols[6])


@functools.lru_cache(maxsize=8)
def _noise_bank(image_size: int) -> np.ndarray:
    """A fixed bank of standard-normal noise fields (a few MB); scenes pick and roll one by seed."""
    count = max(2, min(16, 16 * 64 * 64 // (image_size * image_size)))
    rng = np.random.default_rng(_NOISE_BANK_SEED)
    return rng.standard_normal((count, image_size, image_size, 3), dtype=np.float32)


def _rolled(out: np.ndarray, field: np.ndarray, dy: int, dx: int):
    """Write ``np.roll(field, (-dy, -dx), (0, 1))`` into ``out`` with four slice copies."""
    h, w = field.shape[:2]
    out[: h - dy, : w - dx] = field[dy:, dx:]
    out[: h - dy, w - dx :] = field[dy:, :dx]
    out[h - dy :, : w - dx] = field[:dy, dx:]
    out[h - dy :, w - dx :] = field[:dy, :dx]


def _background_noise(scenes: Sequence[Scene], image_size: int) -> np.ndarray | None:
    """Per-scene noise (B, S, S, 3) in 0..255 units, or None when no scene has any.

    Scene noise is a bank field chosen and rolled by the scene's background seed: deterministic
    per scene and far cheaper than drawing fresh normals.
    """
    std = np.array([s.background_noise for s in scenes], dtype=np.float32) * 255
    if not std.any():
        return None
    bank = _noise_bank(image_size)
    noise = np.empty((len(scenes), image_size, image_size, 3), dtype=np.float32)
    for b, scene in enumerate(scenes):
        seed = scene.background_seed
        shift = seed // len(bank)
        _rolled(noise[b], bank[seed % len(bank)], shift % image_size, shift // image_size % image_size)
    noise *= std[:, None, None, None]
    return noise


def _composite(images: np.ndarray, table: _ObjectTable, sel: np.ndarray, size: str):
    """Blend all objects of one size into the images, one slot at a time so no two write one image.

    Patches are shifted to stay inside the image; an object's pixels always fit in its patch.
    """
    image_size = images.shape[1]
    rpx, patch = _patch_geometry(size, image_size)
    order = np.flatnonzero(sel)[np.argsort(table.slot[sel], kind="stable")]
    scene, slots, shapes = table.scene[order], table.slot[order], table.shape[order]
    cx, cy = table.x[order] * image_size, table.y[order] * image_size
    ox = np.clip(np.floor(cx - rpx - 1), 0, image_size - patch).astype(np.int64)
    oy = np.clip(np.floor(cy - rpx - 1), 0, image_size - patch).astype(np.int64)
    cov = np.empty((len(order), patch, patch, 1), dtype=np.float32)
    for shape_id in np.unique(shapes):
        sub = shapes == shape_id
        cov[sub, ..., 0] = _coverage(SHAPES[shape_id], cx[sub] - ox[sub], cy[sub] - oy[sub], rpx, patch)
    ar = np.arange(patch)
    rows = (scene * image_size + oy)[:, None, None] + ar[None, :, None]
    flat_index = rows * image_size + (ox[:, None, None] + ar[None, None, :])
    pixels = images.view(_PIXEL).reshape(-1)  # one 3-byte item per pixel: fast take/put
    rgb = _COLOUR_TABLE[table.colour[order]][:, None, None, :]
    bounds = np.searchsorted(slots, np.arange(slots[-1] + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index = flat_index[lo:hi]
        old = np.take(pixels, index).view(np.uint8).reshape(*index.shape, 3).astype(np.float32)
        blend = rgb[lo:hi] - old
        blend *= cov[lo:hi]
        blend += old
        blend += 0.5
        np.put(pixels, index, blend.astype(np.uint8).view(_PIXEL))


def _backgrounds(scenes: Sequence[Scene], image_size: int) -> np.ndarray:
    """Background images (B, S, S, 3) uint8: flat grey plus each scene's noise."""
    images = np.empty((len(scenes), image_size, image_size, 3), dtype=np.uint8)
    noise = _background_noise(scenes, image_size)
    if noise is None:
        images[...] = _flat_background(image_size)
    else:
        noise += np.asarray(BACKGROUND_RGB, dtype=np.float32) + 0.5
        np.clip(noise, 0, 255, out=images, casting="unsafe")
    return images


@functools.lru_cache(maxsize=8)
def _flat_background(image_size: int) -> np.ndarray:
    """One plain background image (copying whole images is much faster than broadcasting a colour)."""
    return np.tile(np.asarray(BACKGROUND_RGB, dtype=np.uint8), (image_size, image_size, 1))


def render_batch(scenes: Sequence[Scene | dict], image_size: int = 64) -> np.ndarray:
    """Render scenes to a uint8 array (B, image_size, image_size, 3), vectorised over the batch."""
    scenes = [_as_scene(s) for s in scenes]
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 16 <= image_size <= 4096:
        raise ValueError(f"image_size must be an integer in [16, 4096], got {image_size!r}")
    images = _backgrounds(scenes, image_size)
    table = _object_table(scenes)
    for size_id, size in enumerate(SIZES):
        sel = table.size == size_id
        if sel.any():
            _composite(images, table, sel, size)
    return images


def render_scene(scene: Scene | dict, image_size: int = 64) -> np.ndarray:
    """Render one scene to a uint8 (image_size, image_size, 3) array."""
    return render_batch([scene], image_size)[0]


def object_masks(scene: Scene | dict, image_size: int = 64) -> np.ndarray:
    """Per-object coverage in [0, 1], float32 (num_objects, image_size, image_size): exact grounding masks."""
    scene = _as_scene(scene)
    masks = np.zeros((len(scene.objects), image_size, image_size), dtype=np.float32)
    for k, obj in enumerate(scene.objects):
        rpx, patch = _patch_geometry(obj.size, image_size)
        cx, cy = obj.x * image_size, obj.y * image_size
        ox, oy = math.floor(cx - rpx - 1), math.floor(cy - rpx - 1)
        cov = _coverage(obj.shape, np.array([cx - ox]), np.array([cy - oy]), rpx, patch)[0]
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + patch, image_size), min(ox + patch, image_size)
        masks[k, y0:y1, x0:x1] = cov[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return masks


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------

_CHUNK = 1024


def dataset_features():
    """The ``datasets.Features`` of a shapes-world dataset."""
    import datasets

    strings = datasets.List(datasets.Value("string"))
    return datasets.Features(
        {
            "image": datasets.Image(),
            "captions": strings,
            "clean_captions": strings,
            "caption_kinds": strings,
            "noise_kinds": strings,
            "caption_refs": datasets.Value("string"),
            "clean_caption_refs": datasets.Value("string"),
            "scene": datasets.Value("string"),
            "index": datasets.Value("int64"),
        }
    )


def _png(pixels: np.ndarray) -> dict:
    """A PNG-encoded image in the form the ``datasets.Image`` feature stores."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def example_rows(examples: Sequence[WorldExample], image_size: int) -> dict[str, list]:
    """Columns of dataset rows for a list of examples (renders their images)."""
    images = render_batch([e.scene for e in examples], image_size)
    return {
        "image": [_png(img) for img in images],
        "captions": [list(e.captions) for e in examples],
        "clean_captions": [[c.text for c in e.clean] for e in examples],
        "caption_kinds": [[c.kind for c in e.clean] for e in examples],
        "noise_kinds": [list(e.noise_kinds) for e in examples],
        "caption_refs": [strict_json.dumps([list(r) for r in e.refs]) for e in examples],
        "clean_caption_refs": [strict_json.dumps([list(c.refs) for c in e.clean]) for e in examples],
        "scene": [strict_json.dumps(e.scene.to_dict(), sort_keys=True) for e in examples],
        "index": [e.index for e in examples],
    }


def _build_in_memory(config: WorldConfig):
    """Generate, render and encode every example, in chunks."""
    import datasets

    features, parts = dataset_features(), []
    for start in range(0, config.num_scenes, _CHUNK):
        examples = generate_examples(config, start, min(start + _CHUNK, config.num_scenes))
        parts.append(datasets.Dataset.from_dict(example_rows(examples, config.image_size), features=features))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def build_dataset(config: WorldConfig, cache_dir: str | os.PathLike | None = None):
    """The world as a ``datasets.Dataset``; with ``cache_dir``, saved under cache_dir/<config key> and reused."""
    import datasets

    if cache_dir is None:
        return _build_in_memory(config)
    path = os.path.join(os.fspath(cache_dir), f"shapes-{config.cache_key()}")
    if not os.path.exists(os.path.join(path, "state.json")):
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _build_in_memory(config).save_to_disk(tmp)
        _write_config(tmp, config)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return datasets.load_from_disk(path)


def _write_config(directory: str, config: WorldConfig):
    """Record the generating config beside the saved dataset."""
    with open(os.path.join(directory, "world_config.json"), "w", encoding="utf-8") as f:
        strict_json.dump({"world_version": WORLD_VERSION, **config.to_dict()}, f, indent=2, sort_keys=True)


def write_shapes_dataset(out_dir: str | os.PathLike, **config):
    """Build the world from ``WorldConfig`` fields and save it to ``out_dir`` (``vlp data shapes``)."""
    world = WorldConfig(**config)
    dataset = _build_in_memory(world)
    dataset.save_to_disk(os.fspath(out_dir))
    _write_config(os.fspath(out_dir), world)
    return dataset
