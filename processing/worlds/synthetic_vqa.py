"""A VQA set from the synthetic shapes world, with complementary pairs by construction.

Question families (answers computed from the scene):

- count     "how many red circles are there?"          a digit, "0".."6"          answer type "number"
- colour    "what colour is the large square?"         a colour                   "other"
- shape     "what shape is the blue object?"           a shape                    "other"
- exists    "is there a red triangle?"                 yes / no                   "yes/no"
- relation  "is the circle left of the green square?"  yes / no                   "yes/no"
- compare   "are there more circles than squares?"     yes / no                   "yes/no"

Definite descriptions ("the square") are asked only where they pick out exactly one object, with the fewest
attributes that do; relations use ``shapes_world.relation_holds`` (a dead zone around equal centres answers "no").

Each pair index gives two questions with the same text on two scenes of the same world whose answers differ: the
first scene is drawn, a question asked about it, then further scenes are drawn until the question is well posed
on one and has another answer there. A model that ignores the image gives both questions of a pair the same
answer, so it is right on at most one of them: at most 50 % accuracy and 0 pair accuracy. Everything is a pure
function of (seed, split, pair index). Rows have the keys of ``downstream_readers.VQA_ROW_KEYS``, like joined VQA
v2 rows, with ten identical annotator answers (the world has no annotator disagreement).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from ..random_streams import WORLD_STREAMS
from .shapes import (
    COLOURS,
    RELATIONS,
    SHAPE_PLURALS,
    SHAPES,
    Desc,
    Scene,
    ShapeObject,
    WorldConfig,
    relation_holds,
    render_batch,
    sample_scene,
)

QUESTION_FAMILIES = ("count", "colour", "shape", "exists", "relation", "compare")
ANSWER_TYPES = {
    "count": "number",
    "colour": "other",
    "shape": "other",
    "exists": "yes/no",
    "relation": "yes/no",
    "compare": "yes/no",
}
#: Scenes tried per pair: pair i uses world scene indices i * SCENES_PER_PAIR .. (i + 1) * SCENES_PER_PAIR - 1.
SCENES_PER_PAIR = 4096
MAX_PAIRS = 2**32 // SCENES_PER_PAIR
_QUESTION_STREAM = WORLD_STREAMS["vqa_question"]
_RENDER_CHUNK = 1024


@dataclass
class SyntheticVQAConfig:
    """Everything that determines a synthetic VQA set; equal configs give identical sets.

    The world fields (image_size .. background_noise) mean what they mean in ``WorldConfig``; scenes are drawn
    with a seed derived from (seed, split), so splits of one seed share no scene draws.
    """

    num_pairs: int = 500
    seed: int = 0
    split: str = "train"
    families: tuple[str, ...] = QUESTION_FAMILIES
    num_annotators: int = 10
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    zipf_exponent: float = 1.0
    ranking_seed: int = 0
    held_out_pairs: tuple = ()
    held_out_policy: str = "exclude"
    background_noise: float = 0.0

    def __post_init__(self):
        self.families = tuple(self.families)
        if not self.families or any(f not in QUESTION_FAMILIES for f in self.families):
            raise ValueError(
                f"SyntheticVQAConfig.families must be a non-empty subset of {QUESTION_FAMILIES}, got {self.families}"
            )
        limits = (("num_pairs", self.num_pairs, 1, MAX_PAIRS), ("num_annotators", self.num_annotators, 1, 100))
        for name, value, low, high in limits:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"SyntheticVQAConfig.{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"SyntheticVQAConfig.split must be a non-empty string, got {self.split!r}")
        if "relation" in self.families and self.max_objects < 2:
            raise ValueError("SyntheticVQAConfig: relation questions need max_objects >= 2")
        self.world_config()  # validates the world fields

    def scene_seed(self) -> int:
        """The world seed of this split's scenes, derived from (seed, split)."""
        digest = hashlib.sha256(f"synthetic-vqa/{self.seed}/{self.split}".encode()).digest()
        return int.from_bytes(digest[:7], "big")

    def world_config(self) -> WorldConfig:
        """The shapes-world config the scenes are drawn from."""
        return WorldConfig(
            num_scenes=1,
            seed=self.scene_seed(),
            image_size=self.image_size,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            zipf_exponent=self.zipf_exponent,
            ranking_seed=self.ranking_seed,
            held_out_pairs=self.held_out_pairs,
            held_out_policy=self.held_out_policy,
            background_noise=self.background_noise,
        )


@dataclass(frozen=True)
class Query:
    """A question's structure: its family, the descriptions it names and, for relations, the relation."""

    family: str
    descs: tuple[Desc, ...]
    relation: str | None = None


@dataclass(frozen=True)
class SyntheticVQAItem:
    """One question on one scene; the two items of a pair share ``pair_id`` and ``question``."""

    question_id: int
    image_id: int
    pair_id: int
    family: str
    question: str
    answer: str
    scene: Scene = field(repr=False)


