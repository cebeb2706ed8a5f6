"""The caption grammar: parsing, truth on a scene, caption text and word-to-object references."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .scenes import Scene, ShapeObject, _as_scene, relation_holds
from .vocabulary import (
    _NUMBER_VALUE,
    _RELATION_FIRST_WORDS,
    _SINGULAR_OF,
    COLOUR_RGB,
    GENERIC_NOUN,
    GENERIC_PLURAL,
    NUMBER_WORDS,
    SHAPE_PLURALS,
    SIZE_RADIUS,
    UNINFORMATIVE_CAPTIONS,
    _article,
)


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
