"""Caption generation: true captions of each kind for a scene."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from .grammar import Caption, Clause, Desc, _make_caption, _matching
from .sampling import _pick, _pick_two, pair_ranking
from .scenes import Scene, ShapeObject, relation_holds
from .vocabulary import CAPTION_KINDS, COLOURS, RELATIONS, SHAPES, SIZES


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
