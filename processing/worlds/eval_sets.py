"""Evaluation sets drawn from the shapes world, with ground truth decided by :func:`caption_holds`.

Sets (``SET_NAMES``), each a list of small frozen items with ``to_dict``/``from_dict``:

- ``foils``: a scene, a true caption and a minimally edited false one, ``n`` per phenomenon of
  ``FOIL_PHENOMENA`` (VALSE-style pairwise tests).
- ``winoground``: two scenes and two captions with the same words (``a``/``an`` agree with the next
  word) in another order or binding; caption i is true of scene i and false of the other.
- ``probes``: probing inputs and labels after Salin et al. 2022, ``n`` per task and variant:
  multimodal tasks (``PROBE_TASKS``) each with a mismatched-image control, and unimodal tasks
  (``UNIMODAL_PROBE_TASKS``).
- ``grounding``: a true caption, a phrase in it that refers to exactly one object, that object's
  box and its patches.
- ``frequency``: colour and shape foils on attribute captions naming one (colour, shape) pair,
  ``n`` per pair the training world shows, so that accuracy can be read against the pair's
  pretraining count (:func:`log_buckets`, :func:`item_frequencies`).
- ``held_out``: the same on the training world's ``held_out_pairs`` (unseen combinations).

Where the scenes come from: the *evaluation world* is the training world's config with seed
``world_seed + seed_offset`` (default ``EVAL_SEED_OFFSET``; training uses ``+0`` and validation
``+1_000_003``, see ``TRAINING_SEED_OFFSETS``), held-out pairs excluded and no caption noise. Every
(set, phenomenon) reads its own block of scene indices of that world, and candidate ``i`` of a
block uses only scene ``block_start + i`` and a random stream seeded from (world seed, set,
phenomenon, i). Item k is the k-th candidate that gives an item, so a set of ``n`` items is a prefix
of the set of ``m > n`` items: a quick run evaluates a subset of a full run's items. Candidates
that cannot give an item (a one-object scene has no relation) are counted in ``EvalSets.skipped``.

Items hold scenes, not pixels: render them with
``shapes_world.render_batch([item.scene, ...], image_size)``, which is exact and deterministic, so the
JSON files stay small and every model sees identical images. In-distribution sets never name a
held-out pair, neither in captions nor in foils, and their scenes contain none.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import strict_json
from . import shapes as sw
from .shapes import COLOURS, FOIL_KINDS, SHAPES, Clause, Desc, Scene, WorldConfig, caption_holds
from .text_balance import CaptionFrequencies

#: The evaluation world is drawn with ``world_seed + EVAL_SEED_OFFSET``.
EVAL_SEED_OFFSET = 2_000_081
#: Offsets of the pretraining data (training world +0, validation VALIDATION_SEED_OFFSET in training/pretrain/data.py).
TRAINING_SEED_OFFSETS = (0, 1_000_003)
FORMAT_VERSION = 1
#: Stands for a masked word in probe captions (the VLP tokenizer's mask token).
MASK_WORD = "[MASK]"

SET_NAMES = ("foils", "winoground", "probes", "grounding", "frequency", "held_out")
FOIL_PHENOMENA = FOIL_KINDS
WINOGROUND_PHENOMENA = ("binding", "relation")
PROBE_TASKS = ("colour", "size", "position", "count", "noun")
UNIMODAL_PROBE_TASKS = ("visual_count", "visual_colours", "word_order")
#: A patch belongs to an object when one of its pixels is at least this much covered by it.
PATCH_COVERAGE = 0.5

_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_NOUNS = frozenset(SHAPES) | {sw.GENERIC_NOUN}
_BLOCK = 2**24  # scene indices per (set, phenomenon) block; 256 blocks fit the world's 32-bit index
# New blocks go at the end, so that existing sets keep their scenes.
_BLOCK_KEYS = (
    *(f"foils/{p}" for p in FOIL_PHENOMENA),
    *(f"winoground/{p}" for p in WINOGROUND_PHENOMENA),
    *(f"probes/{t}" for t in PROBE_TASKS + UNIMODAL_PROBE_TASKS),
    *(f"probes/{t}/control" for t in PROBE_TASKS),
    "grounding",
    "frequency",
    "held_out",
)
_BLOCK_OF = {key: b for b, key in enumerate(_BLOCK_KEYS)}


# --------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoilItem:
    """A scene, a caption true of it and a minimally edited foil false of it, for one phenomenon."""

    scene: Scene
    caption: str
    foil: str
    phenomenon: str
    index: int  # candidate (scene) number in the item's block

    def to_dict(self) -> dict:
        return {
            "scene": self.scene.to_dict(),
            "caption": self.caption,
            "foil": self.foil,
            "phenomenon": self.phenomenon,
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FoilItem:
        scene = Scene.from_dict(data["scene"])
        return cls(scene, data["caption"], data["foil"], data["phenomenon"], int(data["index"]))


@dataclass(frozen=True)
class WinogroundItem:
    """Two scenes and two captions with the same words; caption i is true of scene i only."""

    scenes: tuple[Scene, Scene]
    captions: tuple[str, str]
    phenomenon: str
    index: int

    def to_dict(self) -> dict:
        return {
            "scenes": [s.to_dict() for s in self.scenes],
            "captions": list(self.captions),
            "phenomenon": self.phenomenon,
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> WinogroundItem:
        scenes = tuple(Scene.from_dict(s) for s in data["scenes"])
        return cls(scenes, tuple(data["captions"]), data["phenomenon"], int(data["index"]))


@dataclass(frozen=True)
class ProbeItem:
    """A probing input (the scene shown and a text) and its label.

    ``source_scene`` is the scene the text and label were made from; it is ``scene`` except in
    controls, which show another scene with the same text and label (the label stays that of the
    source scene, so a probe can only beat the text-only prior by reading the image).
    Labels: ``colour`` the index in ``COLOURS`` of the masked colour word; ``size``, ``position``,
    ``noun`` and ``word_order`` 1 when the text was changed (to a false caption for the first three),
    else 0; ``count`` the number (1..6) masked in ``there are [MASK] <plural description>``;
    ``visual_count`` the number of objects; ``visual_colours`` a 0/1 tuple over ``COLOURS`` (multi-label;
    column j is the per-colour binary probe for ``COLOURS[j]``). Visual probes have no text ("").
    """

    task: str
    scene: Scene
    caption: str
    label: int | tuple[int, ...]
    control: bool
    source_scene: Scene
    index: int

    def to_dict(self) -> dict:
        label = list(self.label) if isinstance(self.label, tuple) else self.label
        return {
            "task": self.task,
            "scene": self.scene.to_dict(),
            "caption": self.caption,
            "label": label,
            "control": self.control,
            "source_scene": self.source_scene.to_dict(),
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ProbeItem:
        label = tuple(int(v) for v in data["label"]) if isinstance(data["label"], list) else int(data["label"])
        return cls(
            data["task"],
            Scene.from_dict(data["scene"]),
            data["caption"],
            label,
            bool(data["control"]),
            Scene.from_dict(data["source_scene"]),
            int(data["index"]),
        )


@dataclass(frozen=True)
class GroundingItem:
    """A true caption, a phrase in it referring to exactly one object, that object's pixel box and patches.

    ``word_span`` is [start, stop) in ``caption.split()``; ``box`` is (x0, y0, x1, y1) in pixels of an
    ``image_size`` image; ``patch_indices`` are the row-major indices, on the ``image_size // patch_size``
    grid, of the patches holding a pixel the object covers by at least ``PATCH_COVERAGE``.
    """

    scene: Scene
    caption: str
    phrase: str
    word_span: tuple[int, int]
    object_index: int
    box: tuple[float, float, float, float]
    image_size: int
    patch_size: int
    patch_indices: tuple[int, ...]
    index: int

    def to_dict(self) -> dict:
        return {
            "scene": self.scene.to_dict(),
            "caption": self.caption,
            "phrase": self.phrase,
            "word_span": list(self.word_span),
            "object_index": self.object_index,
            "box": list(self.box),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "patch_indices": list(self.patch_indices),
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GroundingItem:
        return cls(
            Scene.from_dict(data["scene"]),
            data["caption"],
            data["phrase"],
            tuple(data["word_span"]),
            int(data["object_index"]),
            tuple(float(v) for v in data["box"]),
            int(data["image_size"]),
            int(data["patch_size"]),
            tuple(int(v) for v in data["patch_indices"]),
            int(data["index"]),
        )


_ITEM_TYPES = {
    "foils": FoilItem,
    "winoground": WinogroundItem,
    "probes": ProbeItem,
    "grounding": GroundingItem,
    "frequency": FoilItem,
    "held_out": FoilItem,
}


class EvalSets(dict):
    """Set name -> list of items, with ``skipped`` (per block, candidates that gave no item) and ``meta``."""

    def __init__(self, sets=(), skipped: Mapping | None = None, meta: Mapping | None = None):
        super().__init__(sets)
        self.skipped = dict(skipped or {})
        self.meta = dict(meta or {})


# --------------------------------------------------------------------------------------------
# The evaluation world and its candidates
# --------------------------------------------------------------------------------------------


def eval_world(world_config: WorldConfig, seed: int | None = None, seed_offset: int = EVAL_SEED_OFFSET) -> WorldConfig:
    """The evaluation world: the training world's config with seed ``seed + seed_offset``, held-out pairs excluded.

    ``seed`` defaults to ``world_config.seed``; offsets the pretraining data uses are refused.
    """
    if seed_offset in TRAINING_SEED_OFFSETS:
        raise ValueError(
            f"seed_offset={seed_offset} is used by the pretraining data {TRAINING_SEED_OFFSETS}; "
            f"choose another, e.g. EVAL_SEED_OFFSET={EVAL_SEED_OFFSET}"
        )
    base = world_config.seed if seed is None else seed
    return dataclasses.replace(world_config, seed=base + seed_offset, held_out_policy="exclude", noise_rate=0.0)


def _scene_at(world: WorldConfig, key: str, i: int) -> Scene:
    """Scene ``i`` of the block of ``key``."""
    return sw.sample_scene(world, _BLOCK_OF[key] * _BLOCK + i)


def _rng(world: WorldConfig, key: str, i: int) -> random.Random:
    """The random stream of candidate ``i`` of ``key`` (string seeds are hashed with SHA-512: stable everywhere)."""
    return random.Random(f"vlp-eval/{world.seed}/{key}/{i}")


def _draw(key: str, n: int, make: Callable[[int, int], object]) -> tuple[list, int]:
    """The first ``n`` items ``make(i, k)`` gives for candidates i = 0, 1, ... (None skips); and the skip count.

    ``k`` is the number of items drawn so far (used to balance labels and pairs exactly).
    """
    items, i, limit = [], 0, 50 * n + 200
    while len(items) < n:
        if i >= limit:
            raise ValueError(
                f"{key}: only {len(items)} of {n} items from {limit} scenes of the evaluation world; "
                "does the world allow them (max_objects >= 2 for relations, bindings and count foils: "
                "a count foil must name a number true captions use)?"
            )
        item = make(i, len(items))
        if item is not None:
            items.append(item)
        i += 1
    return items, i - n


def _captions(scene: Scene, rng: random.Random, kinds: Sequence[str], avoid: tuple, count: int = 6) -> list[str]:
    """Distinct true captions of the scene whose kind is one of ``kinds`` (the generator's fallbacks dropped)."""
    made = sw.generate_captions(scene, rng, count, kinds, avoid)
    return list(dict.fromkeys(c.text for c in made if c.kind in kinds))


def caption_pairs(caption: str) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs a caption names: descriptions with both, and ``the <shape> is <colour>``."""
    clause = sw.parse_caption(caption)
    pairs = [(d.colour, d.shape) for d in clause.descs if d.colour and d.shape]
    if clause.op == "predicate" and clause.arg in COLOURS and clause.descs[0].shape and not clause.descs[0].colour:
        pairs.append((clause.arg, clause.descs[0].shape))
    return tuple(dict.fromkeys(pairs))


def _names_any(captions: Sequence[str], pairs: tuple) -> bool:
    """Whether any caption names one of ``pairs``."""
    return bool(pairs) and any(set(caption_pairs(c)) & set(pairs) for c in captions)


def _replace_object(scene: Scene, k: int, **changes) -> Scene:
    """The scene with object ``k``'s fields changed."""
    objects = list(scene.objects)
    objects[k] = dataclasses.replace(objects[k], **changes)
    return dataclasses.replace(scene, objects=tuple(objects))


# --------------------------------------------------------------------------------------------
# Foils
# --------------------------------------------------------------------------------------------

#: Caption kinds a true caption is drawn from, per phenomenon (existence: see ``_foil_sources``).
_FOIL_SOURCE_KINDS = {
    "colour": ("attribute",),
    "shape": ("attribute",),
    "size": ("attribute",),
    "count": ("count",),
    "relation": ("relation",),
    "binding_swap": ("binding",),
}


def _foil_sources(phenomenon: str, scene: Scene, rng: random.Random, k: int, avoid: tuple) -> list[str]:
    """Captions to foil; existence alternates: even items deny ("there is no D"), odd ones affirm ("there is a D")."""
    if phenomenon != "existence":
        return _captions(scene, rng, _FOIL_SOURCE_KINDS[phenomenon], avoid)
    if k % 2 == 0:
        return [c for c in _captions(scene, rng, ("existence",), avoid) if c.startswith("there is no ")]
    return [c for c in _captions(scene, rng, ("attribute",), avoid) if sw.parse_caption(c).variant == "there is"]


def _foil_ok(phenomenon: str, caption: str, foil: str, avoid: tuple) -> bool:
    """Foil filters: no held-out pair; relation foils change the relation only (argument swaps are Winoground's)."""
    if _names_any([foil], avoid):
        return False
    if phenomenon == "relation":
        return sw.parse_caption(foil).descs == sw.parse_caption(caption).descs
    return True


#: Scenes whose source captions estimate a phenomenon's caption frequencies (`source_frequencies`).
FREQUENCY_SCENES = 300
_FREQUENCIES: dict = {}


def source_frequencies(world: WorldConfig, phenomenon: str) -> CaptionFrequencies | None:
    """Word-bigram frequencies of the true captions a phenomenon's foils are made from, in the evaluation world
    (``FREQUENCY_SCENES`` scenes of the block, with a random stream of their own); None when the world has no
    such captions."""
    cache_key = (world.cache_key(), phenomenon)
    if cache_key not in _FREQUENCIES:
        key, captions = f"foils/{phenomenon}", []
        for i in range(FREQUENCY_SCENES):
            rng = random.Random(f"vlp-eval/{world.seed}/{key}/frequencies/{i}")
            captions += _foil_sources(phenomenon, _scene_at(world, key, i), rng, i, world.held_out_pairs)
        _FREQUENCIES[cache_key] = CaptionFrequencies(captions) if captions else None
    return _FREQUENCIES[cache_key]


def _foil_item(world: WorldConfig, phenomenon: str, i: int, k: int) -> FoilItem | None:
    """Candidate ``i`` of a phenomenon's foil block: the first source caption with a foil, or None.

    One foil is proposed uniformly among the caption's edits and the pair is kept with probability
    min(1, P(foil) / P(caption)) under the phenomenon's true-caption frequencies (`source_frequencies`); a pair
    turned down skips the candidate (retrying the same caption would favour captions whose foils pass). Kept
    pairs are then as likely as the same pairs with caption and foil swapped: the words alone do not tell which
    is true."""
    key = f"foils/{phenomenon}"
    scene, rng, avoid = _scene_at(world, key, i), _rng(world, key, i), world.held_out_pairs
    frequencies = source_frequencies(world, phenomenon)
    if frequencies is None:
        return None
    for caption in _foil_sources(phenomenon, scene, rng, k, avoid):
        foils = [f for f in sw.make_foils(caption, scene, phenomenon) if _foil_ok(phenomenon, caption, f, avoid)]
        if foils:
            foil = foils[int(rng.random() * len(foils))]
            return FoilItem(scene, caption, foil, phenomenon, i) if frequencies.accept(caption, foil, rng) else None
    return None


def foil_items(world: WorldConfig, phenomenon: str, n: int) -> tuple[list[FoilItem], int]:
    """``n`` foil items of one phenomenon from the evaluation world, and the number of scenes skipped."""
    if phenomenon not in FOIL_PHENOMENA:
        raise ValueError(f"unknown foil phenomenon {phenomenon!r}; expected one of {FOIL_PHENOMENA}")
    return _draw(f"foils/{phenomenon}", n, lambda i, k: _foil_item(world, phenomenon, i, k))


# --------------------------------------------------------------------------------------------
# Winoground-style pairs
# --------------------------------------------------------------------------------------------


def exactly_one_holds(captions: Sequence[str], scenes: Sequence[Scene]) -> bool:
    """Whether caption i holds of scene i and not of the other, checked in all four combinations."""
    truth = [[caption_holds(c, s) for s in scenes] for c in captions]
    return truth == [[True, False], [False, True]]


def _binding_text(*pairs: tuple[str, str]) -> str:
    """ "a red circle and a blue square" for (colour, shape) pairs."""
    return sw.clause_text(Clause("binding", tuple(Desc(None, c, s) for c, s in pairs), None, "bare"))


def _binding_pair(scene: Scene, rng: random.Random, avoid: tuple):
    """ "a red circle and a blue square" / "a blue circle and a red square": the second scene swaps the two colours."""
    objects = scene.objects
    options = [
        (a, b)
        for a, b in itertools.permutations(range(len(objects)), 2)
        if objects[a].colour != objects[b].colour and objects[a].shape != objects[b].shape
    ]
    rng.shuffle(options)
    for a, b in options:
        oa, ob = objects[a], objects[b]
        first = _binding_text((oa.colour, oa.shape), (ob.colour, ob.shape))
        second = _binding_text((ob.colour, oa.shape), (oa.colour, ob.shape))
        other = _replace_object(_replace_object(scene, a, colour=ob.colour), b, colour=oa.colour)
        if avoid and {(o.colour, o.shape) for o in other.objects} & set(avoid):
            continue
        if exactly_one_holds((first, second), (scene, other)):
            return (scene, other), (first, second)
    return None


def _mirror(scene: Scene, axis: str) -> Scene:
    """The scene with object centres mirrored across the vertical (axis "x") or horizontal ("y") midline."""
    objects = tuple(dataclasses.replace(o, **{axis: round(1.0 - getattr(o, axis), 4)}) for o in scene.objects)
    return dataclasses.replace(scene, objects=objects)


def _relation_pair(scene: Scene, rng: random.Random, avoid: tuple):
    """ "the red circle is left of the blue square" vs "the blue square is left of the red circle", scene mirrored."""
    for caption in _captions(scene, rng, ("relation",), avoid, count=4):
        clause = sw.parse_caption(caption)
        swapped = sw.clause_text(clause._replace(descs=clause.descs[::-1]))
        other = _mirror(scene, "x" if clause.arg in ("left of", "right of") else "y")
        if exactly_one_holds((caption, swapped), (scene, other)):
            return (scene, other), (caption, swapped)
    return None


def _winoground_item(world: WorldConfig, phenomenon: str, i: int) -> WinogroundItem | None:
    key = f"winoground/{phenomenon}"
    make = _binding_pair if phenomenon == "binding" else _relation_pair
    found = make(_scene_at(world, key, i), _rng(world, key, i), world.held_out_pairs)
    return None if found is None else WinogroundItem(found[0], found[1], phenomenon, i)


def winoground_items(world: WorldConfig, phenomenon: str, n: int) -> tuple[list[WinogroundItem], int]:
    """``n`` Winoground-style items of one phenomenon ("binding" or "relation"), and the skip count."""
    if phenomenon not in WINOGROUND_PHENOMENA:
        raise ValueError(f"unknown Winoground phenomenon {phenomenon!r}; expected one of {WINOGROUND_PHENOMENA}")
    return _draw(f"winoground/{phenomenon}", n, lambda i, k: _winoground_item(world, phenomenon, i))


# --------------------------------------------------------------------------------------------
# Probes (Salin et al. 2022)
# --------------------------------------------------------------------------------------------


def _matching(desc: Desc, scene: Scene) -> list[int]:
    """Indices of the scene's objects that have every attribute ``desc`` names."""
    return [
        k
        for k, o in enumerate(scene.objects)
        if all(v is None or v == getattr(o, f) for f, v in zip(("size", "colour", "shape"), desc))
    ]


def _probe_colour(scene: Scene, rng: random.Random, k: int, avoid: tuple):
    """ "the circle is [MASK]": a colourless description of exactly one object; label its colour's index."""
    options = [
        (o, d)
        for o in scene.objects
        for d in (Desc(None, None, o.shape), Desc(o.size, None, o.shape))
        if len(_matching(d, scene)) == 1
    ]
    if not options:
        return None
    obj, desc = rng.choice(options)
    text = sw.clause_text(Clause("predicate", (desc,), obj.colour))
    return text.rsplit(" ", 1)[0] + " " + MASK_WORD, COLOURS.index(obj.colour)


def _probe_swap(kinds: tuple, foil_kind: str, changed: Callable[[str, str], bool] = lambda c, f: True):
    """A binary probe with label k % 2: 1 shows a false ``foil_kind`` edit of a true caption, 0 the caption itself."""

    def make(scene: Scene, rng: random.Random, k: int, avoid: tuple):
        for caption in _captions(scene, rng, kinds, avoid):
            foils = [
                f
                for f in sw.make_foils(caption, scene, foil_kind)
                if changed(caption, f) and not _names_any([f], avoid)
            ]
            if foils:
                return (rng.choice(foils), 1) if k % 2 else (caption, 0)
        return None

    return make


def _opposite_relation(caption: str, foil: str) -> bool:
    """Whether ``foil`` is ``caption`` with its relation replaced by the opposite one."""
    a, b = sw.parse_caption(caption), sw.parse_caption(foil)
    return b.descs == a.descs and b.arg == _OPPOSITE[a.arg]


def _probe_count(scene: Scene, rng: random.Random, k: int, avoid: tuple):
    """ "there are [MASK] red circles" (always plural, so grammar does not leak the number); label the number."""
    descs = {
        d
        for o in scene.objects
        for d in (
            Desc(None, None, None),
            Desc(None, None, o.shape),
            Desc(None, o.colour, o.shape),
            Desc(None, o.colour, None),
            Desc(o.size, None, o.shape),
        )
    }
    by_count: dict[int, list[Desc]] = {}
    for d in sorted(descs, key=lambda d: tuple(v or "" for v in d)):
        by_count.setdefault(len(_matching(d, scene)), []).append(d)
    count = rng.choice(sorted(by_count))  # numbers first, so that larger counts are not rare
    desc = rng.choice(by_count[count])
    noun = sw.GENERIC_PLURAL if desc.shape is None else sw.SHAPE_PLURALS[desc.shape]
    return " ".join(["there", "are", MASK_WORD, *(w for w in (desc.size, desc.colour) if w), noun]), count


def _probe_visual_count(scene: Scene, rng: random.Random, k: int, avoid: tuple):
    return "", len(scene.objects)


def _probe_visual_colours(scene: Scene, rng: random.Random, k: int, avoid: tuple):
    present = {o.colour for o in scene.objects}
    return "", tuple(int(c in present) for c in COLOURS)


def _probe_word_order(scene: Scene, rng: random.Random, k: int, avoid: tuple):
    """A true caption, with two adjacent different words swapped when k is odd (label 1)."""
    kinds = ("attribute", "count", "relation", "binding", "existence")
    for caption in _captions(scene, rng, kinds, avoid, count=2):
        words = caption.split()
        spots = [j for j in range(len(words) - 1) if words[j] != words[j + 1]]
        if spots:
            if k % 2 == 0:
                return caption, 0
            j = rng.choice(spots)
            words[j], words[j + 1] = words[j + 1], words[j]
            return " ".join(words), 1
    return None


_PROBES = {
    "colour": _probe_colour,
    "size": _probe_swap(("attribute",), "size"),
    "position": _probe_swap(("relation",), "relation", _opposite_relation),
    "count": _probe_count,
    "noun": _probe_swap(("attribute",), "shape"),
    "visual_count": _probe_visual_count,
    "visual_colours": _probe_visual_colours,
    "word_order": _probe_word_order,
}


def _probe_item(world: WorldConfig, task: str, i: int, k: int) -> tuple[ProbeItem, ...] | None:
    """Candidate ``i`` of a probe task: the item, and for multimodal tasks its control; None when impossible."""
    key = f"probes/{task}"
    scene = _scene_at(world, key, i)
    made = _PROBES[task](scene, _rng(world, key, i), k, world.held_out_pairs)
    if made is None:
        return None
    text, label = made
    item = ProbeItem(task, scene, text, label, False, scene, i)
    if task not in PROBE_TASKS:
        return (item,)
    other = _scene_at(world, f"{key}/control", i)
    if other == scene:
        return None
    return item, dataclasses.replace(item, scene=other, control=True)


def probe_items(world: WorldConfig, task: str, n: int) -> tuple[list[ProbeItem], int]:
    """``n`` items of one probe task (plus ``n`` controls for multimodal tasks), and the skip count."""
    if task not in PROBE_TASKS + UNIMODAL_PROBE_TASKS:
        raise ValueError(f"unknown probe task {task!r}; expected one of {PROBE_TASKS + UNIMODAL_PROBE_TASKS}")
    groups, skipped = _draw(f"probes/{task}", n, lambda i, k: _probe_item(world, task, i, k))
    return [item for group in groups for item in group], skipped


# --------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------


def object_patch_mask(scene: Scene, object_index: int, image_size: int, patch_size: int) -> np.ndarray:
    """Bool (grid, grid): patches holding a pixel covered at least ``PATCH_COVERAGE`` by the object."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    grid = image_size // patch_size
    mask = sw.object_masks(scene, image_size)[object_index]
    return mask.reshape(grid, patch_size, grid, patch_size).max(axis=(1, 3)) >= PATCH_COVERAGE


def referring_spans(caption: str, scene: Scene) -> list[tuple[int, int, int]]:
    """(start, stop, object) of each run of words that refers to one object and ends in a noun."""
    words, refs = caption.split(), sw.caption_refs(caption, scene)
    spans, start = [], 0
    for j in range(1, len(words) + 1):
        if j == len(words) or refs[j] != refs[start]:
            if refs[start] is not None and words[j - 1] in _NOUNS:
                spans.append((start, j, refs[start]))
            start = j
    return spans


def _grounding_item(world: WorldConfig, i: int, image_size: int, patch_size: int) -> GroundingItem | None:
    scene, rng = _scene_at(world, "grounding", i), _rng(world, "grounding", i)
    for caption in _captions(scene, rng, ("attribute", "relation", "binding"), world.held_out_pairs, count=3):
        spans = referring_spans(caption, scene)
        if spans:
            start, stop, k = rng.choice(spans)
            patches = np.flatnonzero(object_patch_mask(scene, k, image_size, patch_size))
            return GroundingItem(
                scene,
                caption,
                " ".join(caption.split()[start:stop]),
                (start, stop),
                k,
                scene.objects[k].box(image_size),
                image_size,
                patch_size,
                tuple(int(p) for p in patches),
                i,
            )
    return None


def grounding_items(world: WorldConfig, n: int, image_size: int, patch_size: int) -> tuple[list[GroundingItem], int]:
    """``n`` grounding items (boxes and patches at ``image_size``/``patch_size``), and the skip count."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    return _draw("grounding", n, lambda i, k: _grounding_item(world, i, image_size, patch_size))


# --------------------------------------------------------------------------------------------
# Concept frequency and held-out pairs
# --------------------------------------------------------------------------------------------


def _pair_item(world: WorldConfig, key: str, pairs: Sequence, i: int, k: int, avoid: tuple) -> FoilItem | None:
    """A colour or shape foil of "there is a <colour> <shape>" about one object given pair ``pairs[k % len]``.

    The object is a random object of the candidate scene recoloured and reshaped (placement depends on size only);
    pair p's j-th item is a colour foil for even j and a shape foil for odd j.
    """
    colour, shape = pairs[k % len(pairs)]
    phenomenon = ("colour", "shape")[(k // len(pairs)) % 2]
    scene, rng = _scene_at(world, key, i), _rng(world, key, i)
    j = rng.randrange(len(scene.objects))
    scene = _replace_object(scene, j, colour=colour, shape=shape)
    size = scene.objects[j].size if rng.random() < 0.4 else None
    caption = sw.clause_text(Clause("exists", (Desc(size, colour, shape),), None, rng.choice(("bare", "there is"))))
    foils = [f for f in sw.make_foils(caption, scene, phenomenon) if not _names_any([f], avoid)]
    return FoilItem(scene, caption, rng.choice(foils), phenomenon, i) if foils else None


def frequency_items(world: WorldConfig, n_per_pair: int) -> tuple[list[FoilItem], int]:
    """``n_per_pair`` foil items per (colour, shape) pair the training world shows, in ranking order."""
    pairs = [p for p in sw.pair_ranking(world.ranking_seed) if p not in world.held_out_pairs]
    return _draw(
        "frequency",
        n_per_pair * len(pairs),
        lambda i, k: _pair_item(world, "frequency", pairs, i, k, world.held_out_pairs),
    )


def held_out_items(world: WorldConfig, n_per_pair: int) -> tuple[list[FoilItem], int]:
    """``n_per_pair`` foil items per held-out pair: captions name only that pair, the other objects are seen pairs."""
    if n_per_pair and not world.held_out_pairs:
        raise ValueError("held_out items need WorldConfig.held_out_pairs; the world holds none out")
    pairs = world.held_out_pairs
    return _draw("held_out", n_per_pair * len(pairs), lambda i, k: _pair_item(world, "held_out", pairs, i, k, ()))


@dataclass(frozen=True)
class FrequencyBuckets:
    """Log-spaced count buckets: 0 holds unseen concepts (count 0); bucket b in 1..K holds [edges[b-1], edges[b]).

    The lowest and highest buckets are open-ended, so counts outside the edges still fall in 1..K.
    """

    edges: tuple[float, ...]

    @property
    def num_buckets(self) -> int:
        return len(self.edges) - 1

    def bucket(self, count: float) -> int:
        if count <= 0:
            return 0
        return 1 + int(np.searchsorted(np.asarray(self.edges[1:-1]), count, side="right"))

    def to_dict(self) -> dict:
        return {"edges": list(self.edges)}


def log_buckets(counts: Mapping, num_buckets: int = 5) -> FrequencyBuckets:
    """``num_buckets`` buckets, edges equally spaced in log count from the smallest to the largest positive count."""
    positive = [c for c in counts.values() if c > 0]
    if not positive or num_buckets < 1:
        raise ValueError(
            f"log_buckets needs positive counts and num_buckets >= 1, got {len(positive)} "
            f"positive counts and num_buckets={num_buckets}"
        )
    edges = np.geomspace(min(positive), max(positive), num_buckets + 1)
    return FrequencyBuckets(tuple(float(e) for e in edges))


def concept_word_counts(pair_counts: Mapping) -> Counter:
    """Object counts per colour word and per shape word, from (colour, shape) pair counts."""
    words: Counter = Counter()
    for (colour, shape), count in pair_counts.items():
        words[colour] += count
        words[shape] += count
    return words


def item_pairs(item) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs an item's true text names (a masked colour probe names its answer's pair).

    Texts outside the grammar (counting and shuffled probe texts) name none.
    """
    if isinstance(item, WinogroundItem):
        texts = item.captions
    elif isinstance(item, ProbeItem) and item.task == "colour":
        texts = (item.caption.replace(MASK_WORD, COLOURS[item.label]),)
    else:
        texts = (item.caption,)
    pairs = []
    for text in texts:
        try:
            pairs += caption_pairs(text)
        except ValueError:
            continue
    return tuple(dict.fromkeys(pairs))


def item_frequencies(items: Sequence, pair_counts: Mapping) -> list[int | None]:
    """Per item, the pretraining count of its rarest named pair (None when it names none)."""
    out = []
    for item in items:
        pairs = item_pairs(item)
        out.append(min(pair_counts.get(p, 0) for p in pairs) if pairs else None)
    return out


def assign_buckets(items: Sequence, pair_counts: Mapping, buckets: FrequencyBuckets) -> list[int | None]:
    """Per item, the bucket of :func:`item_frequencies` (None for items that name no pair)."""
    return [None if c is None else buckets.bucket(c) for c in item_frequencies(items, pair_counts)]


# --------------------------------------------------------------------------------------------
# All sets, save and load
# --------------------------------------------------------------------------------------------


def default_sizes(n: int, world_config: WorldConfig) -> dict[str, int]:
    """``n`` items per phenomenon for every set; a few per pair for frequency, none held out when no pair is."""
    per_pair = max(1, n // 64)
    return {
        "foils": n,
        "winoground": n,
        "probes": n,
        "grounding": n,
        "frequency": per_pair,
        "held_out": max(1, n // max(1, len(world_config.held_out_pairs))) if world_config.held_out_pairs else 0,
    }


def _check_sizes(sizes: Mapping) -> dict[str, int]:
    for name, value in sizes.items():
        if name not in SET_NAMES:
            raise ValueError(f"sizes: unknown set {name!r}; expected keys from {SET_NAMES}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"sizes[{name!r}] must be a non-negative integer, got {value!r}")
    return {name: int(sizes.get(name, 0)) for name in SET_NAMES}


def build_eval_sets(
    world_config: WorldConfig,
    sizes: Mapping[str, int],
    seed: int | None = None,
    seed_offset: int = EVAL_SEED_OFFSET,
    image_size: int | None = None,
    patch_size: int = 8,
) -> EvalSets:
    """Every evaluation set, deterministic from (seed, index). ``world_config`` is the training world's config.

    ``sizes``: items per phenomenon for ``foils`` and ``winoground``, per task and variant for ``probes``,
    in all for ``grounding``, per pair for ``frequency`` and ``held_out``; missing sets are empty.
    ``seed`` defaults to ``world_config.seed``; grounding boxes and patches use ``image_size`` (default the
    world's) and ``patch_size``.
    """
    sizes = _check_sizes(sizes)
    world = eval_world(world_config, seed, seed_offset)
    image_size = world.image_size if image_size is None else int(image_size)
    sets, skipped = {name: [] for name in SET_NAMES}, {}

    def add(name: str, key: str, drawn: tuple[list, int]):
        sets[name] += drawn[0]
        skipped[key] = drawn[1]

    if sizes["foils"]:
        for p in FOIL_PHENOMENA:
            add("foils", f"foils/{p}", foil_items(world, p, sizes["foils"]))
    if sizes["winoground"]:
        for p in WINOGROUND_PHENOMENA:
            add("winoground", f"winoground/{p}", winoground_items(world, p, sizes["winoground"]))
    if sizes["probes"]:
        for t in PROBE_TASKS + UNIMODAL_PROBE_TASKS:
            add("probes", f"probes/{t}", probe_items(world, t, sizes["probes"]))
    if sizes["grounding"]:
        add("grounding", "grounding", grounding_items(world, sizes["grounding"], image_size, patch_size))
    if sizes["frequency"]:
        add("frequency", "frequency", frequency_items(world, sizes["frequency"]))
    if sizes["held_out"]:
        add("held_out", "held_out", held_out_items(world, sizes["held_out"]))
    meta = {
        "format_version": FORMAT_VERSION,
        "world_version": sw.WORLD_VERSION,
        "world_config": world.to_dict(),
        "training_world_config": world_config.to_dict(),
        "seed": world_config.seed if seed is None else seed,
        "seed_offset": seed_offset,
        "sizes": sizes,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    return EvalSets(sets, skipped, meta)


def eval_sets_to_dict(sets: EvalSets) -> dict:
    """A JSON-serialisable dict of the sets, their skip counts and meta."""
    return {
        "format": "vlp-eval-sets",
        "format_version": FORMAT_VERSION,
        "meta": sets.meta,
        "skipped": sets.skipped,
        "sets": {name: [item.to_dict() for item in items] for name, items in sets.items()},
    }


def eval_sets_from_dict(data: Mapping, source: str = "<dict>") -> EvalSets:
    """Rebuild :class:`EvalSets` from :func:`eval_sets_to_dict` output; ValueError naming ``source`` otherwise."""
    if not isinstance(data, Mapping) or data.get("format") != "vlp-eval-sets":
        raise ValueError(f"{source}: not a VLP evaluation-set file (expected format 'vlp-eval-sets')")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{source}: format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    sets = {}
    for name, items in dict(data.get("sets", {})).items():
        if name not in _ITEM_TYPES:
            raise ValueError(f"{source}: unknown set {name!r}; expected one of {SET_NAMES}")
        sets[name] = []
        for n, item in enumerate(items):
            try:
                sets[name].append(_ITEM_TYPES[name].from_dict(item))
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"{source}: sets[{name!r}][{n}] is malformed ({error!r})") from None
    return EvalSets(sets, data.get("skipped", {}), data.get("meta", {}))


def save_eval_sets(sets: EvalSets, path: str | os.PathLike) -> None:
    """Write the sets as JSON, so that a study evaluates every model on identical items."""
    with open(path, "w", encoding="utf-8") as f:
        strict_json.dump(eval_sets_to_dict(sets), f)


def load_eval_sets(path: str | os.PathLike) -> EvalSets:
    """Read sets written by :func:`save_eval_sets`."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(path)}: not valid JSON ({error})") from None
    return eval_sets_from_dict(data, os.fspath(path))