# --------------------------------------------------------------------------------------------
# Answers and question text
# --------------------------------------------------------------------------------------------


def _matches(desc: Desc, obj: ShapeObject) -> bool:
    """Whether ``obj`` has every attribute ``desc`` names."""
    return (
        (desc.size is None or desc.size == obj.size)
        and (desc.colour is None or desc.colour == obj.colour)
        and (desc.shape is None or desc.shape == obj.shape)
    )


def _matching(desc: Desc, objects: Sequence[ShapeObject]) -> list[int]:
    """Indices of the objects ``desc`` matches."""
    return [i for i, o in enumerate(objects) if _matches(desc, o)]


def _unique(desc: Desc, objects: Sequence[ShapeObject]) -> int | None:
    """The only object ``desc`` matches, or None."""
    found = _matching(desc, objects)
    return found[0] if len(found) == 1 else None


def answer_query(query: Query, objects: Sequence[ShapeObject]) -> str | None:
    """The answer of ``query`` on a scene's objects, or None when the question is not well posed there."""
    family, descs = query.family, query.descs
    if family == "count":
        return str(len(_matching(descs[0], objects)))
    if family == "exists":
        return "yes" if _matching(descs[0], objects) else "no"
    if family == "compare":
        return "yes" if len(_matching(descs[0], objects)) > len(_matching(descs[1], objects)) else "no"
    if family in ("colour", "shape"):
        i = _unique(descs[0], objects)
        return None if i is None else getattr(objects[i], family)
    if family == "relation":
        a, b = _unique(descs[0], objects), _unique(descs[1], objects)
        if a is None or b is None or a == b:
            return None
        return "yes" if relation_holds(objects[a], query.relation, objects[b]) else "no"
    raise ValueError(f"unknown question family {family!r}; expected one of {QUESTION_FAMILIES}")


def _words(desc: Desc, plural: bool = False) -> str:
    """The words of a description: [size] [colour] noun (noun "object(s)" when no shape is named)."""
    if desc.shape is None:
        noun = "objects" if plural else "object"
    else:
        noun = SHAPE_PLURALS[desc.shape] if plural else desc.shape
    return " ".join(w for w in (desc.size, desc.colour, noun) if w)


def question_text(query: Query) -> str:
    """The question of a query, lowercase with a question mark."""
    d = query.descs
    if query.family == "count":
        return f"how many {_words(d[0], plural=True)} are there?"
    if query.family == "colour":
        return f"what colour is the {_words(d[0])}?"
    if query.family == "shape":
        return f"what shape is the {_words(d[0])}?"
    if query.family == "exists":
        words = _words(d[0])
        return f"is there {'an' if words[0] in 'aeiou' else 'a'} {words}?"
    if query.family == "relation":
        return f"is the {_words(d[0])} {query.relation} the {_words(d[1])}?"
    if query.family == "compare":
        return f"are there more {_words(d[0], plural=True)} than {_words(d[1], plural=True)}?"
    raise ValueError(f"unknown question family {query.family!r}; expected one of {QUESTION_FAMILIES}")


# --------------------------------------------------------------------------------------------
# Asking a question about a scene
# --------------------------------------------------------------------------------------------


def _unique_desc(objects: Sequence[ShapeObject], i: int, allowed: Sequence[tuple[bool, bool, bool]]) -> Desc | None:
    """The first description in ``allowed`` (which of size, colour, shape to name) that picks out only object i."""
    o = objects[i]
    for size, colour, shape in allowed:
        desc = Desc(o.size if size else None, o.colour if colour else None, o.shape if shape else None)
        if _unique(desc, objects) == i:
            return desc
    return None


_NO_COLOUR = ((False, False, True), (True, False, True))  # the shape, the size + shape
_NO_SHAPE = ((False, True, False), (True, True, False))  # the colour object, the size + colour object
_ANY = ((False, False, True), (False, True, True), (True, False, True), (True, True, True))


def _ask_referring(rng: random.Random, objects, family: str, allowed) -> Query | None:
    """A colour or shape question about a random object that a description without that attribute singles out."""
    options = [d for i in range(len(objects)) if (d := _unique_desc(objects, i, allowed)) is not None]
    return Query(family, (options[int(rng.random() * len(options))],)) if options else None


def ask_question(family: str, objects: Sequence[ShapeObject], rng: random.Random) -> Query | None:
    """A question of ``family`` about a scene (None when the scene offers none, e.g. a relation needs two objects)."""

    def pick(items):
        return items[int(rng.random() * len(items))]

    if family == "count":
        if rng.random() < 0.2:
            return Query("count", (Desc(None, pick(COLOURS) if rng.random() < 0.5 else None, pick(SHAPES)),))
        o = pick(objects)
        return Query("count", (Desc(None, o.colour if rng.random() < 0.5 else None, o.shape),))
    if family == "colour":
        return _ask_referring(rng, objects, "colour", _NO_COLOUR)
    if family == "shape":
        return _ask_referring(rng, objects, "shape", _NO_SHAPE)
    if family == "exists":
        if rng.random() < 0.5:
            o = pick(objects)
            return Query("exists", (Desc(None, o.colour, o.shape),))
        return Query("exists", (Desc(None, pick(COLOURS), pick(SHAPES)),))
    if family == "relation":
        named = [(i, d) for i in range(len(objects)) if (d := _unique_desc(objects, i, _ANY)) is not None]
        if len(named) < 2:
            return None
        first = int(rng.random() * len(named))
        second = int(rng.random() * (len(named) - 1))
        second += second >= first
        return Query("relation", (named[first][1], named[second][1]), pick(RELATIONS))
    if family == "compare":
        if rng.random() < 0.5:
            a = pick(objects).shape
            b = pick([s for s in SHAPES if s != a])
            descs = (Desc(None, None, a), Desc(None, None, b))
        else:
            a = pick(objects).colour
            b = pick([c for c in COLOURS if c != a])
            descs = (Desc(None, a, None), Desc(None, b, None))
        return Query("compare", descs if rng.random() < 0.5 else descs[::-1])
    raise ValueError(f"unknown question family {family!r}; expected one of {QUESTION_FAMILIES}")


# --------------------------------------------------------------------------------------------
# Pairs, items, rows
# --------------------------------------------------------------------------------------------


def make_pair(
    config: SyntheticVQAConfig, pair_index: int, world: WorldConfig | None = None
) -> tuple[SyntheticVQAItem, SyntheticVQAItem]:
    """The two items of pair ``pair_index``: one question text, two scenes, two different answers."""
    if isinstance(pair_index, bool) or not isinstance(pair_index, int) or not 0 <= pair_index < MAX_PAIRS:
        raise ValueError(f"pair_index must be an integer in [0, {MAX_PAIRS}), got {pair_index!r}")
    world = world or config.world_config()
    family = config.families[pair_index % len(config.families)]
    rng = random.Random((((world.seed << 32) | pair_index) << 2) | _QUESTION_STREAM)
    base, attempt = pair_index * SCENES_PER_PAIR, 0
    while attempt < SCENES_PER_PAIR:
        first = sample_scene(world, base + attempt)
        attempt += 1
        query = ask_question(family, first.objects, rng)
        if query is None:
            continue
        answer = answer_query(query, first.objects)
        for _ in range(64):
            if attempt >= SCENES_PER_PAIR:
                break
            second = sample_scene(world, base + attempt)
            attempt += 1
            other = answer_query(query, second.objects)
            if other is not None and other != answer:
                text = question_text(query)
                return (
                    SyntheticVQAItem(2 * pair_index, 2 * pair_index, pair_index, family, text, answer, first),
                    SyntheticVQAItem(2 * pair_index + 1, 2 * pair_index + 1, pair_index, family, text, other, second),
                )
    raise RuntimeError(
        f"no complementary pair found for a {family} question at pair {pair_index} in {SCENES_PER_PAIR} scenes"
    )


def generate_items(config: SyntheticVQAConfig, start: int = 0, stop: int | None = None) -> list[SyntheticVQAItem]:
    """Items of pairs ``start`` .. ``stop`` (default: all ``num_pairs``), two per pair."""
    stop = config.num_pairs if stop is None else stop
    world = config.world_config()
    return [item for i in range(start, stop) for item in make_pair(config, i, world)]


def _png(pixels) -> dict:
    """A PNG in the form the ``datasets.Image`` feature stores."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def item_rows(items: Sequence[SyntheticVQAItem], config: SyntheticVQAConfig, render: bool = True) -> list[dict]:
    """Rows with the keys of ``VQA_ROW_KEYS``; ``image`` is a PNG {"bytes", "path"} dict (None without ``render``)."""
    images: list = [None] * len(items)
    if render:
        for start in range(0, len(items), _RENDER_CHUNK):
            chunk = items[start : start + _RENDER_CHUNK]
            pixels = render_batch([item.scene for item in chunk], config.image_size)
            images[start : start + len(chunk)] = [_png(p) for p in pixels]
    return [
        {
            "question_id": item.question_id,
            "question": item.question,
            "image_id": item.image_id,
            "image": image,
            "answers": [item.answer] * config.num_annotators,
            "multiple_choice_answer": item.answer,
            "question_type": item.family,
            "answer_type": ANSWER_TYPES[item.family],
            "pair_id": item.pair_id,
        }
        for item, image in zip(items, images)
    ]


def synthetic_vqa_rows(config: SyntheticVQAConfig, render: bool = True) -> list[dict]:
    """All rows of the set, two per pair."""
    return item_rows(generate_items(config), config, render)


def build_synthetic_vqa_dataset(config: SyntheticVQAConfig):
    """The set as a ``datasets.Dataset`` with ``downstream_readers.vqa_features()``."""
    import datasets

    from ..readers.downstream import vqa_features

    return datasets.Dataset.from_list(synthetic_vqa_rows(config), features=vqa_features())
